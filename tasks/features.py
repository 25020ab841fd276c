"""Features: validated partitions of a training window -> one feature table + a fitted preprocessing.

``build_features`` scans the window's validated partitions lazily and computes the features in two
stages: the history-aware comparable-sales features (``tasks/comps.py``; each sale's statistics of
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
import importlib
import json
import logging
import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Callable, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel

from tasks import storage
from tasks.comps import CompsConfig, comps
from tasks.ingest import DS, days_in_interval
from tasks.spec import DatasetSpec

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

    def comp_columns(self) -> list[str]:
        return self.comps.columns() if self.comps is not None else []


def feature_set(spec: DatasetSpec) -> FeatureSet:
    module = spec.features_module_obj()
    if module is None:
        return FeatureSet(spec.by_role("numeric"), spec.by_role("categorical"), "identity", lambda lf: lf, None)
    return FeatureSet(list(module.NUMERIC), list(module.CATEGORICAL), module.TARGET_TRANSFORM, module.derive,
                      spec.features_module, tuple(getattr(module, "UNCLIPPED", ())), getattr(module, "COMPS", None))


def window_partitions(lake_uri: str, start: date, end: date) -> list[dict]:
    """The validated partitions of days in [start, end) that exist, with their content hashes."""
    out = []
    for day in days_in_interval(start, end):
        uri = storage.partition_uri(lake_uri, "validated", day)
        if storage.exists(uri):
            out.append({"day": day.isoformat(), "uri": uri, "sha256": storage.file_sha256(uri)})
    return out


def with_comps(rows: pl.LazyFrame, history: pl.LazyFrame | pl.DataFrame | None, cfg: CompsConfig | None) -> pl.LazyFrame:
    """The comparable-sales stage: ``rows`` with ``cfg``'s columns computed from ``history`` (none: unchanged)."""
    if cfg is None:
        return rows
    if history is None:
        raise ValueError("these features need the history of validated sales (comparable sales): pass history")
    return comps(history, rows, cfg).lazy()


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


class NumericStat(BaseModel):
    name: str
    lo: float | None  # None: not clipped (features that must extrapolate, such as market time)
    hi: float | None
    mean: float
    std: float


class Vocabulary(BaseModel):
    name: str
    values: list[str]  # index 0 is reserved for values never seen in training


