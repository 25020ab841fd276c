"""Comparable-sales features: for each row, statistics of EARLIER sales (point in time by construction).

A house's own row says what it is; what it is worth depends on what similar houses nearby sold for
recently. ``comps(history, rows, cfg)`` computes that from a history of validated sales:

- **market index** ``<p>mkt_<w>``: the county-wide mean of ln(price / size) over the trailing ``w``
  days, the day itself excluded; with ``market_nowcast``, ``<p>mkt_now``: the shortest window's
  index carried forward to the row's day along the slope between the two shortest windows; with
  ``market_location``, ``<p>mktloc_<w>`` / ``<p>mktloc_now``: the same of each sale's value net of
  its location's (e.g. zipcode's) effect over the trailing ``location_window_days``;
- **group windows** ``<p><group>_<w>d_med`` / ``_n`` (e.g. per zipcode): median market-adjusted
  ln(price / size) and count of the group's sales in the trailing ``w`` days, and
  ``<p><group>_days_since``, days since the group's last earlier sale;
- **grid cell windows** ``<p>cell_<w>d_med`` / ``_n``: the same per small lat/long cell;
- **k nearest earlier sales** by distance ``<p>knn<k>_*``: median market-adjusted ln(price / size),
  mean distance (km), mean age (days), mean ln(size) of the comps, and an estimate of the row's
  ln(price) (``_est`` = that median + today's market index + the row's ln(size)); ``<p>knn_n`` is how
  many were found (at most the largest k, within ``knn_max_age_days`` and ``knn_radius_cells``);
- **the same item's previous sale** ``<p>prev_*`` (when the spec has an id): its market-adjusted
  ln(price), days since, and the implied estimate at today's market.

"Market-adjusted" is ln(price / size) of a past sale minus the market index on that sale's day
(window ``adjust_window_days``), so a comp sold 11 months ago counts as it would be priced today
once the row's own market index is added back.

**Point-in-time rule.** A history sale contributes to a row's features only when its date is
strictly before the row's date (a sale never sees itself, nor anything sold the same day or later);
the market index of a day uses only sales of earlier days, so adjusting a past sale by it looks no
further ahead than that sale's own day. The same function computes the features for training
(history = the validated lake up to the window's end) and for scoring a house today (history = the
validated lake, whatever its end: only sales before the row's date count). ``tests/test_comps.py``
proves it by changing the prices of the row itself and of every later sale.

**Scale.** Everything is a Polars lazy plan without Python loops over rows: the market index is a
daily group_by plus rolling sums over days (memory: one row per day); group and cell windows are
rolling medians over each group's rows sorted by date (cost ~ rows x sales in a window); the k
nearest are an equi-join on neighbouring grid cells, filtered by date and ranked by distance (memory
~ rows x candidates per neighbourhood, so :func:`comps` processes rows in date-ordered chunks of
``chunk_rows``); the previous sale is a ``join_asof``. See ``docs/model.md``. For histories of many
millions of sales, :meth:`CompsConfig.area_only` (``HOMEWORTH_COMPS=area``) keeps what decomposes into
sums per area and day: trailing means (not medians) per group, cell and ring of cells, no k nearest
and no previous sale (:func:`area_tables`, :func:`area_comps`; linear in rows, memory bounded by areas
x days; ``docs/out-of-core.md``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import polars as pl
from pydantic import BaseModel, Field, model_validator

log = logging.getLogger(__name__)

KM_PER_DEGREE = 111.195
Q = "_q"  # row index of the rows being featurised
MAX_CELL_GRID = 1 << 24  # cells in the bounding box of an area table's cells: a dense lookup grid up to this


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


# ---------------------------------------------------------------------------------------------
# The pieces


def _history_values(history: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    price, size = pl.col(cfg.target).cast(pl.Float64), pl.col(cfg.size).cast(pl.Float64)
    return (
        history.select(*dict.fromkeys(cfg.input_columns(with_target=True)))
        .filter((price > 0) & (size > 0) & pl.col(cfg.time).is_not_null() & pl.col(cfg.lat).is_not_null()
                & pl.col(cfg.long).is_not_null())
        .with_columns((price / size).log().alias("_lnppsf"), price.log().alias("_lnp"), size.log().alias("_lns"))
    )


def _location_keys(cfg: CompsConfig) -> list[str]:
    """The keys, beside the day, of the sums the market table is computed from."""
    return [cfg.market_location] if cfg.market_location else []


def _market(hist: pl.LazyFrame, days: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    """One row per day: trailing means of ln(price / size) over sales of EARLIER days (and, with
    ``market_location``, of the location-adjusted values), :func:`_market_from_sums`."""
    return _market_from_sums(_sums(hist, _location_keys(cfg), cfg), days, cfg)


def _market_from_sums(sums: pl.LazyFrame, days: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    """The market table (``_mkt<w>``, and with ``market_location`` the location-adjusted index
    ``_loc<w>``) for every day of ``days``, from the exact sums and counts of ln(price / size) per
    day, or per (``market_location``, day) (:func:`_sums`).

    The sums are 128-bit decimals (to 1e-15), exact, rounded to a float once per day: a float sum
    depends on the order in which the streaming engine's threads add a day's rows, so a rerun could
    change the market index (and every feature built on it) in its last digits.

    A location's effect on day d is the mean of its sales' market-adjusted values (ln(price / size)
    minus the ``adjust_window_days`` index of their day) over days in [d - location_window_days, d);
    a day's location-adjusted sum is, over its locations with an effect, sum - count x effect (one
    effect per location and day), rounded to 1e-15 and added exactly, so it does not depend on order.
    """
    t, g, w = cfg.time, cfg.market_location, cfg.location_window_days
    daily = sums.group_by(t).agg(pl.col("_s").sum().cast(pl.Float64), pl.col("_n").sum().cast(pl.Float64))
    market = _market_from_daily(daily, days, cfg)
    if not g:
        return market
    adj = market.select(t, pl.col(f"_mkt{cfg.adjust_window_days}").alias("_mkt_adj"))
    known = pl.col("_mkt_adj").is_not_null()
    per_day = (sums.join(adj, on=t, how="left")
               .with_columns(pl.col("_s").cast(pl.Float64).alias("_sf"),
                             pl.when(known).then(pl.col("_s").cast(pl.Float64) - pl.col("_n") * pl.col("_mkt_adj"))
                             .otherwise(0.0).alias("_a"),
                             pl.when(known).then(pl.col("_n")).otherwise(0).alias("_na"))
               .sort(g, t))
    a = pl.col("_a").rolling_sum_by(t, window_size=f"{w}d", closed="left").over(g)
    n = pl.col("_na").rolling_sum_by(t, window_size=f"{w}d", closed="left").over(g)
    effect = pl.when(n > 0).then(a / n).otherwise(None)
    loc_daily = (per_day.with_columns(effect.alias("_z")).filter(pl.col("_z").is_not_null())
                 .group_by(t).agg((pl.col("_sf") - pl.col("_n") * pl.col("_z")).cast(pl.Decimal(38, 15)).sum()
                                  .cast(pl.Float64).alias("_s"), pl.col("_n").sum().cast(pl.Float64)))
    loc = (_market_from_daily(loc_daily, days, cfg)
           .select(t, *[pl.col(f"_mkt{w}").alias(f"_loc{w}") for w in cfg.market_windows_days]))
    return market.join(loc, on=t, how="left")


def _market_from_daily(daily: pl.LazyFrame, days: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    t = cfg.time
    grid = days.unique().join(daily, on=t, how="left").with_columns(pl.col("_s", "_n").fill_null(0.0)).sort(t)
    out = []
    for w in sorted({*cfg.market_windows_days, cfg.adjust_window_days}):
        s = pl.col("_s").rolling_sum_by(t, window_size=f"{w}d", closed="left")
        n = pl.col("_n").rolling_sum_by(t, window_size=f"{w}d", closed="left")
        out.append(pl.when(n > 0).then(s / n).otherwise(None).alias(f"_mkt{w}"))
    return grid.with_columns(out).drop("_s", "_n")


def _windows(hist: pl.LazyFrame, rows: pl.LazyFrame, keys: list[str], windows: list[int], name: str,
             cfg: CompsConfig) -> pl.LazyFrame:
    """Per group: rolling median and count of market-adjusted values of earlier days' sales."""
    t, p = cfg.time, cfg.prefix
    q = rows.select(Q, t, *keys).with_columns(pl.lit(None, pl.Float64).alias("_adj"))
    # Only the groups the rows are in (scoring a few houses reads a few groups' history).
    h = (hist.select(pl.lit(None, pl.UInt32).alias(Q), t, *keys, "_adj")
         .join(q.select(keys).unique(), on=keys, how="semi"))
    u = pl.concat([h, q], how="vertical_relaxed").sort([*keys, t])
    aggs = []
    for w in windows:
        aggs.append(pl.col("_adj").rolling_median_by(t, window_size=f"{w}d", closed="left").over(keys)
                    .alias(f"{p}{name}_{w}d_med"))
        aggs.append(pl.col("_adj").is_not_null().cast(pl.Int32).rolling_sum_by(t, window_size=f"{w}d", closed="left")
                    .over(keys).fill_null(0).alias(f"{p}{name}_{w}d_n"))
    return u.with_columns(aggs).filter(pl.col(Q).is_not_null()).drop(t, *keys, "_adj")


