"""Rollback: move the ``champion`` alias back to an earlier champion, by a person or a DAG run, with a ledger event.

The entry points are ``homeworth rollback`` (``tasks/cli.py``) and the ``champion_rollback`` DAG; both
say who acts (``actor``), when (``at``) and pass a ``key`` that makes the event unique to that action.
Only a version that the ledger made champion before can be the target, and the move is compare-and-set
on the champion it replaces, like a promotion's (``tasks/registry/champion.py``).
"""

from __future__ import annotations

import logging
from datetime import date, datetime

from tasks.core import tracking
from tasks.core.faults import fault_point
from tasks.core.settings import Settings
from tasks.registry import champion, ledger
from tasks.registry.policy import SUPERSEDED, metric_difference

log = logging.getLogger(__name__)

ROLLED_BACK = "rolled_back"


class RollbackError(ValueError):
    """The rollback cannot be done as asked; the message says why."""


def _run_metrics(c, run_id: str | None) -> dict:
    if not run_id:
        return {}
    data = c.get_run(run_id).data.metrics
    return {k.removeprefix("test/"): v for k, v in data.items() if k.startswith("test/")}


def _checked(version: str | int, reason: str) -> tuple[str, str]:
    """(version number, reason) as given, or a RollbackError for a missing reason or a bad number."""
    version = str(version).strip().lstrip("v")
    reason = (reason or "").strip()
    if not reason:
        raise RollbackError("a rollback needs a reason")
    if not version.isdigit():
        raise RollbackError(f"version must be a model version number, got {version!r}")
    return version, reason


def _target(c, settings: Settings, version: str, state: champion.State):
    """The model version to go back to, or a RollbackError unless the ledger made ``version`` the champion before."""
    from mlflow.exceptions import MlflowException

    try:
        mv = c.get_model_version(settings.model_name, version)
    except MlflowException as exc:
        raise RollbackError(f"model {settings.model_name!r} has no version {version}") from exc
    if state.version == version:
        raise RollbackError(f"v{version} is already the champion")
    if not any(e.to_version == version for e in state.scan.events):
        raise RollbackError(f"v{version} was never the champion: no ledger event made it one (its MLflow tag "
                            f"promotion.decision is {mv.tags.get('promotion.decision')!r}); a rollback goes back to an "
                            "earlier champion of the ledger (homeworth ledger lists them)")
    return mv


def _rollback_event(c, settings: Settings, version: str, mv, previous: str | None, reason: str, actor: dict, at,
                    key: str) -> ledger.LedgerEvent:
    current = c.get_model_version(settings.model_name, previous) if previous is not None else None
    new_m = _run_metrics(c, mv.run_id)
    old_m = _run_metrics(c, current.run_id) if current is not None else {}
    start, end = mv.tags.get("data.window_start"), mv.tags.get("data.window_end")
    return ledger.new_event(
        key, kind="rollback", at=at, model_name=settings.model_name, from_version=previous, to_version=version,
        reason=reason, actor=actor,
        metrics={"new": new_m, "champion": old_m, "difference": metric_difference(new_m, old_m) if old_m else {},
                 "note": "each version's own test metrics (test windows may differ; not a paired comparison)"},
        data_window={"start": start, "end": end, "partitions_sha256": mv.tags.get("data.partitions_sha256")},
        validation=ledger.validation_summary(settings, start, end) if start and end else None,
        evaluation={"mlflow_run_id": mv.run_id},
    )


def _out(event: ledger.LedgerEvent, champion_now: str | None, created: bool, outcome: str, reason: str) -> dict:
    """rollback's result (the DAG task's XCom)."""
    return {"champion_version": champion_now, "previous_champion": event.from_version, "ledger_event": event.event_id,
            "reason": reason, "created": created, "outcome": outcome}