class Preprocessing(BaseModel):
    """Everything scoring needs to turn a validated row into the network's inputs, and back to a price."""

    dataset: str
    spec_sha256: str
    features_module: str | None
    numeric: list[NumericStat]
    categorical: list[Vocabulary]
    target: str
    target_transform: Literal["log", "identity"]
    target_mean: float
    target_std: float
    fitted_on: dict  # window and row counts, for lineage
    # The comparable-sales stage these features were built with (None: row-level features only).
    comps: CompsConfig | None = None

    def sha256(self) -> str:
        # Without comps the JSON (and so the hash) is what it was before comps existed.
        return hashlib.sha256(self.model_dump_json(exclude={"comps"} if self.comps is None else None).encode()).hexdigest()

    def derive(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        if self.features_module is None:
            return lf
        return importlib.import_module(self.features_module).derive(lf)

    def features(self, rows: pl.LazyFrame | pl.DataFrame, history: pl.LazyFrame | pl.DataFrame | None = None) -> pl.LazyFrame:
        """Every input column for validated ``rows``: comparable sales from ``history`` (if used), then ``derive``.

        ``history`` is validated sales (the spec's columns); only those dated before each row count.
        """
        return self.derive(with_comps(rows.lazy(), history, self.comps))

    def numeric_matrix(self, df: pl.DataFrame) -> np.ndarray:
        exprs = [
            ((pl.col(s.name).cast(pl.Float64).clip(s.lo, s.hi) - s.mean) / s.std).fill_nan(0.0).fill_null(0.0).alias(s.name)
            for s in self.numeric
        ]
        return df.select(exprs).to_numpy().astype(np.float32, copy=False).reshape(df.height, len(self.numeric))

    def categorical_matrix(self, df: pl.DataFrame) -> np.ndarray:
        exprs = []
        for v in self.categorical:
            mapping = pl.DataFrame({"_v": v.values, "_i": np.arange(1, len(v.values) + 1)})
            exprs.append(
                pl.col(v.name).cast(pl.String).replace_strict(mapping["_v"], mapping["_i"], default=0, return_dtype=pl.Int64)
            )
        if not exprs:
            return np.zeros((df.height, 0), dtype=np.int64)
        return df.select(exprs).to_numpy().astype(np.int64, copy=False)

    def encode_target(self, price: np.ndarray) -> np.ndarray:
        y = np.log(price) if self.target_transform == "log" else price
        return ((y - self.target_mean) / self.target_std).astype(np.float32)

    def decode_target(self, z: np.ndarray) -> np.ndarray:
        y = np.asarray(z, dtype=np.float64) * self.target_std + self.target_mean
        return np.exp(y) if self.target_transform == "log" else y


def fit_preprocessing(features_uri: str, spec: DatasetSpec, fset: FeatureSet, fitted_on: dict) -> Preprocessing:
    """Fit clip bounds, scaling and vocabularies on the training split, in two streaming passes.

    The comps columns of ``fset`` are inputs when the feature table has them (all or none).
    """
    names = pl.scan_parquet(features_uri).collect_schema().names()
    present = [c for c in fset.comp_columns() if c in names]
    if present and len(present) != len(fset.comp_columns()):
        missing = sorted(set(fset.comp_columns()) - set(present))
        raise ValueError(f"{features_uri}: comparable-sales columns missing: {missing}")
    comps_cfg = fset.comps if present else None
    unclipped = (*fset.unclipped, *(comps_cfg.unclipped() if comps_cfg else ()))
    fset = FeatureSet(fset.numeric + [c for c in present if c not in fset.numeric], fset.categorical,
                      fset.target_transform, fset.derive, fset.module, unclipped, comps_cfg)
    train = pl.scan_parquet(features_uri).filter(pl.col(SPLIT) == "train")
    q = train.select(
        *[pl.col(c).cast(pl.Float64).quantile(CLIP_QUANTILES[0]).alias(f"{c}__lo") for c in fset.numeric],
        *[pl.col(c).cast(pl.Float64).quantile(CLIP_QUANTILES[1]).alias(f"{c}__hi") for c in fset.numeric],
    ).collect(engine="streaming").row(0, named=True)
    y = pl.col(spec.target).log() if fset.target_transform == "log" else pl.col(spec.target)
    for c in fset.unclipped:
        q[f"{c}__lo"] = q[f"{c}__hi"] = None
    stats = train.select(
        *[pl.col(c).cast(pl.Float64).clip(q[f"{c}__lo"], q[f"{c}__hi"]).mean().alias(f"{c}__mean") for c in fset.numeric],
        *[pl.col(c).cast(pl.Float64).clip(q[f"{c}__lo"], q[f"{c}__hi"]).std().alias(f"{c}__std") for c in fset.numeric],
        y.mean().alias("__y_mean"), y.std().alias("__y_std"),
    ).collect(engine="streaming").row(0, named=True)
    numeric = []
    for c in fset.numeric:
        std = stats[f"{c}__std"]
        clip = c not in fset.unclipped
        numeric.append(NumericStat(name=c, lo=q[f"{c}__lo"] if clip else None, hi=q[f"{c}__hi"] if clip else None,
                                   # a column without a value in training (a comp with no history yet) is all 0
                                   mean=stats[f"{c}__mean"] if stats[f"{c}__mean"] is not None else 0.0,
                                   std=std if std and math.isfinite(std) and std > 0 else 1.0))
    vocabs = []
    for c in fset.categorical:
        values = train.select(pl.col(c).cast(pl.String).drop_nulls().unique().sort()).collect(engine="streaming")[c]
        vocabs.append(Vocabulary(name=c, values=values.to_list()))
    return Preprocessing(
        dataset=spec.name, spec_sha256=spec.source_hash, features_module=fset.module, numeric=numeric,
        categorical=vocabs, target=spec.target, target_transform=fset.target_transform,
        target_mean=stats["__y_mean"], target_std=stats["__y_std"] or 1.0, fitted_on=fitted_on, comps=comps_cfg,
    )


def features_uri(lake_uri: str, window_start: date, window_end: date) -> str:
    return storage.join(lake_uri, "features", f"window={window_start.isoformat()}_{window_end.isoformat()}", storage.PART_FILE)


def build_features(spec: DatasetSpec, lake_uri: str, window_start: date, window_end: date) -> dict:
    """Features and preprocessing for the window [window_start, window_end). Returns XCom metadata.

    Comparable-sales features read the validated history from ``lookback_days`` before the window's
    start to its end; each row sees only the sales dated before it.
    """
    parts = window_partitions(lake_uri, window_start, window_end)
    if not parts:
        raise ValueError(f"no validated partitions in {lake_uri} for {window_start}..{window_end}: ingest first")
    fset = feature_set(spec)
    # All spec columns travel with the features: a champion whose feature code differs can re-derive.
    keep = [*spec.columns, DS]
    rows = pl.scan_parquet([p["uri"] for p in parts])
    history_parts: list[dict] = []
    if fset.comps is not None:
        history_parts = window_partitions(lake_uri, window_start - timedelta(days=fset.comps.lookback_days()), window_start)
        history = pl.scan_parquet([p["uri"] for p in history_parts + parts])
        rows = with_comps(rows, history, fset.comps)
    lf = (
        rows.pipe(fset.derive)
        .pipe(assign_split, spec, window_end)
        .select(*dict.fromkeys([*keep, *fset.numeric, *fset.comp_columns(), *fset.categorical, SPLIT]))
    )
    out_uri = features_uri(lake_uri, window_start, window_end)
    local = storage.local_path(out_uri)
    if local is None:
        raise NotImplementedError(f"{out_uri}: features are streamed to a local path; set HOMEWORTH_LAKE_URI to one")
    tmp = local + ".tmp"
    fs, _ = storage.resolve(out_uri)
    fs.create_dir(local.rsplit("/", 1)[0], recursive=True)
    lf.sink_parquet(tmp, compression="zstd", row_group_size=65_536)
    fs.move(tmp, local)
    counts = dict(pl.scan_parquet(local).group_by(SPLIT).len().collect().iter_rows())
    for split in SPLITS:
        if not counts.get(split):
            raise ValueError(f"window {window_start}..{window_end}: split {split!r} has no rows (counts {counts}); "
                             "widen the window or change the spec's split")
    fitted_on = {"window_start": window_start.isoformat(), "window_end": window_end.isoformat(),
                 "rows": {s: int(counts.get(s, 0)) for s in SPLITS}}
    prep = fit_preprocessing(local, spec, fset, fitted_on)
    prep_sha = prep.sha256()
    prep_uri = storage.join(lake_uri, "artifacts", "preprocessing", f"{prep_sha}.json")
    storage.write_bytes_atomic(prep_uri, prep.model_dump_json(indent=2).encode())
    manifest = {"features_uri": out_uri, "preprocessing_uri": prep_uri, "partitions": parts,
                "history_partitions": history_parts, **fitted_on}
    storage.write_json_atomic(storage.join(out_uri.rsplit("/", 1)[0], "manifest.json"), manifest)
    return {
        "features_uri": out_uri,
        "features_sha256": storage.file_sha256(out_uri),
        "preprocessing_uri": prep_uri,
        "preprocessing_sha256": prep_sha,
        "window_start": window_start.isoformat(),
        "window_end": window_end.isoformat(),
        "rows": fitted_on["rows"],
        "partitions": len(parts),
        "partitions_sha256": hashlib.sha256(json.dumps([(p["day"], p["sha256"]) for p in parts]).encode()).hexdigest(),
        "history_partitions": len(history_parts),
    }


def load_preprocessing(uri: str) -> Preprocessing:
    return Preprocessing.model_validate_json(storage.read_bytes(uri))
