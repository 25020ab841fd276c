"""tasks.datasets.king_county.synth: the synthetic market's layout, schema, determinism, data contract and noise level."""

from __future__ import annotations

import os
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tasks.core.spec import load_spec
from tasks.datasets.king_county import synth
from tasks.ingest.landing import COERCE_ERRORS, POLARS_TYPES, ingest_day
from tests.kc import KC_SPEC_PATH

REPO = Path(__file__).resolve().parents[2]

SPEC_FILE = KC_SPEC_PATH
START = date(2014, 5, 2)
# Small but with several chunks per run and a day split over two files (the weekdays have > 1500 rows).
SMALL = dict(rows=6_000, days=5, seed=7, chunk_rows=1_500)


@pytest.fixture(scope="module")
def kc_spec():
    return load_spec(SPEC_FILE)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_all(root: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted(root.glob("*/*.parquet")))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_small")
    return out, synth.generate(out=out, **SMALL)


@pytest.fixture(scope="module")
def big_run(tmp_path_factory) -> tuple[Path, dict, pl.DataFrame]:
    """About 50k rows over 60 days (all in memory at once: fine at this size)."""
    out = tmp_path_factory.mktemp("synth_big")
    summary = synth.generate(rows=50_000, days=60, seed=11, out=out, start=date(2015, 2, 20), chunk_rows=20_000)
    return out, summary, _read_all(out)


# --- layout, counts, schema --------------------------------------------------------------------------


def test_one_folder_per_day_and_exact_row_count(small_run):
    out, summary = small_run
    days = [(START + timedelta(i)).isoformat() for i in range(SMALL["days"])]
    assert sorted(p.name for p in out.iterdir()) == days
    for day in days:
        names = sorted(p.name for p in (out / day).iterdir())
        assert names and all(n.startswith("synth-") and n.endswith(".parquet") for n in names)
        assert names == [f"synth-{k}.parquet" for k in range(len(names))]
    assert any(len(list((out / d).iterdir())) > 1 for d in days), "a day larger than a chunk is split in files"
    df = _read_all(out)
    assert df.height == SMALL["rows"] == summary["rows"]
    assert summary["files"] == summary["files_written"] == sum(1 for _ in out.rglob("*.parquet"))
    assert summary["files_existing"] == 0 and summary["sigma"] == synth.DEFAULT_SIGMA and summary["seconds"] >= 0
    # Weekdays get more sales than weekends (2014-05-03 and -04 are a Saturday and a Sunday).
    per_day = dict(df.group_by("date").len().iter_rows())
    assert per_day[date(2014, 5, 5)] > 2 * per_day[date(2014, 5, 3)]


def test_schema_matches_the_spec(small_run, kc_spec):
    out, _ = small_run
    expected = {name: POLARS_TYPES[cs.type] for name, cs in kc_spec.columns.items()}
    assert list(synth.SCHEMA) == list(kc_spec.columns)
    for path in sorted(out.rglob("*.parquet")):
        schema = pl.read_parquet_schema(path)
        assert list(schema) == list(expected), path
        assert dict(schema) == expected, path


def test_rows_per_day_is_exact_and_days_too_big_for_a_chunk_are_split():
    counts = synth.rows_per_day(1_000_003, START, 17)
    assert sum(counts) == 1_000_003 and len(counts) == 17
    assert synth.rows_per_day(3, START, 10).count(0) == 7  # fewer rows than days: empty days
    chunks = synth.plan_chunks([10, 0, 25, 3], chunk_rows=10)
    pieces = [(p.day, p.part, p.count) for c in chunks for p in c.pieces]
    assert pieces == [(0, 0, 10), (1, 0, 0), (2, 0, 9), (2, 1, 8), (2, 2, 8), (3, 0, 3)]
    assert [c.first_row for c in chunks] == [0, 10, 19, 27, 35]
    assert all(c.rows <= 10 for c in chunks)


def test_a_day_without_rows_gets_an_empty_file(tmp_path, kc_spec):
    summary = synth.generate(rows=2, days=4, seed=1, out=tmp_path)
    assert summary["files"] == 4 and len(list(tmp_path.iterdir())) == 4
    df = _read_all(tmp_path)
    assert df.height == 2
    assert dict(df.schema) == {name: POLARS_TYPES[cs.type] for name, cs in kc_spec.columns.items()}


