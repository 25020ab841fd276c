"""Batch scoring of listings: the listings_score DAG (dag.test), rejects with reasons, idempotency, the CLI."""

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
DAY = date(2015, 5, 14)
EMPTY_DAY = date(2015, 5, 15)
DAILY = {"from_date": None, "to_date": None}


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def listing_lines(day: date) -> tuple[str, list[str]]:
    """Header and lines of the bundled sales of ``day`` with the price column removed (listings have none)."""
    import csv
    import io

    lines = gzip.decompress((KC_DATA_PATH).read_bytes()).decode().splitlines()
    stamp = f'"{day:%Y%m%d}T'
    rows = [next(csv.reader([ln])) for ln in lines[1:] if stamp in ln]
    header = next(csv.reader([lines[0]]))
    i = header.index("price")
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header[:i] + header[i + 1:])
    for r in rows:
        w.writerow(r[:i] + r[i + 1:])
    text = out.getvalue().splitlines()
    return text[0], text[1:]


@pytest.fixture(scope="module")
def scoring_env(tmp_path_factory):
    from benchmarks.serving import register_version, sample_csv, typed_rows
    from tasks.core.settings import get_settings
    from tasks.core.spec import load_spec

    home = tmp_path_factory.mktemp("score")
    with private_home(home / "state"):
        settings, spec = get_settings(), load_spec(KC_SPEC_PATH)
        version = register_version(settings, spec, typed_rows(spec, sample_csv(spec, home / "fit.csv", every=20)))

        header, lines = listing_lines(DAY)
        cols = header.split(",")
        folder = Path(settings.landing_uri) / "listings" / DAY.isoformat()
        folder.mkdir(parents=True)
        good = lines[:-3]
        bad = []
        for change, value in (("bedrooms", "40"), ("zipcode", '"10001"'), ("sqft_living", "abc")):
            fields = good[0].split(",")
            fields[cols.index(change)] = value
            fields[0] = f'"99990000{len(bad)}"'
            bad.append(",".join(fields))
        other_day = good[1].split(",")
        other_day[0], other_day[1] = '"999900009"', '"20150513T000000"'
        bad += [",".join(other_day), good[2]]  # a listing dated another day; good[2] again: a duplicate
        (folder / "listings.csv").write_text("\n".join([header, *good, *bad]) + "\n")
        # The last three listings of the day come from another feed, as Parquet with typed columns.
        import io

        from tasks.ingest.read import read_landing_file
        from tasks.serving.score import listings_spec

        tail = pl.read_csv(io.StringIO("\n".join([header, *lines[-3:]])), schema_overrides={"id": pl.String, "zipcode": pl.String})
        tail.write_parquet(folder / "feed2.parquet")
        read_landing_file(str(folder / "feed2.parquet"), listings_spec(spec))  # readable as landing data
        yield settings, spec, version, {"good": len(good) + 3, "bad": len(bad), "csv": folder / "listings.csv"}


@pytest.fixture(scope="module")
def scored(scoring_env, airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(REPO / "dags" / "listings_score.py")).dags["listings_score"]
    run = dag.test(logical_date=pendulum.datetime(DAY.year, DAY.month, DAY.day, tz="UTC"), run_conf=DAILY)
    assert run.state == "success"
    return scoring_env + (dag,)


def test_listings_spec_makes_only_the_target_optional(spec):
    from tasks.serving.score import listings_spec

    ls = listings_spec(spec)
    assert ls.columns["price"].required is False and spec.columns["price"].required is True
    assert [c for c in ls.columns if ls.columns[c].required] == [c for c in spec.required_columns if c != "price"]


def test_listings_suite_drops_only_the_target_expectations(spec):
    from tasks.quality.validate import build_suite
    from tasks.serving.score import listings_suite

    full = build_suite(spec)
    ours = listings_suite(spec)
    dropped = [e for e in full.expectations if getattr(e, "column", None) == "price"]
    assert dropped and len(ours.expectations) == len(full.expectations) - len(dropped)
    assert not any(getattr(e, "column", None) == "price" for e in ours.expectations)


