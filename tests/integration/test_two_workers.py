"""Tier 4, two Celery workers that share nothing local (issue 18): one consumes the default queue, the other the
training queue (``HOMEWORTH_TRAINING_QUEUE=training``, where ``price_model_retrain`` routes ``train``). Each
worker has its own working folder, ``AIRFLOW_HOME`` (so its own task-log folder and log server) and
``HOMEWORTH_HOME``; they share only PostgreSQL (metadata, Celery results), Redis (the broker), an S3 server
(moto's standalone server: landing zone, lake, reports, MLflow's artifacts) and a real ``mlflow server``.

A bulk ``sales_ingest``, an ``airflow backfill`` of three of its days (redone in place) and a short
``price_model_retrain`` run through the real scheduler (PostgreSQL metadata, the CeleryExecutor). The test asserts
from the metadata database (each task instance's ``queue``) and from each worker's own log folder (a task's
log exists only on the worker that ran it) that ``train``, and only ``train``, ran on the training worker.

It is also the object-store test of the lake end to end (issue 18): with ``HOMEWORTH_LANDING_URI``,
``HOMEWORTH_LAKE_URI`` and ``HOMEWORTH_REPORTS_URI`` on ``s3://`` and MLflow's artifacts on S3, it checks the
keys every stage writes (raw and validated days, one published feature table with its manifest, the
evaluation, the report, the champion's model files in MLflow's bucket), that no temporary key is left, and
that no Parquet or safetensors file was written below any component's folders or ``TMPDIR``.
Skipped, with the reason, when PostgreSQL or Redis is not reachable (``make test`` starts the local ones).
"""

from __future__ import annotations

import gzip
import shlex
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from tests.kc import KC_DATA_PATH
from tests.support import free_port, local_airflow_env
from tools import servers

REPO = Path(__file__).resolve().parents[2]
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
DB = "homeworth_two_workers"
REDIS_DB = 12  # a database of its own on the shared Redis
FIRST, LAST = date(2014, 11, 1), date(2015, 5, 27)
TRAINING_QUEUE = "training"
LOCAL_SUFFIXES = (".parquet", ".safetensors")


def _reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


