"""The object-store mode of ``benchmarks/retrain_scale.py`` (``--s3``), its own logic: which files of a local lake
are copied and how the day manifests are rebased (checked by reading the copy back through ``tasks.core.lake``
on moto's server, in a thread), the local-disk check, the report's S3 section and the side-by-side table."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from benchmarks import retrain_scale_s3 as s3mode
from benchmarks.retrain_scale import _airflow_env, markdown, parse_args
from tests.support import free_port

DAY, LEGACY_DAY = "2015-01-01", "2015-01-02"


def _lake(root: Path) -> Path:
    """A validated lake as ``sales_ingest`` leaves it on disk: one day published by a manifest (content-named
    files, the ``part-0.parquet`` link, a hash sidecar), one day of the layout before manifests, and raw."""
    import polars as pl

    lake = root / "lake"
    v, q = lake / "validated" / f"ds={DAY}", lake / "quarantine" / f"ds={DAY}"
    for d in (v, q, lake / "validated" / f"ds={LEGACY_DAY}", lake / "raw" / f"ds={DAY}"):
        d.mkdir(parents=True)
    pl.DataFrame({"id": [1, 2], "price": [1.0, 2.0]}).write_parquet(v / "part-aaaa.parquet")
    pl.DataFrame({"id": [3], "price": [-1.0]}).write_parquet(q / "part-bbbb.parquet")
    os.link(v / "part-aaaa.parquet", v / "part-0.parquet")
    os.link(q / "part-bbbb.parquet", q / "part-0.parquet")
    (v / ".part-aaaa.parquet.sha256.json").write_text("{}")
    pl.DataFrame({"id": [4], "price": [4.0]}).write_parquet(lake / "validated" / f"ds={LEGACY_DAY}" / "part-0.parquet")
    pl.DataFrame({"id": [1]}).write_parquet(lake / "raw" / f"ds={DAY}" / "part-0.parquet")
    (v / "_manifest.json").write_text(json.dumps({
        "day": DAY, "run_id": "r", "raw": f"{lake}/raw/ds={DAY}/part-0.parquet",
        "validated": {"uri": f"{lake}/validated/ds={DAY}/part-aaaa.parquet", "sha256": "aaaa", "rows": 2},
        "quarantine": {"uri": f"{lake}/quarantine/ds={DAY}/part-bbbb.parquet", "sha256": "bbbb", "rows": 1},
        "data_docs": None}))
    return lake


def test_the_copy_plan_takes_the_published_files_and_rebases_the_manifest(tmp_path):
    lake = _lake(tmp_path)
    plan = s3mode.copy_plan(lake, "s3://lake/lake")
    keys = [k for _, k in plan]
    assert sorted(keys) == sorted([
        f"lake/validated/ds={DAY}/part-aaaa.parquet", f"lake/validated/ds={DAY}/_manifest.json",
        f"lake/quarantine/ds={DAY}/part-bbbb.parquet", f"lake/validated/ds={LEGACY_DAY}/part-0.parquet"])
    assert keys[-1].endswith("_manifest.json"), "a day's manifest goes after the files it names"
    manifest = json.loads(next(body for body, k in plan if k.endswith("_manifest.json")))
    assert manifest["validated"]["uri"] == f"s3://lake/lake/validated/ds={DAY}/part-aaaa.parquet"
    assert manifest["quarantine"]["uri"] == f"s3://lake/lake/quarantine/ds={DAY}/part-bbbb.parquet"
    assert manifest["raw"] == f"s3://lake/lake/raw/ds={DAY}/part-0.parquet"
    assert manifest["validated"]["sha256"] == "aaaa" and manifest["day"] == DAY, "only URIs change"


@pytest.fixture
def moto_lake(monkeypatch):
    """moto's server in a thread, a ``lake`` bucket, and this process's S3 configuration pointed at it."""
    from moto.server import ThreadedMotoServer

    from tasks.core.settings import get_settings
    from tools.servers import s3_client

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "HOMEWORTH_AWS_CONN_ID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    client = s3_client(endpoint)
    client.create_bucket(Bucket="lake")
    try:
        yield client
    finally:
        server.stop()
        get_settings.cache_clear()


def test_the_copied_lake_is_read_from_the_store_not_from_the_disk(tmp_path, moto_lake):
    import polars as pl

    from tasks.core import lake as lakes
    from tasks.core import storage

    src = _lake(tmp_path)
    copied = s3mode.copy_lake(src, moto_lake, "s3://lake/lake", workers=2)
    assert copied["objects"] == 4 and copied["bytes"] > 0
    uri = lakes.day_file("s3://lake/lake", lakes.VALIDATED, DAY)
    assert uri == f"s3://lake/lake/validated/ds={DAY}/part-aaaa.parquet"
    assert pl.read_parquet(io.BytesIO(storage.read_bytes(uri)))["id"].to_list() == [1, 2]
    assert lakes.day_file("s3://lake/lake", lakes.VALIDATED, LEGACY_DAY).startswith("s3://"), "pre-manifest day"
    summary = s3mode.store_summary(moto_lake, ("lake",))
    assert summary["buckets"]["lake"]["lake/validated"]["objects"] == 3 and summary["temporary_keys"] == []
    with pytest.raises(ValueError, match="no validated partitions"):
        s3mode.copy_lake(tmp_path / "empty", moto_lake, "s3://lake/other")


def test_the_local_disk_check_finds_new_lake_files_only(tmp_path):
    old = tmp_path / "old.parquet"
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    since = time.time() - 1
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "sub" / "notes.json").write_text("{}")
    assert s3mode.local_files([tmp_path], since) == [str(tmp_path / "sub" / "model.safetensors")]


def test_a_server_group_peak_memory_is_read_from_proc():
    peak = s3mode.group_peak_rss_mib(os.getpgid(0))
    assert peak["processes"] >= 1 and 0 < peak["max_mib"] <= peak["sum_mib"]


def _report(rss: float, wall: float, local_files: list[str] | None = None) -> dict:
    def task(d: float) -> dict:
        return {"state": "success", "duration_s": d, "peak_rss_mib": rss, "xcom": {"peak_rss_mib": rss}}

    r = {"command": "python -m benchmarks.retrain_scale --lake L", "comps": "market", "window_days": 365,
         "as_of": "2015-05-02", "state": "success", "wall_s": wall, "sigma": 0.15, "lake": "/data/lake",
         "machine": {"cpu": "cpu", "logical_cpus": 2, "ram_gib": 23.5},
         "tasks": {"build_features": task(10.0), "train": task(100.0)},
         "code": {"git": "abc1234", "fingerprint": "f00"}}
    r["tasks"]["build_features"]["xcom"]["rows"] = {"train": 6, "val": 2, "test": 2}
    if local_files is not None:
        r["s3"] = {"lake_uri": s3mode.LAKE_URI, "artifacts_uri": s3mode.ARTIFACTS_URI,
                   "copy": {"objects": 730, "bytes": 3 * 2**20, "seconds": 4.2, "dest": s3mode.LAKE_URI,
                            "tables": ["validated", "quarantine"]},
                   "measure": {"moto_peak_rss": {"processes": 1, "max_mib": 812.4, "sum_mib": 812.4},
                               "moto_spooled_mib": 40.0,
                               "mlflow_peak_rss": {"processes": 2, "max_mib": 300.0, "sum_mib": 420.0},
                               "store": {"buckets": {"lake": {"lake/validated": {"objects": 365, "bytes": 2**20}}},
                                         "temporary_keys": []},
                               "local_files": local_files, "checked_roots": ["/h", "/data/lake"]}}
    return r


def test_the_report_names_the_store_and_flags_local_files():
    md = markdown(_report(500, 120.0, local_files=[]))
    assert "HOMEWORTH_LAKE_URI=s3://lake/lake" in md and "--artifacts-destination s3://mlflow/artifacts" in md
    assert "| moto (`tools/moto_ranged.py`) | 812 | 812 |" in md and "730 objects" in md and "4.2 s" in md
    assert "local disk during the run (below `/h`, `/data/lake`): **none**." in md
    assert "**1**: `/h/tmp/x.parquet`" in markdown(_report(500, 120.0, local_files=["/h/tmp/x.parquet"]))
    assert "local lake and MLflow store" in markdown(_report(500, 120.0))


def test_the_side_by_side_table_sets_each_task_against_the_local_run():
    local, s3 = _report(400, 100.0), _report(500, 150.0, local_files=[])
    s3["tasks"]["train"]["duration_s"] = 150.0
    lines = s3mode.comparison(local, s3, "docs/retrain-scale-10M.json")
    assert "| train | 100.0 | 150.0 | 1.50 | 400 | 500 |" in lines
    assert "| whole run (Airflow start to the run's end) | 100.0 | 150.0 | 1.50 | - | - |" in lines
    assert lines[-1].startswith("Same inputs and settings.")
    s3["comps"] = "area"
    assert "comps: local 'market', S3 'area'" in s3mode.comparison(local, s3, "x.json")[-1]
    s3["code"] = {"git": "def5678", "fingerprint": "bar"}
    assert "code: local abc1234 (f00), S3 def5678 (bar)" in s3mode.comparison(local, s3, "x.json")[-1]
    del local["code"]
    assert "the local run did not record its code" in s3mode.comparison(local, s3, "x.json")[-1]


def test_the_s3_flags_parse_and_refuse_bad_values(tmp_path):
    args = parse_args(["--lake", "L", "--s3"])
    assert args.s3 and args.copy_workers == 4 and args.compare is None
    assert not parse_args(["--lake", "L"]).s3
    with pytest.raises(SystemExit):
        parse_args(["--lake", "L", "--s3", "--compare", str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit):
        parse_args(["--lake", "L", "--s3", "--copy-workers", "0"])


def test_the_s3_mode_points_airflow_at_the_store_and_drops_inherited_aws_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_PROFILE", "production")
    monkeypatch.setenv("HOMEWORTH_AWS_CONN_ID", "prod_s3")
    world = {"aws_env": {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "HOMEWORTH_MLFLOW_TRACKING_URI": "http://127.0.0.1:2"}}
    env = _airflow_env(parse_args(["--lake", str(tmp_path), "--s3"]), tmp_path,
                       s3mode.airflow_env(world, tmp_path / "tmp"))
    assert env["HOMEWORTH_LAKE_URI"] == "s3://lake/lake" and env["HOMEWORTH_REPORTS_URI"] == "s3://lake/reports"
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1" and env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["HOMEWORTH_MLFLOW_TRACKING_URI"] == "http://127.0.0.1:2"
    assert "AWS_PROFILE" not in env and "HOMEWORTH_AWS_CONN_ID" not in env
    local = _airflow_env(parse_args(["--lake", str(tmp_path)]), tmp_path, {})
    assert local["HOMEWORTH_LAKE_URI"] == str(tmp_path.resolve()) and local["AWS_PROFILE"] == "production"