def _days_since(hist: pl.LazyFrame, rows: pl.LazyFrame, key: str, cfg: CompsConfig) -> pl.LazyFrame:
    t = cfg.time
    q = rows.select(Q, key, t).sort(t)
    last = hist.join(q.select(key).unique(), on=key, how="semi").select(key, pl.col(t).alias("_tl")).unique().sort("_tl")
    return (q.join_asof(last, left_on=t, right_on="_tl", by=key, strategy="backward", allow_exact_matches=False, check_sortedness=False)
            .select(Q, (pl.col(t) - pl.col("_tl")).dt.total_days().cast(pl.Float64).alias(f"{cfg.prefix}{key}_days_since")))


def _cells(lat: pl.Expr, long: pl.Expr, deg: float) -> list[pl.Expr]:
    return [(lat / deg).floor().cast(pl.Int32).alias("_ci"), (long / deg).floor().cast(pl.Int32).alias("_cj")]


def _knn(hist: pl.LazyFrame, rows: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    """The k nearest sales of earlier days (within the neighbouring grid cells and the maximum age)."""
    t, p, r, kmax = cfg.time, cfg.prefix, cfg.knn_radius_cells, max(cfg.knn_k)
    offsets = pl.LazyFrame({"_di": [i for i in range(-r, r + 1) for _ in range(-r, r + 1)],
                            "_dj": [j for _ in range(-r, r + 1) for j in range(-r, r + 1)]},
                           schema={"_di": pl.Int32, "_dj": pl.Int32})
    q = (rows.select(Q, pl.col(t).alias("_tq"), pl.col(cfg.lat).alias("_latq"), pl.col(cfg.long).alias("_lonq"),
                     *_cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.knn_cell_deg))
         .join(offsets, how="cross")
         .with_columns(pl.col("_ci") + pl.col("_di"), pl.col("_cj") + pl.col("_dj")).drop("_di", "_dj"))
    h = hist.select(t, cfg.lat, cfg.long, "_adj", "_lns", *_cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.knn_cell_deg))
    dy = pl.col(cfg.lat) - pl.col("_latq")
    dx = (pl.col(cfg.long) - pl.col("_lonq")) * (pl.col("_latq") * (3.141592653589793 / 180)).cos()
    cand = (
        q.join(h, on=["_ci", "_cj"], how="inner")
        .filter((pl.col(t) < pl.col("_tq")) & (pl.col(t) >= pl.col("_tq") - timedelta(days=cfg.knn_max_age_days)))
        .with_columns((KM_PER_DEGREE * (dx * dx + dy * dy).sqrt()).alias("_dist"),
                      (pl.col("_tq") - pl.col(t)).dt.total_days().cast(pl.Float64).alias("_age"))
        .select(Q, "_dist", "_age", "_adj", "_lns")
        # ties in distance are broken by recency, then by value: the choice never depends on row order
        .sort([Q, "_dist", "_age", "_adj", "_lns"])
        .with_columns(pl.int_range(pl.len()).over(Q).alias("_rank"))
        .filter(pl.col("_rank") < kmax)
    )
    aggs = []
    for k in cfg.knn_k:
        top = pl.col("_rank") < k
        aggs += [pl.col("_adj").filter(top).median().alias(f"{p}knn{k}_med"),
                 pl.col("_dist").filter(top).mean().alias(f"{p}knn{k}_dist_km"),
                 pl.col("_age").filter(top).mean().alias(f"{p}knn{k}_age_days"),
                 pl.col("_lns").filter(top).mean().alias(f"{p}knn{k}_size")]
    return cand.group_by(Q).agg(*aggs, pl.len().alias(f"{p}knn_n"))


