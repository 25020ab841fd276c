"""Feature drift (tasks/quality/drift.py): PSI properties, flagging, categoricals, determinism, the steps and MLflow."""

from __future__ import annotations

import dataclasses
import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tasks.core import lake as lake_paths
from tasks.core import storage
from tasks.core.handoffs import FeatureTable, TrainedModel
from tasks.features.featureset import feature_set
from tasks.quality.drift import (
    calendar_features,
    drift_blocks_promotion,
    drift_step,
    drift_vs_champion,
    feature_drift,
    js_from_counts,
    psi_categorical,
    psi_numeric,
    quantile_edges,
)
from tests.support import private_home

NUMERIC = ["a", "b", "k"]
CATEGORICAL = ["zip"]


def sample(n: int, seed: int, shift_a: float = 0.0, zips=("98001", "98002", "98003", "98004")) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "a": rng.normal(shift_a, 1.0, n),
        "b": rng.lognormal(0.0, 0.5, n),
        "k": rng.integers(1, 6, n),  # a discrete feature: repeated quantiles
        "zip": rng.choice(list(zips), n),
    })


def drift_of(ref: pl.DataFrame, cur: pl.DataFrame, **kw) -> dict:
    return feature_drift(ref, cur, NUMERIC, CATEGORICAL, threshold=0.2, **kw)


def test_identical_distributions_give_zero_psi():
    ref = sample(5000, 0)
    same = drift_of(ref, ref)
    assert same["status"] == "ok" and same["flagged"] == [] and not same["drifted"]
    assert all(v == 0.0 for v in same["psi"].values()) and same["max_psi"] == 0.0
    # Another sample of the same distribution: small, never flagged.
    other = drift_of(ref, sample(3000, 1))
    assert other["flagged"] == [] and other["max_psi"] < 0.02, other["psi"]


def test_a_shifted_feature_is_flagged_and_only_it():
    ref = sample(5000, 0)
    d = drift_of(ref, sample(3000, 1, shift_a=1.0))
    assert d["flagged"] == ["a"] and d["drifted"] and d["max_feature"] == "a"
    assert d["psi"]["a"] > 0.2 > max(d["psi"][c] for c in ("b", "k", "zip"))
    # A small shift stays below the threshold; PSI grows with the shift.
    small = drift_of(ref, sample(3000, 1, shift_a=0.1))
    assert small["flagged"] == [] and small["psi"]["a"] < d["psi"]["a"]


def test_quantile_bins_are_fitted_on_the_reference():
    ref = pl.Series(np.arange(1000, dtype=float))
    assert quantile_edges(ref, 4) == [250.0, 500.0, 749.0]  # observed values ("nearest" quantiles)
    assert quantile_edges(pl.Series([1, 1, 1, 2, 2, 3] * 50), 10) == [1.0, 2.0, 3.0]  # repeated quantiles merge
    assert quantile_edges(pl.Series([None, float("nan")], dtype=pl.Float64)) == []
    # Everything above the reference's range lands in the last bin: a large PSI, still finite.
    psi = psi_numeric(ref, pl.Series(np.arange(5000, 6000, dtype=float)))
    assert math.isfinite(psi) and psi > 5
    # Nulls and non-finite values are a bin of their own on both sides.
    assert psi_numeric(pl.Series([1.0, None, float("nan")] * 100), pl.Series([1.0, None, float("inf")] * 100)) == 0.0


def test_new_categorical_values_are_handled():
    ref = sample(4000, 0)
    cur = sample(2000, 1, zips=("98001", "98002", "98003", "98004", "10001"))  # one zip never seen in training
    d = drift_of(ref, cur)
    assert d["new_categories"]["zip"]["values"] == ["10001"]
    assert 0.15 < d["new_categories"]["zip"]["share"] < 0.25
    assert math.isfinite(d["psi"]["zip"]) and "zip" in d["flagged"]
    assert 0 < d["js"]["zip"] < 1
    # Nulls are a category; a categorical compared with itself has PSI and JS 0.
    s = pl.Series(["x", None, "y", "x"] * 50)
    assert psi_categorical(s, s) == 0.0 and js_from_counts({"x": 1}, {"x": 5}) == 0.0
    assert js_from_counts({"x": 1}, {"y": 1}) == pytest.approx(1.0)


def test_deterministic_and_order_free():
    ref, cur = sample(3000, 0), sample(2000, 1, shift_a=0.5, zips=("98001", "98002", "98005"))
    first = drift_of(ref, cur)
    assert drift_of(ref, cur) == first
    assert drift_of(ref.sample(fraction=1.0, shuffle=True, seed=3), cur.reverse()) == first


