"""Tier 4: a market nobody here prepared, end to end with ``dag.test()``: Melbourne from its inferred spec.

A slice of the bundled Melbourne sales (every 3rd sale of 2017, original capitalised headers, day-first
dates, empty cells, no id column) is replayed into a private landing zone, ingested by one bulk run of
``sales_ingest`` and retrained by ``price_model_retrain`` with a few epochs: the real task runner, GX,
Lightning and MLflow, with nothing but ``tasks/datasets/melbourne/spec.yaml`` (as ``spec infer`` wrote it)
and its starter suite.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from datetime import date
from pathlib import Path

import pendulum
import polars as pl
import pytest

from tasks.core import lake
from tests.support import private_home

REPO = Path(__file__).resolve().parents[2]
SPEC_PATH = REPO / "tasks" / "datasets" / "melbourne" / "spec.yaml"
FIRST, LAST = date(2017, 1, 1), date(2017, 9, 23)


@pytest.fixture(scope="module")
def melbourne(tmp_path_factory, airflow_db):
    """Private settings with the Melbourne spec, and every 3rd sale of 2017 replayed as a daily feed."""
    from tasks.core.settings import get_settings
    from tasks.core.spec import load_spec
    from tasks.ingest.replay import replay

    home = tmp_path_factory.mktemp("melbourne")
    old = os.environ.get("HOMEWORTH_DATASET_SPEC")
    os.environ["HOMEWORTH_DATASET_SPEC"] = str(SPEC_PATH)
    try:
        with private_home(home / "state"):
            spec = load_spec(SPEC_PATH)
            with gzip.open(spec.bundled_path(), "rt", newline="") as f:
                lines = f.readlines()
            day = next(csv.reader([lines[0]])).index("Date")
            in_2017 = [ln for ln in lines[1:] if next(csv.reader(io.StringIO(ln)))[day].endswith("/2017")]
            sliced = home / "melb_2017_third.csv"
            sliced.write_text(lines[0] + "".join(in_2017[::3]))
            settings = get_settings()
            replayed = replay(spec, settings.landing_uri, source=sliced)
            yield settings, spec, replayed
    finally:
        if old is None:
            os.environ.pop("HOMEWORTH_DATASET_SPEC", None)
        else:
            os.environ["HOMEWORTH_DATASET_SPEC"] = old
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def dags(melbourne):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags")).dags


@pytest.fixture(scope="module")
def ingested(melbourne, dags):
    settings, spec, replayed = melbourne
    run = dags["sales_ingest"].test(logical_date=pendulum.datetime(2017, 1, 1, tz="UTC"),
                                    run_conf={"from_date": FIRST.isoformat(), "to_date": LAST.isoformat()})
    assert run.state == "success"
    return settings, spec, replayed


def _table(settings, table: str) -> pl.DataFrame:
    root = Path(settings.lake_uri) / table
    files = [f for d in sorted(root.glob("ds=*")) if (f := lake.day_file(settings.lake_uri, table, d.name[3:]))]
    return pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")


def test_every_sale_is_kept_without_an_id(ingested):
    """No id column: many sales a day are not duplicates; empty cells of nullable columns are no reason to
    quarantine. Only the starter suite's bounds may set rows aside (the data's few wild values)."""
    settings, spec, replayed = ingested
    validated, quarantine = _table(settings, "validated"), _table(settings, "quarantine")
    assert validated.height + quarantine.height == replayed["rows"]
    assert quarantine.height <= 0.01 * replayed["rows"], quarantine["_reasons"].to_list()[:5]
    reasons = " ".join(r for rs in quarantine["_reasons"].to_list() for r in rs)
    assert "duplicate" not in reasons and "not_be_null" not in reasons
    assert validated["BuildingArea"].null_count() > 0 and validated["YearBuilt"].null_count() > 0
    assert validated.group_by("Date").len()["len"].max() > 50, "many sales on one auction Saturday"
    assert validated["Date"].min() >= FIRST and validated["Date"].max() == LAST


def test_retrain_trains_evaluates_and_decides_on_the_datasets_bars(ingested, dags):
    settings, spec, _ = ingested
    from tasks.core import tracking

    run = dags["price_model_retrain"].test(logical_date=pendulum.datetime(2017, 9, 24, 3, tz="UTC"),
                                           run_conf={"max_epochs": 3})
    assert run.state == "success"
    c = tracking.client(settings)
    v1 = c.get_model_version(settings.model_name, "1")
    metrics = c.get_run(v1.run_id).data.metrics
    for key in ("test/mdape", "test/ppe10", "test/rmse_ln", "gbm_test/mdape"):
        assert key in metrics, key
    assert 0 < metrics["test/mdape"] < 1 and 0 < metrics["gbm_test/mdape"] < 1
    decision, reason = v1.tags["promotion.decision"], v1.tags["promotion.reason"]
    assert decision in ("promoted", "rejected")
    assert ("no champion yet" in reason) == (decision == "promoted"), reason
    if decision == "rejected":  # the only bars left for a first model of a market: its own, or the boosting
        assert "boosting" in reason or "absolute bars" in reason, reason
    features = pl.read_parquet(next(Path(settings.lake_uri).glob("features/window=*/inputs=*/part-0.parquet")))
    test = features.filter(pl.col("split") == "test")
    assert test["Date"].min() >= date(2017, 7, 1), "the spec's split: test = sales on or after 2017-07-01"
