"""Tiers 1 and 2: every DAG file imports cleanly and follows the project's DAG policy."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
HEAVY = {"torch", "pytorch_lightning", "lightning", "polars", "pandas", "great_expectations", "mlflow", "sklearn",
         "numpy", "pyarrow"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_without_errors(dagbag, path):
    assert str(path) not in dagbag.import_errors, dagbag.import_errors.get(str(path))
    assert any(d.fileloc == str(path) for d in dagbag.dags.values()), f"{path.name} defines no DAG"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_no_heavy_imports_at_dag_top_level(path):
    tree = ast.parse(path.read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & HEAVY, f"{path.name} imports {names & HEAVY} at parse time"
    assert "airflow.decorators" not in {n.module for n in top if isinstance(n, ast.ImportFrom)}, "use airflow.sdk"


def test_dag_policy(dagbag):
    docs = set()
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags and "homeworth" in dag.tags, f"{dag_id}: tag it 'homeworth'"
        assert dag.doc_md and dag_id in dag.doc_md, f"{dag_id}: doc_md must describe this DAG"
        assert dag.doc_md not in docs, f"{dag_id}: doc_md copied from another DAG"
        docs.add(dag.doc_md)
        assert dag.max_active_runs <= 2, f"{dag_id}: max_active_runs too high for 2 cores"
        assert dag.catchup is False, f"{dag_id}: catch-up is done by explicit backfills"
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id}: needs retries"


def test_ingest_structure(dagbag):
    dag = dagbag.dags["sales_ingest"]
    assert {t.task_id for t in dag.tasks} == {"ingest", "validate"}
    assert dag.get_task("validate").upstream_task_ids == {"ingest"}
    assert [o.name for o in dag.get_task("validate").outlets] == ["validated_sales"]
    assert set(dag.params.keys()) == {"from_date", "to_date"}


def test_retrain_structure_and_params(dagbag):
    from tasks.core.params import RetrainParams

    dag = dagbag.dags["price_model_retrain"]
    assert {t.task_id for t in dag.tasks} == {"build_features", "train", "evaluate", "check_drift", "promote"}
    assert dag.get_task("train").upstream_task_ids == {"build_features"}
    assert dag.get_task("evaluate").upstream_task_ids == {"build_features", "train"}
    assert dag.get_task("check_drift").upstream_task_ids == {"build_features", "train"}
    assert dag.get_task("promote").upstream_task_ids == {"evaluate", "check_drift"}
    defaults = RetrainParams().model_dump()
    assert set(dag.params.keys()) == set(defaults)
    for name, value in defaults.items():
        param = dag.params.get_param(name)
        assert param.value == value, name
        assert param.description, f"param {name} needs a description for the trigger form"
    assert dag.params.get_param("window_days").schema["minimum"] == 30
    assert dag.params.get_param("model_family").schema["enum"] == ["tabm", "mlp_plr", "mlp"]


def test_retrain_listens_to_drift_events_only_when_configured(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import AssetOrTimeSchedule  # noqa: F401  (the type the timetable wraps)

    from tasks.core.settings import get_settings

    monkeypatch.setenv("HOMEWORTH_DRIFT_ACTION", "trigger_retrain")
    get_settings.cache_clear()
    try:
        dag = DagBag(dag_folder=str(REPO / "dags")).dags["price_model_retrain"]
        assert "sales_drift" in repr(dag.timetable)
    finally:
        monkeypatch.delenv("HOMEWORTH_DRIFT_ACTION")
        get_settings.cache_clear()
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["price_model_retrain"]
    assert "sales_drift" not in repr(dag.timetable)