def test_too_few_current_rows_are_not_judged():
    d = drift_of(sample(3000, 0), sample(20, 1, shift_a=3.0))
    assert d["status"] == "insufficient_data" and d["flagged"] == [] and "20 current" in d["reason"]
    assert drift_blocks_promotion({**d, "action": "block_promotion"})[0] is False


def test_calendar_features_are_left_out(spec):
    # King County's model inputs hold no calendar feature (market time is the target offset's); a feature
    # set that has them, one declared unclipped, has them found by the probe
    assert calendar_features(spec, feature_set(spec)) == {}
    fset = dataclasses.replace(feature_set(spec), numeric=[*feature_set(spec).numeric, "sale_day", "month_sin", "month_cos"],
                               unclipped=("sale_day",))
    skipped = calendar_features(spec, fset)
    assert set(skipped) == {"sale_day", "month_sin", "month_cos"}  # age also depends on yr_built: kept
    assert skipped["sale_day"].startswith("market-time")


def test_drift_blocks_promotion_only_when_asked():
    ref = sample(3000, 0)
    drifted = drift_of(ref, sample(2000, 1, shift_a=1.0))
    assert drift_blocks_promotion(None) == (False, "no drift check")
    blocked, reason = drift_blocks_promotion({**drifted, "action": "block_promotion"})
    assert blocked and "a " in reason and "0.2" in reason
    blocked, reason = drift_blocks_promotion({**drifted, "action": "none"})
    assert not blocked and "does not block" in reason
    blocked, reason = drift_blocks_promotion({**drift_of(ref, ref), "action": "block_promotion"})
    assert not blocked and "no feature drift" in reason


# ------------------------------------------------------------------------------------------ steps
def _validated_day(spec, landing: Path, day: date) -> pl.DataFrame:
    frames = [pl.read_parquet(p).with_columns(pl.lit(str(p)).alias("_source_file"),
                                               pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("_source_row"))
              for p in sorted((landing / day.isoformat()).glob("*.parquet"))]
    df = pl.concat(frames)
    return df.select(*spec.columns, pl.lit(day).alias("ds"), "_source_file", "_source_row")


def _features_table(spec, lake_uri: str, start: date, end: date) -> FeatureTable:
    """The window's features table as the retrain DAG's build_features writes it (row-level features + split),
    built here from the same pieces so that these tests do not depend on the whole feature pipeline."""
    from tasks.core.lake import features_uri
    from tasks.features.featureset import assign_split
    from tasks.features.plan import window_partitions

    fset = feature_set(spec)
    uris = [p["uri"] for p in window_partitions(lake_uri, start, end)]
    df = pl.scan_parquet(uris).pipe(fset.derive).pipe(assign_split, spec, end).collect()
    uri = features_uri(lake_uri, start, end)
    storage.write_parquet_atomic(df, uri)
    return FeatureTable(features_uri=uri, window_start=start.isoformat(), window_end=end.isoformat(),
                        features_sha256="-", preprocessing_uri="-", preprocessing_sha256="-", rows={}, partitions=len(uris),
                        partitions_sha256="-")


@pytest.fixture(scope="module")
def lake(tmp_path_factory, spec):
    """A synthetic window of validated sales (240 days) and its features table, with a champion in MLflow."""
    from tasks.core import tracking
    from tasks.core.settings import get_settings
    from tasks.datasets.king_county.synth import generate

    home = tmp_path_factory.mktemp("drift")
    with private_home(home / "state"):
        settings = get_settings()
        start, days = date(2014, 5, 2), 240
        generate(rows=14_000, days=days, seed=5, out=home / "landing", start=start)
        for i in range(days):
            day = start + timedelta(days=i)
            storage.write_parquet_atomic(_validated_day(spec, home / "landing", day),
                                         lake_paths.partition_uri(settings.lake_uri, "validated", day))
        end = start + timedelta(days=days)
        meta = _features_table(spec, settings.lake_uri, start, end)
        c = tracking.client(settings)
        exp = tracking.experiment_id(c, settings)
        tracking.ensure_registered_model(c, settings.model_name)
        run = c.create_run(exp)
        mv = c.create_model_version(settings.model_name, source="file:///nowhere", run_id=run.info.run_id,
                                    tags={"data.window_start": start.isoformat(), "data.window_end": end.isoformat()})
        c.set_registered_model_alias(settings.model_name, tracking.CHAMPION, mv.version)
        yield settings, meta, run.info.run_id, end


