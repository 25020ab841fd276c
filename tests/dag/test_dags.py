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


def _parse(monkeypatch=None, **env: str) -> dict:
    """The DAGs parsed with ``env`` set (settings re-read before and after)."""
    from airflow.dag_processing.dagbag import DagBag

    from tasks.core.settings import get_settings

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert not bag.import_errors, bag.import_errors
        return bag.dags
    finally:
        for key in env:
            monkeypatch.delenv(key)
        get_settings.cache_clear()


def test_every_task_of_every_dag_has_the_failure_notifier(dagbag):
    from tasks.core.notify import log_failure_summary

    assert set(dagbag.dags) == {"sales_ingest", "price_model_retrain", "price_model_tune", "listings_score",
                                "champion_rollback"}
    for dag_id, dag in dagbag.dags.items():
        assert log_failure_summary in dag.default_args["on_failure_callback"], dag_id
        for task in dag.tasks:
            callbacks = task.on_failure_callback
            callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
            assert any(getattr(c, "__name__", "") == "log_failure_summary" for c in callbacks), \
                f"{dag_id}.{task.task_id}: no failure notifier ({callbacks})"


def test_every_dag_with_the_email_setting_mails_failures(monkeypatch):
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    for dag_id, dag in _parse(monkeypatch, HOMEWORTH_NOTIFY_EMAIL="ops@example.com").items():
        for task in dag.tasks:
            mailers = [c for c in task.on_failure_callback if isinstance(c, SmtpNotifier)]
            assert len(mailers) == 1 and mailers[0].to == ["ops@example.com"], f"{dag_id}.{task.task_id}"


def test_start_dates_admit_data_of_any_year_and_schedules_create_only_the_latest_run(dagbag):
    from datetime import datetime, timedelta, timezone

    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    scheduled = set()
    for dag_id, dag in dagbag.dags.items():
        assert dag.start_date <= datetime(1900, 1, 1, tzinfo=timezone.utc), f"{dag_id}: start_date {dag.start_date}"
        for task in dag.tasks:
            assert task.start_date is None or task.start_date <= dag.start_date, f"{dag_id}.{task.task_id}"
        timetable = decode_timetable(encode_timetable(dag.timetable))  # the scheduler's view of it
        if timetable.periodic:
            info = timetable.next_dagrun_info(last_automated_data_interval=None,
                                              restriction=TimeRestriction(dag.start_date, None, catchup=False))
            # catchup=False: the first scheduled run is due within a day of now, not in 1900.
            assert abs(info.run_after - datetime.now(timezone.utc)) <= timedelta(days=1), f"{dag_id}: {info}"
            scheduled.add(dag_id)
    assert scheduled == {"sales_ingest", "listings_score", "price_model_retrain"}


def test_training_tasks_go_to_the_training_queue(dagbag, monkeypatch):
    assert dagbag.dags["price_model_retrain"].get_task("train").queue == "default"
    assert dagbag.dags["price_model_tune"].get_task("run_trial").queue == "default"
    dags = _parse(monkeypatch, HOMEWORTH_TRAINING_QUEUE="gpu")
    assert dags["price_model_retrain"].get_task("train").queue == "gpu"
    assert dags["price_model_tune"].get_task("run_trial").queue == "gpu"
    others = {(d, t.task_id): t.queue for d, dag in dags.items() for t in dag.tasks}
    del others[("price_model_retrain", "train")], others[("price_model_tune", "run_trial")]
    assert set(others.values()) == {"default"}, others


@pytest.mark.e2e
def test_a_2009_day_is_ingested_not_skipped(airflow_db, tmp_path):
    """A logical date years before the bundled data's first day runs both tasks (not a no-op 'success')."""
    import pendulum
    import polars as pl

    from tasks.core.settings import get_settings
    from tests.support import private_home

    rows = (REPO / "tests" / "corpus" / "good.csv").read_text().splitlines()
    day = "2009-06-15"
    with private_home(tmp_path / "state"):
        landing = Path(get_settings().landing_uri) / day
        landing.mkdir(parents=True)
        (landing / "sales.csv").write_text("\n".join([rows[0], *(r.replace('"20141013T', '"20090615T')
                                                                 for r in rows[1:])]) + "\n")
        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag(dag_folder=str(REPO / "dags" / "sales_ingest.py")).dags["sales_ingest"]
        run = dag.test(logical_date=pendulum.datetime(2009, 6, 15, tz="UTC"), run_conf={"from_date": None, "to_date": None})
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        assert run.state == "success" and states == {"ingest": "success", "validate": "success"}, states
        validated = pl.read_parquet(Path(get_settings().lake_uri) / "validated" / f"ds={day}" / "part-0.parquet")
    assert validated.height == 5 and validated["date"].dt.year().to_list() == [2009] * 5