def _recorded(c, settings: Settings, done: ledger.LedgerEvent, state: champion.State) -> dict:
    """A retried rollback whose earlier try recorded ``done``: finish its tags; the alias already follows the ledger."""
    if state.version == done.to_version:
        if c.get_model_version(settings.model_name, done.to_version).tags.get("rollback.ledger_event") != done.event_id:
            _tag(c, settings, done)  # the earlier try stopped between its ledger event and its tags
        return _out(done, done.to_version, False, ROLLED_BACK, done.reason)
    h = state.head
    why = (f"this rollback made v{done.to_version} the champion (ledger event #{done.seq}), but v{h.to_version} has "
           f"been the champion since ledger event #{h.seq} ({h.kind} by {h.who()}); the retry leaves it there")
    log.warning("rollback superseded: %s", why)
    return _out(done, h.to_version, False, SUPERSEDED, why)


def _tag(c, settings: Settings, event: ledger.LedgerEvent) -> None:
    c.set_model_version_tag(settings.model_name, event.to_version, "rollback.reason", event.reason[:5000])
    c.set_model_version_tag(settings.model_name, event.to_version, "rollback.ledger_event", event.event_id)


def rollback(settings: Settings, version: str | int, reason: str, actor: dict, at: datetime | date | str,
             key: str, expected: str | int | None = None) -> dict:
    """Move ``champion`` back to ``version``, an earlier champion of the ledger, and record why in the ledger.

    ``actor`` says who (a DAG run or a person), ``at`` when (the run's time, or the wall clock for a
    person), ``key`` makes the event unique to that actor and action (a retried task reuses it);
    ``expected`` is the champion the person means to replace (default: the champion now). The move is
    compare-and-set: if the champion is no longer ``expected`` when the event is appended, nothing moves
    and the outcome is ``superseded``. Result: ``champion_version``, ``previous_champion``,
    ``ledger_event``, ``reason``, ``created`` and ``outcome`` (``rolled_back`` or ``superseded``).
    """
    fault_point("rollback", "start")
    version, reason = _checked(version, reason)
    eid = ledger.event_id(at, "rollback", key)
    with tracking.fail_fast():  # a dead MLflow server fails the move in seconds (see promote_step)
        try:
            return _rollback(settings, version, reason, actor, at, key, expected, eid)
        except Exception as exc:
            if not tracking.unreachable(exc):
                raise
            raise champion.outage("rollback", settings, eid, exc) from exc


def _rollback(settings: Settings, version: str, reason: str, actor: dict, at: datetime | date | str, key: str,
              expected: str | int | None, eid: str) -> dict:
    """rollback's work, its event id given."""
    c = tracking.client(settings)
    state = champion.sync(c, settings)  # first complete a move recorded in the ledger but not applied
    done = state.scan.find(eid)
    if done is not None:
        return _recorded(c, settings, done, state)

    mv = _target(c, settings, version, state)
    expect = str(expected).strip().lstrip("v") if expected is not None else state.version
    try:
        if expect != state.version:  # the person meant to replace another champion than the one now
            raise ledger.Superseded(expect, state.head, state.alias)
        event = _rollback_event(c, settings, version, mv, expect, reason, actor, at, key)
        stored, created = ledger.append(settings, event, expected=expect, empty_head=state.alias)
    except ledger.Superseded as exc:
        why = f"rollback to v{version} superseded: {exc}"
        log.warning(why)
        return {"champion_version": exc.champion, "previous_champion": expect, "ledger_event": None, "reason": why,
                "created": False, "outcome": SUPERSEDED}
    fault_point("rollback", "after_commit")  # the ledger holds the move; the alias has not followed
    champion.sync(c, settings, own=stored.event_id)  # the commit point was the append; the alias follows
    fault_point("rollback", "after_effect")
    _tag(c, settings, stored)
    log.info("champion rolled back from v%s to v%s by %s: %s", expect, version, stored.who(), reason)
    return _out(stored, stored.to_version, created, ROLLED_BACK, stored.reason)
