"""What every measured stage of ``benchmarks.run`` shares, on the child side: the clock that keeps
module imports out of the timings, best-of-N timing, and the window's lake partitions.

Imports nothing heavy at module level: each stage imports what it measures inside its function.
"""

from __future__ import annotations

import time
from datetime import date, timedelta


class Clock:
    """Started when the child starts; ``imported()`` marks the end of the imports (and the baseline RSS)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.import_s = 0.0
        self.baseline_rss = 0

    def imported(self) -> None:
        from benchmarks.common import rss_self

        self.import_s = time.perf_counter() - self.t0
        self.baseline_rss = rss_self()


def window(p: dict) -> tuple[date, date]:
    start = date.fromisoformat(p["start"])
    return start, start + timedelta(days=p["days"])


def load_spec():
    """The dataset spec, read in the child (the stage's entry point)."""
    from tasks.core.spec import get_spec

    return get_spec()


def partition_path(lake: str, table: str, day: date) -> str:
    from tasks.core import lake as lake_paths
    from tasks.core import storage

    return storage.local_path(lake_paths.partition_uri(lake, table, day))


def days_with_rows(p: dict, table: str) -> list[tuple[date, int]]:
    import os

    import pyarrow.parquet as pq

    start, end = window(p)
    out = []
    for i in range((end - start).days):
        day = start + timedelta(days=i)
        path = partition_path(p["lake"], table, day)
        if os.path.exists(path):
            out.append((day, pq.read_metadata(path).num_rows))
    return out


def best_of(p: dict, run) -> tuple[float, object, int]:
    """``run()`` -> (seconds, result); repeated while the runs so far took under ``repeat_under_s`` in all,
    at most ``repeats`` times. Returns the fastest run's (seconds, result) and the number of runs: on a
    shared machine other processes' CPU bursts slow a run down, never speed it up."""
    best, runs, total = None, 0, 0.0
    while True:
        seconds, result = run()
        runs, total = runs + 1, total + seconds
        if best is None or seconds < best[0]:
            best = (seconds, result)
        if runs >= p["repeats"] or total + seconds > p["repeat_under_s"]:
            return best[0], best[1], runs


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t, out


def runs_note(n: int) -> str:
    return "1 run" if n == 1 else f"best of {n} runs"


def validated_paths(p: dict) -> list[str]:
    import os

    start, end = window(p)
    paths = [partition_path(p["lake"], "validated", start + timedelta(days=i)) for i in range((end - start).days)]
    return [x for x in paths if os.path.exists(x)]

