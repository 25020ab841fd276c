"""The area mode (``HOMEWORTH_COMPS=area``): trailing means per group, cell and ring of cells as dense
(day x area) arrays, built from exact per-(area, day) sums of the history (:func:`area_tables`) and
looked up per row by index arithmetic (:func:`area_comps`). Linear in the rows; memory bounded by
areas x days (docs/out-of-core.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import polars as pl

from tasks.features.comps.config import CompsConfig, _cells
from tasks.features.comps.market import _history_values, _location_keys, _market_from_sums, _sums

MAX_CELL_GRID = 1 << 24  # cells in the bounding box of an area table's cells: a dense lookup grid up to this


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
            key = _cell_key(ci, cj)
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


def _resum(df: pl.DataFrame, keys: list[str], t: str) -> pl.DataFrame:
    # The streaming engine's group-by: about twice as fast as the in-memory one on these decimal sums.
    return df.lazy().group_by(*keys, t).agg(pl.col("_s").sum(), pl.col("_n").sum()).collect(engine="streaming")


def _cell_key(ci: pl.Expr, cj: pl.Expr) -> pl.Expr:
    """A cell's packed Int64 key, ``ci * 2**32 + cj`` (the keys of :class:`CellIndex`)."""
    return ci.cast(pl.Int64) * 2**32 + cj.cast(pl.Int64)


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


def _rows_span(rows: pl.LazyFrame, t: str) -> tuple[date | None, date | None]:
    """The rows' first and last day (one streaming scan of their time column)."""
    first_last = rows.select(pl.col(t).min().alias("lo"), pl.col(t).max().alias("hi")).collect(engine="streaming")
    return first_last["lo"][0], first_last["hi"][0]


def _fine_sums(history: pl.LazyFrame, cfg: CompsConfig, lo: date, hi: date, with_cells: bool) -> pl.DataFrame:
    """One streaming aggregation of the history: exact sums and counts of ln(price / size) per (groups,
    location, cell (``_ck``, :func:`_cell_key`), day), of the sales from the lookback before the first row to
    the day before the last: nothing else reaches a row."""
    t = cfg.time
    cell_cols = []
    if with_cells:  # one packed Int64 key per cell: cheaper to group by than two
        ci, cj = _cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.cell_deg)
        cell_cols = [_cell_key(ci, cj).alias("_ck")]
    fine_keys = list(dict.fromkeys([*cfg.groups, *_location_keys(cfg), *(["_ck"] if with_cells else [])]))
    reach = lo - timedelta(days=cfg.lookback_days())
    hist = (_history_values(history, cfg).filter((pl.col(t) >= reach) & (pl.col(t) < hi))
            .with_columns(cell_cols))
    return _sums(hist, fine_keys, cfg).collect(engine="streaming")


@dataclass(frozen=True)
class _Days:
    """The arrays' day axis: from the first sale within reach (nothing before it adds to a sum) to the last row."""

    start: date
    end: date
    day0: int  # ``start`` in days since 1970-01-01
    first: int  # the index of the rows' first day
    n_days: int

    @classmethod
    def of(cls, fine: pl.DataFrame, cfg: CompsConfig, lo: date, hi: date) -> "_Days":
        reach = lo - timedelta(days=cfg.lookback_days())
        start = min(lo, max(reach, fine[cfg.time].min())) if fine.height else lo
        return cls(start, hi, (start - date(1970, 1, 1)).days, (lo - start).days, (hi - start).days + 1)


class _Resummed:
    """Exact sums per (keys, day) from the finest sums, each computed once."""

    def __init__(self, fine: pl.DataFrame, t: str):
        self.fine, self.t = fine, t
        self._done: dict[tuple[str, ...], pl.DataFrame] = {}

    def by(self, keys: list[str]) -> pl.DataFrame:
        if tuple(keys) not in self._done:
            self._done[tuple(keys)] = _resum(self.fine, keys, self.t)
        return self._done[tuple(keys)]