def _previous(hist: pl.LazyFrame, rows: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    t, p = cfg.time, cfg.prefix
    q = rows.select(Q, cfg.id, t).sort(t)
    h = (hist.join(q.select(cfg.id).unique(), on=cfg.id, how="semi")
         .select(cfg.id, pl.col(t).alias("_tp"), (pl.col("_lnp") - pl.col("_mkt_adj")).alias(f"{p}prev_adj"))
         .sort("_tp"))
    return (q.join_asof(h, left_on=t, right_on="_tp", by=cfg.id, strategy="backward", allow_exact_matches=False, check_sortedness=False)
            .select(Q, f"{p}prev_adj", (pl.col(t) - pl.col("_tp")).dt.total_days().cast(pl.Float64).alias(f"{p}prev_days")))


# ---------------------------------------------------------------------------------------------
# The entry point


def comps_lazy(history: pl.LazyFrame, rows: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    """``rows`` (any columns, at least :meth:`CompsConfig.input_columns`) with the comp columns added.

    Row order is kept. A row's features use only the history sales dated strictly before it.
    """
    t, p = cfg.time, cfg.prefix
    rows = rows.with_row_index(Q)
    keys = rows.select(Q, *dict.fromkeys(cfg.input_columns(with_target=False)))
    raw = _history_values(history, cfg)
    market = _market(raw, pl.concat([raw.select(t), keys.select(t)]), cfg)
    adj = f"_mkt{cfg.adjust_window_days}"
    # Each past sale with its market index of that day; sales before any index exists have no _adj.
    raw = (raw.join(market.select(t, pl.col(adj).alias("_mkt_adj")), on=t, how="left")
           .with_columns((pl.col("_lnppsf") - pl.col("_mkt_adj")).alias("_adj")))
    hist = raw.filter(pl.col("_adj").is_not_null())
    out = rows.join(market.select(t, *cfg.market_columns(), pl.col(adj).alias("_mkt_row")), on=t, how="left",
                    maintain_order="left")
    pieces: list[pl.LazyFrame] = []
    for g in cfg.groups:
        pieces.append(_windows(hist, keys, [g], cfg.group_windows_days, g, cfg))
        pieces.append(_days_since(raw, keys, g, cfg))
    if cfg.cell_windows_days:
        cell = _cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.cell_deg)
        pieces.append(_windows(hist.with_columns(cell), keys.with_columns(cell), ["_ci", "_cj"],
                               cfg.cell_windows_days, "cell", cfg))
    if cfg.knn_k:
        pieces.append(_knn(hist, keys, cfg))
    if cfg.id:
        pieces.append(_previous(raw, keys, cfg))
    for piece in pieces:
        out = out.join(piece, on=Q, how="left", maintain_order="left")
    lns = pl.col(cfg.size).cast(pl.Float64).log()
    derived = [(pl.col(f"{p}knn{k}_med") + pl.col("_mkt_row") + lns).alias(f"{p}knn{k}_est") for k in cfg.knn_k]
    if cfg.knn_k:
        derived.append(pl.col(f"{p}knn_n").fill_null(0))
    if cfg.id:
        derived.append((pl.col(f"{p}prev_adj") + pl.col("_mkt_row")).alias(f"{p}prev_est"))
    out = out.with_columns(derived).sort(Q)
    original = [c for c in rows.collect_schema().names() if c != Q and c not in cfg.columns()]
    return out.select(*original, *cfg.columns())


def market_index(history: pl.LazyFrame, days: pl.LazyFrame, cfg: CompsConfig) -> pl.DataFrame:
    """The market index columns ``<p>mkt_<w>`` per day, for every day of ``days[cfg.time]`` and of the history.

    The same values as :func:`comps` gives a row of that day (sales of earlier days only), from one
    streaming aggregation of the history by day: memory is one row per day whatever the history's
    size, so ``build_features`` joins it to any number of rows in a single streaming pass (the
    features of a market-only configuration, :meth:`CompsConfig.market_only`).
    """
    t = cfg.time
    # Two streaming aggregations, each one row per day (per location and day with
    # ``market_location``; the history is never held whole); then the trailing windows over those rows.
    sums = _sums(_history_values(history, cfg), _location_keys(cfg), cfg).collect(engine="streaming")
    row_days = days.select(t).unique().collect(engine="streaming")
    grid = pl.concat([sums.select(t).unique(), row_days]).lazy()
    market = _market_from_sums(sums.lazy(), grid, cfg)
    return market.select(t, *cfg.market_columns()).collect().sort(t)


@dataclass
class CellIndex:
    """Where a cell's values are in the cell arrays of an :class:`AreaTable`: its position in the
    sorted packed keys (``_ci * 2**32 + _cj``), read from a dense grid over the cells' bounding box
    (one gather per row) unless the box has more than :data:`MAX_CELL_GRID` cells (then a join)."""

    keys: np.ndarray
    grid: pl.Series | None = None  # (box rows x box columns + 1) positions, null: no such cell (and the last)
    ci0: int = 0
    cj0: int = 0
    ni: int = 0
    nj: int = 0

    @classmethod
    def of(cls, keys: np.ndarray) -> "CellIndex":
        if not keys.size:
            return cls(keys)
        low = keys % 2**32
        cj = low - (low >= 2**31) * 2**32  # the key is ci * 2**32 + cj, cj signed
        ci = (keys - cj) // 2**32
        ci0, cj0 = int(ci.min()), int(cj.min())
        ni, nj = int(ci.max()) - ci0 + 1, int(cj.max()) - cj0 + 1
        if ni * nj > MAX_CELL_GRID:
            return cls(keys)
        grid = np.full(ni * nj + 1, -1, np.int64)
        grid[(ci - ci0) * nj + (cj - cj0)] = np.arange(keys.size)
        return cls(keys, pl.Series("_cell", grid).replace(-1, None), ci0, cj0, ni, nj)

    def position(self, rows: pl.LazyFrame, ci: pl.Expr, cj: pl.Expr) -> pl.LazyFrame:
        """``rows`` with ``_cell``: the position of the cell (``ci``, ``cj``), null when unknown or null."""
        if not self.keys.size:
            return rows.with_columns(pl.lit(None, pl.Int64).alias("_cell"))
        if self.grid is None:
            known = pl.DataFrame({"_ckey": self.keys, "_cell": np.arange(self.keys.size)}).lazy()
            key = ci.cast(pl.Int64) * 2**32 + cj.cast(pl.Int64)
            return (rows.with_columns(key.alias("_ckey")).join(known, on="_ckey", how="left", maintain_order="left")
                    .drop("_ckey"))
        i, j = ci.cast(pl.Int64) - self.ci0, cj.cast(pl.Int64) - self.cj0
        inside = (i >= 0) & (i < self.ni) & (j >= 0) & (j < self.nj)
        # Outside the box or without a location: the grid's last element (null).
        at = pl.when(inside).then(i * self.nj + j).otherwise(self.ni * self.nj)
        return rows.with_columns(pl.lit(self.grid).gather(at).alias("_cell"))


@dataclass
class AreaTable:
    """What :func:`area_comps` looks up per row: every column of an aggregated configuration as a dense
    array over (area, day), for each day from the rows' first to their last (areas x days values,
    whatever the number of rows). A row's values are at ``(day - day0) * n_areas + area``: a day's values
    are adjacent, and a lake partition's rows are mostly of one day, so its lookups stay in cache. Each array
    ends with one more element, the value of a row whose key or day is unknown (null, or 0 for a count)."""

    day0: int  # the first day, in days since 1970-01-01
    n_days: int
    market: dict[str, pl.Series]  # per day: the market columns
    # Per group column: its values in id order, and per column the (days x values) array.
    groups: dict[str, tuple[pl.DataFrame, dict[str, pl.Series]]]
    # The cells of the history and their ring neighbours, and per column the (days x cells) array;
    # None without cell or ring windows.
    cells: tuple[CellIndex, dict[str, pl.Series]] | None


def _sums(hist: pl.LazyFrame, keys: list[str], cfg: CompsConfig) -> pl.LazyFrame:
    """Exact sum (128-bit decimal) and count of ln(price / size) per ``keys`` and day."""
    return hist.group_by(*keys, cfg.time).agg(pl.col("_lnppsf").cast(pl.Decimal(38, 15)).sum().alias("_s"),
                                              pl.len().cast(pl.Int64).alias("_n"))


def _resum(df: pl.DataFrame, keys: list[str], t: str) -> pl.DataFrame:
    return df.group_by(*keys, t).agg(pl.col("_s").sum(), pl.col("_n").sum())


def _cell_key(ci: np.ndarray, cj: np.ndarray) -> np.ndarray:
    return ci.astype(np.int64) * 2**32 + cj.astype(np.int64)


def _daily(sums: pl.DataFrame, k: np.ndarray, day0: int, t: str, n_keys: int, n_days: int,
           mkt_adj: np.ndarray, days_since: bool) -> dict[str, np.ndarray]:
    """((days + 1) x keys) arrays of one part's daily values, row j + 1 holding day j (row 0: before
    the first day): ``_a`` the market-adjusted sum (exact sum, rounded once, minus count x the day's
    index; 0 where the day has no index), ``_na`` its count (integers), and with ``days_since``
    ``_has`` whether the key had a sale that day. (key, day) pairs are unique: assignment, no
    summation, so the result does not depend on row order."""
    d = sums[t].cast(pl.Int32).to_numpy().astype(np.int64) - day0
    s, n = sums["_s"].cast(pl.Float64).to_numpy(), sums["_n"].to_numpy()
    m = mkt_adj[d]
    known = ~np.isnan(m)
    flat = (d + 1) * n_keys + k
    out = {"_a": np.zeros((n_days + 1) * n_keys), "_na": np.zeros((n_days + 1) * n_keys, np.int64)}
    out["_a"][flat[known]] = s[known] - n[known] * m[known]
    out["_na"][flat[known]] = n[known]
    if days_since:
        out["_has"] = np.zeros((n_days + 1) * n_keys, bool)
        out["_has"][flat] = n > 0
    return {c: v.reshape(n_days + 1, n_keys) for c, v in out.items()}


def _flat(shape: tuple[int, int], dtype: type, unknown: float) -> tuple[np.ndarray, np.ndarray]:
    """A flat array of ``shape``'s size + 1 with the unknown key's value last, and its 2-D view."""
    buf = np.empty(shape[0] * shape[1] + 1, dtype)
    buf[-1] = unknown
    return buf, buf[:-1].reshape(shape)


def _windows_dense(daily: dict[str, np.ndarray], windows: list[int], name: str, days_since: bool, first: int,
                   p: str) -> dict[str, pl.Series]:
    """From :func:`_daily`'s arrays, per (day, key) for the days from ``first`` on: the trailing-window
    mean and count of the market-adjusted values of earlier days' sales ([d - w, d), the day itself
    excluded; differences of prefix sums), and the days since the key's last earlier sale; flattened day
    by day (a day's values of every key are adjacent: a day's rows read a small part of each array),
    with the value of an unknown key or day last (null, or 0 for a count)."""
    n_days, n_keys = daily["_a"].shape[0] - 1, daily["_a"].shape[1]
    cum = {c: np.cumsum(daily[c][:-1], axis=0) for c in ("_a", "_na")}  # [j]: sum over the days before day j
    j = np.arange(first, n_days)
    shape = (n_days - first, n_keys)
    out = {}
    for w in windows:
        # [lo]: the prefix at max(j - w, 0); a slice (a view) when every j - w >= 0, i.e. always
        # when ``first`` is the lookback (build_features, scoring).
        lo = slice(first - w, n_days - w) if first >= w else np.maximum(j - w, 0)
        n_w = cum["_na"][first:] - cum["_na"][lo]
        mean, mean2 = _flat(shape, np.float64, np.nan)
        mean2[...] = np.nan
        np.divide(cum["_a"][first:] - cum["_a"][lo], n_w, out=mean2, where=n_w > 0)
        count, count2 = _flat(shape, np.int32, 0)
        count2[...] = n_w
        out[f"{p}{name}_{w}d_mean"] = pl.Series(mean, nan_to_null=True)
        out[f"{p}{name}_{w}d_n"] = pl.Series(count)
    if days_since:
        last = np.maximum.accumulate(np.where(daily["_has"][1:], np.arange(n_days)[:, None], -1), axis=0)
        before = (last[first - 1:-1] if first > 0 else np.concatenate([np.full((1, n_keys), -1), last[:-1]]))
        since, since2 = _flat(shape, np.float64, np.nan)
        since2[...] = np.where(before >= 0, j[:, None] - before, np.nan)
        out[f"{p}{name}_days_since"] = pl.Series(since, nan_to_null=True)
    return out


def area_tables(history: pl.LazyFrame, rows: pl.LazyFrame, cfg: CompsConfig,
                span: tuple[date, date] | None = None) -> AreaTable:
    """The table of an aggregated configuration (:meth:`CompsConfig.area_only`) for ``rows`` (only
    their time column is read: its first and last day; ``span``, when the caller knows them, e.g.
    from the Parquet footers, and then the rows are not read at all).

    One streaming aggregation of the history (from ``lookback_days`` before the rows' first day to
    their last), exact decimal sums and counts of ln(price / size) per (groups, location, cell, day).
    Everything else is computed from that table, whose size is bounded by areas x days, not by rows:
    the county market index per day (the same values as :func:`market_index`), then per group, per
    cell and per ring of cells around a cell the trailing windows as prefix-sum differences over dense
    days x areas NumPy arrays, for every day of the rows. The ring's daily sums are the cells' daily
    values times the cells' adjacency (a sparse product: a fixed summation order, so they do not
    depend on the history's row order either). Memory ~ (lookback + rows' days) x areas x 8 bytes per
    array, about 20 arrays at a time: ~0.3 GB for 365 days and 5,400 cells, whatever the rows.
    """
    t, p = cfg.time, cfg.prefix
    if span is None:
        first_last = rows.select(pl.col(t).min().alias("lo"), pl.col(t).max().alias("hi")).collect(engine="streaming")
        span = first_last["lo"][0], first_last["hi"][0]
    lo, hi = span
    with_cells = bool(cfg.cell_windows_days or cfg.ring_cells)
    cell_cols = _cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.cell_deg) if with_cells else []
    fine_keys = list(dict.fromkeys([*cfg.groups, *_location_keys(cfg), *(["_ci", "_cj"] if with_cells else [])]))
    if lo is None:  # no row has a day: nothing to look up (every column null, counts 0)
        return AreaTable(0, 0, {}, {}, None)
    reach = lo - timedelta(days=cfg.lookback_days())
    # Sales from the lookback before the first row to the day before the last: nothing else reaches a row.
    hist = (_history_values(history, cfg).filter((pl.col(t) >= reach) & (pl.col(t) < hi))
            .with_columns(cell_cols))
    fine = _sums(hist, fine_keys, cfg).collect(engine="streaming")
    # The day axis: from the first sale within reach (nothing before it adds to a sum) to the last row.
    start = min(lo, max(reach, fine[t].min())) if fine.height else lo
    day0, first = (start - date(1970, 1, 1)).days, (lo - start).days
    n_days = (hi - start).days + 1
    resummed: dict[tuple[str, ...], pl.DataFrame] = {}

    def resum(keys: list[str]) -> pl.DataFrame:  # exact sums per (keys, day), each computed once
        if tuple(keys) not in resummed:
            resummed[tuple(keys)] = _resum(fine, keys, t)
        return resummed[tuple(keys)]

    grid = pl.DataFrame({t: pl.date_range(start, hi, "1d", eager=True)}).lazy()
    market = _market_from_sums(resum(_location_keys(cfg)).lazy(), grid, cfg).collect().sort(t)
    mkt_adj = market[f"_mkt{cfg.adjust_window_days}"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    market = market.select(cfg.market_columns()).slice(first)
    market_arrays = {c: pl.concat([market[c].cast(pl.Float64), pl.Series([None], dtype=pl.Float64)]).rechunk()
                     for c in market.columns}  # the unknown day's value last

    groups = {}
    for g in cfg.groups:
        sums = resum([g]).filter(pl.col(g).is_not_null())
        values = sums.select(g).unique().sort(g).with_row_index("_k")
        k = sums.join(values, on=g, how="left", maintain_order="left")["_k"].to_numpy().astype(np.int64)
        daily = _daily(sums, k, day0, t, values.height, n_days, mkt_adj, True)
        groups[g] = (values, _windows_dense(daily, cfg.group_windows_days, g, True, first, p))
    cells = None
    if with_cells:
        sums = resum(["_ci", "_cj"]).drop_nulls(["_ci", "_cj"])
        own = _cell_key(sums["_ci"].to_numpy(), sums["_cj"].to_numpy())
        r = cfg.ring_cells
        offsets = [di * 2**32 + dj for di in range(-r, r + 1) for dj in range(-r, r + 1)]
        seen = np.unique(own)
        keys = np.unique(np.concatenate([seen + o for o in offsets]))
        daily = _daily(sums, np.searchsorted(keys, own), day0, t, keys.size, n_days, mkt_adj, False)
        arrays = (_windows_dense(daily, cfg.cell_windows_days, "cell", False, first, p)
                  if cfg.cell_windows_days else {})
        if r:
            # The ring's daily values: daily (days x cells) times the cells' adjacency (cells x cells, a
            # 1 where a cell is in another's ring), a sparse product whose sums run in a fixed order,
            # so they do not depend on the history's order.
            import scipy.sparse as sp

            src, dst = [], []
            for o in offsets:
                pos = np.searchsorted(keys, keys + o)
                hit = pos < keys.size
                hit[hit] = keys[pos[hit]] == keys[hit] + o
                src.append(pos[hit])
                dst.append(np.flatnonzero(hit))
            src, dst = np.concatenate(src), np.concatenate(dst)
            adj = sp.csc_matrix((np.ones(src.size, np.int64), (src, dst)), shape=(keys.size, keys.size))
            ring = {c: np.ascontiguousarray(v @ adj) for c, v in daily.items()}
            arrays |= _windows_dense(ring, cfg.ring_windows_days, "ring", False, first, p)
        cells = (CellIndex.of(keys), arrays)
    return AreaTable(day0 + first, n_days - first, market_arrays, groups, cells)


def area_comps(rows: pl.LazyFrame, table: AreaTable, cfg: CompsConfig) -> pl.LazyFrame:
    """``rows`` with the columns of an aggregated configuration, looked up in the dense arrays of
    :func:`area_tables`: per row one index per part (day x areas + area; an Enum code gives a group's
    id, :meth:`CellIndex.position` the cell's), then one gather per column (``pl.lit(array).gather``),
    all in Polars expressions, so the lookup streams in a sink, in parallel, keeping the row order.
    (A hash join with the same values as a (zipcode, cell, day) frame cost 5 s of a 15 s features
    build at 10M rows, docs/benchmarks.md.) A row without a day, key or earlier sale gets null means
    and zero counts."""
    t = cfg.time
    original = [c for c in rows.collect_schema().names() if c not in cfg.columns()]
    day = pl.col(t).cast(pl.Int32).cast(pl.Int64) - table.day0
    # Null without a day (no row is outside the table's days: area_tables took them from the rows).
    out = rows.select(*original).with_columns(pl.when(day.is_between(0, table.n_days - 1)).then(day).alias("_day"))
    # Every array ends with the unknown value (index n_days x n_areas): a null index points there.
    values = [pl.lit(a).gather(pl.col("_day").fill_null(table.n_days)).alias(c) for c, a in table.market.items()]
    for g, (ids, arrays) in table.groups.items():
        # The group's id: its value's position in the table's values, as the physical code of an Enum
        # of those values (null when not among them); a join with the values cost ~0.3 s per 10M rows.
        names = ids[g].cast(pl.String).to_list()
        k = pl.col(g).cast(pl.String).cast(pl.Enum(names), strict=False).to_physical().cast(pl.Int64)
        i = f"_i_{g}"
        out = out.with_columns((pl.col("_day") * ids.height + k).fill_null(ids.height * table.n_days).alias(i))
        values += [pl.lit(a).gather(pl.col(i)).alias(c) for c, a in arrays.items()]
    if table.cells is not None:
        index, arrays = table.cells
        ci, cj = _cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.cell_deg)
        n_cells = index.keys.size
        out = index.position(out, ci, cj).with_columns(
            (pl.col("_day") * n_cells + pl.col("_cell")).fill_null(n_cells * table.n_days).alias("_i_cell"))
        values += [pl.lit(a).gather(pl.col("_i_cell")).alias(c) for c, a in arrays.items()]
    missing = [pl.lit(0 if c.endswith("_n") else None, pl.Int32 if c.endswith("_n") else pl.Float64).alias(c)
               for c in cfg.columns() if c not in {v.meta.output_name() for v in values}]
    return out.with_columns(*values, *missing).select(*original, *cfg.columns())