def test_daily_run_scores_good_rows_and_rejects_bad_ones(scored):
    settings, spec, version, counts, _ = scored
    pred = pl.read_parquet(lake.partition_uri(settings.lake_uri, "predictions", DAY))
    rej = pl.read_parquet(lake.partition_uri(settings.lake_uri, "predictions_rejected", DAY))
    assert pred.height == counts["good"] and rej.height == counts["bad"]
    assert set(pred["model_version"]) == {version} and set(pred["model_name"]) == {settings.model_name}
    assert pred["predicted_price"].is_finite().all() and (pred["predicted_price"] > 0).all()
    assert "price" not in pred.columns and {"id", "ds", "_source_file", "_source_row"} <= set(pred.columns)
    assert pred.filter(pl.col("_source_file").str.ends_with("feed2.parquet")).height == 3
    reasons = {r["id"]: " | ".join(r["_reasons"]) for r in rej.iter_rows(named=True)}
    assert "bedrooms" in reasons["999900000"] and "40" in reasons["999900000"]
    assert "zipcode" in reasons["999900001"] and "10001" in reasons["999900001"]
    assert "coercion" in reasons["999900002"] and "sqft_living='abc'" in reasons["999900002"]
    assert "date" in reasons["999900009"] and "2015-05-13" in reasons["999900009"]
    assert any("duplicate" in r for r in reasons.values())
    assert not any("price" in r for r in reasons.values()), "no expectation on the (absent) price"


def test_rerun_is_idempotent_and_an_empty_day_writes_empty_partitions(scored):
    settings, spec, version, counts, dag = scored
    files = [lake.partition_uri(settings.lake_uri, t, DAY) for t in ("predictions", "predictions_rejected")]
    before = [_sha(f) for f in files]
    rerun = dag.test(logical_date=pendulum.datetime(DAY.year, DAY.month, DAY.day, tz="UTC"),
                     run_after=pendulum.datetime(2015, 5, 20, tz="UTC"), run_conf=DAILY)
    assert rerun.state == "success"
    assert [_sha(f) for f in files] == before
    empty = dag.test(logical_date=pendulum.datetime(EMPTY_DAY.year, EMPTY_DAY.month, EMPTY_DAY.day, tz="UTC"),
                     run_conf=DAILY)
    assert empty.state == "success"
    assert pl.read_parquet(lake.partition_uri(settings.lake_uri, "predictions", EMPTY_DAY)).height == 0
    assert pl.read_parquet(lake.partition_uri(settings.lake_uri, "predictions_rejected", EMPTY_DAY)).height == 0


def test_score_cli_one_off_file(scored, tmp_path, capsys):
    from tasks.serving.score import main

    settings, spec, version, counts, _ = scored
    out, rej = tmp_path / "scored.csv", tmp_path / "rejected.csv"
    assert main(["--file", str(counts["csv"]), "--out", str(out), "--rejected", str(rej)]) == 0
    err = capsys.readouterr().err
    assert f"v{version}" in err and f"{counts['bad'] - 1} rejected" in err and "bedrooms" in err
    scored_csv = pl.read_csv(out, schema_overrides={"id": pl.String})
    # The one-off file has no expectation on dates beyond its own range: the listing of 05-13 is fine here.
    assert scored_csv.height == counts["good"] - 3 + 1 and "predicted_price" in scored_csv.columns
    daily = pl.read_parquet(lake.partition_uri(settings.lake_uri, "predictions", DAY))
    both = scored_csv.join(daily.select("id", pl.col("predicted_price").alias("daily")), on="id")
    assert both.height == counts["good"] - 3
    assert (both["predicted_price"] - both["daily"]).abs().max() < 1e-6 * both["daily"].max()
    assert pl.read_csv(rej).height == counts["bad"] - 1
    assert main(["--file", str(tmp_path / "missing.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_no_champion_is_a_clear_error(fresh_settings):
    from tasks.serving.score import champion

    with pytest.raises(RuntimeError, match="no champion yet"):
        champion(fresh_settings)
