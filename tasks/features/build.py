"""Features: validated partitions of a training window -> one feature table + a fitted preprocessing.

``build_features`` scans the window's validated partitions lazily and computes the features in two
stages: the history-aware comparable-sales features (``tasks/features/comps.py``; each sale's statistics of
EARLIER sales nearby, read from the validated history up to the window's end, including the
``lookback_days`` before the window's start), then the dataset's row-level ``derive``. It assigns the
train / val / test split and writes the result to ``<lake>/features/window=<start>_<end>/part-0.parquet``.
The preprocessing (clip bounds, means and standard deviations, categorical vocabularies, target
scaling, and the comps configuration) is fitted on the training split only and saved as a
content-addressed JSON artifact that scoring reuses unchanged: ``Preprocessing.features(rows,
history)`` recomputes the same columns for new rows from the lake's validated history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Callable, Literal

import polars as pl

from tasks.core import lake, storage
from tasks.core.spec import DatasetSpec
from tasks.features.comps import MAX_KNN_PAIRS, CompsConfig, area_comps, area_tables, comps, market_index
from tasks.features.preprocessing import NumericStat, OffsetTerm, Preprocessing, Vocabulary
from tasks.ingest.landing import DS, days_in_interval

log = logging.getLogger(__name__)

SPLIT = "split"
SPLITS = ("train", "val", "test")
# Quantiles that bound numeric features (fitted on train); keeps one absurd value from dominating.
CLIP_QUANTILES = (0.001, 0.999)


@dataclass(frozen=True)
class FeatureSet:
    numeric: list[str]
    categorical: list[str]
    target_transform: Literal["log", "identity"]
    derive: Callable[[pl.LazyFrame], pl.LazyFrame]
    module: str | None
    unclipped: tuple[str, ...] = ()
    # History-aware comparable-sales features (the module's ``COMPS``); their columns are model inputs
    # too, after ``numeric``, whenever the feature table carries them.
    comps: CompsConfig | None = None
    # Columns whose sum is the target's baseline (the module's ``TARGET_OFFSET``): the model fits the
    # transformed target minus it, e.g. ln(price) - (market index + ln(size)) for King County.
    target_offset: tuple[str, ...] = ()

    def comp_columns(self) -> list[str]:
        return self.comps.columns() if self.comps is not None else []


def feature_set(spec: DatasetSpec) -> FeatureSet:
    module = spec.features_module_obj()
    if module is None:
        return FeatureSet(spec.by_role("numeric"), spec.by_role("categorical"), "identity", lambda lf: lf, None)
    from tasks.core.settings import get_settings

    mode = get_settings().comps
    comps = getattr(module, "COMPS", None) if mode != "off" else None
    if comps is not None and mode == "market":
        comps = comps.market_only()
    elif comps is not None and mode == "area":
        comps = comps.area_only()
    return FeatureSet(list(module.NUMERIC), list(module.CATEGORICAL), module.TARGET_TRANSFORM, module.derive,
                      spec.features_module, tuple(getattr(module, "UNCLIPPED", ())), comps,
                      tuple(getattr(module, "TARGET_OFFSET", ())))


def bounded_sample(lf: pl.LazyFrame, max_rows: int, rows: int | None = None) -> pl.DataFrame:
    """``lf`` collected whole when it has at most ``max_rows`` rows, else every k-th row (k = ceil(rows /
    max_rows), in scan order: deterministic), by streaming scans. ``rows``: its row count, if known."""
    n = lf.select(pl.len()).collect(engine="streaming").item() if rows is None else rows
    step = max(1, -(-n // max_rows))
    return lf.collect() if step == 1 else lf.gather_every(step).collect(engine="streaming")


def window_partitions(lake_uri: str, start: date, end: date) -> list[dict]:
    """The validated partitions of days in [start, end) that exist, with their content hashes."""
    out = []
    for day in days_in_interval(start, end):
        uri = lake.partition_uri(lake_uri, lake.VALIDATED, day)
        if storage.exists(uri):
            out.append({"day": day.isoformat(), "uri": uri, "sha256": storage.cached_file_sha256(uri)})
    return out


def assign_split(lf: pl.LazyFrame, spec: DatasetSpec, window_end: date) -> pl.LazyFrame:
    """Add the ``split`` column. Time split: the newest ``test_days`` before ``window_end`` are test."""
    s = spec.split
    if s.method == "time":
        test_start = window_end - timedelta(days=s.test_days)
        val_start = test_start - timedelta(days=s.val_days)
        t = pl.col(spec.event_time)
        expr = pl.when(t >= test_start).then(pl.lit("test")).when(t >= val_start).then(pl.lit("val")).otherwise(pl.lit("train"))
    elif s.method == "random":
        keys = spec.id_columns or [spec.target]
        u = (pl.struct(keys).hash(seed=s.seed) % 1_000_000).cast(pl.Float64) / 1_000_000
        expr = pl.when(u < s.test_fraction).then(pl.lit("test")).when(u < s.test_fraction + s.val_fraction).then(pl.lit("val")).otherwise(pl.lit("train"))
    else:
        expr = pl.col(s.column).cast(pl.String).str.to_lowercase()
    return lf.with_columns(expr.alias(SPLIT))


# Up to this many training rows the statistics (clip quantiles, means, standard deviations) are
# computed over every training row; above it, over a deterministic sample of about FIT_SAMPLE_ROWS rows.
EXACT_FIT_MAX_ROWS = 250_000
FIT_SAMPLE_ROWS = 250_000
_ROW = "__row"


def _fit_sample(table: pl.LazyFrame, columns: list[str], modulus: int) -> pl.LazyFrame:
    """The statistics' sample: ``columns`` of the training rows among every ``modulus``-th row of the
    feature table (row index 0, k, 2k, ... in the table's order). The table's row order is that of a
    single scan of the window whatever the chunking, so the sample is deterministic; selecting by row
    index streams at almost no cost (a content hash of every row cost ~4x more)."""
    return (table.with_row_index(_ROW).filter((pl.col(SPLIT) == "train") & (pl.col(_ROW) % modulus == 0))
            .select(columns))


def _quantile_exprs(columns: list[str]) -> list[pl.Expr]:
    """The clip quantiles of ``columns`` as ``<column>__lo`` / ``<column>__hi``."""
    return [*[pl.col(c).cast(pl.Float64).quantile(CLIP_QUANTILES[0]).alias(f"{c}__lo") for c in columns],
            *[pl.col(c).cast(pl.Float64).quantile(CLIP_QUANTILES[1]).alias(f"{c}__hi") for c in columns]]


def _fit_columns(names: list[str], fset: FeatureSet) -> tuple[FeatureSet, list[str]]:
    """``fset`` as fitted on a feature table with columns ``names``: the comps columns are inputs when
    the table has them (all or none), and the target offset applies when it has all of its columns."""
    present = [c for c in fset.comp_columns() if c in names]
    if present and len(present) != len(fset.comp_columns()):
        missing = sorted(set(fset.comp_columns()) - set(present))
        raise ValueError(f"comparable-sales columns missing: {missing}")
    comps_cfg = fset.comps if present else None
    unclipped = (*fset.unclipped, *(comps_cfg.unclipped() if comps_cfg else ()))
    # A comp column is absent without comps, and with it an offset that uses it.
    offset_cols = list(fset.target_offset) if fset.target_offset and set(fset.target_offset) <= set(names) else []
    return (FeatureSet(fset.numeric + [c for c in present if c not in fset.numeric], fset.categorical,
                       fset.target_transform, fset.derive, fset.module, unclipped, comps_cfg, tuple(offset_cols)),
            offset_cols)


# Means and standard deviations are computed from integer sums, which are exact, so they do not depend
# on the order in which the streaming engine's threads add partial sums. Float sums did: a rerun of the
# same window could change a standard deviation in its 11th digit, and so the preprocessing's hash.
#  - A mean alone (the target offset's fills, whose range is not known beforehand): the sum of the
#    values as 128-bit decimals (to 1e-15); past 38 digits it raises instead of wrapping.
#  - A mean and standard deviation (the moments pass, 20-odd columns: decimals would cost ~4x the
#    float sums, integers ~1.3x): each value is known to lie in [lo, hi] (its clip bounds, or the range
#    the aggregates pass found), so x - mid, with mid the middle of [lo, hi], scaled by 2**k and
#    truncated is an int64, with k the largest that keeps n of them under 2**62; the same for
#    (x - mid)**2. The quantization (2**-k: half-range x 2**-37 at 32M rows, x 2**-45 for a 250k-row
#    sample) is far below what standardization needs.
_SUM1 = pl.Decimal(38, 15)
_INT_HEADROOM = 2.0 ** 62


def _mean_exprs(x: pl.Expr, name: str) -> list[pl.Expr]:
    """Exact (decimal) sum and count of ``x`` (NaN and null skipped), for :func:`_mean`."""
    x = x.cast(pl.Float64).fill_nan(None)
    return [x.cast(_SUM1).sum().alias(f"{name}__s1"), x.count().alias(f"{name}__n")]


def _mean(row: dict, name: str) -> float | None:
    from fractions import Fraction

    n = int(row[f"{name}__n"] or 0)
    return float(Fraction(row[f"{name}__s1"]) / n) if n else None


@dataclass(frozen=True)
class _Fixed:
    """Fixed-point integer moments of a column bounded by [lo, hi] over at most ``n`` rows."""
    mid: float
    k1: int  # values: trunc((x - mid) * 2**k1)
    k2: int  # squares: trunc((x - mid)**2 * 2**k2)

    @staticmethod
    def of(lo: float | None, hi: float | None, n: int, name: str) -> "_Fixed":
        if lo is None or hi is None:  # no values: every sum is empty
            return _Fixed(0.0, 0, 0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"column {name!r} has non-finite training values (range {lo} .. {hi})")
        half = max((hi - lo) / 2, abs(hi - (lo + hi) / 2), abs((lo + hi) / 2 - lo))
        scale = _INT_HEADROOM / max(n, 1)
        k1 = math.floor(math.log2(scale / half)) if half > 0 else 0
        k2 = math.floor(math.log2(scale / (half * half))) if half > 0 else 0
        return _Fixed((lo + hi) / 2, k1, k2)

    def exprs(self, x: pl.Expr, name: str) -> list[pl.Expr]:
        # Truncated, not rounded (a third faster): each value loses less than 2**-k. A NaN casts to null
        # (cast strict=False) and is skipped like a null; no value can pass the int64 range.
        d = x.cast(pl.Float64) - self.mid
        i1 = (d * 2.0 ** self.k1).cast(pl.Int64, strict=False)
        return [i1.sum().alias(f"{name}__i1"), (d * d * 2.0 ** self.k2).cast(pl.Int64, strict=False).sum().alias(f"{name}__i2"),
                i1.count().alias(f"{name}__n")]

    def moments(self, row: dict, name: str) -> tuple[float | None, float | None]:
        """The mean and the standard deviation (ddof 1); None where there are no values / fewer than two."""
        from fractions import Fraction

        n = int(row[f"{name}__n"] or 0)
        if n == 0:
            return None, None
        s1 = Fraction(int(row[f"{name}__i1"])) / Fraction(2) ** self.k1
        s2 = Fraction(int(row[f"{name}__i2"])) / Fraction(2) ** self.k2
        var = (s2 - s1 * s1 / n) / (n - 1) if n > 1 else None
        return self.mid + float(s1 / n), (math.sqrt(max(float(var), 0.0)) if var is not None else None)


def _target_expr(spec: DatasetSpec, fset: FeatureSet) -> pl.Expr:
    return pl.col(spec.target).log() if fset.target_transform == "log" else pl.col(spec.target)


def _train_aggregates(spec: DatasetSpec, fset: FeatureSet, offset_cols: list[str]) -> list[pl.Expr]:
    """The statistics of the training rows that need no other one, as one-row aggregations: the target
    offset's fill values (training means) and the ranges of the (transformed) target, the offset's
    columns and the unclipped columns (bounds for the moments' fixed point, :class:`_Fixed`; clipped
    columns are bounded by their clip bounds)."""
    ranged = [("__target", _target_expr(spec, fset)), *[(c, pl.col(c)) for c in offset_cols],
              *[(c, pl.col(c)) for c in fset.unclipped if c in fset.numeric and c not in offset_cols]]
    return [*[e for c in offset_cols for e in _mean_exprs(pl.col(c), f"{c}__fill")],
            *[e for name, x in ranged for e in (x.cast(pl.Float64).fill_nan(None).min().alias(f"{name}__min"),
                                               x.cast(pl.Float64).fill_nan(None).max().alias(f"{name}__max"))]]


def _vocabulary(train: pl.LazyFrame, column: str) -> list[str]:
    """The sorted distinct values of ``column`` in the training rows. A frame-level ``unique`` streams
    (memory ~ distinct values); ``pl.col(c).unique()`` inside a ``select`` held the whole column
    (0.6 GiB for 32M training rows)."""
    values = train.select(pl.col(column).cast(pl.String)).drop_nulls().unique().collect(engine="streaming")
    return sorted(values[column].to_list())


def _sample_columns(spec: DatasetSpec, fset: FeatureSet, offset_cols: list[str]) -> list[str]:
    """What the statistics read: the numeric inputs, the target and the target offset's columns."""
    return list(dict.fromkeys([*fset.numeric, spec.target, *offset_cols]))


def fit_preprocessing(features_uri: str, spec: DatasetSpec, fset: FeatureSet, fitted_on: dict,
                      exact_max_rows: int = EXACT_FIT_MAX_ROWS, sample_rows: int = FIT_SAMPLE_ROWS) -> Preprocessing:
    """Fit clip bounds, scaling and vocabularies on the training split, in streaming passes.

    The comps columns of ``fset`` are inputs when the feature table has them (all or none). Memory is
    bounded whatever the table's size: each pass over the table is one streaming query with one
    consumer (Polars' ``collect_all`` of several queries over one scan buffered rows for the slowest:
    +0.5 to 1.4 GiB at 50M rows). Vocabularies, the target offset's fills and the ranges are computed
    over every training row (reading only their columns). The clip quantiles, then the clipped means
    and standard deviations and the target's, are computed in memory over the columns they need of
    every training row up to ``exact_max_rows`` of them (King County: always), else of a
    deterministic sample of about ``sample_rows`` (:func:`_fit_sample`): either way at most about
    ``max(exact_max_rows, sample_rows)`` rows of those columns are held (~50 MB for 250k rows of 24
    columns). Standardization needs a mean to a fraction of a standard deviation, which a sample of
    that size gives (~0.002), and an exact quantile would hold every value of a column.
    ``fitted_on["statistics"]`` records which. Sums are exact integers (:class:`_Fixed`): the same
    table gives the same preprocessing, bit for bit.
    """
    names = pl.scan_parquet(features_uri).collect_schema().names()
    try:
        fset, offset_cols = _fit_columns(names, fset)
    except ValueError as e:
        raise ValueError(f"{features_uri}: {e}") from None
    table = pl.scan_parquet(features_uri)
    train = table.filter(pl.col(SPLIT) == "train")
    n_train = fitted_on.get("rows", {}).get("train")
    if n_train is None:
        n_train = int(train.select(pl.len()).collect(engine="streaming").item())
    aggs = train.select(_train_aggregates(spec, fset, offset_cols)).collect(engine="streaming").row(0, named=True)
    vocabs = {c: _vocabulary(train, c) for c in fset.categorical}
    columns = _sample_columns(spec, fset, offset_cols)
    if n_train > exact_max_rows:
        k = max(1, math.ceil(n_train / sample_rows))
        source = _fit_sample(table, columns, k).collect(engine="streaming")
        how = {"method": "every_kth_row", "modulus": k, "rows": source.height, "of_rows": n_train}
    else:
        source = train.select(columns).collect(engine="streaming")
        how = {"method": "exact", "rows": source.height}
    return _fit_statistics(source, spec, fset, offset_cols, aggs, vocabs, {**fitted_on, "statistics": how})


def _fit_statistics(source: pl.DataFrame, spec: DatasetSpec, fset: FeatureSet, offset_cols: list[str],
                    aggs: dict, vocabs: dict[str, list[str]], fitted_on: dict) -> Preprocessing:
    """The preprocessing from the training rows (or their sample) ``source``, in memory, and the
    aggregates and vocabularies of every training row."""
    n = source.height
    q = source.select(_quantile_exprs(fset.numeric)).row(0, named=True) if fset.numeric else {}
    y = _target_expr(spec, fset)
    fills = {c: _mean(aggs, f"{c}__fill") for c in offset_cols}
    offset_terms = [OffsetTerm(name=c, fill=fills[c] if fills[c] is not None else 0.0) for c in offset_cols]
    if offset_terms:
        y = y - pl.sum_horizontal([pl.col(t.name).cast(pl.Float64).fill_nan(None).fill_null(t.fill) for t in offset_terms])
    # Bounds of each column the moments pass sums: clip bounds, else the range the aggregates found.
    # The target minus its offset lies within the target's range minus the offset columns' (a fill is
    # a mean of its column, so within it too).
    bounds = {c: (q[f"{c}__lo"], q[f"{c}__hi"]) for c in fset.numeric}
    for c in fset.unclipped:
        q[f"{c}__lo"] = q[f"{c}__hi"] = None
        bounds[c] = (aggs.get(f"{c}__min"), aggs.get(f"{c}__max"))
    lo, hi = aggs["__target__min"], aggs["__target__max"]
    for t in offset_terms:
        o_lo, o_hi = aggs[f"{t.name}__min"], aggs[f"{t.name}__max"]
        if o_lo is None:  # the column is null in every training row: it is its fill
            o_lo = o_hi = t.fill
        lo, hi = (None, None) if lo is None else (lo - o_hi, hi - o_lo)
    bounds["__y"] = (lo, hi)
    fixed = {c: _Fixed.of(*b, n=n, name=c) for c, b in bounds.items()}
    sums = source.select(
        *[e for c in fset.numeric
          for e in fixed[c].exprs(pl.col(c).cast(pl.Float64).clip(q[f"{c}__lo"], q[f"{c}__hi"]), c)],
        *fixed["__y"].exprs(y, "__y"),
    ).row(0, named=True)
    numeric = []
    for c in fset.numeric:
        mean, std = fixed[c].moments(sums, c)
        clip = c not in fset.unclipped
        numeric.append(NumericStat(name=c, lo=q[f"{c}__lo"] if clip else None, hi=q[f"{c}__hi"] if clip else None,
                                   # a column without a value in training (a comp with no history yet) is all 0
                                   mean=mean if mean is not None else 0.0,
                                   std=std if std and math.isfinite(std) and std > 0 else 1.0))
    y_mean, y_std = fixed["__y"].moments(sums, "__y")
    return Preprocessing(
        dataset=spec.name, spec_sha256=spec.source_hash, features_module=fset.module, numeric=numeric,
        categorical=[Vocabulary(name=c, values=vocabs[c]) for c in fset.categorical], target=spec.target,
        target_transform=fset.target_transform,
        target_mean=y_mean, target_std=y_std or 1.0, fitted_on=fitted_on, comps=fset.comps,
        target_offset=offset_terms,
    )


def _row_days(info: list[dict], time_col: str) -> pl.LazyFrame:
    """The days the window's rows may be dated: every day from each partition's first to its last
    ``time_col`` value (Parquet footers, :func:`_partition_info`), a superset of the rows' days. A
    join by day needs an entry for each of them (extra days change nothing), and it saves a scan of
    the rows."""
    import datetime as dt

    ranges = [(p["tmin"], p["tmax"]) for p in info if p["tmin"] is not None and p["tmax"] is not None]
    if not all(type(lo) is dt.date and type(hi) is dt.date for lo, hi in ranges):  # not a Date column: scan
        return pl.scan_parquet([p["uri"] for p in info]).select(time_col)
    days = sorted({lo + timedelta(days=i) for lo, hi in ranges for i in range((hi - lo).days + 1)})
    return pl.LazyFrame({time_col: days}, schema={time_col: pl.Date})


def _row_span(info: list[dict]) -> tuple[date, date] | None:
    """The window's rows' first and last day from the Parquet footers (:func:`_partition_info`), or
    None when a partition's range is unknown or not of dates (then the rows are scanned for it)."""
    import datetime as dt

    ranges = [(p["tmin"], p["tmax"]) for p in info if p["rows"]]
    if not ranges or not all(type(lo) is dt.date and type(hi) is dt.date for lo, hi in ranges):
        return None
    return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)


