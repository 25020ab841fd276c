"""Planning a feature build from the lake: the window's validated partitions (the table listed once, not
probed day by day), their row counts and date ranges from the Parquet footers, the history before the
window the comparable sales reach, and the window's partitions in chunks of bounded rows
(docs/out-of-core.md, "Features")."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Callable, TypeVar

import polars as pl

from tasks.core import lake, storage
from tasks.features.comps import CompsConfig
from tasks.ingest.landing import days_in_interval

# Threads reading partitions' metadata (manifests, hash sidecars, footers) from an object store, where each
# is a request and they overlap. A local lake's are read in turn: parsing a footer holds the GIL, so threads
# gained nothing there and their memory arenas cost ~20 MiB.
METADATA_THREADS = 8
_T = TypeVar("_T")
_R = TypeVar("_R")


def _map(fn: Callable[[_T], _R], items: list[_T], lake_uri: str) -> list[_R]:
    """``[fn(x) for x in items]``, in order; on :data:`METADATA_THREADS` threads for an object-store lake."""
    if len(items) < 2 or storage.local_path(lake_uri) is not None:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=METADATA_THREADS) as pool:
        return list(pool.map(fn, items))


@dataclass(frozen=True)
class WindowPlan:
    """The partitions a feature build reads."""

    parts: list[dict]  # the window's validated partitions: day, uri, sha256
    info: list[dict]  # the same with their rows and time range (:func:`partition_info`)
    candidates: list[dict]  # every file the comps may read: the history's (as ``info``), then the window's
    history_parts: list[dict]  # the validated partitions of the ``lookback_days`` before the window


def plan_window(lake_uri: str, start: date, end: date, cfg: CompsConfig | None) -> WindowPlan:
    """The partitions of the window [start, end) and, with comps ``cfg``, of the history they reach."""
    listing = validated_days(lake_uri)  # the table listed once, not each day probed
    parts = window_partitions(lake_uri, start, end, listing)
    if not parts:
        raise ValueError(f"no validated partitions in {lake_uri} for {start}..{end}: ingest first")
    time_col = cfg.time if cfg is not None else None
    info = partition_info(parts, time_col)
    if cfg is None:
        return WindowPlan(parts, info, info, [])
    history_parts = window_partitions(lake_uri, start - timedelta(days=cfg.lookback_days()), start, listing)
    return WindowPlan(parts, info, partition_info(history_parts, time_col) + info, history_parts)


def validated_days(lake_uri: str) -> dict[str, set[str]]:
    """The validated table's day folders (``ds=<day>``: day -> the names of the files directly in it), from
    one recursive listing: on an object store a request per 1,000 keys, where probing each day of a
    window for its manifest or file cost one or two requests a day."""
    import pyarrow.fs as pafs

    fs, root = storage.resolve(lake.table_uri(lake_uri, lake.VALIDATED))
    root = root.rstrip("/")
    out: dict[str, set[str]] = {}
    for i in fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)):
        folder, _, name = i.path[len(root):].strip("/").rpartition("/")
        if i.type == pafs.FileType.File and folder.startswith("ds=") and "/" not in folder:
            out.setdefault(folder[3:], set()).add(name)
    return out


def window_partitions(lake_uri: str, start: date, end: date,
                      listing: dict[str, set[str]] | None = None) -> list[dict]:
    """The validated partitions of days in [start, end) that exist, with their content hashes: each the
    file its day's manifest publishes (as ``lake.day_file``: named by its content, never rewritten), or a
    day's ``part-0.parquet`` from before manifests. ``listing``: :func:`validated_days` (listed here when
    not given); only the days it holds are read (on an object store, a few at a time)."""
    listing = validated_days(lake_uri) if listing is None else listing

    def part(day: date) -> dict | None:
        names = listing.get(day.isoformat(), set())
        if lake.DAY_MANIFEST in names:
            uri = json.loads(storage.read_bytes(lake.day_manifest_uri(lake_uri, day)))[lake.VALIDATED]["uri"]
        elif storage.PART_FILE in names:
            uri = lake.partition_uri(lake_uri, lake.VALIDATED, day)
        else:
            return None
        return {"day": day.isoformat(), "uri": uri, "sha256": storage.cached_file_sha256(uri)}

    days = [d for d in days_in_interval(start, end) if d.isoformat() in listing]
    return [p for p in _map(part, days, lake_uri) if p]


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

    Reads only metadata (the validated partitions are written with statistics; on an object store a few
    at a time, :data:`METADATA_THREADS`); a file without statistics for the column gets its range from a
    one-column scan.
    """
    return _map(lambda p: _partition_info(p, time_col), parts, parts[0]["uri"] if parts else "")


def _partition_info(p: dict, time_col: str | None) -> dict:
    """One partition of :func:`partition_info`."""
    import pyarrow.parquet as pq

    path = storage.local_path(p["uri"])
    rows, lo, hi, known = None, None, None, False
    if path is not None:
        md = pq.read_metadata(path)
        rows, known = md.num_rows, time_col is not None
        names = [md.schema.column(i).name for i in range(md.num_columns)]
        j = names.index(time_col) if time_col in names else None
        for g in range(md.num_row_groups) if time_col is not None else ():
            st = md.row_group(g).column(j).statistics if j is not None else None
            if st is None or not st.has_min_max:
                if md.row_group(g).num_rows and (st is None or st.null_count != md.row_group(g).num_rows):
                    known = False
                continue
            lo = st.min if lo is None else min(lo, st.min)
            hi = st.max if hi is None else max(hi, st.max)
    if time_col is not None and not known:
        r = pl.scan_parquet(p["uri"]).select(pl.len().alias("n"), pl.col(time_col).min().alias("lo"),
                                             pl.col(time_col).max().alias("hi")).collect().row(0, named=True)
        rows, lo, hi = r["n"], r["lo"], r["hi"]
    elif rows is None:
        rows = pl.scan_parquet(p["uri"]).select(pl.len()).collect().item()
    return {**p, "rows": int(rows), "tmin": lo, "tmax": hi}


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
