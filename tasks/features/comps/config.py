"""The comparable-sales configuration (:class:`CompsConfig`) and the grid cells every mode shares."""

from __future__ import annotations

import math
from datetime import date

import polars as pl
from pydantic import BaseModel, Field, model_serializer, model_validator

KM_PER_DEGREE = 111.195
Q = "_q"  # row index of the rows being featurised
# Day zero of market time (``CompsConfig.market_time``): fixed, so a feature's value never depends on the data.
MARKET_ORIGIN = date(2000, 1, 1)


class CompsConfig(BaseModel):
    """Which columns the comparable-sales features read and how far they look; saved in the preprocessing."""

    time: str | None  # event-time column (a date); None: leave-one-out comparables (``leave_one_out``)
    target: str  # the sale price
    # The size the price is normalised by (price per square foot); None: ln(price) per sale (a spec whose
    # living area is often empty, e.g. Melbourne's BuildingArea).
    size: str | None
    lat: str | None = None  # None (no coordinates): no grid cells, rings or k nearest
    long: str | None = None
    groups: list[str] = Field(default_factory=list)  # categorical areas with trailing windows (e.g. zipcode)
    id: str | None = None  # the item's id: its own previous sale, when there is one
    prefix: str = "comp_"
    market_windows_days: list[int] = Field(default=[30, 90])
    adjust_window_days: int = Field(default=90, gt=0)  # market index that adjusts past sales to "today"
    group_windows_days: list[int] = Field(default=[90, 365])
    cell_deg: float = Field(default=0.01, gt=0)  # grid cell size (degrees) of the cell windows
    cell_windows_days: list[int] = Field(default=[365])
    knn_k: list[int] = Field(default=[8, 24])
    knn_max_age_days: int = Field(default=365, gt=0)
    knn_cell_deg: float = Field(default=0.01, gt=0)  # candidates: this grid, +-knn_radius_cells around the row
    knn_radius_cells: int = Field(default=2, ge=0)
    chunk_rows: int = Field(default=200_000, gt=0)  # rows featurised per pass (bounds the k-nearest join)
    # Leave the market index unclipped so a model may extrapolate it past the training range. Off: the
    # periodic embeddings and trees cannot extrapolate (an out-of-range value maps to an arbitrary
    # embedding / the last leaf); King County's models take the market level through the target
    # offset instead (TARGET_OFFSET, docs/model.md).
    extrapolate_market: bool = False
    # ``<p>mkt_now``: the market index extrapolated to the row's own day. A trailing w-day mean lags
    # its day by (w + 1) / 2 days; the two shortest windows (30 and 90 days) give the local slope
    # between their centres, and the short one is carried forward by its lag along that slope:
    # mkt_s + (s + 1) / (l - s) * (mkt_s - mkt_l), i.e. mkt_30 + 0.517 (mkt_30 - mkt_90). No fitted
    # weight: the window geometry fixes it.
    market_nowcast: bool = False
    # Area statistics from per-(area, day) sums (HOMEWORTH_COMPS=area, :meth:`area_only`): the group and
    # cell windows are trailing MEANS of the market-adjusted values (``_mean`` columns, not ``_med``),
    # computed from exact sums per area and day, so their cost is linear in the rows and their memory
    # one row per area and day, whatever the history's size (:func:`area_tables`). No k nearest and no
    # previous sale (both are row-to-row joins). With ``ring_cells`` > 0, ``<p>ring_<w>d_mean`` / ``_n``:
    # the same over the (2 ring_cells + 1)^2 cells centred on the row's cell, the k nearest's stand-in.
    # ``<p>mktloc_<w>`` (and ``<p>mktloc_now`` with the nowcast): the market index of sales adjusted for
    # their location. The plain index is a mean over whichever houses sold, so it moves with the mix
    # of places that sell (King County's winter sales are in cheaper zipcodes than its summer ones).
    # Here each sale's ln(price / size) first loses its location's effect: the mean market-adjusted
    # value of that location's (``market_location``, a column such as the zipcode) sales of the
    # trailing ``location_window_days`` before the sale's day; sales of a location without earlier
    # sales are left out. Point in time like the rest: a day's value uses earlier days only.
    market_location: str | None = None
    location_window_days: int = Field(default=365, gt=0)
    aggregated: bool = False
    ring_cells: int = Field(default=0, ge=0)
    ring_windows_days: list[int] = Field(default=[90, 365])
    # Row-level market time of the event time (the default features of a spec without a feature module,
    # ``tasks.features.featureset``): ``<p>sale_day`` (days since MARKET_ORIGIN), ``<p>month_sin`` /
    # ``<p>month_cos`` (the season), and with a size ``<p>ln_size`` (ln of it: the target offset's term).
    market_time: bool = False
    # No event time (a cross-sectional file): the comparables of a row are the other training rows
    # (:mod:`tasks.features.comps.loo`): per location group and the k nearest; no market, cells or id.
    leave_one_out: bool = False

    def lookback_days(self) -> int:
        """How many days of history before the first row any configured feature can reach."""
        if self.leave_one_out:
            return 0
        reach = [*self.market_windows_days, *(self.group_windows_days if self.groups else []),
                 *self.cell_windows_days, *([self.knn_max_age_days] if self.knn_k else []),
                 *(self.ring_windows_days if self.ring_cells else []),
                 *([max(self.market_windows_days, default=0) + self.location_window_days]
                   if self.market_location else [])]
        return max(reach, default=0) + self.adjust_window_days

    def market_only(self) -> "CompsConfig":
        """This configuration with only the market index (no groups, cells, k nearest or previous sale)."""
        return self.model_copy(update={"groups": [], "cell_windows_days": [], "knn_k": [], "id": None,
                                       "aggregated": False, "ring_cells": 0})

    def area_only(self, ring_cells: int = 1) -> "CompsConfig":
        """The market index, and the group, cell and ring windows as means from per-(area, day) sums:
        linear in the rows, memory one row per area and day (``HOMEWORTH_COMPS=area``)."""
        if self.leave_one_out:  # already linear per group; the k nearest are row-to-row
            return self.model_copy(update={"knn_k": []})
        return self.model_copy(update={"knn_k": [], "id": None, "aggregated": True,
                                       "ring_cells": ring_cells if self.lat is not None else 0})

    def is_market_only(self) -> bool:
        return not self.leave_one_out and not (self.groups or self.cell_windows_days or self.knn_k or self.id or self.ring_cells)

    def columns(self) -> list[str]:
        """The feature columns :func:`comps` adds, in order."""
        p = self.prefix
        if self.leave_one_out:
            cols = [f"{p}{g}_{s}" for g in self.groups for s in ("mean", "n")]
            cols += [f"{p}knn{k}_{s}" for k in self.knn_k for s in ("med", "est", "dist_km", "size")]
            return cols + ([f"{p}knn_n"] if self.knn_k else []) + ([f"{p}ln_size"] if self.size else [])
        cols = [f"{p}mkt_{w}" for w in self.market_windows_days]
        if self.market_nowcast:
            cols.append(f"{p}mkt_now")
        if self.market_location:
            cols += [f"{p}mktloc_{w}" for w in self.market_windows_days]
            if self.market_nowcast:
                cols.append(f"{p}mktloc_now")
        stat = "mean" if self.aggregated else "med"
        for g in self.groups:
            cols += [f"{p}{g}_{w}d_{s}" for w in self.group_windows_days for s in (stat, "n")]
            cols.append(f"{p}{g}_days_since")
        cols += [f"{p}cell_{w}d_{s}" for w in self.cell_windows_days for s in (stat, "n")]
        if self.ring_cells:
            cols += [f"{p}ring_{w}d_{s}" for w in self.ring_windows_days for s in ("mean", "n")]
        for k in self.knn_k:
            cols += [f"{p}knn{k}_{s}" for s in ("med", "est", "dist_km", "age_days", "size")]
        if self.knn_k:
            cols.append(f"{p}knn_n")
        if self.id:
            cols += [f"{p}prev_adj", f"{p}prev_est", f"{p}prev_days"]
        return cols + self.time_columns()

    def time_columns(self) -> list[str]:
        """The row-level columns of ``market_time`` (last of :meth:`columns`)."""
        if not self.market_time:
            return []
        p = self.prefix
        return [f"{p}sale_day", f"{p}month_sin", f"{p}month_cos", *([f"{p}ln_size"] if self.size else [])]

    def time_exprs(self) -> list[pl.Expr]:
        """The expressions of :meth:`time_columns` (of the row alone: point in time by construction)."""
        if not self.market_time:
            return []
        p, t = self.prefix, pl.col(self.time)
        angle = t.dt.month().cast(pl.Float64) * (2 * math.pi / 12)
        out = [(t - pl.lit(MARKET_ORIGIN)).dt.total_days().cast(pl.Float64).alias(f"{p}sale_day"),
               angle.sin().alias(f"{p}month_sin"), angle.cos().alias(f"{p}month_cos")]
        if self.size:
            size = pl.col(self.size).cast(pl.Float64)
            out.append(pl.when(size > 0).then(size.log()).alias(f"{p}ln_size"))
        return out

    def with_time(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        """``lf`` with :meth:`time_columns` (unchanged without ``market_time``)."""
        return lf.with_columns(self.time_exprs()) if self.market_time else lf

    def unclipped(self) -> list[str]:
        """Columns the preprocessing never clips: the market index with ``extrapolate_market``, else none."""
        if not self.extrapolate_market:
            return []
        return [c for c in self.columns() if c.startswith((f"{self.prefix}mkt_", f"{self.prefix}mktloc_"))]

    @model_serializer(mode="wrap")
    def _without_new_defaults(self, handler):
        # ``market_time`` and ``leave_one_out`` are left out while off, so a configuration from before they
        # existed (King County's) serialises, and its preprocessing artifact hashes, exactly as it did.
        out = handler(self)
        for name in ("market_time", "leave_one_out"):
            if out.get(name) is False:
                del out[name]
        return out

    @model_validator(mode="after")
    def _two_windows_for_the_nowcast(self) -> "CompsConfig":
        if self.market_nowcast and len(set(self.market_windows_days)) < 2:
            raise ValueError("market_nowcast needs two market windows (market_windows_days)")
        if self.aggregated and (self.knn_k or self.id):
            raise ValueError("aggregated (area) comps have no k nearest (knn_k) and no previous sale (id)")
        if self.ring_cells and not self.aggregated:
            raise ValueError("ring_cells needs aggregated (area) comps")
        if self.time is None and not self.leave_one_out:
            raise ValueError("comparable sales without an event time (time) are leave_one_out")
        if self.leave_one_out and (self.market_nowcast or self.market_location or self.cell_windows_days or self.id
                                   or self.aggregated or self.market_time or self.ring_cells):
            raise ValueError("leave_one_out comps have location groups and k nearest only (no market, cells, id, "
                             "area mode or market time)")
        if (self.lat is None or self.long is None) and (self.cell_windows_days or self.knn_k or self.ring_cells):
            raise ValueError("grid cells, rings and k nearest (cell_windows_days, ring_cells, knn_k) need lat and long")
        return self

    def market_columns(self) -> list[pl.Expr]:
        """The market columns from the per-day ``_mkt<w>`` (and ``_loc<w>``) means (see :func:`_market`)."""
        p = self.prefix
        cols = []
        for src, name in (("_mkt", "mkt"), *((("_loc", "mktloc"),) if self.market_location else ())):
            cols += [pl.col(f"{src}{w}").alias(f"{p}{name}_{w}") for w in self.market_windows_days]
            if self.market_nowcast:
                short, long_ = sorted(set(self.market_windows_days))[:2]
                ms, ml = pl.col(f"{src}{short}"), pl.col(f"{src}{long_}")
                cols.append((ms + (short + 1) / (long_ - short) * (ms - ml)).alias(f"{p}{name}_now"))
        return cols

    def input_columns(self, with_target: bool) -> list[str]:
        cols = [self.time, self.size, self.lat, self.long, *self.groups,
                *([self.market_location] if self.market_location else []), *([self.id] if self.id else [])]
        cols = [c for c in dict.fromkeys(cols) if c is not None]
        return [*cols, self.target] if with_target else cols



def _cells(lat: pl.Expr, long: pl.Expr, deg: float) -> list[pl.Expr]:
    """The grid cell (``_ci``, ``_cj``) of a latitude and longitude, on a grid of ``deg`` degrees."""
    return [(lat / deg).floor().cast(pl.Int32).alias("_ci"), (long / deg).floor().cast(pl.Int32).alias("_cj")]