# --- determinism ---------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(small_run, tmp_path):
    out, _ = small_run
    again = synth.generate(out=tmp_path / "again", workers=1, **SMALL)  # another worker count as well
    assert again["files_written"] == again["files"]
    assert _files(tmp_path / "again") == _files(out)


def test_another_seed_gives_other_data(small_run, tmp_path):
    out, _ = small_run
    synth.generate(out=tmp_path, **{**SMALL, "seed": SMALL["seed"] + 1})
    mine, theirs = _files(out), _files(tmp_path)
    assert mine.keys() == theirs.keys()  # the layout depends on rows, days and chunk size only
    assert all(mine[k] != theirs[k] for k in mine)
    assert not set(_read_all(out)["id"]) & set(_read_all(tmp_path)["id"])


def test_sigma_changes_the_prices_only(tmp_path):
    a = synth.generate(rows=3_000, days=3, seed=5, out=tmp_path / "a", sigma=0.15)
    b = synth.generate(rows=3_000, days=3, seed=5, out=tmp_path / "b", sigma=0.5)
    assert a["rows"] == b["rows"]
    da, db = _read_all(tmp_path / "a"), _read_all(tmp_path / "b")
    assert da.drop("price").equals(db.drop("price"))
    assert not da["price"].equals(db["price"])


# --- landing-file hygiene ------------------------------------------------------------------------------


def test_existing_files_are_skipped_never_rewritten(tmp_path):
    args = dict(rows=2_000, days=3, seed=2, out=tmp_path, chunk_rows=500)
    first = synth.generate(**args)
    victim = tmp_path / START.isoformat() / "synth-0.parquet"
    victim.write_bytes(b"not ours")
    again = synth.generate(**args)
    assert again["files_written"] == 0 and again["files_existing"] == first["files"]
    assert victim.read_bytes() == b"not ours"
    victim.unlink()
    third = synth.generate(**args)
    assert third["files_written"] == 1 and third["files_existing"] == first["files"] - 1
    assert not [p for p in tmp_path.rglob(".*")], "no temporary file is left behind"


def test_cli(tmp_path, capsys):
    summary = synth.main(["--rows", "500", "--days", "2", "--seed", "3", "--out", str(tmp_path / "cli"),
                          "--start", "2015-01-01", "--format", "csv", "--sigma", "0.2"])  # fmt: skip
    assert '"rows": 500' in capsys.readouterr().out
    assert summary["format"] == "csv" and summary["sigma"] == 0.2
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["2015-01-01", "2015-01-02"]


# --- the data contract and the noise level ---------------------------------------------------------------


def test_every_row_passes_the_expectation_bounds(big_run):
    from expectations.king_county import ZIPCODES

    out, summary, df = big_run
    assert df.height == 50_000 and summary["prices_clipped"] == 0
    assert df.null_count().sum_horizontal().item() == 0
    year = pl.col("date").dt.year()
    checks = {
        "price": pl.col("price").is_between(1_000, 100_000_000),
        "bedrooms": pl.col("bedrooms").is_between(0, 15),
        "bathrooms": pl.col("bathrooms").is_between(0, 10),
        "sqft_living": pl.col("sqft_living").is_between(200, 30_000),
        "sqft_lot": pl.col("sqft_lot").is_between(100, 5_000_000),
        "sqft_above": pl.col("sqft_above").is_between(200, 30_000),
        "sqft_basement": pl.col("sqft_basement").is_between(0, 10_000),
        "sqft_living15": pl.col("sqft_living15").is_between(200, 30_000),
        "sqft_lot15": pl.col("sqft_lot15").is_between(100, 5_000_000),
        "floors": pl.col("floors").is_in([1.0, 1.5, 2.0, 2.5, 3.0, 3.5]),
        "lat": pl.col("lat").is_between(47.0, 47.9),
        "long": pl.col("long").is_between(-122.6, -121.0),
        "waterfront": pl.col("waterfront").is_in([0, 1]),
        "view": pl.col("view").is_in([0, 1, 2, 3, 4]),
        "condition": pl.col("condition").is_in([1, 2, 3, 4, 5]),
        "grade": pl.col("grade").is_between(3, 13),
        "zipcode": pl.col("zipcode").is_in(ZIPCODES),
        "id": pl.col("id").str.contains(r"^[0-9]{1,10}$"),
        "yr_built": pl.col("yr_built").is_between(1900, year),
        "yr_renovated": (pl.col("yr_renovated") == 0) | pl.col("yr_renovated").is_between(pl.col("yr_built"), year),
        "above + basement": pl.col("sqft_above") + pl.col("sqft_basement") == pl.col("sqft_living"),
        "date": pl.col("date").is_between(date(2015, 2, 20), date(2015, 4, 20)),
    }
    failures = df.select(**{name: (~ok).sum() for name, ok in checks.items()}).row(0, named=True)
    assert failures == dict.fromkeys(checks, 0)
    assert df.select(pl.struct("id", "date").is_unique().all()).item()
    # Plausible joint distributions: the markers of the market, loosely.
    assert df["zipcode"].n_unique() == 70
    assert 0.0 < df["waterfront"].mean() < 0.03 and 0.005 < (df["yr_renovated"] > 0).mean() < 0.15
    assert df.select(pl.corr(pl.col("sqft_living").log(), "grade")).item() > 0.5
    assert df.select(pl.corr(pl.col("sqft_living").log(), "bedrooms")).item() > 0.4
    assert 200_000 < df["price"].median() < 1_000_000


