"""The promotion ledger: an append-only record of every move of the ``champion`` alias, and its source of truth.

Each event is one JSON file in the lake, ``<lake>/ledger/<seq:08d>.json``, never rewritten and never
deleted. ``seq`` is the append order; the event with the highest ``seq`` names the champion, and the
MLflow alias ``champion`` follows it (``tasks/registry/champion.py``). An event's ``event_id`` is
``<at>__<kind>__<digest of key>``: ``at`` is the run's logical (or interval) time for a DAG run and the
wall-clock time of a person's action; ``key`` says who made the move (``dag_id/run_id/task/...`` for a
DAG run), so a retried task finds the event its earlier try wrote instead of appending a second one.

Appends are compare-and-set (:func:`append`): an event from ``X`` to ``Y`` is appended only while the
newest event still names ``X`` (else :class:`Superseded`). On a local lake each sequence number is
claimed by an atomic exclusive create: the event is written to a temporary name unique to the attempt,
then published with ``os.link(tmp, <seq>.json)``, which fails if that name exists; the loser re-reads
the ledger, checks its expectation again and tries the next number. Against object storage (a pyarrow
file-system URI) there is no exclusive create: the event is renamed to ``<event_id>.json`` with
``seq = max + 1``, so two concurrent writers may share a number (docs/reliability.md; a lock or a
conditional put is future work). Files of the older ``<at>__<kind>__<digest>.json`` shape stay readable.

A file that cannot be read (bad JSON, no permission) is logged with its name and skipped
(:func:`scan` lists it): it never blocks serving, the ledger page or a promotion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.core import lake, storage
from tasks.core.settings import Settings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
Kind = Literal["promotion", "rollback"]
SEQ_NAME = re.compile(r"^(\d{8,})\.json$")  # <seq:08d>.json; older files are <event_id>.json
APPEND_ATTEMPTS = 200  # sequence numbers tried before giving up (each failure means another writer won one)
UNCHECKED = object()  # append(expected=UNCHECKED): no compare-and-set (tests and tools that only record)


class LedgerEvent(BaseModel):
    schema_version: int = SCHEMA_VERSION
    event_id: str = ""  # <at>__<kind>__<digest of key>; filled by :func:`new_event`
    seq: int = 0  # append order (1, 2, ...); filled by :func:`append`
    kind: Kind
    at: datetime  # logical/interval time of a DAG run; wall clock of a person's action
    model_name: str
    from_version: str | None  # the champion this move replaced (its compare-and-set expectation)
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
    outcome: str | None = None  # the gate's outcome behind a promotion ("promote", "inconclusive", "reject")

    def who(self) -> str:
        a = self.actor
        if a.get("type") == "user":
            return f"user {a.get('user')}"
        by = f"{a.get('dag_id')} run {a.get('run_id')}"
        return by + (f" (triggered by {a['triggered_by']})" if a.get("triggered_by") else "")


class Superseded(Exception):
    """The compare-and-set failed: the newest event no longer names the version the move expected to replace."""

    def __init__(self, expected: str | None, current: LedgerEvent | None, fallback: str | None = None):
        self.expected = expected
        self.current = current  # the newest event (None: the ledger is empty)
        self.champion = current.to_version if current is not None else fallback
        by = (f"ledger event #{current.seq}, {current.kind} by {current.who()}" if current is not None
              else "no ledger event")
        super().__init__(f"expected to replace v{expected or 'none'}, but the champion is v{self.champion or 'none'} "
                         f"({by})")


@dataclass
class Scan:
    """The readable events, oldest first, and the files that could not be read: (name, why)."""

    events: list[LedgerEvent]
    problems: list[tuple[str, str]] = field(default_factory=list)
    max_seq: int = 0  # the highest sequence number in use, unreadable files included

    @property
    def head(self) -> LedgerEvent | None:
        """The newest event: it names the champion."""
        return self.events[-1] if self.events else None

    def find(self, eid: str) -> LedgerEvent | None:
        return next((e for e in self.events if e.event_id == eid), None)


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


def scan(settings: Settings) -> Scan:
    """Every readable event, oldest first (append order; time and id break ties), and the unreadable files.

    An unreadable file is logged with its name and skipped; its sequence number (from its name) stays
    taken."""
    root = ledger_uri(settings)
    out = Scan(events=[])
    for name in storage.list_dir(root):
        if not name.endswith(".json") or name.startswith("."):
            continue
        m = SEQ_NAME.match(name)
        if m:
            out.max_seq = max(out.max_seq, int(m.group(1)))
        try:
            out.events.append(LedgerEvent.model_validate_json(storage.read_bytes(storage.join(root, name))))
        except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("ledger file %s is unreadable and skipped: %s", storage.join(root, name), why)
            out.problems.append((name, why))
    out.events.sort(key=lambda e: (e.seq, e.at, e.event_id))
    out.max_seq = max([out.max_seq, *(e.seq for e in out.events)])
    return out


def read_all(settings: Settings) -> list[LedgerEvent]:
    """Every readable event, oldest first (see :func:`scan`)."""
    return scan(settings).events


def get(settings: Settings, eid: str) -> LedgerEvent | None:
    """The event with id ``eid``, or None."""
    return scan(settings).find(eid)


def head(settings: Settings) -> LedgerEvent | None:
    """The newest event: it names the champion (None: the ledger is empty)."""
    return scan(settings).head


def _publish_local(directory: str, seq: int, data: bytes) -> None:
    """Create ``<directory>/<seq:08d>.json`` holding ``data``, or raise FileExistsError if the name is taken.

    The bytes go to a temporary name unique to this attempt first, then ``os.link`` publishes them under
    the final name (atomic, and it fails when the name exists), so a reader never sees half an event.
    Where hard links are not supported, an exclusive create (``O_EXCL``) claims the name instead."""
    os.makedirs(directory, exist_ok=True)
    final = os.path.join(directory, f"{seq:08d}.json")
    tmp = os.path.join(directory, f".{seq:08d}.json.tmp-{os.getpid()}-{uuid.uuid4().hex}")  # storage.TEMP_MARK shape
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    finally:
        os.unlink(tmp)


def _check(current: Scan, expected: Any, empty_head: str | None) -> None:
    if expected is UNCHECKED:
        return
    champion = current.head.to_version if current.head is not None else empty_head
    if champion != (str(expected) if expected is not None else None):
        raise Superseded(expected, current.head, empty_head)


def append(settings: Settings, event: LedgerEvent, expected: Any = UNCHECKED,
           empty_head: str | None = None) -> tuple[LedgerEvent, bool]:
    """Append ``event`` unless an event with its id exists. Returns (the stored event, whether it is new).

    Compare-and-set: with ``expected`` (a version, or None for "no champion") the event is appended only
    while the newest event names ``expected`` (``empty_head``: the champion to assume while the ledger is
    empty, i.e. the MLflow alias of a registry older than its ledger); otherwise :class:`Superseded` is
    raised and nothing is written. The check is repeated whenever another writer took the sequence
    number first."""
    if not event.event_id:
        raise ValueError("ledger events need an id: build them with new_event()")
    root = ledger_uri(settings)
    local = storage.local_path(root)
    for _ in range(APPEND_ATTEMPTS):
        current = scan(settings)
        existing = current.find(event.event_id)
        if existing is not None:
            return existing, False
        _check(current, expected, empty_head)
        event.seq = current.max_seq + 1
        data = event.model_dump_json(indent=2).encode()
        if local is None:  # object storage: no exclusive create (see the module doc)
            storage.write_bytes_atomic(storage.join(root, f"{event.event_id}.json"), data)
            return event, True
        try:
            _publish_local(local, event.seq, data)
            return event, True
        except FileExistsError:
            continue  # another writer took this number: read again, check again, try the next
    raise RuntimeError(f"ledger append gave up after {APPEND_ATTEMPTS} taken sequence numbers in {root}")


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
