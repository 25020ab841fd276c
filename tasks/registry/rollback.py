"""Rollback: move the ``champion`` alias back to an earlier champion, by a person or a DAG run, with a ledger event.

The entry points are ``homeworth rollback`` (``tasks/cli.py``) and the ``champion_rollback`` DAG; both
say who acts (``actor``), when (``at``) and pass a ``key`` that makes the event unique to that action.
"""

from __future__ import annotations

import logging
from datetime import date, datetime

from tasks.core import tracking
from tasks.core.settings import Settings
from tasks.registry import ledger
from tasks.registry.policy import metric_difference
from tasks.registry.promote import apply_alias

log = logging.getLogger(__name__)


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


def _target(c, settings: Settings, version: str):
    """The model version to go back to, the live one (or None); a RollbackError unless ``version`` was a champion."""
    from mlflow.exceptions import MlflowException

    try:
        mv = c.get_model_version(settings.model_name, version)
    except MlflowException as exc:
        raise RollbackError(f"model {settings.model_name!r} has no version {version}") from exc
    current = tracking.champion_version(c, settings.model_name)
    if current is not None and str(current.version) == version:
        raise RollbackError(f"v{version} is already the champion")
    events = ledger.read_all(settings)
    was_champion = any(e.to_version == version for e in events) or mv.tags.get("promotion.decision") == "promoted"
    if not was_champion:
        raise RollbackError(f"v{version} was never the champion (no ledger event made it one and its MLflow tag "
                            f"promotion.decision is {mv.tags.get('promotion.decision')!r}); a rollback goes back to an "
                            "earlier champion")
    return mv, current


def _rollback_event(c, settings: Settings, version: str, mv, current, reason: str, actor: dict, at,
                    key: str) -> ledger.LedgerEvent:
    previous = str(current.version) if current is not None else None
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


def rollback(settings: Settings, version: str | int, reason: str, actor: dict, at: datetime | date | str,
             key: str) -> dict:
    """Move ``champion`` back to ``version``, an earlier champion, and record why in the ledger.

    ``actor`` says who (a DAG run or a person), ``at`` when (the run's time, or the wall clock for a
    person), ``key`` makes the event unique to that actor and action (a retried task reuses it).
    """
    version, reason = _checked(version, reason)
    c = tracking.client(settings)
    eid = ledger.event_id(at, "rollback", key)
    done = ledger.get(settings, eid)
    if done is not None:
        apply_alias(c, settings, done.to_version)
        return {"champion_version": done.to_version, "previous_champion": done.from_version, "ledger_event": eid,
                "reason": done.reason, "created": False}

    mv, current = _target(c, settings, version)
    previous = str(current.version) if current is not None else None
    event = _rollback_event(c, settings, version, mv, current, reason, actor, at, key)
    stored, created = ledger.append(settings, event)
    apply_alias(c, settings, stored.to_version)
    c.set_model_version_tag(settings.model_name, version, "rollback.reason", reason[:5000])
    c.set_model_version_tag(settings.model_name, version, "rollback.ledger_event", stored.event_id)
    log.info("champion rolled back from v%s to v%s by %s: %s", previous, version, stored.who(), reason)
    return {"champion_version": stored.to_version, "previous_champion": stored.from_version,
            "ledger_event": stored.event_id, "reason": stored.reason, "created": created}
