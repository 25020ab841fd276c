"""The bounded trigger form through real Airflow (issue 17): a sales_ingest bulk run from year 1 is refused
when it is triggered, and a range too long for the form to see is refused by the ingest task before it
writes anything, at its first try (no retries: the same range fails again)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ingest_dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags" / "sales_ingest.py")).dags["sales_ingest"]


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.e2e
def test_a_bulk_ingest_from_year_one_is_refused_when_triggered(airflow_db, ingest_dag, tmp_path):
    from airflow.sdk.exceptions import ParamValidationError

    from tasks.core.settings import get_settings
    from tests.support import private_home

    with private_home(tmp_path / "state"):
        with pytest.raises(ParamValidationError, match="0001-01-01"):
            ingest_dag.test(run_conf={"from_date": "0001-01-01", "to_date": "2015-01-01"})
        assert _files(Path(get_settings().lake_uri)) == []


@pytest.mark.e2e
def test_a_range_over_max_bulk_days_fails_the_ingest_task_before_it_writes(airflow_db, ingest_dag, tmp_path):
    from tasks.core.settings import get_settings
    from tests.support import private_home

    with private_home(tmp_path / "state"):
        run = ingest_dag.test(run_conf={"from_date": "1950-01-01", "to_date": "2015-01-01"})
        tis = {ti.task_id: ti for ti in run.get_task_instances()}
        states = {task_id: ti.state for task_id, ti in tis.items()}
        assert run.state == "failed" and states["ingest"] == "failed", states
        assert tis["ingest"].try_number == 1, "a refused range is not retried: it would fail again"
        assert _files(Path(get_settings().lake_uri)) == []
