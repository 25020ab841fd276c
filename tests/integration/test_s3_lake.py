"""The lake on an object store end to end (issue 18): moto's standalone S3 server and a real ``mlflow server``
with ``--artifacts-destination s3://...``; ``sales_ingest`` (one bulk run) and the whole ``price_model_retrain``
run by ``dag.test()`` with ``HOMEWORTH_LANDING_URI``, ``HOMEWORTH_LAKE_URI`` and ``HOMEWORTH_REPORTS_URI`` on
``s3://``. Nothing of the lake, the reports or the model artifacts may be left on the local disk.

Small on purpose (every 8th King County sale of seven months, a few epochs): the machine has 2 cores.
"""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

import pendulum
import polars as pl
import pytest

from tests.kc import KC_DATA_PATH, KC_SPEC_PATH
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
FIRST, LAST = date(2014, 11, 1), date(2015, 5, 27)
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKETS = ("landing", "lake", "mlflow")
LOCAL_SUFFIXES = (".parquet", ".safetensors")


def _start(argv: list[str], log: Path, env: dict[str, str], health: str, timeout: float = 180) -> subprocess.Popen:
    """A server process in its own process group, up once ``health`` answers 200."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=log.parent)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{argv[:3]} exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(health, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    _stop(proc)
    raise AssertionError(f"{argv[:3]} not up on {health} after {timeout}s: {log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def _local_files(roots: list[Path], since: float) -> list[str]:
    """Parquet and safetensors files below ``roots`` modified after ``since``."""
    out = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = os.path.join(dirpath, n)
                if n.endswith(LOCAL_SUFFIXES) and os.path.exists(p) and os.path.getmtime(p) >= since:
                    out.append(p)
    return out


@pytest.fixture(scope="module")
def s3_world(tmp_path_factory, airflow_db):
    """moto and mlflow servers; this module's settings on s3:// (environment restored after)."""
    import boto3

    from tasks.core.settings import get_settings

    root = tmp_path_factory.mktemp("s3lake")
    private_tmp = root / "tmp"
    private_tmp.mkdir()
    s3_port, mlflow_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{s3_port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    moto = _start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], root / "moto.log",
                  base, f"{endpoint}/moto-api/")
    procs = [moto]
    saved = {k: os.environ.get(k) for k in (*CREDS, "AWS_ENDPOINT_URL", "TMPDIR", "HOMEWORTH_HOME",
                                           "HOMEWORTH_LANDING_URI", "HOMEWORTH_LAKE_URI", "HOMEWORTH_REPORTS_URI",
                                           "HOMEWORTH_MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL",
                                           "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_ALLOW_HTTP")}
    saved_tempdir = tempfile.tempdir
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        for b in BUCKETS:
            s3.create_bucket(Bucket=b)
        aws = {**CREDS, "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}
        mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
        procs.append(_start(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
             f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts", "--artifacts-destination", "s3://mlflow/artifacts",
             "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"],
            root / "mlflow.log", {**base, **aws, "TMPDIR": str(private_tmp)}, f"{mlflow_uri}/health"))
        os.environ.update({**aws, "TMPDIR": str(private_tmp), "HOMEWORTH_HOME": str(root / "state"),
                           "HOMEWORTH_LANDING_URI": "s3://landing/feed", "HOMEWORTH_LAKE_URI": "s3://lake/lake",
                           "HOMEWORTH_REPORTS_URI": "s3://lake/reports", "HOMEWORTH_MLFLOW_TRACKING_URI": mlflow_uri})
        tempfile.tempdir = str(private_tmp)
        get_settings.cache_clear()
        yield {"root": root, "tmp": private_tmp, "s3": s3, "settings": get_settings(), "start": time.time()}
    finally:
        tempfile.tempdir = saved_tempdir
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
        for p in reversed(procs):
            _stop(p)


def _keys(s3, bucket: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _utc(d: date, hour: int = 0) -> pendulum.DateTime:
    return pendulum.datetime(d.year, d.month, d.day, hour, tz="UTC")


def test_ingest_and_retrain_on_the_object_store(s3_world):
    from airflow.dag_processing.dagbag import DagBag

    from tasks.core import tracking
    from tasks.core.spec import load_spec
    from tasks.ingest.replay import replay

    settings, s3, root = s3_world["settings"], s3_world["s3"], s3_world["root"]
    with gzip.open(KC_DATA_PATH, "rt", newline="") as f:
        lines = f.readlines()
    reduced = root / "sales_eighth.csv"  # the replay's source: the bundled data, not the lake
    reduced.write_text(lines[0] + "".join(lines[1::8]))
    replayed = replay(load_spec(KC_SPEC_PATH), settings.landing_uri, source=reduced, start=FIRST, end=LAST)
    assert replayed["rows"] > 500
    dags = DagBag(dag_folder=str(REPO / "dags")).dags

    bulk = dags["sales_ingest"].test(logical_date=_utc(FIRST),
                                     run_conf={"from_date": FIRST.isoformat(), "to_date": LAST.isoformat()})
    assert bulk.state == "success"
    lake_keys = _keys(s3, "lake")
    assert any(k.startswith("lake/validated/ds=2015-05-26/") and k.endswith("_manifest.json") for k in lake_keys)
    assert any(k.startswith("lake/raw/ds=2014-11-03/") for k in lake_keys)

    conf = {"max_epochs": 3, "window_days": 200, "max_mdape": 0.9, "min_ppe10": 0.0, "refit_on_val": False}
    run = dags["price_model_retrain"].test(logical_date=_utc(date(2015, 5, 28), 3), run_conf=conf)
    assert run.state == "success", [(ti.task_id, ti.state) for ti in run.get_task_instances()]

    lake_keys = _keys(s3, "lake")
    tables = [k for k in lake_keys if k.startswith("lake/features/") and k.endswith("/part-0.parquet")]
    assert len(tables) == 1 and tables[0].replace("part-0.parquet", "manifest.json") in lake_keys
    assert not [k for k in lake_keys if ".tmp-" in k], "no temporary key is left on the store"
    assert any(k.startswith("lake/evaluations/") and k.endswith("predictions.parquet") for k in lake_keys)
    assert any(k.startswith("reports/") and k.endswith("report.html") for k in lake_keys)
    features = pl.read_parquet(f"s3://lake/{tables[0]}")
    assert {"train", "val", "test"} <= set(features["split"].unique())

    c = tracking.client(settings)
    champion = tracking.champion_version(c, settings.model_name)
    assert champion is not None and champion.tags["promotion.decision"] == "promoted"
    artifacts = {a.path for a in c.list_artifacts(champion.run_id, "model")}
    assert {"model/model.safetensors", "model/preprocessing.json", "model/model_config.json"} <= artifacts
    stored = _keys(s3, "mlflow")
    assert any(k.endswith("model/model.safetensors") for k in stored), stored[:20]

    left = _local_files([root, s3_world["tmp"], Path(os.environ["AIRFLOW_HOME"])], s3_world["start"])
    assert left == [], f"lake or artifact files on the local disk: {left}"
