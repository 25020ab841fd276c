"""A dataset's feature set (which columns are model inputs, their comparable-sales configuration) and
the train / val / test split of a feature table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Callable, Literal

import polars as pl

from tasks.core.spec import DatasetSpec
from tasks.features.comps import CompsConfig

SPLIT = "split"
SPLITS = ("train", "val", "test")
# The comparable-sales modes (``Settings.comps``, ``HOMEWORTH_COMPS``): the module's COMPS as it is, its
# market index only, its area means (no row-to-row joins), or none.
COMPS_MODES = ("full", "market", "area", "off")


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



def feature_set(spec: DatasetSpec, comps_mode: str = "full") -> FeatureSet:
    """The feature set of ``spec``'s feature module (none: the spec's numeric and categorical columns),
    with its comparable sales in ``comps_mode`` (one of :data:`COMPS_MODES`; callers pass ``Settings.comps``)."""
    if comps_mode not in COMPS_MODES:
        raise ValueError(f"comps mode {comps_mode!r}: expected one of {COMPS_MODES}")
    module = spec.features_module_obj()
    if module is None:
        return FeatureSet(spec.by_role("numeric"), spec.by_role("categorical"), spec.target_transform or "identity",
                          lambda lf: lf, None)
    comps = getattr(module, "COMPS", None) if comps_mode != "off" else None
    if comps is not None and comps_mode == "market":
        comps = comps.market_only()
    elif comps is not None and comps_mode == "area":
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
