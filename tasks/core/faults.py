"""A test-only fault hook: ``fault_point(task, point)`` kills its own process with SIGKILL where a test asks.

Used by the fault-injection suite (``make faults``, ``tests/faults/``); users never set it. With the
environment variable ``HOMEWORTH_FAULT`` unset (always, outside that suite) a call is one ``os.environ``
lookup and nothing else.

``HOMEWORTH_FAULT`` is a comma-separated list of ``<task>:<point>`` or ``<task>:<point>@<airflow run id>``:

- ``task``: the Airflow task id (``ingest``, ``validate``, ``build_features``, ``train``, ``evaluate``,
  ``check_drift``, ``promote``, ``score``, ``rollback``);
- ``point``: ``start`` (the step begins), ``after_commit`` (promote and rollback: the ledger event is
  appended, the alias has not moved yet), ``mid_write`` (inside ``storage.write_bytes_atomic``, after the
  temporary file is written and before its rename), ``after_effect`` (after the step's external side
  effect: the raw partitions written, the day manifests published, the feature table published, the model
  version registered, the evaluation logged, the drift metrics logged, the ledger event appended and the
  alias moved, the predictions written) and ``before_return`` (the task's XCom result is being made);
- ``@run id``: only in that Airflow run (default: every run); shell-style wildcards match several
  (``@backfill__2015-05-03*``).

``HOMEWORTH_FAULT_PAUSE`` takes the same list; a point it names *pauses* instead of killing: the process creates
its marker, then the file ``<marker>.paused``, and waits until a test creates ``<marker>.resume`` (at most
``HOMEWORTH_FAULT_PAUSE_S`` seconds, default 300), then goes on. The MLflow-outage test stops the tracking
server while ``promote`` waits there.

A matching point fires once per (DAG, run, task, point): it first creates the marker file
``<HOMEWORTH_FAULT_DIR>/<dag>__<run>__<task>__<point>`` exclusively (``O_EXCL``); only the try that
created it is killed, so Airflow's retry of the task survives the same point. The DAG, run and task come
from the ``AIRFLOW_CTX_*`` variables the task runner exports (``task=None``: the current task's id).
"""

from __future__ import annotations

import fnmatch
import os
import re
import signal
import sys
import tempfile
import time

ENV = "HOMEWORTH_FAULT"
DIR_ENV = "HOMEWORTH_FAULT_DIR"
PAUSE_ENV, PAUSE_S_ENV = "HOMEWORTH_FAULT_PAUSE", "HOMEWORTH_FAULT_PAUSE_S"
POINTS = ("start", "after_commit", "mid_write", "after_effect", "before_return")


def fault_point(task: str | None, point: str) -> None:
    """Die here (SIGKILL of this process) when ``HOMEWORTH_FAULT`` names ``task:point`` and it has not fired yet
    for this run; wait here first when ``HOMEWORTH_FAULT_PAUSE`` names it; no effect otherwise."""
    wanted, pause = os.environ.get(ENV), os.environ.get(PAUSE_ENV)
    if wanted or pause:
        task = task or os.environ.get("AIRFLOW_CTX_TASK_ID", "")
        if pause:
            _maybe_pause(pause, task, point)
        if wanted:
            _maybe_die(wanted, task, point)


def wanted_here(wanted: str, task: str, point: str, run_id: str) -> bool:
    """Whether the list ``wanted`` names ``task:point`` for the run ``run_id``."""
    for entry in wanted.split(","):
        name, _, only_run = entry.strip().partition("@")
        if name == f"{task}:{point}" and (not only_run or fnmatch.fnmatchcase(run_id, only_run)):
            return True
    return False


def marker_path(task: str, point: str, dag_id: str = "", run_id: str = "") -> str:
    folder = os.environ.get(DIR_ENV) or os.path.join(tempfile.gettempdir(), "homeworth-faults")
    name = "__".join(re.sub(r"[^A-Za-z0-9_.+-]", "_", p) for p in (dag_id or "-", run_id or "-", task, point))
    return os.path.join(folder, name)


def _claim(wanted: str, task: str, point: str, suffix: str = "") -> str | None:
    """The marker path if ``wanted`` names this point and it has not fired for this run (created now), else None."""
    dag_id, run_id = os.environ.get("AIRFLOW_CTX_DAG_ID", ""), os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")
    if not wanted_here(wanted, task, point, run_id):
        return None
    marker = marker_path(task, point, dag_id, run_id) + suffix
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:  # fired already for this run: this is the retry, it survives
        return None
    try:
        os.write(fd, f"pid={os.getpid()} try={os.environ.get('AIRFLOW_CTX_TRY_NUMBER', '')} run={run_id}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return marker


def _maybe_pause(wanted: str, task: str, point: str) -> None:
    """Wait at this point until a test creates ``<marker>.resume`` (once per run, like a kill)."""
    marker = _claim(wanted, task, point, ".pause")
    if marker is None:
        return
    base = marker.removesuffix(".pause")
    limit = float(os.environ.get(PAUSE_S_ENV) or 300)
    print(f"homeworth fault injected: paused at {task}:{point}", file=sys.stderr, flush=True)
    open(base + ".paused", "w").close()  # the test may act now
    deadline = time.monotonic() + limit
    while not os.path.exists(base + ".resume"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"fault pause at {task}:{point}: no {base}.resume within {limit:.0f} s")
        time.sleep(0.1)


def _maybe_die(wanted: str, task: str, point: str) -> None:
    run_id = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "")
    if _claim(wanted, task, point) is None:
        return
    print(f"homeworth fault injected: SIGKILL at {task}:{point} (run {run_id or '-'})", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
