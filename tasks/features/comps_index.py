"""Comparable sales for scoring, from tables built once per history instead of a Polars plan per request.

:func:`tasks.features.comps.comps` computes a row's comparable-sales features from the whole history
with one lazy plan (the market index of every day, the adjusted value of every sale, joins and
rolling windows): right for training, where millions of rows share that work, and most of the time
of a request that prices one house (docs/serving.md, "Where the time goes"). Every feature of a row
depends only on the sales dated before it and on the row's own date, location, groups and id, so
:class:`CompsIndex` does the history's share once:

- the market columns of every day from the first sale to the last window's end (the very
  ``tasks.features.comps.market._market`` the plan runs, on a dense day grid), and each sale's
  market-adjusted value;
- per group value (e.g. zipcode) and per grid cell: its sales' days (sorted) and adjusted values, so
  a trailing window is two binary searches and a median of the slice;
- per k-nearest grid cell: its sales, so the candidates of a row are the sales of its
  ``(2 r + 1)^2`` neighbouring cells in the age window, ranked as the plan ranks them (distance, age,
  value, size);
- per item id: its sales' days and adjusted log prices (the previous sale).

A row then costs a few array look-ups (numpy, no plan). The same definitions as the plan, so the same
values up to float rounding; :meth:`CompsIndex.build` checks that on a sample of the history's own
rows against :func:`tasks.features.comps.comps` and refuses the index (the caller falls back to the
plan) when they differ by more than 1e-9. Only the full mode (``HOMEWORTH_COMPS=full``, King County's
default) has an index; the area and leave-one-out modes keep the plan.

:class:`LakeIndex` keeps the index of a lake's validated partitions current: rebuilt when the
partitions change (a newly validated day), in a background thread for the endpoint (the old index
serves until the new one is swapped in, one reference assignment), synchronously for batch scoring.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import date, timedelta

import numpy as np
import polars as pl

from tasks.features.comps.config import KM_PER_DEGREE, CompsConfig

log = logging.getLogger(__name__)

EPOCH = date(1970, 1, 1)
NO_DAY = np.iinfo(np.int64).min // 4  # a null date
TOLERANCE = 1e-9
KNN_CHUNK_ROWS = 20_000  # rows whose k-nearest candidate pairs are held at once (~100 pairs per row in King County)


class IndexMismatch(RuntimeError):
    """The index's features differ from the plan's on the self-check sample."""


def supports(cfg: CompsConfig | None) -> bool:
    """Whether ``cfg`` has an index: the full mode (not area, not leave-one-out)."""
    return cfg is not None and cfg.time is not None and not cfg.aggregated and not cfg.leave_one_out


def _days(s: pl.Series) -> np.ndarray:
    """Days since 1970-01-01 of a date column (``NO_DAY`` where null), without a Polars plan."""
    if s.dtype != pl.Date:
        s = s.cast(pl.Date)
    d = s.to_numpy().astype("datetime64[D]")
    out = d.astype(np.int64)
    out[np.isnat(d)] = NO_DAY
    return out


def _floats(s: pl.Series) -> np.ndarray:
    """A numeric column as float64 (NaN where null), without a Polars plan."""
    return np.asarray(s.to_numpy(), dtype=np.float64)


def _median(v: np.ndarray) -> float:
    """``np.median`` of a non-empty 1-d array (the mean of the middle two for an even count), minus its overhead."""
    s = np.sort(v)
    m = len(s) // 2
    return float(s[m]) if len(s) % 2 else float((s[m - 1] + s[m]) / 2)


def _cell_keys(lat: np.ndarray, long: np.ndarray, deg: float) -> list:
    """Grid cells as in ``tasks.features.comps.config._cells`` (floor of degrees / size), None for no location."""
    ok = ~(np.isnan(lat) | np.isnan(long))
    ci = np.where(ok, np.floor(np.where(ok, lat, 0.0) / deg), 0).astype(np.int64)
    cj = np.where(ok, np.floor(np.where(ok, long, 0.0) / deg), 0).astype(np.int64)
    return [(int(i), int(j)) if o else None for i, j, o in zip(ci.tolist(), cj.tolist(), ok.tolist(), strict=True)]


class Spans:
    """Sales keyed by (key, day), sorted, for window look-ups by binary search (many rows in one call).

    ``keys[i]`` None leaves sale ``i`` out. Positions returned index the arrays the spans were built from.
    """

    def __init__(self, keys: list, days: np.ndarray):
        self.code: dict = {}
        codes = np.fromiter((self.code.setdefault(k, len(self.code)) if k is not None else -1 for k in keys),
                            dtype=np.int64, count=len(keys))
        valid = (codes >= 0) & (days != NO_DAY)
        self.d0 = int(days[valid].min()) if valid.any() else 0
        self.stride = (int(days[valid].max()) - self.d0 + 2) if valid.any() else 2
        composite = codes * self.stride + (days - self.d0)
        kept = np.flatnonzero(valid)
        self.order = kept[np.argsort(composite[kept], kind="stable")]
        self.keys = composite[self.order]

    def codes(self, keys: list) -> np.ndarray:
        get = self.code.get
        return np.fromiter((get(k, -1) if k is not None else -1 for k in keys), dtype=np.int64, count=len(keys))

    def _at(self, codes: np.ndarray, days: np.ndarray) -> np.ndarray:
        rel = np.clip(days - self.d0, 0, self.stride - 1)
        return np.searchsorted(self.keys, codes * self.stride + rel, "left")

    def windows(self, codes: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[a, b) into :attr:`order` of each code's sales with ``lo <= day < hi`` (empty for code -1)."""
        a, b = self._at(codes, lo), self._at(codes, hi)
        none = codes < 0
        a[none], b[none] = 0, 0
        return a, b

    def last_before(self, codes: np.ndarray, days: np.ndarray) -> np.ndarray:
        """Position of each code's last sale dated before its day (the last of that day's), -1 if none."""
        b = self._at(codes, days) - 1
        ok = (codes >= 0) & (b >= 0)
        ok[ok] = self.keys[b[ok]] >= codes[ok] * self.stride
        return np.where(ok, self.order[np.maximum(b, 0)] if len(self.order) else -1, -1)