def _market_arrays(sums: pl.DataFrame, days: _Days, cfg: CompsConfig) -> tuple[dict[str, pl.Series], np.ndarray]:
    """The market columns per day from the rows' first day (the unknown day's value last), and the
    ``adjust_window_days`` index of every day of the axis (NaN: none), from the per-(location, day) sums."""
    t = cfg.time
    grid = pl.DataFrame({t: pl.date_range(days.start, days.end, "1d", eager=True)}).lazy()
    market = _market_from_sums(sums.lazy(), grid, cfg).collect().sort(t)
    mkt_adj = market[f"_mkt{cfg.adjust_window_days}"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    market = market.select(cfg.market_columns()).slice(days.first)
    market_arrays = {c: pl.concat([market[c].cast(pl.Float64), pl.Series([None], dtype=pl.Float64)]).rechunk()
                     for c in market.columns}  # the unknown day's value last
    return market_arrays, mkt_adj


def _group_arrays(sums: pl.DataFrame, g: str, days: _Days, mkt_adj: np.ndarray,
                  cfg: CompsConfig) -> tuple[pl.DataFrame, dict[str, pl.Series]]:
    """A group column's values in id order, and its window columns as (days x values) arrays."""
    sums = sums.filter(pl.col(g).is_not_null())
    values = sums.select(g).unique().sort(g).with_row_index("_k")
    k = sums.join(values, on=g, how="left", maintain_order="left")["_k"].to_numpy().astype(np.int64)
    daily = _daily(sums, k, days.day0, cfg.time, values.height, days.n_days, mkt_adj, True)
    return values, _windows_dense(daily, cfg.group_windows_days, g, True, days.first, cfg.prefix)


def _ring_adjacency(keys: np.ndarray, offsets: list[int]):
    """The cells' adjacency (cells x cells, a 1 where a cell is in another's ring), a sparse matrix."""
    import scipy.sparse as sp

    src, dst = [], []
    for o in offsets:
        pos = np.searchsorted(keys, keys + o)
        hit = pos < keys.size
        hit[hit] = keys[pos[hit]] == keys[hit] + o
        src.append(pos[hit])
        dst.append(np.flatnonzero(hit))
    src, dst = np.concatenate(src), np.concatenate(dst)
    return sp.csc_matrix((np.ones(src.size, np.int64), (src, dst)), shape=(keys.size, keys.size))


def _cell_arrays(sums: pl.DataFrame, days: _Days, mkt_adj: np.ndarray,
                 cfg: CompsConfig) -> tuple[CellIndex, dict[str, pl.Series]]:
    """The history's cells and their ring neighbours, and the cell and ring window columns as (days x
    cells) arrays, from the per-(cell, day) sums."""
    p = cfg.prefix
    sums = sums.drop_nulls(["_ck"])
    own = sums["_ck"].to_numpy()
    r = cfg.ring_cells
    offsets = [di * 2**32 + dj for di in range(-r, r + 1) for dj in range(-r, r + 1)]
    seen = np.unique(own)
    keys = np.unique(np.concatenate([seen + o for o in offsets]))
    daily = _daily(sums, np.searchsorted(keys, own), days.day0, cfg.time, keys.size, days.n_days, mkt_adj, False)
    arrays = (_windows_dense(daily, cfg.cell_windows_days, "cell", False, days.first, p)
              if cfg.cell_windows_days else {})
    if r:
        # The ring's daily values: daily (days x cells) times the cells' adjacency, a sparse product
        # whose sums run in a fixed order, so they do not depend on the history's order.
        adj = _ring_adjacency(keys, offsets)
        ring = {c: np.ascontiguousarray(v @ adj) for c, v in daily.items()}
        arrays |= _windows_dense(ring, cfg.ring_windows_days, "ring", False, days.first, p)
    return CellIndex.of(keys), arrays


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
    array, about 20 arrays at a time, whatever the rows (measured: docs/out-of-core.md).
    """
    lo, hi = span if span is not None else _rows_span(rows, cfg.time)
    if lo is None:  # no row has a day: nothing to look up (every column null, counts 0)
        return AreaTable(0, 0, {}, {}, None)
    with_cells = bool(cfg.cell_windows_days or cfg.ring_cells)
    fine = _fine_sums(history, cfg, lo, hi, with_cells)
    days = _Days.of(fine, cfg, lo, hi)
    sums = _Resummed(fine, cfg.time)
    market_arrays, mkt_adj = _market_arrays(sums.by(_location_keys(cfg)), days, cfg)
    groups = {g: _group_arrays(sums.by([g]), g, days, mkt_adj, cfg) for g in cfg.groups}
    cells = _cell_arrays(sums.by(["_ck"]), days, mkt_adj, cfg) if with_cells else None
    return AreaTable(days.day0 + days.first, days.n_days - days.first, market_arrays, groups, cells)


def area_comps(rows: pl.LazyFrame, table: AreaTable, cfg: CompsConfig) -> pl.LazyFrame:
    """``rows`` with the columns of an aggregated configuration, looked up in the dense arrays of
    :func:`area_tables`: per row one index per part (day x areas + area; an Enum code gives a group's
    id, :meth:`CellIndex.position` the cell's), then one gather per column (``pl.lit(array).gather``),
    all in Polars expressions, so the lookup streams in a sink, in parallel, keeping the row order.
    (A hash join with the same values as a (zipcode, cell, day) frame was much slower: run G in
    docs/benchmarks.md.) A row without a day, key or earlier sale gets null means and zero counts."""
    t = cfg.time
    original = [c for c in rows.collect_schema().names() if c not in cfg.columns()]
    day = pl.col(t).cast(pl.Int32).cast(pl.Int64) - table.day0
    # Null without a day (no row is outside the table's days: area_tables took them from the rows).
    out = rows.select(*original).with_columns(pl.when(day.is_between(0, table.n_days - 1)).then(day).alias("_day"))
    # Every array ends with the unknown value (index n_days x n_areas): a null index points there.
    values = [pl.lit(a).gather(pl.col("_day").fill_null(table.n_days)).alias(c) for c, a in table.market.items()]
    for g, (ids, arrays) in table.groups.items():
        # The group's id: its value's position in the table's values, as the physical code of an Enum
        # of those values (null when not among them), cheaper than a join with the values.
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
    missing = [e for e in missing if e.meta.output_name() not in cfg.time_columns()]
    return cfg.with_time(out.with_columns(*values, *missing)).select(*original, *cfg.columns())