def knn_candidates(history: pl.LazyFrame, ordered: pl.DataFrame, cfg: CompsConfig) -> np.ndarray:
    """Per row of ``ordered``: an upper bound of its k-nearest candidates (the join pairs it makes).

    The history sales in the row's candidate cells (``knn_cell_deg`` grid, +-``knn_radius_cells``)
    dated from ``lookback_days`` before the rows' first date to their last date, counted per cell
    in one aggregation (memory: one row per cell). Zero when the features have no k-nearest.
    """
    if not cfg.knn_k or ordered.height == 0 or ordered[cfg.time].null_count() == ordered.height:
        return np.zeros(ordered.height, dtype=np.int64)
    t, r = cfg.time, cfg.knn_radius_cells
    lo = ordered[t].min() - timedelta(days=cfg.lookback_days())  # the history a pass joins
    counts = (history.select(t, cfg.lat, cfg.long)
              .filter((pl.col(t) >= lo) & (pl.col(t) < ordered[t].max()))
              .select(_cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.knn_cell_deg))
              .drop_nulls().group_by("_ci", "_cj").len("_h").collect())
    cells = ordered.select(_cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.knn_cell_deg)).with_row_index("_r")
    offsets = pl.DataFrame({"_di": [i for i in range(-r, r + 1) for _ in range(-r, r + 1)],
                            "_dj": [j for _ in range(-r, r + 1) for j in range(-r, r + 1)]},
                           schema={"_di": pl.Int32, "_dj": pl.Int32})
    per_cell = (cells.select("_ci", "_cj").drop_nulls().unique().join(offsets, how="cross")
                .with_columns((pl.col("_ci") + pl.col("_di")).alias("_ni"), (pl.col("_cj") + pl.col("_dj")).alias("_nj"))
                .join(counts.rename({"_ci": "_ni", "_cj": "_nj"}), on=["_ni", "_nj"], how="inner")
                .group_by("_ci", "_cj").agg(pl.col("_h").sum()))
    est = cells.join(per_cell, on=["_ci", "_cj"], how="left").sort("_r")["_h"].fill_null(0)
    return est.to_numpy().astype(np.int64)