def _partition_info(parts: list[dict], time_col: str | None) -> list[dict]:
    """Each partition with its row count and the min / max of ``time_col``, from the Parquet footer.

    Reads only metadata (the validated partitions are written with statistics); a file without
    statistics for the column gets its range from a one-column scan.
    """
    import pyarrow.parquet as pq

    out = []
    for p in parts:
        path = storage.local_path(p["uri"])
        if path is not None:
            md = pq.read_metadata(path)
            rows, lo, hi, known = md.num_rows, None, None, time_col is not None
            if time_col is not None:
                names = [md.schema.column(i).name for i in range(md.num_columns)]
                j = names.index(time_col) if time_col in names else None
                for g in range(md.num_row_groups):
                    st = md.row_group(g).column(j).statistics if j is not None else None
                    if st is None or not st.has_min_max:
                        if md.row_group(g).num_rows and (st is None or st.null_count != md.row_group(g).num_rows):
                            known = False
                        continue
                    lo = st.min if lo is None else min(lo, st.min)
                    hi = st.max if hi is None else max(hi, st.max)
        else:
            rows, known = None, False
        if time_col is not None and not known:
            r = pl.scan_parquet(p["uri"]).select(pl.len().alias("n"), pl.col(time_col).min().alias("lo"),
                                                 pl.col(time_col).max().alias("hi")).collect().row(0, named=True)
            rows, lo, hi = r["n"], r["lo"], r["hi"]
        elif rows is None:
            rows = pl.scan_parquet(p["uri"]).select(pl.len()).collect().item()
        out.append({**p, "rows": int(rows), "tmin": lo, "tmax": hi})
    return out


