"""A dataset's feature set (which columns are model inputs, their comparable-sales configuration) and
the train / val / test split of a feature table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Callable, Literal

import polars as pl

from tasks.core.spec import DatasetSpec
from tasks.features.comps import CompsConfig
from tasks.features.preprocessing import null_indicator_columns, with_null_indicators

SPLIT = "split"
SPLITS = ("train", "val", "test")
# The comparable-sales modes (``Settings.comps``, ``HOMEWORTH_COMPS``): the module's COMPS as it is, its
# market index only, its area means (no row-to-row joins), or none.
COMPS_MODES = ("full", "market", "area", "off")


@dataclass(frozen=True)
class FeatureSet:
    numeric: list[str]
    categorical: list[str]
    target_transform: Literal["log", "identity", "auto"]  # auto: chosen from the training targets (fit)
    derive: Callable[[pl.LazyFrame], pl.LazyFrame]
    module: str | None
    unclipped: tuple[str, ...] = ()
    # History-aware comparable-sales features (the module's ``COMPS``); their columns are model inputs
    # too, after ``numeric``, whenever the feature table carries them.
    comps: CompsConfig | None = None
    # Columns whose sum is the target's baseline (the module's ``TARGET_OFFSET``): the model fits the
    # transformed target minus it, e.g. ln(price) - (market index + ln(size)) for King County.
    target_offset: tuple[str, ...] = ()
    # Comps columns kept in the feature table that are not model inputs (market time, which a time split's
    # test rows take past the training range).
    not_inputs: tuple[str, ...] = ()
    # Numeric columns whose missing-value indicators ``derive`` adds (among ``categorical``).
    null_indicators: tuple[str, ...] = ()

    def comp_columns(self) -> list[str]:
        return self.comps.columns() if self.comps is not None else []



def feature_set(spec: DatasetSpec, comps_mode: str = "full") -> FeatureSet:
    """The feature set of ``spec``'s feature module (none: the spec's numeric and categorical columns),
    with its comparable sales in ``comps_mode`` (one of :data:`COMPS_MODES`; callers pass ``Settings.comps``)."""
    if comps_mode not in COMPS_MODES:
        raise ValueError(f"comps mode {comps_mode!r}: expected one of {COMPS_MODES}")
    module = spec.features_module_obj()
    if module is None:
        return default_feature_set(spec, comps_mode)
    comps = _in_mode(getattr(module, "COMPS", None), comps_mode)
    return FeatureSet(list(module.NUMERIC), list(module.CATEGORICAL), module.TARGET_TRANSFORM, module.derive,
                      spec.features_module, tuple(getattr(module, "UNCLIPPED", ())), comps,
                      tuple(getattr(module, "TARGET_OFFSET", ())))


def _in_mode(comps: CompsConfig | None, comps_mode: str) -> CompsConfig | None:
    if comps is None or comps_mode == "off":
        return None
    if comps_mode == "market":
        return comps.market_only()
    return comps.area_only() if comps_mode == "area" else comps


def default_comps(spec: DatasetSpec) -> CompsConfig | None:
    """The comparable-sales configuration of a spec without a feature module, from its roles. Without an
    event time: leave-one-out comparables over the training rows (:mod:`tasks.features.comps.loo`; location
    groups and the k nearest), None with neither a location nor coordinates. With one:

    - the market index of the event time, nowcast to the sale day, and located by the first ``comps:
      location`` column when there is one (its effect removed, as King County's zipcode);
    - trailing windows per ``location`` column (e.g. postcode and suburb);
    - with ``latitude`` and ``longitude``: the 0.01-degree cell's window and the 8 / 24 nearest earlier sales;
    - prices per ``living_area`` when the spec has one that is never empty (``nullable`` false), else per
      sale (a size missing on many rows would leave them without comparables);
    - the item's previous sale with a single ``id`` column;
    - market time (``market_time``: days since a fixed origin, the month as sin / cos, ln size).
    """
    t = spec.event_time
    lat, lon = (spec.comps_columns(m) for m in ("latitude", "longitude"))
    area, locations = spec.comps_columns("living_area"), spec.comps_columns("location")
    size = area[0] if area and not spec.columns[area[0]].accepts_null else None
    xy = bool(lat and lon)
    if t is None:  # a cross-sectional file: the other training rows (tasks.features.comps.loo)
        if not (locations or xy):
            return None
        return CompsConfig(time=None, leave_one_out=True, target=spec.target, size=size, lat=lat[0] if xy else None,
                           long=lon[0] if xy else None, groups=locations, cell_windows_days=[],
                           knn_k=[8, 24] if xy else [])
    ids = spec.id_columns
    return CompsConfig(time=t, target=spec.target, size=size, lat=lat[0] if xy else None, long=lon[0] if xy else None,
                       groups=locations, id=ids[0] if len(ids) == 1 else None, market_nowcast=True,
                       market_location=locations[0] if locations else None, market_time=True,
                       cell_windows_days=[365] if xy else [], knn_k=[8, 24] if xy else [])


def default_feature_set(spec: DatasetSpec, comps_mode: str = "full") -> FeatureSet:
    """The feature set of a spec without a feature module: its numeric and categorical columns, the
    comparable sales of :func:`default_comps` (in ``comps_mode``), and the target relative to the market
    of the sale day (the location-adjusted index nowcast to it, plus ln size with a size), as King County's
    module does. Market time (``<p>sale_day``) is in the table but not a model input: a time split's test
    days lie past the training range, where a network extrapolates it arbitrarily (docs/model.md); the
    market level enters through the offset. Each numeric column the spec marks ``nullable`` gets a
    missing-value indicator among the categorical inputs (``<column>__isnull``: "missing" / "present"). The
    target transform is the spec's, else chosen from the training targets at fit time (``auto``: ln for a
    positive, right-skewed target; ``tasks.features.fit``)."""
    comps = _in_mode(default_comps(spec), comps_mode)
    offset: tuple[str, ...] = ()
    not_inputs: tuple[str, ...] = ()
    if comps is not None and comps.leave_one_out:
        offset = (f"{comps.prefix}ln_size",) if comps.size else ()
    elif comps is not None:
        p = comps.prefix
        offset = (f"{p}mktloc_now" if comps.market_location else f"{p}mkt_now",
                  *((f"{p}ln_size",) if comps.size else ()))
        not_inputs = (f"{p}sale_day",)
    numeric = spec.by_role("numeric")
    nullable = tuple(c for c in numeric if spec.columns[c].accepts_null)
    return FeatureSet(numeric, [*spec.by_role("categorical"), *null_indicator_columns(nullable)],
                      spec.target_transform or "auto", lambda lf: with_null_indicators(lf, nullable), None, comps=comps,
                      target_offset=offset, not_inputs=not_inputs, null_indicators=nullable)


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