def slice_bounds(candidates: np.ndarray, max_rows: int, max_pairs: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) slices of at most ``max_rows`` rows and (but for a single row) at
    most ``max_pairs`` summed candidates."""
    n = len(candidates)
    out, start, acc = [], 0, 0
    for i, c in enumerate(candidates.tolist()):
        if i > start and (i - start >= max_rows or acc + c > max_pairs):
            out.append((start, i))
            start, acc = i, 0
        acc += c
    out.append((start, n))
    return out


# Default budget of k-nearest candidate pairs per pass for callers that bound memory (build_features):
# ~1.8 GiB peak RSS at 12M on 1M synthetic rows; King County's whole history is 7.9M pairs: one pass, as before.
MAX_KNN_PAIRS = 8_000_000


def _comps_chunk(history: pl.LazyFrame, chunk: pl.DataFrame, cfg: CompsConfig) -> pl.DataFrame:
    h = history
    if chunk.height and chunk[cfg.time].null_count() < chunk.height:
        lo = chunk[cfg.time].min() - timedelta(days=cfg.lookback_days())
        h = history.filter((pl.col(cfg.time) >= lo) & (pl.col(cfg.time) < chunk[cfg.time].max()))
    return comps_lazy(h, chunk.lazy(), cfg).collect()


def comps(history: pl.LazyFrame | pl.DataFrame, rows: pl.LazyFrame | pl.DataFrame, cfg: CompsConfig,
          max_pairs: int | None = None) -> pl.DataFrame:
    """:func:`comps_lazy`, collected, in date-ordered chunks of ``cfg.chunk_rows`` rows (bounded memory).

    Each chunk reads only the history it can reach: from ``lookback_days`` before its first date up
    to (not including) its last date.

    With ``max_pairs`` (e.g. :data:`MAX_KNN_PAIRS`), a chunk whose rows' k-nearest candidates
    (:func:`knn_candidates`, an upper bound of the rows x candidates join, which dominates memory)
    pass ``max_pairs`` gets its k-nearest columns in date-ordered slices of at most ``max_pairs``
    candidates (comps_lazy with only the k-nearest configured), its other columns in one pass. Same
    definitions, so the same values up to float rounding (a row depends only on the sales before it).
    """
    history = history.lazy()
    if cfg.aggregated:  # no row depends on another row: no chunks
        return area_comps(rows.lazy(), area_tables(history, rows.lazy(), cfg), cfg).collect()
    rows = rows.lazy().with_row_index("_order")
    ordered = rows.sort(cfg.time, "_order").collect()
    out = []
    for start in range(0, max(ordered.height, 1), cfg.chunk_rows):
        chunk = ordered.slice(start, cfg.chunk_rows)
        if max_pairs is None or not cfg.knn_k:
            out.append(_comps_chunk(history, chunk, cfg))
            continue
        candidates = knn_candidates(history, chunk, cfg)
        bounds = slice_bounds(candidates, cfg.chunk_rows, max_pairs)
        if len(bounds) == 1:
            out.append(_comps_chunk(history, chunk, cfg))
            continue
        log.info("comps: k-nearest of %d rows in %d slices (%d candidate pairs at most)", chunk.height, len(bounds),
                 int(candidates.sum()))
        base = _comps_chunk(history, chunk, cfg.model_copy(update={"knn_k": []}))
        knn_cfg = cfg.model_copy(update={"groups": [], "cell_windows_days": [], "id": None})
        knn_cols = [c for c in knn_cfg.columns() if c.startswith(f"{cfg.prefix}knn")]
        inputs = chunk.select("_order", *dict.fromkeys(knn_cfg.input_columns(with_target=False)))
        knn = pl.concat([_comps_chunk(history, inputs.slice(a, b - a), knn_cfg).select("_order", *knn_cols)
                         for a, b in bounds])
        original = [c for c in chunk.columns if c not in cfg.columns()]
        out.append(base.join(knn, on="_order", how="left", maintain_order="left").select(*original, *cfg.columns()))
    return pl.concat(out).sort("_order").drop("_order")


# ---------------------------------------------------------------------------------------------
# History for scoring: the lake's validated partitions


class LakeHistory:
    """The validated sales of a lake as comps history, re-read only when its partitions change.

    Scoring a house today needs the sales before today: :meth:`frame` returns them all (``comps``
    keeps, per row, only the ones dated before it). The partitions' names, sizes and modification
    times are checked on every call (one listing), so a re-validated day is picked up.
    """

    def __init__(self, lake_uri: str, columns: list[str]):
        self.lake_uri, self.columns = lake_uri, columns
        self._key: tuple | None = None
        self._df: pl.DataFrame | None = None
        self._lock = threading.Lock()

    def _partitions(self) -> tuple[list[str], tuple]:
        import pyarrow.fs as pafs

        from tasks.core import lake, storage

        fs, root = storage.resolve(lake.table_uri(self.lake_uri, lake.VALIDATED))
        if fs.get_file_info(root).type != pafs.FileType.Directory:
            return [], ()
        infos = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                 if i.type == pafs.FileType.File and i.base_name == storage.PART_FILE and "/ds=" in i.path
                 and not any(part.startswith((".", "_")) for part in i.path.split("/")[-2:])]
        infos.sort(key=lambda i: i.path)
        base = lake.table_uri(self.lake_uri, lake.VALIDATED)
        uris = [storage.join(base, i.path[len(root):]) for i in infos]
        return uris, tuple((i.path, i.size, i.mtime_ns) for i in infos)

    def frame(self) -> pl.DataFrame:
        uris, key = self._partitions()
        with self._lock:
            if self._df is None or key != self._key:
                if uris:
                    self._df = pl.scan_parquet(uris).select(self.columns).collect()
                else:
                    self._df = pl.DataFrame()
                self._key = key
                log.info("comps history: %d validated sales from %d partitions of %s", self._df.height, len(uris),
                         self.lake_uri)
            return self._df


_LAKES: dict[tuple, LakeHistory] = {}


def lake_history(lake_uri: str, cfg: CompsConfig) -> LakeHistory:
    """A process-wide :class:`LakeHistory` per lake and column set (scoring and the endpoint share it)."""
    cols = list(dict.fromkeys(cfg.input_columns(with_target=True)))
    key = (lake_uri, tuple(cols))
    if key not in _LAKES:
        _LAKES[key] = LakeHistory(lake_uri, cols)
    return _LAKES[key]


def with_comps(rows: pl.LazyFrame, history: pl.LazyFrame | pl.DataFrame | None, cfg: CompsConfig | None) -> pl.LazyFrame:
    """The comparable-sales stage: ``rows`` with ``cfg``'s columns computed from ``history`` (none: unchanged)."""
    if cfg is None:
        return rows
    if history is None:
        raise ValueError("these features need the history of validated sales (comparable sales): pass history")
    return comps(history, rows, cfg).lazy()