def plan_chunks(parts: list[dict], chunk_rows: int) -> list[list[dict]]:
    """Consecutive partitions (in day order) grouped into chunks of at most ``chunk_rows`` rows.

    A partition is never split (a day larger than ``chunk_rows`` is a chunk of its own; ``comps``
    then works through it in slices of ``chunk_rows``).
    """
    chunks: list[list[dict]] = []
    cur: list[dict] = []
    n = 0
    for p in parts:
        if cur and n + p["rows"] > chunk_rows:
            chunks.append(cur)
            cur, n = [], 0
        cur.append(p)
        n += p["rows"]
    if cur:
        chunks.append(cur)
    return chunks


def _chunk_history(chunk: list[dict], candidates: list[dict], cfg: CompsConfig) -> list[str]:
    """The history files a chunk can reach: those whose event times overlap
    [first date - lookback_days, last date], plus the chunk's own (``comps`` filters rows exactly)."""
    own = {p["uri"] for p in chunk}
    lows = [p["tmin"] for p in chunk if p["tmin"] is not None]
    highs = [p["tmax"] for p in chunk if p["tmax"] is not None]
    if not lows:
        return [p["uri"] for p in candidates]
    lo, hi = min(lows) - timedelta(days=cfg.lookback_days()), max(highs)
    return [p["uri"] for p in candidates
            if p["uri"] in own or p["tmin"] is None or (p["tmax"] >= lo and p["tmin"] <= hi)]


