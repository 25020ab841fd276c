"""MLflow glue: one place that points MLflow at the settings' store and finds or creates runs.

The tracking URI is a setting: a local sqlite store by default, an ``http://`` tracking server in
production; nothing else changes. Runs are found again by their Airflow lineage tags, in any state, so
a retried task reuses what an earlier try completed instead of logging a second one, and marks what a
killed try left half done (tag ``homeworth.orphan``, never deleted).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tasks.core.settings import REPO_ROOT, Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
TAG_DAG_ID, TAG_RUN_ID, TAG_TASK = "airflow.dag_id", "airflow.run_id", "airflow.task"
TAG_ORPHAN = "homeworth.orphan"  # on a run or model version a retried task left behind: why it is not used

# MLflow's HTTP client retries a failed request 7 times with exponential backoff (about 4 minutes) and waits
# 120 s for an answer. The steps that move the champion (promote, rollback) fail fast instead: Airflow's retry
# is their recovery, and the ledger keeps what they committed. Values an operator sets in the environment win.
FAIL_FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server did not answer (refused, reset, timed out)."""


@contextmanager
def fail_fast() -> Iterator[None]:
    """Bounded MLflow HTTP retries and timeout (:data:`FAIL_FAST_HTTP`) for the block: a dead tracking server
    fails a call in seconds, not minutes. Variables already set in the environment are kept; the environment
    is restored after the block."""
    added = {k: v for k, v in FAIL_FAST_HTTP.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from or during) is a failed connection to the server."""
    import requests

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                          TimeoutError)):
            return True
        if "Max retries exceeded" in str(e) or "failed with timeout exception" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def client(settings: Settings) -> "MlflowClient":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import mlflow

    if settings.mlflow_tracking_uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(settings.mlflow_tracking_uri.removeprefix("sqlite:///")), exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def experiment_id(c: "MlflowClient", settings: Settings) -> str:
    exp = c.get_experiment_by_name(settings.experiment_name)
    if exp is not None:
        return exp.experiment_id
    artifact = None if settings.mlflow_tracking_uri.startswith("http") else settings.mlflow_artifact_uri
    return c.create_experiment(settings.experiment_name, artifact_location=artifact)


def _lineage_filter(dag_id: str, run_id: str, task: str) -> str:
    return (f"tags.`{TAG_DAG_ID}` = '{dag_id}' and tags.`{TAG_RUN_ID}` = '{run_id}' "
            f"and tags.`{TAG_TASK}` = '{task}'")


def find_run(c: "MlflowClient", exp_id: str, dag_id: str, run_id: str, task: str):
    """The newest finished MLflow run a try of this Airflow task logged, if any."""
    runs = c.search_runs([exp_id], filter_string=_lineage_filter(dag_id, run_id, task) + " and attributes.status = 'FINISHED'",
                         order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def find_runs(c: "MlflowClient", exp_id: str, dag_id: str, run_id: str, task: str) -> list:
    """Every MLflow run the tries of this Airflow task logged, in any state (RUNNING, SCHEDULED, FAILED,
    KILLED, FINISHED; a try killed by SIGKILL or the OOM killer leaves its run RUNNING), newest first."""
    return list(c.search_runs([exp_id], filter_string=_lineage_filter(dag_id, run_id, task),
                              order_by=["attributes.start_time DESC"], max_results=1000))


def run_versions(c: "MlflowClient", name: str, run_id: str) -> list:
    """The versions of registered model ``name`` created from an MLflow run, oldest first."""
    found = c.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return sorted(found, key=lambda mv: int(mv.version))


def artifact_sizes(c: "MlflowClient", uri: str) -> dict[str, int | None]:
    """Name -> size in bytes (None where the store does not say) of the files directly under an artifact
    URI, such as a model version's source; empty when nothing is there."""
    from mlflow.artifacts import list_artifacts

    files = list_artifacts(artifact_uri=uri, tracking_uri=c.tracking_uri)
    return {f.path.rstrip("/").rsplit("/", 1)[-1]: f.file_size for f in files if not f.is_dir}


def mark_orphan_run(c: "MlflowClient", run, reason: str) -> bool:
    """Record why a run another try left behind is not used (tag ``homeworth.orphan``) and end it FAILED;
    nothing is deleted. A run already marked keeps its first reason. True when it was marked now."""
    if run.data.tags.get(TAG_ORPHAN) and run.info.status == "FAILED":
        return False
    c.set_tag(run.info.run_id, TAG_ORPHAN, reason[:5000])
    if run.info.status != "FAILED":
        c.set_terminated(run.info.run_id, "FAILED")
    return True


def mark_orphan_version(c: "MlflowClient", name: str, mv, reason: str) -> bool:
    """Record on a model version why it is not used (tag ``homeworth.orphan``); it stays registered.
    A version already marked keeps its first reason. True when it was marked now."""
    if mv.tags.get(TAG_ORPHAN):
        return False
    c.set_model_version_tag(name, mv.version, TAG_ORPHAN, reason[:5000])
    return True


def ensure_registered_model(c: "MlflowClient", name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description="homeworth automated valuation model (ln price regression)")


def champion_version(c: "MlflowClient", name: str, strict: bool = False):
    """The model version holding the champion alias, or None. With ``strict`` (the champion's moves), an
    unreachable server raises :class:`TrackingUnavailable` instead: it is not "no champion"."""
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if strict and unreachable(exc):
            raise TrackingUnavailable(f"MLflow at {c.tracking_uri} unreachable reading the alias "
                                      f"'{CHAMPION}' of {name}: {str(exc)[:300]}") from exc
        return None


def git_commit() -> str:
    if os.environ.get("HOMEWORTH_GIT_COMMIT"):
        return os.environ["HOMEWORTH_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def download_model(c: "MlflowClient", name: str, version: str, dst: str) -> str:
    """Local folder holding the bundle of a registered model version."""
    import mlflow

    mv = c.get_model_version(name, version)
    return mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=dst)