def test_noise_is_sigma(big_run):
    _, summary, df = big_run
    residual = np.log(df["price"].to_numpy()) - synth.ground_truth_log_price(df)
    assert abs(residual.mean()) < 0.01
    assert abs(residual.std() / summary["sigma"] - 1) < 0.03
    # The features explain most of the variance of ln(price): the noise is a small part of it.
    assert np.log(df["price"].to_numpy()).std() > 2.5 * summary["sigma"]


def test_noise_follows_the_sigma_option(tmp_path):
    synth.generate(rows=50_000, days=10, seed=3, out=tmp_path, sigma=0.05)
    df = _read_all(tmp_path)
    residual = np.log(df["price"].to_numpy()) - synth.ground_truth_log_price(df)
    assert abs(residual.std() / 0.05 - 1) < 0.03


# --- the landing files go through ingest ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_ingest_reads_a_generated_day_without_coercion_errors(tmp_path, kc_spec, fmt):
    landing = tmp_path / "landing"
    synth.generate(rows=4_000, days=3, seed=9, out=landing, fmt=fmt, chunk_rows=1_000)
    day = START + timedelta(days=2)  # a Sunday: few rows; the Friday before is split over files
    friday = ingest_day(kc_spec, landing_uri=str(landing), lake_uri=str(tmp_path / "lake"), day=START)
    report = ingest_day(kc_spec, landing_uri=str(landing), lake_uri=str(tmp_path / "lake"), day=day)
    for r, d in ((friday, START), (report, day)):
        files = sorted((landing / d.isoformat()).iterdir())
        assert r.coerce_errors == 0
        assert len(r.files) == len(files) and all(f.endswith(f".{fmt}") for f in r.files)
    assert len(friday.files) > 1
    raw = pl.read_parquet(report.raw_uri)
    assert report.rows == raw.height > 0 and raw[COERCE_ERRORS].null_count() == raw.height


def test_csv_and_parquet_hold_the_same_sales(tmp_path, kc_spec):
    frames = {}
    for fmt in ("parquet", "csv"):
        synth.generate(rows=1_500, days=2, seed=4, out=tmp_path / fmt, fmt=fmt)
        report = ingest_day(kc_spec, str(tmp_path / fmt), str(tmp_path / f"lake-{fmt}"), START)
        frames[fmt] = pl.read_parquet(report.raw_uri).select(list(kc_spec.columns))
    assert frames["csv"].equals(frames["parquet"])
    text = (tmp_path / "csv" / START.isoformat() / "synth-0.csv").read_text().splitlines()
    assert text[0] == ",".join(kc_spec.columns)
    first = text[1].split(",")
    assert first[0].startswith('"') and first[1].endswith('T000000"') and first[16].startswith('"98')
    assert not first[5].endswith(".0")  # 1180, not 1180.0, as in the public file
    truth = {fmt: synth.ground_truth_log_price(df).tolist() for fmt, df in frames.items()}
    assert truth["csv"] == truth["parquet"]


def test_ground_truth_rejects_a_zip_code_outside_the_county(small_run):
    out, _ = small_run
    df = _read_all(out).head(3).with_columns(pl.lit("10001").alias("zipcode"))
    with pytest.raises(ValueError, match="10001"):
        synth.ground_truth_log_price(df)


def test_no_temporary_files_are_left(small_run):
    out, _ = small_run
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    assert os.listdir(out)