# Rows per Parquet row group of the feature table (the streaming loader reads one at a time).
ROW_GROUP_ROWS = 65_536
# The feature table's codec. lz4, not zstd: the table is rebuilt each retrain and read back by the
# fit, training (each epoch when streamed), evaluation and drift, and zstd's compression was half
# of writing it (10M rows: 6.6 s with zstd, 4.5 s with lz4; 494 vs 846 MiB on disk).
FEATURES_COMPRESSION = "lz4"
# Rows featurised per chunk when the features have no comparable-sales stage.
PLAIN_CHUNK_ROWS = 500_000


def _write_chunks(chunks: list[list[dict]], chunk_frame: Callable[[list[dict]], pl.LazyFrame], tmp: str) -> dict[str, int]:
    """Collect each chunk's features and append them to one Parquet file at ``tmp``; rows per split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts: dict[str, int] = {}
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    try:
        for i, chunk in enumerate(chunks):
            df = chunk_frame(chunk).collect()
            for split, n in df.group_by(SPLIT).len().iter_rows():
                counts[split] = counts.get(split, 0) + int(n)
            table = df.to_arrow()
            del df
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(tmp, schema, compression=FEATURES_COMPRESSION)
            elif table.schema != schema:
                table = table.cast(schema)
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            log.info("features: chunk %d/%d, %d rows, %d partitions", i + 1, len(chunks), table.num_rows, len(chunk))
            del table
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no rows at all: an empty table with the columns (the caller's split check raises)
        chunk_frame(chunks[0]).limit(0).collect().write_parquet(tmp)
    return counts


def build_features(spec: DatasetSpec, lake_uri: str, window_start: date, window_end: date,
                   chunk_rows: int | None = None, max_knn_pairs: int | None = MAX_KNN_PAIRS) -> dict:
    """Features and preprocessing for the window [window_start, window_end). Returns XCom metadata.

    Comparable-sales features read the validated history from ``lookback_days`` before the window's
    start to its end; each row sees only the sales dated before it.

    **Out of core.** The window's partitions are processed in day order, in chunks of consecutive
    partitions of at most ``chunk_rows`` rows (default: ``CompsConfig.chunk_rows``; row counts and
    date ranges come from the Parquet footers). Each chunk reads its rows and only the history files
    it can reach, runs comps (its k-nearest in slices of at most ``max_knn_pairs`` candidate pairs,
    see ``tasks.features.comps.comps``), ``derive``, the split and the column selection, and is appended to one
    Parquet file (``ParquetWriter``, ``FEATURES_COMPRESSION``, row groups of 65,536 rows) written to ``<final>.tmp`` and
    renamed. Rows keep the order of a single scan of the window (partition order, then file order),
    and every row's values are those of a single-chunk run: a row's comps depend only on the
    sales dated before it (``tests/test_outofcore.py``). Peak memory ~ one chunk plus the history it
    reaches, whatever the window's size (docs/out-of-core.md).

    Without row-by-row comps (``HOMEWORTH_COMPS=area``, ``market`` or ``off``) no row depends on another: one
    streaming plan writes the whole table. :func:`fit_preprocessing` then reads only the columns it
    needs, and above 250k training rows takes its statistics from a sample. The input partitions'
    hashes (lineage) come from the sidecars validation wrote (``storage.cached_file_sha256``). Sums
    are exact, so a rerun gives the same bytes and hashes.
    """
    parts = window_partitions(lake_uri, window_start, window_end)
    if not parts:
        raise ValueError(f"no validated partitions in {lake_uri} for {window_start}..{window_end}: ingest first")
    fset = feature_set(spec)
    # All spec columns travel with the features: a champion whose feature code differs can re-derive.
    keep = [*spec.columns, DS]
    columns = list(dict.fromkeys([*keep, *fset.numeric, *fset.comp_columns(), *fset.categorical, SPLIT]))
    history_parts: list[dict] = []
    time_col = fset.comps.time if fset.comps is not None else None
    info = _partition_info(parts, time_col)
    candidates = info
    if fset.comps is not None:
        history_parts = window_partitions(lake_uri, window_start - timedelta(days=fset.comps.lookback_days()), window_start)
        candidates = _partition_info(history_parts, time_col) + info
    if chunk_rows is None:
        chunk_rows = fset.comps.chunk_rows if fset.comps is not None else PLAIN_CHUNK_ROWS
    # A market-only configuration needs one row per day, not the rows around each row: one aggregation
    # of the history, then a join by day inside the streaming plan below.
    # An aggregated configuration (HOMEWORTH_COMPS=area) needs one row per (zipcode, cell, day): an
    # aggregation of the history and one of the rows' keys, then one join inside the streaming plan.
    market = tables = None
    if fset.comps is not None and fset.comps.is_market_only():
        market = market_index(pl.scan_parquet([p["uri"] for p in candidates]), _row_days(info, fset.comps.time),
                              fset.comps)
    elif fset.comps is not None and fset.comps.aggregated:
        tables = area_tables(pl.scan_parquet([p["uri"] for p in candidates]),
                             pl.scan_parquet([p["uri"] for p in info]), fset.comps, _row_span(info))

    def chunk_frame(chunk: list[dict]) -> pl.LazyFrame:
        rows = pl.scan_parquet([p["uri"] for p in chunk])
        if market is not None:
            # A join with the small per-day table streams (a replace_strict lookup made Polars hold
            # every row: 2.7 GiB at 10M rows against 0.2 GiB); order kept as in a plain scan.
            rows = rows.join(market.lazy(), on=fset.comps.time, how="left", maintain_order="left")
        elif tables is not None:
            rows = area_comps(rows, tables, fset.comps)
        elif fset.comps is not None:
            history = pl.scan_parquet(_chunk_history(chunk, candidates, fset.comps))
            rows = comps(history, rows, fset.comps, max_pairs=max_knn_pairs).lazy()
        return rows.pipe(fset.derive).pipe(assign_split, spec, window_end).select(columns)

    out_uri = lake.features_uri(lake_uri, window_start, window_end)
    local = storage.local_path(out_uri)
    if local is None:
        raise NotImplementedError(f"{out_uri}: features are streamed to a local path; set HOMEWORTH_LAKE_URI to one")
    tmp = local + ".tmp"
    fs, _ = storage.resolve(out_uri)
    fs.create_dir(local.rsplit("/", 1)[0], recursive=True)
    if os.path.exists(tmp):  # a crashed run's (the table's hash reads whatever file is at tmp)
        os.remove(tmp)
    with ThreadPoolExecutor(max_workers=1) as pool:
        growing = None
        if fset.comps is None or market is not None or tables is not None:
            # Row-level features (and the market index joined by day): no row depends on another, so one
            # streaming plan (Polars' engine, its multi-threaded writer) replaces the chunks; memory stays
            # bounded by the engine's morsels. One consumer only: a collect_all that also aggregated the
            # rows it wrote buffered rows for the writer (2.1 GiB at 50M rows against 0.7).
            # The table's hash (lineage) is computed in a thread as the file grows: the writer leaves
            # some CPU idle, and the hash is otherwise a read of the whole table (~4 s at 50M rows).
            growing = storage.GrowingFileHash(tmp)
            hashing = pool.submit(growing.run)
            try:
                chunk_frame(info).sink_parquet(tmp, compression=FEATURES_COMPRESSION, row_group_size=ROW_GROUP_ROWS)
            finally:
                growing.finish()
            counts = {k: int(n) for k, n in pl.scan_parquet(tmp).group_by(SPLIT).len().collect().iter_rows()}
        else:
            counts = _write_chunks(plan_chunks(info, chunk_rows), chunk_frame, tmp)
        fs.move(tmp, local)
        for split in SPLITS:
            if not counts.get(split):
                raise ValueError(f"window {window_start}..{window_end}: split {split!r} has no rows (counts {counts}); "
                                 "widen the window or change the spec's split")
        fitted_on = {"window_start": window_start.isoformat(), "window_end": window_end.isoformat(),
                     "rows": {s: int(counts.get(s, 0)) for s in SPLITS}}
        # Otherwise the table's hash is read in a thread while the statistics are fitted: hashlib and
        # Polars both release the GIL.
        if growing is None:
            hashing = pool.submit(storage.file_sha256, out_uri)
        prep = fit_preprocessing(local, spec, fset, fitted_on)
        hashed = hashing.result()
        features_sha256 = hashed if growing is None else growing.result()
    if features_sha256 is None:  # the writer did not only append: hash the file as it is
        log.warning("%s: not hashed as it was written; hashing it again", out_uri)
        features_sha256 = storage.file_sha256(out_uri)
    prep_sha = prep.sha256()
    prep_uri = lake.preprocessing_uri(lake_uri, prep_sha)
    storage.write_bytes_atomic(prep_uri, prep.model_dump_json(indent=2).encode())
    manifest = {"features_uri": out_uri, "preprocessing_uri": prep_uri,
                "partitions": [{k: p[k] for k in ("day", "uri", "sha256")} for p in parts],
                "history_partitions": history_parts, **fitted_on}
    storage.write_json_atomic(lake.manifest_uri(out_uri), manifest)
    return {
        "features_uri": out_uri,
        "features_sha256": features_sha256,
        "preprocessing_uri": prep_uri,
        "preprocessing_sha256": prep_sha,
        "window_start": window_start.isoformat(),
        "window_end": window_end.isoformat(),
        "rows": fitted_on["rows"],
        "partitions": len(parts),
        "partitions_sha256": hashlib.sha256(json.dumps([(p["day"], p["sha256"]) for p in parts]).encode()).hexdigest(),
        "history_partitions": len(history_parts),
    }
