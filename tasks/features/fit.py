"""The preprocessing fitted on a feature table's training split, in streaming passes: clip bounds, means
and standard deviations (exact integer sums), vocabularies, the target's transform, offset and scaling
(:func:`fit_preprocessing`; docs/out-of-core.md, "Preprocessing")."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from tasks.core.spec import DatasetSpec
from tasks.features.featureset import SPLIT, FeatureSet
from tasks.features.preprocessing import NumericStat, OffsetTerm, Preprocessing, Vocabulary

# Quantiles that bound numeric features (fitted on train); keeps one absurd value from dominating.
CLIP_QUANTILES = (0.001, 0.999)


# The quantile (rank-Gauss) transform of each clipped numeric input (NumericStat.rank_knots): one knot per
# RANK_ROWS_PER_KNOT training rows, between RANK_MIN_KNOTS and RANK_MAX_KNOTS (before merging equal values),
# as the tabular deep-learning papers fit theirs (about n / 30, at least 10).
RANK_ROWS_PER_KNOT, RANK_MIN_KNOTS, RANK_MAX_KNOTS = 30, 10, 256


def rank_knots(values: np.ndarray, mean: float, std: float) -> tuple[list[float], list[float]] | None:
    """The knots of a quantile transform of ``values`` (the clipped training values of a column; NaN skipped):
    training values at evenly spaced quantiles (so a count keeps its own values), standardized by ``mean`` / ``std`` and merged where equal, and the
    mid-rank share of the training values below each, ``(#{x < v} + #{x <= v}) / 2n``, which lies in (0, 1)
    and gives a value shared by many rows (a count, a 0) the middle of their ranks. None: fewer than two
    distinct values."""
    x = np.sort(np.asarray(values, dtype=np.float64)[~np.isnan(values)])
    n = len(x)
    if n < 2 or x[0] == x[-1]:
        return None
    m = min(max(n // RANK_ROWS_PER_KNOT, RANK_MIN_KNOTS), RANK_MAX_KNOTS)
    v = np.unique(np.quantile(x, np.linspace(0.0, 1.0, m), method="inverted_cdf"))  # training values only
    levels = (np.searchsorted(x, v, side="left") + np.searchsorted(x, v, side="right")) / (2.0 * n)
    z = (v - mean) / std
    keep = np.concatenate([[True], np.diff(z) > 0])  # standardizing may merge two very close values
    if keep.sum() < 2:
        return None
    return [float(a) for a in z[keep]], [float(a) for a in levels[keep]]


def with_rank_knots(prep: Preprocessing, train: pl.DataFrame) -> Preprocessing:
    """``prep`` with the quantile transform's knots (:func:`rank_knots`) of every clipped numeric column,
    fitted on the training rows ``train`` (or their sample); unclipped columns (which must extrapolate,
    such as market time) stay linear."""
    numeric = []
    for s in prep.numeric:
        fitted = None
        if s.lo is not None and s.hi is not None:
            col = train.get_column(s.name).cast(pl.Float64).fill_nan(None).drop_nulls().clip(s.lo, s.hi)
            fitted = rank_knots(col.to_numpy(), s.mean, s.std)
        knots, levels = fitted if fitted else (None, None)
        numeric.append(s.model_copy(update={"rank_knots": knots, "rank_levels": levels}))
    return prep.model_copy(update={"numeric": numeric})


# Up to this many training rows the statistics (clip quantiles, means, standard deviations) are
# computed over every training row; above it, over a deterministic sample of about FIT_SAMPLE_ROWS rows.
EXACT_FIT_MAX_ROWS = 250_000
FIT_SAMPLE_ROWS = 250_000
_ROW = "__row"


def _fit_sample(table: pl.LazyFrame, columns: list[str], modulus: int) -> pl.LazyFrame:
    """The statistics' sample: ``columns`` of the training rows among every ``modulus``-th row of the
    feature table (row index 0, k, 2k, ... in the table's order). The table's row order is that of a
    single scan of the window whatever the chunking, so the sample is deterministic; selecting by row
    index streams at almost no cost (a content hash of every row cost more: docs/out-of-core.md)."""
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
    inputs = [c for c in present if c not in fset.numeric and c not in fset.not_inputs]
    return (dataclasses.replace(fset, numeric=fset.numeric + inputs, unclipped=unclipped, comps=comps_cfg,
                                target_offset=tuple(offset_cols)), offset_cols)


# ``auto`` target transform: ln when every training target is positive and their skewness passes this.
LOG_SKEW = 0.5


def choose_target_transform(train: pl.LazyFrame, target: str) -> tuple[str, dict]:
    """``log`` for a positive, right-skewed target (a price), else ``identity``, from the training rows;
    and why (recorded in the preprocessing's ``fitted_on``)."""
    y = pl.col(target).cast(pl.Float64).fill_nan(None)
    row = train.select(y.min().alias("min"), y.skew().alias("skew")).collect(engine="streaming").row(0, named=True)
    lo, skew = row["min"], row["skew"] if row["skew"] is not None and math.isfinite(row["skew"]) else 0.0
    chosen = "log" if lo is not None and lo > 0 and skew > LOG_SKEW else "identity"
    return chosen, {"chosen": chosen, "rule": f"log when the training targets are all positive and skew > {LOG_SKEW}",
                    "min": lo, "skew": round(skew, 6)}


# Means and standard deviations are computed from integer sums, which are exact, so they do not depend
# on the order in which the streaming engine's threads add partial sums. Float sums did: a rerun of the
# same window could change a standard deviation in its 11th digit, and so the preprocessing's hash.
#  - A mean alone (the target offset's fills, whose range is not known beforehand): the sum of the
#    values as 128-bit decimals (to 1e-15); past 38 digits it raises instead of wrapping.
#  - A mean and standard deviation (the moments pass, 20-odd columns: integers cost less than decimals,
#    docs/out-of-core.md "Deterministic sums"): each value is known to lie in [lo, hi] (its clip
#    bounds, or the range the aggregates pass found), so x - mid, with mid the middle of [lo, hi],
#    scaled by 2**k and truncated is an int64, with k the largest that keeps n of them under 2**62;
#    the same for (x - mid)**2. The quantization (2**-k: half-range x 2**-37 at 32M rows, x 2**-45 for a 250k-row
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
        # Truncated, not rounded (faster): each value loses less than 2**-k. A NaN casts to null
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
    (docs/out-of-core.md, "Preprocessing")."""
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
    consumer (Polars' ``collect_all`` of several queries over one scan buffered rows for the slowest,
    docs/out-of-core.md "One consumer per pass"). Vocabularies, the target offset's fills and the ranges are computed
    over every training row (reading only their columns). The clip quantiles, then the clipped means
    and standard deviations and the target's, are computed in memory over the columns they need of
    every training row up to ``exact_max_rows`` of them (King County: always), else of a
    deterministic sample of about ``sample_rows`` (:func:`_fit_sample`): either way at most about
    ``max(exact_max_rows, sample_rows)`` rows of those columns are held (their size:
    docs/out-of-core.md). Standardization needs a mean to a fraction of a standard deviation, which a sample of
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
    if fset.target_transform == "auto":  # chosen from the data; the spec's target_transform overrides
        chosen, why = choose_target_transform(train, spec.target)
        fset = dataclasses.replace(fset, target_transform=chosen)
        fitted_on = {**fitted_on, "target_transform": why}
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
    prep = Preprocessing(
        dataset=spec.name, spec_sha256=spec.source_hash, features_module=fset.module, numeric=numeric,
        categorical=[Vocabulary(name=c, values=vocabs[c]) for c in fset.categorical], target=spec.target,
        target_transform=fset.target_transform,
        target_mean=y_mean, target_std=y_std or 1.0, fitted_on=fitted_on, comps=fset.comps,
        target_offset=offset_terms, null_indicators=list(fset.null_indicators),
    )
    return with_rank_knots(prep, source)