pytestmark = pytest.mark.skipif(not (_reachable(5432) and _reachable(6379)),
                                reason="PostgreSQL (5432) and Redis (6379) must run on 127.0.0.1: make services")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """What the workers share: a fresh PostgreSQL database and Redis database, moto's S3 server with the
    buckets, and an ``mlflow server`` whose artifacts go to S3. Yields the environment they all get."""
    import redis
    import sqlalchemy as sa

    engine = sa.create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {DB}"))
    engine.dispose()
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    root = tmp_path_factory.mktemp("two_workers")
    with servers.s3_and_mlflow(root / "servers") as srv:
        env = {
            **srv["env"],
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{PG}/{DB}",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://postgres@127.0.0.1:5432/{DB}",
            "HOMEWORTH_LANDING_URI": "s3://landing/feed", "HOMEWORTH_LAKE_URI": "s3://lake/lake",
            "HOMEWORTH_REPORTS_URI": "s3://lake/reports",
            "HOMEWORTH_TRAINING_QUEUE": TRAINING_QUEUE, "HOMEWORTH_TORCH_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
        try:
            yield {"root": root, "env": env, "s3": srv["s3"], "mlflow_uri": srv["mlflow_uri"]}
        finally:
            engine = sa.create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"))
            engine.dispose()


def _role_env(shared: dict, role: str, api_port: int) -> dict[str, str]:
    """A component's environment: its own AIRFLOW_HOME and HOMEWORTH_HOME below ``root/role``, the shared rest."""
    tmp = shared["root"] / role / "tmp"  # a TMPDIR of its own: checked for spooled lake files at the end
    tmp.mkdir(parents=True, exist_ok=True)
    env = local_airflow_env(shared["root"] / role, api_port, 3, **shared["env"], TMPDIR=str(tmp))
    # Each worker serves its own task logs (the api-server fetches them from it): a port of its own.
    env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(free_port())
    return env


def _worker(env: dict[str, str], workdir: Path, queue: str, concurrency: int) -> tuple:
    """A LocalAirflow component: a Celery worker started in its own working folder, on one queue."""
    from tools.airflow_local import AIRFLOW

    workdir.mkdir(parents=True, exist_ok=True)
    argv = [*AIRFLOW, "celery", "worker", "--queues", queue, "--concurrency", str(concurrency),
            "--celery-hostname", f"{queue}@%h"]
    return (f"worker-{queue}", ["/bin/sh", "-c", f"cd {shlex.quote(str(workdir))} && exec {shlex.join(argv)}"])


def _replay(env: dict[str, str], root: Path) -> None:
    """Every 8th King County sale of seven months into the S3 landing zone (the machine has 2 cores)."""
    with gzip.open(KC_DATA_PATH, "rt", newline="") as f:
        lines = f.readlines()
    reduced = root / "sales_eighth.csv"
    reduced.write_text(lines[0] + "".join(lines[1::8]))
    subprocess.run([sys.executable, "-m", "tasks.ingest.replay", "--start", FIRST.isoformat(), "--end",
                    LAST.isoformat(), "--source", str(reduced)], env=env, cwd=root, check=True,
                   capture_output=True, timeout=300)


def _task_logs(airflow_home: Path, dag_id: str, run_id: str) -> set[str]:
    """Task ids with a log file below this worker's own log folder for the run."""
    run_dir = airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
    return {p.name.removeprefix("task_id=") for p in run_dir.glob("task_id=*") if any(p.rglob("*.log"))}


def _wait(core, workers, dag_id: str, run_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for af in (core, *workers):
            af.check_alive()
        state = core.run_state(dag_id, run_id)
        if state in ("success", "failed"):
            return state
        time.sleep(3)
    raise AssertionError(f"{dag_id} {run_id} not finished after {timeout}s")


def _local_lake_files(roots: list[Path]) -> list[str]:
    return [str(p) for root in roots for p in root.rglob("*") if p.name.endswith(LOCAL_SUFFIXES)]


def _assert_on_the_store(s3, mlflow_uri: str) -> None:
    """What every stage wrote is on S3: raw and validated days, one published feature table, the evaluation,
    the report, and the champion's model files in MLflow's artifact bucket; no temporary key is left."""
    import mlflow

    lake = servers.keys(s3, "lake")
    assert any(k.startswith("lake/raw/ds=2014-11-03/") for k in lake), lake[:20]
    assert any(k.startswith("lake/validated/ds=2015-05-26/") and k.endswith("_manifest.json") for k in lake)
    tables = [k for k in lake if k.startswith("lake/features/") and k.endswith("/part-0.parquet")]
    assert len(tables) == 1 and tables[0].replace("part-0.parquet", "manifest.json") in lake, tables
    assert not [k for k in lake if ".tmp-" in k], "no temporary key is left on the store"
    assert any(k.startswith("lake/evaluations/") and k.endswith("predictions.parquet") for k in lake)
    assert any(k.startswith("reports/") and k.endswith("report.html") for k in lake)
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)  # not a registry set earlier
    champion = client.get_model_version_by_alias("homeworth-price-model", "champion")
    assert champion.tags["promotion.decision"] == "promoted", champion.tags
    files = {a.path for a in client.list_artifacts(champion.run_id, "model")}
    assert {"model/model.safetensors", "model/preprocessing.json", "model/model_config.json"} <= files, files
    stored = servers.keys(s3, "mlflow")
    assert any(k.endswith("model/model.safetensors") for k in stored), stored[:20]


def test_default_and_training_workers_split_the_queues(shared):
    from tools.airflow_local import COMPONENTS, LocalAirflow, migrate, set_password

    root, api_port = shared["root"], free_port()
    base_url = f"http://127.0.0.1:{api_port}"
    core_env = _role_env(shared, "core", api_port)
    _replay(core_env, root)
    migrate(core_env)
    set_password(Path(core_env["AIRFLOW_HOME"]), "admin", "admin")
    envs = {q: _role_env(shared, f"worker-{q}", api_port) for q in ("default", TRAINING_QUEUE)}
    core = LocalAirflow(core_env, root / "core" / "logs", base_url, components=COMPONENTS)
    workers = [LocalAirflow(envs[q], root / f"worker-{q}" / "logs", base_url,
                            components=(_worker(envs[q], root / f"worker-{q}" / "work", q, 2 if q == "default" else 1),))
               for q in envs]
    all_af = [core, *workers]
    try:
        for af in all_af:
            af.start()
        core.wait_healthy()
        for dag_id in ("sales_ingest", "price_model_retrain"):
            core.wait_dag(dag_id)
            core.unpause(dag_id)
        ingest = core.trigger("sales_ingest", logical_date=f"{LAST.isoformat()}T00:00:00Z", run_id="two__bulk",
                              conf={"from_date": FIRST.isoformat(), "to_date": LAST.isoformat()})
        assert _wait(core, workers, "sales_ingest", ingest, 600) == "success", core.failed_tasks("sales_ingest", ingest)
        backfill = core.backfill("sales_ingest", "2015-04-28T00:00:00Z", "2015-04-30T00:00:00Z")
        redone = core.wait_backfill(backfill, "sales_ingest", 300)  # three days already ingested: redone in place
        assert len(redone) == 3 and {r["state"] for r in redone} == {"success"}, redone
        conf = {"max_epochs": 3, "window_days": 200, "max_mdape": 0.9, "min_ppe10": 0.0, "refit_on_val": False}
        retrain = core.trigger("price_model_retrain", logical_date="2015-05-28T03:00:00Z", run_id="two__retrain",
                               conf=conf)
        assert _wait(core, workers, "price_model_retrain", retrain, 900) == "success", (
            core.failed_tasks("price_model_retrain", retrain))
        promoted = core.xcom("price_model_retrain", retrain, "promote")
        assert promoted["promoted"] is True, promoted
        runs = {"sales_ingest": ingest, "price_model_retrain": retrain}
        tis = {dag_id: core.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances")["task_instances"]
               for dag_id, run in runs.items()}
    finally:
        leftover = [pid for af in all_af for pid in af.stop()]
    assert leftover == [], f"processes left running: {leftover}"
    _assert_split(envs, runs, tis)
    _assert_on_the_store(shared["s3"], shared["mlflow_uri"])
    left = _local_lake_files([root / "core", *(root / f"worker-{q}" for q in envs)])
    assert left == [], f"lake or artifact files on a worker's local disk: {left}"


def _assert_split(envs: dict, runs: dict, tis: dict) -> None:
    """``train`` ran on the training worker only, every other task that ran on the default worker only."""
    homes = {q: Path(env["AIRFLOW_HOME"]) for q, env in envs.items()}
    ran_train = False
    for dag_id, run_id in runs.items():
        logs = {q: _task_logs(home, dag_id, run_id) for q, home in homes.items()}
        assert not logs["default"] & logs[TRAINING_QUEUE], f"{dag_id}: a task logged on both workers: {logs}"
        for ti in tis[dag_id]:
            if ti["state"] != "success" or ti.get("operator") == "EmptyOperator":
                continue  # skipped, or finished by the scheduler without a worker
            expected = TRAINING_QUEUE if ti["task_id"] == "train" else "default"
            assert ti["queue"] == expected, f"{dag_id}.{ti['task_id']} was queued on {ti['queue']!r}"
            assert ti["task_id"] in logs[expected], (
                f"{dag_id}.{ti['task_id']}: no log in the {expected} worker's log folder {homes[expected]}: {logs}")
            ran_train |= ti["task_id"] == "train"
        assert logs[TRAINING_QUEUE] <= {"train"}, f"{dag_id}: the training worker ran {logs[TRAINING_QUEUE]}"
    assert ran_train, "train never ran"
