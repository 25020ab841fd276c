"""Tier 4: both DAGs end to end with ``dag.test()`` (the real task runner, GX, Lightning, MLflow).

A quarter of the King County sales (every 4th row, all days) is replayed into a private landing
zone; the history arrives through one bulk ingest run, the last day through a daily run (twice, to
show it is idempotent, with a bad file beside the good one); then the model is retrained twice.
"""

from __future__ import annotations

import gzip
import hashlib
from datetime import date
from pathlib import Path

import pendulum
import polars as pl
import pytest

from tasks.core import lake
from tests.kc import KC_DATA_PATH, KC_SPEC_PATH
from tests.support import private_home

REPO = Path(__file__).resolve().parents[2]
LAST_DAY = date(2015, 5, 27)
# dag.test() applies run_conf to the DAG object's params, which later dag.test() calls of the same
# object then see: daily runs state explicitly that they are not bulk loads.
DAILY = {"from_date": None, "to_date": None}


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pipeline_env(tmp_path_factory, airflow_db):
    """Private settings for the module, and a reduced replay of the bundled data."""
    from tasks.core.settings import get_settings
    from tasks.core.spec import load_spec
    from tasks.ingest.replay import replay

    home = tmp_path_factory.mktemp("e2e")
    with private_home(home / "state"):
        with gzip.open(KC_DATA_PATH, "rt", newline="") as f:
            lines = f.readlines()
        reduced = home / "sales_quarter.csv"
        # Every 4th sale, plus every sale of the last day so the daily run has a full file.
        reduced.write_text(lines[0] + "".join(sorted(set(lines[1::4]) | {ln for ln in lines[1:] if '"20150527T' in ln})))
        settings = get_settings()
        spec = load_spec(KC_SPEC_PATH)
        replayed = replay(spec, settings.landing_uri, source=reduced)
        yield settings, spec, replayed


@pytest.fixture(scope="module")
def dags():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags")).dags


def _utc(d: date) -> pendulum.DateTime:
    return pendulum.datetime(d.year, d.month, d.day, tz="UTC")


@pytest.fixture(scope="module")
def ingested(pipeline_env, dags):
    settings, spec, replayed = pipeline_env
    dag = dags["sales_ingest"]
    bulk = dag.test(logical_date=_utc(date(2014, 5, 2)),
                    run_conf={"from_date": "2014-05-02", "to_date": "2015-05-26"})
    assert bulk.state == "success"
    # The last day arrives as a daily run, with a second, partly bad file from another feed.
    bad = Path(settings.landing_uri) / LAST_DAY.isoformat() / "late_feed.csv"
    good_line = (Path(settings.landing_uri) / LAST_DAY.isoformat() / "sales.csv").read_text().splitlines()[1]
    header = (Path(settings.landing_uri) / LAST_DAY.isoformat() / "sales.csv").read_text().splitlines()[0]
    fields = good_line.split(",")
    negative = ",".join(['"9999000001"', fields[1], "-5000", *fields[3:]])
    far_zip = ",".join(['"9999000002"', *fields[1:16], '"10001"', *fields[17:]])
    bad.write_text("\n".join([header, negative, far_zip]) + "\n")
    daily = dag.test(logical_date=_utc(LAST_DAY), run_conf=DAILY)
    assert daily.state == "success"
    return settings, spec, replayed, bad


def test_ingest_writes_every_row_once(ingested):
    settings, spec, replayed, _ = ingested
    lake = Path(settings.lake_uri)
    validated = pl.read_parquet(lake / "validated" / "ds=*" / "part-0.parquet")
    quarantine = pl.read_parquet(lake / "quarantine" / "ds=*" / "part-0.parquet")
    assert validated.height + quarantine.height == replayed["rows"] + 2
    assert validated.select(spec.id_columns + [spec.event_time]).is_duplicated().sum() == 0
    assert (lake / "raw" / f"ds={LAST_DAY}" / "part-0.parquet").exists()
    assert validated["ds"].max() == LAST_DAY


