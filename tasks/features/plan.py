"""Planning a feature build from the lake: the window's validated partitions, their row counts and
date ranges from the Parquet footers, the history before the window the comparable sales reach, and
the window's partitions in chunks of bounded rows (docs/out-of-core.md, "Features")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import polars as pl

from tasks.core import lake, storage
from tasks.features.comps import CompsConfig
from tasks.ingest.landing import days_in_interval


@dataclass(frozen=True)
class WindowPlan:
    """The partitions a feature build reads."""

    parts: list[dict]  # the window's validated partitions: day, uri, sha256
    info: list[dict]  # the same with their rows and time range (:func:`partition_info`)
    candidates: list[dict]  # every file the comps may read: the history's (as ``info``), then the window's
    history_parts: list[dict]  # the validated partitions of the ``lookback_days`` before the window


def plan_window(lake_uri: str, start: date, end: date, cfg: CompsConfig | None) -> WindowPlan:
    """The partitions of the window [start, end) and, with comps ``cfg``, of the history they reach."""
    parts = window_partitions(lake_uri, start, end)
    if not parts:
        raise ValueError(f"no validated partitions in {lake_uri} for {start}..{end}: ingest first")
    time_col = cfg.time if cfg is not None else None
    info = partition_info(parts, time_col)
    if cfg is None:
        return WindowPlan(parts, info, info, [])
    history_parts = window_partitions(lake_uri, start - timedelta(days=cfg.lookback_days()), start)
    return WindowPlan(parts, info, partition_info(history_parts, time_col) + info, history_parts)


def window_partitions(lake_uri: str, start: date, end: date) -> list[dict]:
    """The validated partitions of days in [start, end) that exist, with their content hashes: each the
    file its day's manifest publishes (``lake.day_file``: named by its content, never rewritten), or a
    day's ``part-0.parquet`` from before manifests."""
    out = []
    for day in days_in_interval(start, end):
        if (uri := lake.day_file(lake_uri, lake.VALIDATED, day)) is not None:
            out.append({"day": day.isoformat(), "uri": uri, "sha256": storage.cached_file_sha256(uri)})
    return out


def row_days(info: list[dict], time_col: str) -> pl.LazyFrame:
    """The days the window's rows may be dated: every day from each partition's first to its last
    ``time_col`` value (Parquet footers, :func:`partition_info`), a superset of the rows' days. A
    join by day needs an entry for each of them (extra days change nothing), and it saves a scan of
    the rows."""
    import datetime as dt

    ranges = [(p["tmin"], p["tmax"]) for p in info if p["tmin"] is not None and p["tmax"] is not None]
    if not all(type(lo) is dt.date and type(hi) is dt.date for lo, hi in ranges):  # not a Date column: scan
        return pl.scan_parquet([p["uri"] for p in info]).select(time_col)
    days = sorted({lo + timedelta(days=i) for lo, hi in ranges for i in range((hi - lo).days + 1)})
    return pl.LazyFrame({time_col: days}, schema={time_col: pl.Date})


def row_span(info: list[dict]) -> tuple[date, date] | None:
    """The window's rows' first and last day from the Parquet footers (:func:`partition_info`), or
    None when a partition's range is unknown or not of dates (then the rows are scanned for it)."""
    import datetime as dt

    ranges = [(p["tmin"], p["tmax"]) for p in info if p["rows"]]
    if not ranges or not all(type(lo) is dt.date and type(hi) is dt.date for lo, hi in ranges):
        return None
    return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)


def partition_info(parts: list[dict], time_col: str | None) -> list[dict]:
    """Each partition with its row count and the min / max of ``time_col``, from the Parquet footer.

    Reads only metadata (the validated partitions are written with statistics); a file without
    statistics for the column gets its range from a one-column scan.
    """
    import pyarrow.parquet as pq

    out = []
    for p in parts:
        path = storage.local_path(p["uri"])
        if path is not None:
            md = pq.read_metadata(path)
            rows, lo, hi, known = md.num_rows, None, None, time_col is not None
            if time_col is not None:
                names = [md.schema.column(i).name for i in range(md.num_columns)]
                j = names.index(time_col) if time_col in names else None
                for g in range(md.num_row_groups):
                    st = md.row_group(g).column(j).statistics if j is not None else None
                    if st is None or not st.has_min_max:
                        if md.row_group(g).num_rows and (st is None or st.null_count != md.row_group(g).num_rows):
                            known = False
                        continue
                    lo = st.min if lo is None else min(lo, st.min)
                    hi = st.max if hi is None else max(hi, st.max)
        else:
            rows, known = None, False
        if time_col is not None and not known:
            r = pl.scan_parquet(p["uri"]).select(pl.len().alias("n"), pl.col(time_col).min().alias("lo"),
                                                 pl.col(time_col).max().alias("hi")).collect().row(0, named=True)
            rows, lo, hi = r["n"], r["lo"], r["hi"]
        elif rows is None:
            rows = pl.scan_parquet(p["uri"]).select(pl.len()).collect().item()
        out.append({**p, "rows": int(rows), "tmin": lo, "tmax": hi})
    return out


def plan_chunks(parts: list[dict], chunk_rows: int) -> list[list[dict]]:
    """Consecutive partitions (in day order) grouped into chunks of at most ``chunk_rows`` rows.

    A partition is never split (a day larger than ``chunk_rows`` is a chunk of its own; ``comps``
    then works through it in slices of ``chunk_rows``).
    """
    chunks: list[list[dict]] = []
    cur: list[dict] = []
    n = 0
    for p in parts:
        if cur and n + p["rows"] > chunk_rows:
            chunks.append(cur)
            cur, n = [], 0
        cur.append(p)
        n += p["rows"]
    if cur:
        chunks.append(cur)
    return chunks


def chunk_history(chunk: list[dict], candidates: list[dict], cfg: CompsConfig) -> list[str]:
    """The history files a chunk can reach: those whose event times overlap
    [first date - lookback_days, last date], plus the chunk's own (``comps`` filters rows exactly)."""
    own = {p["uri"] for p in chunk}
    lows = [p["tmin"] for p in chunk if p["tmin"] is not None]
    highs = [p["tmax"] for p in chunk if p["tmax"] is not None]
    if not lows:
        return [p["uri"] for p in candidates]
    lo, hi = min(lows) - timedelta(days=cfg.lookback_days()), max(highs)
    return [p["uri"] for p in candidates
            if p["uri"] in own or p["tmin"] is None or (p["tmax"] >= lo and p["tmin"] <= hi)]
