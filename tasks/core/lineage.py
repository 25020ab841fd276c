"""Where a training run came from: its DAG run and its data window, recorded as MLflow tags."""

from __future__ import annotations

from datetime import date, timedelta

from pydantic import BaseModel

from tasks.core import tracking


class Lineage(BaseModel):
    """Where a run came from; recorded as MLflow tags on the run and the model version."""

    dag_id: str
    run_id: str
    run_type: str = "manual"
    window_start: str
    window_end: str

    def tags(self) -> dict[str, str]:
        return {tracking.TAG_DAG_ID: self.dag_id, tracking.TAG_RUN_ID: self.run_id, "airflow.run_type": self.run_type,
                "data.window_start": self.window_start, "data.window_end": self.window_end,
                "git.commit": tracking.git_commit()}


def training_window(interval_end: date, window_days: int) -> tuple[date, date]:
    """[start, end): the ``window_days`` before the end of the run's data interval."""
    return interval_end - timedelta(days=window_days), interval_end