def test_bad_rows_are_quarantined_with_reasons(ingested):
    settings, *_ = ingested
    q = pl.read_parquet(Path(settings.lake_uri) / "quarantine" / f"ds={LAST_DAY}" / "part-0.parquet")
    reasons = {row["id"]: " ".join(row["_reasons"]) for row in q.iter_rows(named=True)}
    assert "price" in reasons["9999000001"] and "-5000" in reasons["9999000001"]
    assert "zipcode" in reasons["9999000002"] and "10001" in reasons["9999000002"]
    assert all(r.endswith("late_feed.csv") for r in q.filter(pl.col("id").str.starts_with("9999"))["_source_file"])


def test_rerunning_a_day_is_idempotent(ingested, dags):
    settings, _, _, bad = ingested
    parts = {t: lake.partition_uri(settings.lake_uri, t, LAST_DAY) for t in ("raw", "validated", "quarantine")}
    before = {t: _sha(p) for t, p in parts.items()}
    landing_before = _sha(str(bad))
    rerun = dags["sales_ingest"].test(logical_date=_utc(LAST_DAY), run_after=_utc(date(2015, 5, 29)), run_conf=DAILY)
    assert rerun.state == "success"
    assert {t: _sha(p) for t, p in parts.items()} == before
    assert _sha(str(bad)) == landing_before, "landing files are never modified"


def test_retrain_registers_evaluates_and_promotes(ingested, dags):
    settings, *_ = ingested
    from tasks.core import tracking

    dag = dags["price_model_retrain"]
    conf = {"max_epochs": 8, "max_mdape": 0.5, "min_ppe10": 0.0}
    first = dag.test(logical_date=pendulum.datetime(2015, 5, 28, 3, tz="UTC"), run_conf=conf)
    assert first.state == "success"
    c = tracking.client(settings)
    champion = tracking.champion_version(c, settings.model_name)
    assert champion is not None and str(champion.version) == "1"
    assert champion.tags["promotion.decision"] == "promoted"
    assert "no champion yet" in champion.tags["promotion.reason"]
    for key in ("data.window_start", "data.window_end", "data.partitions_sha256", "git.commit", "airflow.dag_id",
                "airflow.run_id", "preprocessing.sha256"):
        assert champion.tags.get(key), key

    # A second run (another seed) is compared with the champion on the same test rows.
    second = dag.test(logical_date=pendulum.datetime(2015, 5, 28, 3, tz="UTC"), run_after=pendulum.datetime(2015, 5, 29, tz="UTC"),
                      run_conf={**conf, "seed": 7, "min_relative_improvement": 0.99})
    assert second.state == "success"
    v2 = c.get_model_version(settings.model_name, "2")
    assert v2.tags["promotion.decision"] == "rejected"
    assert "vs champion" in v2.tags["promotion.reason"]
    assert str(tracking.champion_version(c, settings.model_name).version) == "1"
    run = c.get_run(v2.run_id)
    for k in ("mdape", "ppe10", "rmse_ln", "rmse", "mae"):
        assert f"test/{k}" in run.data.metrics and f"champion_test/{k}" in run.data.metrics
    assert 0 < run.data.metrics["test/mdape"] < 0.5
    history = c.get_metric_history(v2.run_id, "val/rmse_ln")
    assert len(history) >= 2, "per-epoch metrics come from Lightning's MLflow logger"
    artifacts = {a.path for a in c.list_artifacts(v2.run_id, "model")}
    assert {"model/model.safetensors", "model/preprocessing.json", "model/model_config.json"} <= artifacts
    reports = list(Path(settings.reports_uri).glob("*model_version=2/report.html"))
    assert reports and "Predicted vs actual" in reports[0].read_text()
    preds = pl.read_parquet(next(Path(settings.lake_uri).glob("evaluations/*/model_version=2/predictions.parquet")))
    assert {"pred_new", "pred_champion"} <= set(preds.columns)
