"""Tier 4, production shape: the real scheduler with PostgreSQL metadata, the CeleryExecutor over
Redis and a Celery worker, running ``sales_ingest`` (a bulk run and a backfill) and a short
``price_model_retrain``. Skipped, with the reason, when PostgreSQL or Redis is not reachable
(``make test`` starts the local ones)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import date
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parents[2]
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
DB = "homeworth_it"
REDIS_DB = 11  # a database of its own on the shared Redis
PORT = 18080


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


pytestmark = pytest.mark.skipif(not (_reachable(5432) and _reachable(6379)),
                                reason="PostgreSQL (5432) and Redis (6379) must run on 127.0.0.1: make services")


@pytest.fixture(scope="module")
def production_env(tmp_path_factory):
    import redis
    import sqlalchemy as sa

    engine = sa.create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {DB}"))
    engine.dispose()
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()

    home = tmp_path_factory.mktemp("celery")
    env = dict(os.environ)
    env.update({
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{PG}/{DB}",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://postgres@127.0.0.1:5432/{DB}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__API__PORT": str(PORT),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{PORT}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{PORT}/execution/",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "HOMEWORTH_HOME": str(home / "state"),
        "PYTHONPATH": str(REPO),
    })
    # Eight months of sales: enough for the spec's time split (88 test days, 59 validation days).
    subprocess.run([sys.executable, "-m", "tasks.ingest.replay", "--start", "2014-09-01", "--end", "2015-05-01"],
                   env=env, cwd=REPO, check=True, capture_output=True)
    yield env, home
    engine = sa.create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
    engine.dispose()


def test_scheduler_celery_postgres_end_to_end(production_env):
    from tools.airflow_local import CELERY_WORKER, COMPONENTS, LocalAirflow, migrate, set_password

    env, home = production_env
    migrate(env)
    set_password(home / "airflow", "admin", "admin")
    af = LocalAirflow(env, home / "logs", f"http://localhost:{PORT}", components=(*COMPONENTS, CELERY_WORKER))
    af.start()
    try:
        af.wait_healthy()
        for dag_id in ("sales_ingest", "price_model_retrain"):
            af.wait_dag(dag_id)
            af.unpause(dag_id)
        bulk = af.trigger("sales_ingest", logical_date="2014-09-01T00:00:00Z", run_id="it__bulk",
                          interval=("2014-09-01T00:00:00Z", "2015-04-28T00:00:00Z"))
        assert af.wait_run("sales_ingest", bulk, 300) == "success", af.failed_tasks("sales_ingest", bulk)
        backfill = af.backfill("sales_ingest", "2015-04-28T00:00:00Z", "2015-04-30T00:00:00Z")
        runs = af.wait_backfill(backfill, "sales_ingest", 300)
        assert len(runs) == 3 and {r["state"] for r in runs} == {"success"}
        retrain = af.trigger("price_model_retrain", logical_date="2015-05-01T03:00:00Z", run_id="it__retrain",
                             conf={"max_epochs": 2, "window_days": 242, "max_mdape": 1.0, "min_ppe10": 0.0})
        assert af.wait_run("price_model_retrain", retrain, 420) == "success", af.failed_tasks("price_model_retrain", retrain)
        promoted = af.xcom("price_model_retrain", retrain, "promote")
        assert promoted["promoted"] is True and promoted["champion_version"] == "1"
        hostnames = {t["hostname"] for t in af.request("GET", "/api/v2/dags/~/dagRuns/~/taskInstances?limit=100")["task_instances"]}
        assert hostnames and None not in hostnames
    finally:
        leftover = af.stop()
    assert leftover == [], f"processes left running: {leftover}"
    lake = home / "state" / "lake"
    validated = pl.read_parquet(lake / "validated" / "ds=*" / "part-0.parquet")
    assert validated["ds"].min() == date(2014, 9, 1) and validated["ds"].max() == date(2015, 4, 30)
