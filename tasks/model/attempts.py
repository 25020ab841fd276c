"""Earlier tries of a ``train`` task: one model version per Airflow run, whatever the retries.

A try killed by SIGKILL or the out-of-memory killer runs no ``finally``: it can leave its MLflow run RUNNING,
with or without a model version registered from it. Before training, :func:`settle` looks at every run the
tries of the same (dag_id, run_id, task) logged, in any state, and

- reuses a complete version (registered, READY, its bundle files there with the sizes recorded at
  registration): the run gets its ``model_version`` tag and ends FINISHED if it had not;
- otherwise marks each run it cannot use FAILED with the tag ``homeworth.orphan`` = why, and each incomplete
  version with the same tag (nothing is deleted), so that the caller trains once more.

Of several complete versions (the code before this module could make them, so can a zombie try: see
docs/reliability.md) the one a FINISHED run names is kept, else the lowest; the others are marked superseded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from tasks.core import tracking

log = logging.getLogger(__name__)

TAG_VERSION = "model_version"  # on the training run: the version registered from it
TAG_BUNDLE_SIZES = "bundle.sizes"  # on the model version: {file: bytes} of the bundle as it was logged


@dataclass
class Attempt:
    """One earlier try's run: its complete model version, if any, else why it cannot be reused."""

    run: Any
    version: Any | None = None
    reason: str = ""
    broken: list[tuple[Any, str]] = field(default_factory=list)  # versions registered from it that are not complete


def version_problem(c, mv) -> str | None:
    """Why a registered model version cannot be reused (None when it is complete)."""
    from tasks.model.bundle import CONFIG, PREPROCESSING, WEIGHTS

    v = mv.version
    if mv.tags.get(tracking.TAG_ORPHAN):
        return f"registered version {v} is marked orphan: {mv.tags[tracking.TAG_ORPHAN]}"
    if str(mv.status) != "READY":
        return f"registered version {v} is {mv.status}, not READY"
    sizes = tracking.artifact_sizes(c, mv.source)
    missing = [f for f in (WEIGHTS, CONFIG, PREPROCESSING) if f not in sizes or sizes[f] == 0]
    if missing:
        return f"registered version {v} has no {', '.join(missing)} under {mv.source}"
    expected = json.loads(mv.tags.get(TAG_BUNDLE_SIZES) or "{}")
    changed = [f for f, n in expected.items() if sizes.get(f) is not None and sizes.get(f) != n]
    if changed:
        return f"registered version {v} has a truncated or changed {', '.join(changed)} (sizes {expected} at registration)"
    return None


def _no_version_reason(run) -> str:
    status, tag = run.info.status, run.data.tags.get(TAG_VERSION)
    if tag:
        return f"its model_version tag names version {tag}, which was not registered from this run"
    if status in ("RUNNING", "SCHEDULED"):
        return f"attempt killed before registering a model version (run left {status})"
    if status == "FINISHED":
        return "run finished without a registered model version"
    return f"attempt ended {status} before registering a model version"


def assess(c, model_name: str, run) -> Attempt:
    """An earlier run: the versions registered from it, which one is complete, what is wrong with the rest."""
    a = Attempt(run)
    for mv in tracking.run_versions(c, model_name, run.info.run_id):
        problem = version_problem(c, mv)
        if problem is None and a.version is None:
            a.version = mv
        elif problem is None:
            a.broken.append((mv, f"a second version registered from run {run.info.run_id}; version "
                                 f"{a.version.version} is kept"))
        else:
            a.broken.append((mv, problem))
    if a.version is None:
        a.reason = "; ".join(p for _, p in a.broken) or _no_version_reason(run)
    return a


def _preference(a: Attempt) -> tuple[bool, bool, int]:
    """Keep first a version whose run was not given up, then one a FINISHED run names, then the lowest."""
    named = a.run.info.status == "FINISHED" and a.run.data.tags.get(TAG_VERSION) == str(a.version.version)
    return (bool(a.run.data.tags.get(tracking.TAG_ORPHAN)), not named, int(a.version.version))


def settle(c, model_name: str, runs: list) -> Attempt | None:
    """Reuse the complete version of an earlier try (returned, its run tagged and FINISHED), or mark every
    earlier run and incomplete version orphan (returns None: train once more). Nothing is deleted."""
    attempts = [assess(c, model_name, r) for r in runs]
    keep = min((a for a in attempts if a.version is not None), key=_preference, default=None)
    for a in attempts:
        for mv, why in a.broken:
            if tracking.mark_orphan_version(c, model_name, mv, why):
                log.warning("model version %s marked orphan: %s", mv.version, why)
        if a is keep:
            continue
        if a.version is not None:
            a.reason = (f"version {a.version.version} superseded by version {keep.version.version} of run "
                        f"{keep.run.info.run_id}: one model version per Airflow run")
            tracking.mark_orphan_version(c, model_name, a.version, a.reason)
        if tracking.mark_orphan_run(c, a.run, a.reason):
            log.warning("MLflow run %s of an earlier try marked orphan: %s", a.run.info.run_id, a.reason)
    if keep is not None:
        adopt(c, keep)
    return keep


def adopt(c, a: Attempt) -> None:
    """Make the reused try's run say what it produced: its ``model_version`` tag, FINISHED."""
    run_id, version = a.run.info.run_id, str(a.version.version)
    if a.run.data.tags.get(TAG_VERSION) != version:
        c.set_tag(run_id, TAG_VERSION, version)
    if a.run.data.tags.get(tracking.TAG_ORPHAN):  # given up by a try that was itself killed before registering
        c.delete_tag(run_id, tracking.TAG_ORPHAN)
    if a.run.info.status != "FINISHED":
        c.set_terminated(run_id, "FINISHED")
        log.warning("MLflow run %s was left %s by a killed try; its version %s is complete: reused, run ended "
                    "FINISHED", run_id, a.run.info.status, version)
    a.run = c.get_run(run_id)
