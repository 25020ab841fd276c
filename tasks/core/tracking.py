"""MLflow glue: one place that points MLflow at the settings' store and finds or creates runs.

The tracking URI is a setting: a local sqlite store by default, an ``http://`` tracking server in
production; nothing else changes. Runs are found again by their Airflow lineage tags, so a retried
task reuses its finished run instead of logging a second one.
"""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING

from tasks.core.settings import REPO_ROOT, Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
TAG_DAG_ID, TAG_RUN_ID, TAG_TASK = "airflow.dag_id", "airflow.run_id", "airflow.task"


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


def find_run(c: "MlflowClient", exp_id: str, dag_id: str, run_id: str, task: str):
    """The finished MLflow run an earlier try of this Airflow task logged, if any."""
    runs = c.search_runs(
        [exp_id],
        filter_string=f"tags.`{TAG_DAG_ID}` = '{dag_id}' and tags.`{TAG_RUN_ID}` = '{run_id}' "
        f"and tags.`{TAG_TASK}` = '{task}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0] if runs else None


def ensure_registered_model(c: "MlflowClient", name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description="homeworth automated valuation model (ln price regression)")


def champion_version(c: "MlflowClient", name: str):
    """The model version holding the champion alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
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