def _unique_pairs(codes: np.ndarray, day: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(one row per distinct (code, day) among rows with both, each row's index into those); -1: neither."""
    ok = (codes >= 0) & (day != NO_DAY)
    inverse = np.full(len(day), -1, dtype=np.int64)
    if not ok.any():
        return np.zeros(0, dtype=np.int64), inverse
    rows = np.flatnonzero(ok)
    pair = codes[rows] * (2**31) + (day[rows] - day[rows].min())
    _, first, inv = np.unique(pair, return_index=True, return_inverse=True)
    inverse[rows] = inv.reshape(-1)
    return rows[first], inverse


def _spread(values: np.ndarray, inverse: np.ndarray, fill) -> np.ndarray:
    out = np.full(len(inverse), fill, dtype=values.dtype)
    has = inverse >= 0
    out[has] = values[inverse[has]]
    return out


class CompsIndex:
    """The comparable-sales tables of one history for one :class:`CompsConfig`; :meth:`comps` prices rows."""

    def __init__(self, cfg: CompsConfig, history: pl.DataFrame):
        from tasks.features.comps.market import _history_values, _market

        self.cfg, t = cfg, cfg.time
        raw = _history_values(history.lazy(), cfg).collect()
        self.sales = raw.height
        day = _days(raw[t])
        known = day != NO_DAY
        self.g0 = int(day[known].min()) if known.any() else 0
        reach = max([*cfg.market_windows_days, cfg.adjust_window_days, cfg.location_window_days]) + 2
        self.g1 = (int(day[known].max()) if known.any() else 0) + reach
        grid = pl.DataFrame({t: pl.date_range(EPOCH + timedelta(days=self.g0), EPOCH + timedelta(days=self.g1),
                                              eager=True)})
        adj_col = f"_mkt{cfg.adjust_window_days}"
        market = (_market(raw.lazy(), grid.lazy(), cfg)
                  .select(t, *cfg.market_columns(), pl.col(adj_col).alias("_mkt_row")).collect().sort(t))
        if market.height != self.g1 - self.g0 + 1:
            raise IndexMismatch(f"market grid has {market.height} days, expected {self.g1 - self.g0 + 1}")
        self.market = {c: _floats(market[c]) for c in market.columns if c != t}
        self.market_names = [c for c in market.columns if c not in (t, "_mkt_row")]
        mkt_adj = self._market_at("_mkt_row", day)
        self.day, self.lnp = day, _floats(raw["_lnp"])
        self.adj = _floats(raw["_lnppsf"]) - mkt_adj
        self.prev_adj = self.lnp - mkt_adj
        self.lns = _floats(raw["_lns"])
        h = (~np.isnan(self.adj)).tolist()  # the sales with an adjusted value: windows and k nearest

        def only_h(keys: list) -> list:
            return [k if keep else None for k, keep in zip(keys, h, strict=True)]

        self.groups = {g: Spans(only_h(raw[g].to_list()), day) for g in cfg.groups}
        self.groups_all = {g: Spans(raw[g].to_list(), day) for g in cfg.groups}
        self.lat = _floats(raw[cfg.lat]) if cfg.lat else None
        self.long = _floats(raw[cfg.long]) if cfg.long else None
        if cfg.cell_windows_days:
            self.cells = Spans(only_h(_cell_keys(self.lat, self.long, cfg.cell_deg)), day)
        if cfg.knn_k:
            self.knn_cells = Spans(only_h(_cell_keys(self.lat, self.long, cfg.knn_cell_deg)), day)
        if cfg.id:
            self.ids = Spans(raw[cfg.id].to_list(), day)
        self.schema: dict | None = None
        self.columns = cfg.columns()
        self._column_set = set(self.columns)

    def _market_at(self, col: str, day: np.ndarray) -> np.ndarray:
        i = day - self.g0
        inside = (day != NO_DAY) & (i >= 0) & (i <= self.g1 - self.g0)
        out = np.full(len(day), np.nan)
        out[inside] = self.market[col][i[inside]]
        return out

    # -----------------------------------------------------------------------------------------

    def _windows(self, spans: Spans, keys: list, day: np.ndarray, windows: list[int], name: str,
                 out: dict) -> None:
        """Median and count of the adjusted values of each row's key's sales in [day - w, day), per window."""
        p = self.cfg.prefix
        rep, inverse = _unique_pairs(spans.codes(keys), day)
        codes, d = spans.codes([keys[i] for i in rep.tolist()]), day[rep]
        for w in windows:
            a, b = spans.windows(codes, d - w, d)
            med = np.full(len(rep), np.nan)
            for i in np.flatnonzero(b > a).tolist():
                med[i] = _median(self.adj[spans.order[a[i]:b[i]]])
            out[f"{p}{name}_{w}d_med"] = _spread(med, inverse, np.nan)
            out[f"{p}{name}_{w}d_n"] = _spread((b - a).astype(np.int64), inverse, 0)

    def _days_since(self, g: str, keys: list, day: np.ndarray, out: dict) -> None:
        spans = self.groups_all[g]
        j = spans.last_before(spans.codes(keys), day)
        found = (j >= 0) & (day != NO_DAY)
        out[f"{self.cfg.prefix}{g}_days_since"] = np.where(found, day - self.day[np.maximum(j, 0)], np.nan)

    def _knn(self, lat: np.ndarray, long: np.ndarray, day: np.ndarray, out: dict) -> None:
        """The k nearest sales of each row within +-r cells and the maximum age, ranked as the plan ranks them
        (distance, then age, value, size). All rows at once: candidate pairs gathered by binary search per
        (row, neighbouring cell), ranked by one sort, aggregated per row (a row's figures do not depend on the
        other rows of the call)."""
        cfg, p, spans = self.cfg, self.cfg.prefix, self.knn_cells
        kmax, r, n = max(cfg.knn_k), cfg.knn_radius_cells, len(day)
        if n > KNN_CHUNK_ROWS:  # bounded memory: candidate pairs of at most KNN_CHUNK_ROWS rows at a time
            parts = []
            for s in range(0, n, KNN_CHUNK_ROWS):
                part: dict = {}
                self._knn(lat[s:s + KNN_CHUNK_ROWS], long[s:s + KNN_CHUNK_ROWS], day[s:s + KNN_CHUNK_ROWS], part)
                parts.append(part)
            out.update({c: np.concatenate([part[c] for part in parts]) for c in parts[0]})
            return
        cols = {f"{p}knn{k}_{s}": np.full(n, np.nan) for k in cfg.knn_k for s in ("med", "dist_km", "age_days", "size")}
        out.update(cols)
        out[f"{p}knn_n"] = np.zeros(n, dtype=np.int64)
        offsets = [(i, j) for i in range(-r, r + 1) for j in range(-r, r + 1)]
        get, none = spans.code.get, [-1] * len(offsets)
        codes = np.array([[get((c[0] + i, c[1] + j), -1) for i, j in offsets] if c is not None and d != NO_DAY else none
                          for c, d in zip(_cell_keys(lat, long, cfg.knn_cell_deg), day.tolist(), strict=True)],
                         dtype=np.int64).reshape(-1)
        pair_day = np.repeat(day, len(offsets))
        a, b = spans.windows(codes, pair_day - cfg.knn_max_age_days, pair_day)
        lengths = np.maximum(b - a, 0)
        total = int(lengths.sum())
        if total == 0:
            return
        firsts = np.repeat(a - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)
        cand, q = spans.order[firsts], np.repeat(np.repeat(np.arange(n), len(offsets)), lengths)
        cos_q = np.cos(lat * (3.141592653589793 / 180))
        dy = self.lat[cand] - lat[q]
        dx = (self.long[cand] - long[q]) * cos_q[q]
        dist = KM_PER_DEGREE * np.sqrt(dx * dx + dy * dy)
        age = (day[q] - self.day[cand]).astype(np.float64)
        adj, size = self.adj[cand], self.lns[cand]
        order = np.lexsort((size, adj, age, dist, q))
        q, dist, age, adj, size = q[order], dist[order], age[order], adj[order], size[order]
        rank = np.arange(len(q)) - np.searchsorted(q, np.arange(n), "left")[q]
        out[f"{p}knn_n"] = np.bincount(q[rank < kmax], minlength=n).astype(np.int64)
        for k in cfg.knn_k:
            sel = rank < k
            qk = q[sel]
            nk = np.bincount(qk, minlength=n)
            has = nk > 0
            for name, v in (("dist_km", dist), ("age_days", age), ("size", size)):
                sums = np.bincount(qk, weights=v[sel], minlength=n)
                out[f"{p}knn{k}_{name}"][has] = sums[has] / nk[has]
            o = np.lexsort((adj[sel], qk))
            vals, start = adj[sel][o], np.searchsorted(qk[o], np.arange(n), "left")
            mid = start + nk // 2
            hi, lo = vals[np.minimum(mid, len(vals) - 1)], vals[np.maximum(mid - 1, 0)]
            med = np.where(nk % 2 == 1, hi, (lo + hi) / 2)
            out[f"{p}knn{k}_med"][has] = med[has]

    def _previous(self, ids: list, day: np.ndarray, out: dict) -> None:
        p = self.cfg.prefix
        j = self.ids.last_before(self.ids.codes(ids), day)
        found = (j >= 0) & (day != NO_DAY)
        jj = np.maximum(j, 0)
        out[f"{p}prev_adj"] = np.where(found, self.prev_adj[jj] if len(self.prev_adj) else np.nan, np.nan)
        out[f"{p}prev_days"] = np.where(found, day - self.day[jj] if len(self.day) else np.nan, np.nan)

    def values(self, rows: pl.DataFrame) -> dict[str, np.ndarray]:
        """The comp columns of ``rows`` as arrays (NaN where the plan gives null)."""
        cfg, p = self.cfg, self.cfg.prefix
        day = _days(rows[cfg.time])
        out: dict[str, np.ndarray] = {}
        for c in self.market_names:
            out[c] = self._market_at(c, day)
        mkt_row = self._market_at("_mkt_row", day)
        for g in cfg.groups:
            keys = rows[g].to_list()
            self._windows(self.groups[g], keys, day, cfg.group_windows_days, g, out)
            self._days_since(g, keys, day, out)
        lat = _floats(rows[cfg.lat]) if cfg.lat else None
        long = _floats(rows[cfg.long]) if cfg.long else None
        if cfg.cell_windows_days:
            self._windows(self.cells, _cell_keys(lat, long, cfg.cell_deg), day, cfg.cell_windows_days, "cell", out)
        if cfg.knn_k:
            self._knn(lat, long, day, out)
            lns = np.log(_floats(rows[cfg.size])) if cfg.size else 0.0
            for k in cfg.knn_k:
                out[f"{p}knn{k}_est"] = out[f"{p}knn{k}_med"] + mkt_row + lns
        if cfg.id:
            self._previous(rows[cfg.id].to_list(), day, out)
            out[f"{p}prev_est"] = out[f"{p}prev_adj"] + mkt_row
        return out

    def comps(self, rows: pl.DataFrame) -> pl.DataFrame:
        """``rows`` with the comp columns, as :func:`tasks.features.comps.comps` returns them (built from
        arrays: no Polars plan unless the configuration has ``market_time``)."""
        cfg = self.cfg
        with np.errstate(divide="ignore", invalid="ignore"):
            values = self.values(rows)
        columns = self.columns
        original = [c for c in rows.columns if c not in self._column_set]
        series = [rows.get_column(c) for c in original]
        for c in columns:
            if c in values:
                dtype = self.schema.get(c) if self.schema else None
                if dtype is not None and dtype.is_integer():
                    series.append(pl.Series(c, values[c]).cast(dtype))
                else:
                    series.append(pl.Series(c, values[c], nan_to_null=True))
        out = pl.DataFrame(series)
        if cfg.market_time:
            out = out.with_columns(cfg.time_exprs()).select(*original, *columns)
        return out

    @classmethod
    def build(cls, cfg: CompsConfig, history: pl.DataFrame, check_rows: int = 64) -> "CompsIndex":
        """The index of ``history``, checked against :func:`tasks.features.comps.comps` on ``check_rows`` of its
        own sales (at their dates and on the day after the last one); raises :class:`IndexMismatch`."""
        from tasks.features.comps import comps

        index = cls(cfg, history)
        probe = probe_rows(cfg, history, check_rows)
        if probe.height:
            expected = comps(history, probe, cfg)
            index.schema = {c: expected.schema[c] for c in cfg.columns()}
            compare(expected, index.comps(probe), cfg.columns())
        return index


def probe_rows(cfg: CompsConfig, history: pl.DataFrame, n: int) -> pl.DataFrame:
    """``n`` of the history's sales spread over it, as they are and dated the day after the last sale."""
    rows = history.select(cfg.input_columns(with_target=False)).drop_nulls(cfg.time)
    if rows.height == 0 or n <= 0:
        return rows.head(0)
    picked = rows.gather(np.linspace(0, rows.height - 1, min(n, rows.height)).astype(np.int64))
    after = rows[cfg.time].max() + timedelta(days=1)
    return pl.concat([picked, picked.with_columns(pl.lit(after).cast(rows.schema[cfg.time]).alias(cfg.time))])


def compare(expected: pl.DataFrame, got: pl.DataFrame, columns: list[str], tol: float = TOLERANCE) -> None:
    """Raise :class:`IndexMismatch` naming the first column and row where ``got`` differs from ``expected``."""
    for c in columns:
        e = expected[c].cast(pl.Float64).fill_nan(None).to_numpy()
        g = got[c].cast(pl.Float64).fill_nan(None).to_numpy()
        en, gn = np.isnan(e), np.isnan(g)
        diff = np.where(en | gn, np.where(en == gn, 0.0, np.inf), np.abs(e - g) / (1.0 + np.abs(e)))
        if len(diff) and diff.max() > tol:
            r = int(diff.argmax())
            raise IndexMismatch(f"comps index: column {c!r}, row {r}: plan {e[r]!r}, index {g[r]!r}")


class LakeIndex:
    """The :class:`CompsIndex` of a lake's validated partitions, rebuilt when they change.

    :meth:`get` with ``fresh`` (batch scoring) lists the partitions now and rebuilds before answering if
    they changed; without (the endpoint) it answers with the current index at once and, at most every
    ``ttl_s`` seconds, checks the partitions and rebuilds in a background thread, swapping the new index
    in when it is complete. ``None``: the configuration has no index, or its self-check failed (the plan
    is used; logged).
    """

    def __init__(self, lake_uri: str, cfg: CompsConfig, ttl_s: float = 10.0):
        from tasks.features.comps.history import lake_history

        self.cfg, self.ttl_s = cfg, ttl_s
        self.history = lake_history(lake_uri, cfg)  # shared with the plan's path: one copy of the sales
        self._current: tuple[tuple | None, CompsIndex | None] = (None, None)
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self._thread: threading.Thread | None = None
        self.builds = 0
        self.last_build_s: float | None = None
        self.refused: str | None = None

    @property
    def key(self) -> tuple | None:
        return self._current[0]

    def _build(self) -> None:
        with self._lock:
            t0 = time.perf_counter()
            frame = self.history.frame()  # lists the partitions; re-read only when they changed
            key = self.history._key
            if key == self._current[0] and (self._current[1] is not None or self.refused):
                return
            index = None
            if frame.height:
                try:
                    index = CompsIndex.build(self.cfg, frame)
                    self.refused = None
                except Exception as exc:  # noqa: BLE001 - a mismatch or a failed build: the plan prices instead
                    self.refused = str(exc)
                    log.warning("no comps index for %s (scoring uses the plan): %s", self.history.lake_uri, exc)
            self._current = (key, index)  # one assignment: readers see the old or the new index, whole
            self.builds += 1
            self.last_build_s = round(time.perf_counter() - t0, 3)
            log.info("comps index of %d validated sales built in %.2f s", frame.height, self.last_build_s)

    def _build_safely(self) -> None:
        try:
            self._build()
        except Exception as exc:  # noqa: BLE001 - the current index keeps serving; the next check retries
            log.warning("comps index rebuild failed (the previous one keeps serving): %s", exc)

    def get(self, fresh: bool = True) -> CompsIndex | None:
        if fresh or self._current[0] is None:
            self._checked = time.monotonic()
            self._build()
        elif time.monotonic() - self._checked >= self.ttl_s:
            self._checked = time.monotonic()
            thread = self._thread
            if thread is None or not thread.is_alive():
                self._thread = threading.Thread(target=self._build_safely, daemon=True, name="homeworth-comps-index")
                self._thread.start()
        return self._current[1]


_INDEXES: dict[tuple, LakeIndex] = {}
_INDEXES_LOCK = threading.Lock()


def lake_index(lake_uri: str, cfg: CompsConfig) -> LakeIndex | None:
    """The process-wide :class:`LakeIndex` of a lake and configuration (None when the configuration has none):
    champions with the same comps configuration share it."""
    if not supports(cfg):
        return None
    key = (lake_uri, cfg.model_dump_json())
    with _INDEXES_LOCK:
        if key not in _INDEXES:
            _INDEXES[key] = LakeIndex(lake_uri, cfg)
        return _INDEXES[key]
