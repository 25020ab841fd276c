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
validated lake, whatever its end: only sales before the row's date count). ``tests/unit/test_comps.py``
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

The modules: :mod:`.config` (:class:`CompsConfig`), :mod:`.market` (the market index, every mode),
:mod:`.full` (the row-to-row statistics, one lazy plan), :mod:`.area` (dense per-(day, area) arrays),
:mod:`.chunks` (:func:`comps`, every mode's entry point; the full mode in bounded chunks) and
:mod:`.history` (the lake's validated sales for scoring).
"""

from tasks.features.comps.area import AreaTable, CellIndex, area_comps, area_tables
from tasks.features.comps.chunks import MAX_KNN_PAIRS, comps, knn_candidates, slice_bounds, with_comps
from tasks.features.comps.config import KM_PER_DEGREE, CompsConfig
from tasks.features.comps.full import comps_lazy
from tasks.features.comps.history import LakeHistory, lake_history
from tasks.features.comps.market import market_index

__all__ = [
    "KM_PER_DEGREE", "MAX_KNN_PAIRS", "AreaTable", "CellIndex", "CompsConfig", "LakeHistory", "area_comps",
    "area_tables", "comps", "comps_lazy", "knn_candidates", "lake_history", "market_index", "slice_bounds",
    "with_comps",
]
