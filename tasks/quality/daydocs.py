"""What the Data Docs show of each day of an interval, built from one interval-wide GX result.

:func:`day_docs` gives ``{day: doc}``, the dicts ``tasks.quality.datadocs`` writes as ``result.json``
and renders as ``data_docs.html``: for every expectation, per day (row-level: the day's unexpected
rows and a sample) or for the interval (batch-level: the result once), with the day's files and row
counts. The checks made before GX (coercion, repeated (id, event time)) are shown as row-level
expectations.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from typing import Any, Callable

import polars as pl

from tasks.core.spec import DatasetSpec
from tasks.ingest.landing import COERCE_ERRORS, DS, SOURCE_FILE, SOURCE_ROW
from tasks.quality import datadocs
from tasks.quality.results import ROW_ID, fmt

# An expectation as Data Docs show it, and {day: (unexpected count, sample)} for a row-level one (None: batch).
Entry = tuple[dict, "dict[str, tuple[int, list[dict]]] | None"]


def per_day(rows: pl.DataFrame, value_of: Callable[[Any], Any]) -> dict[str, tuple[int, list[dict]]]:
    """{day: (count, sample)} of flagged rows (columns ds, _source_file, _source_row, _k: index for value_of)."""
    if rows.height == 0:
        return {}
    counts = {d.isoformat(): n for d, n in rows.group_by(DS).len().iter_rows()}
    samples: dict[str, list[dict]] = defaultdict(list)
    for d, file, row, k in rows.group_by(DS, maintain_order=True).head(datadocs.SAMPLE_SIZE).select(
            DS, SOURCE_FILE, SOURCE_ROW, "_k").iter_rows():
        samples[d.isoformat()].append({"value": value_of(k), "file": file, "row": row})
    return {d: (n, samples[d]) for d, n in counts.items()}


def entries(spec: DatasetSpec, raw: pl.DataFrame, checked: pl.DataFrame, dups: pl.DataFrame,
            evals: list[dict]) -> list[Entry]:
    """Every expectation of the interval: the checks made before GX, then GX's (see ``results.evaluation``)."""
    keys = spec.duplicate_key()[0]
    coerce = raw.filter(pl.col(COERCE_ERRORS).is_not_null()).with_columns(pl.col(COERCE_ERRORS).alias("_k"))
    dup = dups.join(raw.select(ROW_ID, DS, SOURCE_FILE, SOURCE_ROW), on=ROW_ID).rename({"reason": "_k"})
    out: list[Entry] = [  # checks made before GX, shown as row-level expectations
        ({"expectation": "coercion (ingest): every value converts to its column's type", "type": "coercion",
          "severity": "row"}, per_day(coerce, lambda k: k)),
        ({"expectation": f"expect_compound_columns_to_be_unique({', '.join(keys)}): repeats set aside before GX, "
                         "the first occurrence kept", "type": "duplicate", "severity": "row"}, per_day(dup, lambda k: k)),
    ]
    located = checked.select(DS, SOURCE_FILE, SOURCE_ROW)
    for e in evals:
        info = {k: e[k] for k in ("expectation", "type", "severity")}
        if e["idx"] is None:
            out.append(({**info, "success": e["success"], "unexpected_count": e["unexpected_count"],
                         "error": e["error"], "observed": e["observed"]}, None))
        else:
            values = e["values"]
            rows = located[e["idx"]].with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_k"))
            out.append((info, per_day(rows, lambda k, v=values: fmt(v[k]) if k < len(v) else "null")))
    return out


def day_expectations(found: list[Entry], day: str) -> list[dict]:
    """The expectations as one day's doc lists them: row-level ones counted on the day's rows."""
    exps = []
    for info, by_day in found:
        if by_day is None:
            exps.append({**info, "scope": "interval", "sample": []})
        else:
            n, sample = by_day.get(day, (0, []))
            exps.append({**info, "scope": "day", "success": n == 0, "unexpected_count": n, "sample": sample,
                         "error": None, "observed": None})
    return exps


def day_docs(spec: DatasetSpec, raw: pl.DataFrame, checked: pl.DataFrame, dups: pl.DataFrame, evals: list[dict],
             result: Any, days: list[date], start: date, end: date, *, partitions: dict | None,
             failures: list[str], run_id: str | None) -> dict[str, dict]:
    """The Data Docs of each day of the interval (see tasks/quality/datadocs.py), from one interval-wide GX result.

    ``partitions``: {day: the written partitions} (None when a batch failure wrote nothing); ``failures``:
    the batch-level failures.
    """
    import great_expectations as gx

    found = entries(spec, raw, checked, dups, evals)
    read = {d.isoformat(): n for d, n in raw.group_by(DS).len().iter_rows()}
    files: dict[str, list[dict]] = defaultdict(list)
    for d, f, n in raw.group_by(DS, SOURCE_FILE).len().sort(DS, SOURCE_FILE).iter_rows():
        files[d.isoformat()].append({"file": f, "rows": n})
    last = max(start, end - timedelta(days=1))
    common = {
        "dataset": spec.name, "suite": getattr(result, "suite_name", None) or spec.name, "run_id": run_id,
        "interval": {"start": start.isoformat(), "end": end.isoformat(), "last": last.isoformat(), "days": len(days)},
        "failures": failures,
        "gx": {"version": gx.__version__, "success": bool(result.success),
               "statistics": {k: v for k, v in (result.statistics or {}).items()}},
    }
    docs = {}
    for day in days:
        d = day.isoformat()
        part = (partitions or {}).get(d)
        docs[d] = day_doc(common, d, part, read.get(d, 0), files.get(d, []), day_expectations(found, d))
    return docs


def day_doc(common: dict, day: str, part: dict | None, read: int, files: list[dict], exps: list[dict]) -> dict:
    """One day's doc (``result.json``); ``part``: the day's written partitions, None if nothing was written."""
    status = "failed" if common["failures"] else ("quarantined" if part and part["quarantined"] else "passed")
    return {
        "dataset": common["dataset"], "suite": common["suite"], "day": day, "status": status,
        "run_id": common["run_id"], "interval": common["interval"],
        "rows": {"read": read, "accepted": part["accepted"] if part else None,
                 "quarantined": part["quarantined"] if part else None},
        "files": files, "expectations": exps, "failures": common["failures"], "gx": common["gx"],
        "partitions": {"validated": part["validated_uri"], "quarantine": part["quarantine_uri"]} if part else {},
    }