def test_drift_step_on_a_features_table_logs_metrics(spec, lake):
    from tasks.core import tracking

    settings, meta, run_id, _ = lake
    out = drift_step(spec, settings, meta, TrainedModel(mlflow_run_id=run_id, model_version="1")).to_xcom()
    assert out["status"] == "ok" and out["current"]["selection"] == "split == 'test'"
    assert out["threshold"] == 0.2 and out["action"] == "none"
    assert set(out["skipped_features"]) == set(calendar_features(spec, feature_set(spec)))
    assert set(out["psi"]) == set(feature_set(spec).numeric + feature_set(spec).categorical) - set(out["skipped_features"])
    assert out["flagged"] == [], out["psi"]  # the same market before and after: no drift
    metrics = tracking.client(settings).get_run(run_id).data.metrics
    assert {f"drift/{f}" for f in out["psi"]} <= set(metrics)
    assert metrics["drift/grade"] == pytest.approx(out["psi"]["grade"])
    assert drift_step(spec, settings, meta).to_xcom() == out  # deterministic; no run: nothing logged
    recent = drift_step(spec, settings, meta, recent_days=30).to_xcom()
    assert recent["current"]["selection"] == "date >= " + (date.fromisoformat(meta.window_end) - timedelta(days=30)).isoformat()


def test_drift_vs_champion_sees_a_shift_in_the_newest_days(spec, lake):
    settings, _, _, end = lake
    calm = drift_vs_champion(spec, settings, end)
    assert calm["status"] == "ok" and calm["reference"]["champion_version"] == "1"
    assert calm["current_rows"] > 500 and calm["flagged"] == [], calm["psi"]
    # The newest drift_recent_days days: the houses are suddenly twice as large.
    for i in range(1, settings.drift_recent_days + 1):
        uri = lake_paths.partition_uri(settings.lake_uri, "validated", end - timedelta(days=i))
        df = pl.read_parquet(uri)
        storage.write_parquet_atomic(df.with_columns(pl.col("sqft_living") * 2, pl.col("sqft_above") * 2), uri)
    shifted = drift_vs_champion(spec, settings, end)
    assert shifted["drifted"] and {"log_sqft_living", "log_sqft_above"} <= set(shifted["flagged"])
    assert "grade" not in shifted["flagged"]




# ------------------------------------------------------------------------------------------ sales_ingest
def _parse_sales_ingest():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags" / "sales_ingest.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["sales_ingest"]


def test_sales_ingest_declares_the_drift_alias_only_for_trigger_retrain(monkeypatch):
    from tasks.core.settings import get_settings

    monkeypatch.delenv("HOMEWORTH_DRIFT_ACTION", raising=False)
    get_settings.cache_clear()
    assert [o.name for o in _parse_sales_ingest().get_task("validate").outlets] == ["validated_sales"]
    monkeypatch.setenv("HOMEWORTH_DRIFT_ACTION", "trigger_retrain")
    get_settings.cache_clear()
    try:
        outlets = _parse_sales_ingest().get_task("validate").outlets
    finally:
        get_settings.cache_clear()
    assert [o.name for o in outlets] == ["validated_sales", "sales_drift_detected"]


@pytest.mark.e2e
def test_drifted_sales_emit_a_sales_drift_event(lake, airflow_db, monkeypatch):
    """dag.test() of sales_ingest with drift_action=trigger_retrain after the newest days drifted (previous test)."""
    import pendulum
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from tasks.core.settings import get_settings

    settings, _, _, end = lake
    monkeypatch.setenv("HOMEWORTH_DRIFT_ACTION", "trigger_retrain")
    get_settings.cache_clear()
    try:
        dag = _parse_sales_ingest()
        day = end - timedelta(days=1)
        dr = dag.test(logical_date=pendulum.datetime(day.year, day.month, day.day, tz="UTC"),
                      run_conf={"from_date": None, "to_date": None})
    finally:
        get_settings.cache_clear()
    assert dr.state == "success"
    with create_session() as session:
        events = session.scalars(select(AssetEvent).where(AssetEvent.source_run_id == dr.run_id)).all()
        by_asset = {e.asset.name: e.extra for e in events}
    assert set(by_asset) == {"validated_sales", "sales_drift"}
    drift = by_asset["sales_drift"]
    assert "log_sqft_living" in drift["flagged"] and drift["action"] == "trigger_retrain" and drift["max_psi"] > 0.2
