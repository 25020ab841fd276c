"""The comparable-sales configuration (:class:`CompsConfig`) and the grid cells every mode shares."""

from __future__ import annotations

import polars as pl
from pydantic import BaseModel, Field, model_validator

KM_PER_DEGREE = 111.195
Q = "_q"  # row index of the rows being featurised


class CompsConfig(BaseModel):
    """Which columns the comparable-sales features read and how far they look; saved in the preprocessing."""

    time: str  # event-time column (a date)
    target: str  # the sale price
    size: str  # the size the price is normalised by (price per square foot)
    lat: str
    long: str
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

    def lookback_days(self) -> int:
        """How many days of history before the first row any configured feature can reach."""
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
        return self.model_copy(update={"knn_k": [], "id": None, "aggregated": True, "ring_cells": ring_cells})

    def is_market_only(self) -> bool:
        return not (self.groups or self.cell_windows_days or self.knn_k or self.id or self.ring_cells)

    def columns(self) -> list[str]:
        """The feature columns :func:`comps` adds, in order."""
        p = self.prefix
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
        return cols

    def unclipped(self) -> list[str]:
        """Columns the preprocessing never clips: the market index with ``extrapolate_market``, else none."""
        if not self.extrapolate_market:
            return []
        return [c for c in self.columns() if c.startswith((f"{self.prefix}mkt_", f"{self.prefix}mktloc_"))]

    @model_validator(mode="after")
    def _two_windows_for_the_nowcast(self) -> "CompsConfig":
        if self.market_nowcast and len(set(self.market_windows_days)) < 2:
            raise ValueError("market_nowcast needs two market windows (market_windows_days)")
        if self.aggregated and (self.knn_k or self.id):
            raise ValueError("aggregated (area) comps have no k nearest (knn_k) and no previous sale (id)")
        if self.ring_cells and not self.aggregated:
            raise ValueError("ring_cells needs aggregated (area) comps")
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
        cols = list(dict.fromkeys(cols))
        return [*cols, self.target] if with_target else cols



def _cells(lat: pl.Expr, long: pl.Expr, deg: float) -> list[pl.Expr]:
    """The grid cell (``_ci``, ``_cj``) of a latitude and longitude, on a grid of ``deg`` degrees."""
    return [(lat / deg).floor().cast(pl.Int32).alias("_ci"), (long / deg).floor().cast(pl.Int32).alias("_cj")]
