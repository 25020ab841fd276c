"""Replay the bundled dataset as a daily feed: one folder per sale day in the landing zone.

The original CSV text is copied line for line (quoted ids, ``1.225e+006`` prices and all), so the
ingest path sees exactly what the public file holds. A landing file that already exists is never
rewritten: landing files belong to the feed, not to us.

    homeworth replay [--start 2015-03-01] [--end 2015-05-28]     # or python -m tasks.ingest.replay
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import logging
from collections import defaultdict
from datetime import date, datetime
from pathlib import Path

from tasks.core import storage
from tasks.core.settings import get_settings
from tasks.core.spec import DatasetSpec, get_spec, normalise_header

log = logging.getLogger(__name__)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _day_of(value: str, fmt: str | None) -> date:
    value = value.strip()
    if fmt:
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            pass
    return date.fromisoformat(value[:10])


def header_index(header: list[str], column: str, source: Path | str) -> int:
    """Where the spec's ``column`` is in a file's header, matched through :func:`normalise_header` (case,
    a byte-order mark, surrounding spaces): a spec may spell it ``date`` for a header ``Date``."""
    want = normalise_header(column)
    for i, name in enumerate(header):
        if normalise_header(name) == want:
            return i
    raise ValueError(f"{source}: no column {column!r} in the header (compared ignoring case); "
                     f"the header has {[h[:60] for h in header[:30]]}")


def split_by_day(spec: DatasetSpec, source: Path) -> tuple[str, dict[date, list[str]]]:
    """The header line and the original data lines of ``source`` grouped by their sale day."""
    time_col = spec.event_time
    if time_col is None:
        raise ValueError(f"spec {spec.name!r} has no event_time column: nothing to replay by day")
    fmt = spec.columns[time_col].format
    by_day: dict[date, list[str]] = defaultdict(list)
    with _open_text(source) as f:
        header = f.readline()
        idx = header_index(next(csv.reader([header]), []), time_col, source)
        for line in f:
            if not line.strip():
                continue
            fields = next(csv.reader([line]))
            by_day[_day_of(fields[idx], fmt)].append(line if line.endswith("\n") else line + "\n")
    return header, by_day


def replay(
    spec: DatasetSpec,
    landing_uri: str,
    source: Path | None = None,
    start: date | None = None,
    end: date | None = None,
    file_name: str = "sales.csv",
) -> dict:
    """Write ``<landing>/<day>/<file_name>`` for every sale day in [start, end). Returns counts."""
    source = source or spec.bundled_path()
    if source is None or not source.exists():
        raise FileNotFoundError(f"spec {spec.name!r}: bundled file {source} not found")
    header, by_day = split_by_day(spec, source)
    written = skipped = rows = 0
    for day in sorted(by_day):
        if (start and day < start) or (end and day >= end):
            continue
        uri = storage.join(landing_uri, day.isoformat(), file_name)
        rows += len(by_day[day])
        if storage.exists(uri):
            skipped += 1
            continue
        storage.write_bytes_atomic(uri, (header + "".join(by_day[day])).encode("utf-8"))
        written += 1
    days = [d for d in by_day if not ((start and d < start) or (end and d >= end))]
    log.info("replayed %d rows into %d day folders (%d already there)", rows, written + skipped, skipped)
    return {
        "rows": rows,
        "files_written": written,
        "files_existing": skipped,
        "first_day": min(days).isoformat() if days else None,
        "last_day": max(days).isoformat() if days else None,
    }


def main(argv: list[str] | None = None, prog: str = "python -m tasks.ingest.replay") -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--start", type=date.fromisoformat, default=None, help="first day to replay")
    p.add_argument("--end", type=date.fromisoformat, default=None, help="day after the last one")
    p.add_argument("--source", type=Path, default=None, help="CSV(.gz) to replay; the spec's bundled file by default")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = replay(get_spec(), get_settings().landing_uri, args.source, args.start, args.end)
    print(result)


if __name__ == "__main__":
    main()
