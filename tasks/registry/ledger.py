"""The promotion ledger: an append-only record of every move of the ``champion`` alias.

Each event is one JSON file in the lake, ``<lake>/ledger/<at>__<kind>__<key>.json``, written to a
temporary name and renamed (``tasks.core.storage``), never rewritten and never deleted. ``at`` is the
run's logical (or interval) time for a DAG run and the wall-clock time of a person's action for the
CLI; ``key`` is a digest of who made the move (``dag_id/run_id/task`` for a DAG run), so a retried
task finds the event its earlier try wrote instead of appending a second one. Files in the lake work
the same on a laptop and against object storage, and an MLflow tag could be overwritten, which a
ledger must not be.

An event says when, by which run or person, from which version to which, why, the metric
differences and their bootstrap intervals, the data window and the validation results behind it.
The MLflow alias stays the source of truth of who is live; the ledger says how it got there. An
event is written just before the alias moves: a task that dies in between finds its event on retry
and moves the alias then.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.core import lake, storage
from tasks.core.settings import Settings

SCHEMA_VERSION = 1
Kind = Literal["promotion", "rollback"]


class LedgerEvent(BaseModel):
    schema_version: int = SCHEMA_VERSION
    event_id: str = ""  # the file name without .json; filled by :func:`new_event`
    seq: int = 0  # append order (1, 2, ...); filled by :func:`append`
    kind: Kind
    at: datetime  # logical/interval time of a DAG run; wall clock of a person's action
    model_name: str
    from_version: str | None
    to_version: str
    reason: str
    # {"type": "dag_run", "dag_id", "run_id", "run_type", "task", "triggered_by"} or {"type": "user", "user", "host"}
    actor: dict[str, Any]
    # {"new": {...}, "champion": {...}, "difference": {metric: champion - new}} (positive: the new one is better)
    metrics: dict[str, Any] = Field(default_factory=dict)
    ci: dict[str, Any] | None = None  # paired bootstrap intervals of the differences (tasks.registry.promote)
    data_window: dict[str, Any] | None = None  # start, end, partitions_sha256 of the incoming model
    validation: dict[str, Any] | None = None  # GX results of the ingest runs behind that window
    evaluation: dict[str, Any] | None = None  # report, predictions, test rows, MLflow run
    approval: dict[str, Any] | None = None  # the human-in-the-loop answer, when one was asked for

    def who(self) -> str:
        a = self.actor
        if a.get("type") == "user":
            return f"user {a.get('user')}"
        by = f"{a.get('dag_id')} run {a.get('run_id')}"
        return by + (f" (triggered by {a['triggered_by']})" if a.get("triggered_by") else "")


def ledger_uri(settings: Settings) -> str:
    return lake.ledger_dir(settings.lake_uri)


def _utc(at: datetime | date | str) -> datetime:
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    if not isinstance(at, datetime):
        at = datetime(at.year, at.month, at.day)
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def event_id(at: datetime | date | str, kind: str, key: str) -> str:
    """``<UTC time>__<kind>__<digest of key>``: sorts by time, the same for every try of one task."""
    return f"{_utc(at):%Y%m%dT%H%M%S%fZ}__{kind}__{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def new_event(key: str, **fields: Any) -> LedgerEvent:
    """An event whose id derives from its time, kind and ``key`` (who made the move)."""
    fields["at"] = _utc(fields["at"])
    event = LedgerEvent(**fields)
    event.event_id = event_id(event.at, event.kind, key)
    return event


def _uri(settings: Settings, eid: str) -> str:
    return storage.join(ledger_uri(settings), f"{eid}.json")


def get(settings: Settings, eid: str) -> LedgerEvent | None:
    uri = _uri(settings, eid)
    if not storage.exists(uri):
        return None
    return LedgerEvent.model_validate_json(storage.read_bytes(uri))


def read_all(settings: Settings) -> list[LedgerEvent]:
    """Every event, oldest first (append order; time and id break ties)."""
    root = ledger_uri(settings)
    events = [LedgerEvent.model_validate_json(storage.read_bytes(storage.join(root, n)))
              for n in storage.list_dir(root) if n.endswith(".json") and not n.startswith(".")]
    return sorted(events, key=lambda e: (e.seq, e.at, e.event_id))


def append(settings: Settings, event: LedgerEvent) -> tuple[LedgerEvent, bool]:
    """Write ``event`` unless an event with its id exists. Returns (the stored event, whether it is new)."""
    if not event.event_id:
        raise ValueError("ledger events need an id: build them with new_event()")
    existing = get(settings, event.event_id)
    if existing is not None:
        return existing, False
    event.seq = max((e.seq for e in read_all(settings)), default=0) + 1
    storage.write_bytes_atomic(_uri(settings, event.event_id), event.model_dump_json(indent=2).encode())
    return event, True


def latest_for(settings: Settings, version: str) -> LedgerEvent | None:
    """The latest event that made ``version`` the champion."""
    hits = [e for e in read_all(settings) if e.to_version == str(version)]
    return hits[-1] if hits else None


def validation_summary(settings: Settings, start: str | date, end: str | date) -> dict[str, Any]:
    """The GX results of the ingest runs whose interval overlaps [start, end).

    ``tasks.quality.validate`` writes one summary per validated interval to ``<lake>/_validation/``; this
    adds up their row counts and lists each expectation that flagged rows, with how many.
    """
    start, end = str(start), str(end)
    root = lake.validation_dir(settings.lake_uri)
    runs, failing = [], {}
    totals = {"rows_read": 0, "rows_accepted": 0, "rows_quarantined": 0}
    for name in storage.list_dir(root):
        if not name.endswith(".json") or name.startswith("."):
            continue
        try:
            s, e = name.removesuffix(".json").split("_", 1)
        except ValueError:
            continue
        if not (s < end and e > start):
            continue
        summary = json.loads(storage.read_bytes(storage.join(root, name)))
        runs.append(f"{s}..{e}")
        for k in totals:
            totals[k] += int(summary.get(k) or 0)
        for exp in summary.get("expectations", []):
            if not exp.get("success", True):
                failing[exp["expectation"]] = failing.get(exp["expectation"], 0) + int(exp.get("unexpected_count") or 0)
    return {"window": [start, end], "validated_intervals": runs, **totals,
            "failing_expectations": dict(sorted(failing.items(), key=lambda kv: -kv[1]))}
