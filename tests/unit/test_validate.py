"""Unit tests of tasks.quality.validate and the expectation suites: reasons, layout, parameters, idempotency."""

from __future__ import annotations

import gzip
import json
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from tasks.core import lake, storage
from tasks.ingest.landing import ingest_interval
from tasks.quality.results import fmt
from tasks.quality.validate import (
    REASONS,
    ValidationFailed,
    build_suite,
    expectation_parameters,
    validate_interval,
)
from tests.kc import KC_DATA_PATH, KC_HEADER, KC_SPEC_PATH

REPO = Path(__file__).resolve().parents[2]

DAY = date(2014, 10, 13)
NEXT = DAY + timedelta(days=1)
KC_HEADER = KC_HEADER
GOOD = '"7129300520","20141013T000000",221900,3,1,1180,5650,"1",0,0,3,7,1180,0,1955,0,"98178",47.5112,-122.257,1340,5650'
GOOD2 = '"4036801170","20141013T000000",380000,4,1.75,1760,7300,"1",0,0,3,7,880,880,1956,0,"98008",47.6034,-122.125,1680,7500'
NEGATIVE = GOOD2.replace("380000", "-5000")
BOOKKEEPING = ["ds", "_source_file", "_source_row"]


@pytest.fixture(scope="module")
def kc_spec():
    from tasks.core.spec import load_spec

    return load_spec(KC_SPEC_PATH)


def land(root: Path, day: date, name: str, lines: list[str]) -> Path:
    p = root / "landing" / day.isoformat() / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join([KC_HEADER, *lines]) + "\n")
    return p


def run_day(spec, root: Path, start: date = DAY, end: date = NEXT, params: dict | None = None) -> tuple[dict, dict]:
    ing = ingest_interval(spec, str(root / "landing"), str(root / "lake"), start, end)
    return ing, validate_interval(spec, str(root / "lake"), start, end, params)


def parts(root: Path, day: date = DAY) -> dict[str, str]:
    return {t: lake.partition_uri(str(root / "lake"), t, day) for t in ("raw", "validated", "quarantine")}


# ---------------------------------------------------------------- outcomes and layout
def test_validated_and_quarantine_layout(kc_spec, tmp_path):
    land(tmp_path, DAY, "sales.csv", [GOOD, NEGATIVE])
    ing, val = run_day(kc_spec, tmp_path)
    assert (ing["rows_landed"], val["rows_read"], val["rows_accepted"], val["rows_quarantined"]) == (2, 2, 1, 1)
    validated, quarantine = (pl.read_parquet(parts(tmp_path)[t]) for t in ("validated", "quarantine"))
    assert validated.columns == list(kc_spec.columns) + BOOKKEEPING
    assert quarantine.columns == list(kc_spec.columns) + BOOKKEEPING + ["_coerce_errors", REASONS]
    assert quarantine.schema[REASONS] == pl.List(pl.String)
    row = quarantine.row(0, named=True)
    assert row["id"] == "4036801170" and row["_source_row"] == 2 and row["_source_file"].endswith("sales.csv")
    assert row[REASONS] == ["expect_column_values_to_be_between(price, min_value=1000.0, max_value=100000000.0): "
                            "got -5000.0"]
    assert val["partitions"][DAY.isoformat()]["accepted"] == 1
    summary = json.loads(Path(tmp_path / "lake" / "_validation" / f"{DAY}_{NEXT}.json").read_text())
    assert summary["rows_quarantined"] == 1
    failing = [e["expectation"] for e in summary["expectations"] if not e["success"]]
    assert failing == ["expect_column_values_to_be_between(price, min_value=1000.0, max_value=100000000.0)"]


def test_validate_is_idempotent(kc_spec, tmp_path):
    land(tmp_path, DAY, "sales.csv", [GOOD, NEGATIVE, GOOD2.replace('"98008"', '"10001"')])
    first = run_day(kc_spec, tmp_path)
    hashes = {t: storage.file_sha256(u) for t, u in parts(tmp_path).items()}
    second = run_day(kc_spec, tmp_path)
    assert first == second  # same counts, same partition hashes
    assert {t: storage.file_sha256(u) for t, u in parts(tmp_path).items()} == hashes
    assert second[1]["partitions"][DAY.isoformat()]["validated"] == hashes["validated"]
    assert second[1]["rows_quarantined"] == 2
    # The validated partition's hash is recorded beside it, so the features' lineage need not re-read it.
    sidecar = Path(parts(tmp_path)["validated"]).parent / ".part-0.parquet.sha256.json"
    assert json.loads(sidecar.read_text())["sha256"] == hashes["validated"]


def test_day_without_landing_folder_gives_empty_partitions(kc_spec, tmp_path):
    ing, val = run_day(kc_spec, tmp_path)
    assert ing["rows_landed"] == 0 and ing["files"] == 0
    assert (val["rows_read"], val["rows_accepted"], val["rows_quarantined"]) == (0, 0, 0)
    for table in ("validated", "quarantine"):
        df = pl.read_parquet(parts(tmp_path)[table])
        assert df.height == 0 and df.columns[: len(kc_spec.columns)] == list(kc_spec.columns)


def test_missing_raw_partition_fails(kc_spec, tmp_path):
    with pytest.raises(ValidationFailed, match="raw partition missing; run the ingest step for 2014-10-13"):
        validate_interval(kc_spec, str(tmp_path / "lake"), DAY, NEXT)


def test_duplicates_across_files_name_the_first(kc_spec, tmp_path):
    land(tmp_path, DAY, "a.csv", [GOOD, GOOD2])
    land(tmp_path, DAY, "b.csv", [GOOD2])
    _, val = run_day(kc_spec, tmp_path)
    assert (val["rows_accepted"], val["rows_quarantined"]) == (2, 1)
    q = pl.read_parquet(parts(tmp_path)["quarantine"]).row(0, named=True)
    assert q["_source_file"].endswith("b.csv")
    (reason,) = q[REASONS]
    assert reason.startswith("expect_compound_columns_to_be_unique(id, date): duplicate (4036801170, 2014-10-13) of ")
    assert reason.endswith("a.csv row 2")


def test_interval_bounds_are_inclusive_of_the_last_day(kc_spec, tmp_path):
    d2 = DAY + timedelta(days=1)
    land(tmp_path, DAY, "s.csv", [GOOD])
    land(tmp_path, d2, "s.csv", [GOOD2.replace("20141013", "20141014"), GOOD.replace("20141013", "20141015")])
    _, val = run_day(kc_spec, tmp_path, DAY, DAY + timedelta(days=2))
    assert (val["rows_accepted"], val["rows_quarantined"]) == (2, 1)
    q = pl.read_parquet(parts(tmp_path, d2)["quarantine"])
    assert q[REASONS].to_list() == [["expect_column_values_to_be_between(date, min_value=2014-10-13, "
                                     "max_value=2014-10-14): got 2014-10-15"]]


def test_coercion_reason_comes_first(kc_spec, tmp_path):
    land(tmp_path, DAY, "s.csv", [GOOD.replace("221900", '"1,225,000"')])
    _, val = run_day(kc_spec, tmp_path)
    reasons = pl.read_parquet(parts(tmp_path)["quarantine"])[REASONS].to_list()[0]
    assert reasons == ["coercion: price='1,225,000' is not a valid float", "expect_column_values_to_not_be_null(price): got null"]


def test_unparseable_date_is_quarantined(kc_spec, tmp_path):
    land(tmp_path, DAY, "s.csv", [GOOD.replace("20141013T000000", "13/10/2014"), GOOD2])
    _, val = run_day(kc_spec, tmp_path)
    assert (val["rows_accepted"], val["rows_quarantined"]) == (1, 1)
    reasons = pl.read_parquet(parts(tmp_path)["quarantine"])[REASONS].to_list()[0]
    assert reasons[0] == "coercion: date='13/10/2014' is not a valid date"
    assert "expect_column_values_to_not_be_null(date): got null" in reasons


# ---------------------------------------------------------------- batch-level expectations and parameters
def test_expectation_parameters_defaults_and_scaling(kc_spec):
    p = expectation_parameters(kc_spec, DAY, DAY + timedelta(days=3))
    assert (p["min_rows"], p["max_rows"]) == (0, None)
    assert p["interval_start"] == datetime(2014, 10, 13) and p["interval_last"] == datetime(2014, 10, 15)
    p = expectation_parameters(kc_spec, DAY, DAY + timedelta(days=3), {"min_rows_per_day": 2, "max_rows_per_day": 500})
    assert (p["min_rows"], p["max_rows"]) == (6, 1500)
    assert expectation_parameters(kc_spec, DAY, NEXT, {"max_rows": 7})["max_rows"] == 7


def test_row_count_lower_bound_fails_an_empty_day(kc_spec, tmp_path):
    ingest_interval(kc_spec, str(tmp_path / "landing"), str(tmp_path / "lake"), DAY, NEXT)
    with pytest.raises(ValidationFailed) as exc:
        validate_interval(kc_spec, str(tmp_path / "lake"), DAY, NEXT, {"min_rows_per_day": 1})
    msg = str(exc.value)
    assert "batch 2014-10-13..2014-10-13 (0 rows from files: none) failed 1 batch-level expectation(s)" in msg
    assert "expect_table_row_count_to_be_between(min_value=1) failed: observed 0" in msg
    assert not storage.exists(parts(tmp_path)["validated"])


def test_row_count_upper_bound_names_files_and_count(kc_spec, tmp_path):
    land(tmp_path, DAY, "a.csv", [GOOD, GOOD2])
    land(tmp_path, DAY, "b.csv", [GOOD.replace("7129300520", "7129300521")])
    with pytest.raises(ValidationFailed) as exc:
        run_day(kc_spec, tmp_path, params={"max_rows_per_day": 2})
    msg = str(exc.value)
    assert "a.csv (2 rows)" in msg and "b.csv (1 rows)" in msg
    assert "expect_table_row_count_to_be_between(min_value=0, max_value=2) failed: observed 3" in msg


def test_unevaluable_expectation_fails_the_batch(kc_spec, tmp_path, monkeypatch):
    import great_expectations as gx

    import tasks.quality.validate as v

    suite = gx.ExpectationSuite(name="broken", expectations=[
        gx.expectations.ExpectColumnValuesToNotBeNull(column="no_such_column", meta={"severity": "row"})])
    monkeypatch.setattr(v, "build_suite", lambda spec: suite)
    land(tmp_path, DAY, "a.csv", [GOOD])
    with pytest.raises(ValidationFailed, match=r"expect_column_values_to_not_be_null\(no_such_column\) could not be evaluated"):
        run_day(kc_spec, tmp_path)


# ---------------------------------------------------------------- suites
def test_every_expectation_has_a_severity(kc_spec):
    from tasks.core.spec import load_spec

    for spec in (kc_spec, load_spec(KC_SPEC_PATH).model_copy(update={"expectations_module": None})):
        suite = build_suite(spec)
        severities = {(e.meta or {}).get("severity") for e in suite.expectations}
        assert severities == {"row", "batch"}, spec.expectations_module
        types = {e.expectation_type for e in suite.expectations}
        assert {"expect_table_columns_to_match_set", "expect_table_row_count_to_be_between",
                "expect_compound_columns_to_be_unique"} <= types
    kc_types = [e.expectation_type for e in build_suite(kc_spec).expectations]
    assert "expect_column_values_to_match_regex" in kc_types


def test_fmt_values_for_people():
    assert fmt(pd.Timestamp("2099-01-01")) == "2099-01-01"
    assert fmt(pd.Timestamp("2014-10-13 08:30")) == "2014-10-13T08:30:00"
    assert fmt(np.int64(33)) == "33" and fmt(np.float64(-5000)) == "-5000.0"
    assert fmt(float("nan")) == "null" and fmt(None) == "null" and fmt(pd.NaT) == "null"
    assert fmt(np.datetime64("2014-10-13T00:00:00.000000000")) == "2014-10-13"
    assert fmt("4036\n801170") == "'4036\\n801170'"


# ---------------------------------------------------------------- real data
def _real_lines() -> tuple[str, list[str]]:
    with gzip.open(KC_DATA_PATH, "rt", newline="") as f:
        lines = f.read().splitlines()
    return lines[0], lines[1:]


def test_real_day_quarantines_only_the_33_bedroom_house(kc_spec, tmp_path):
    header, rows = _real_lines()
    day_rows = [r for r in rows if '"20140625T000000"' in r]
    p = tmp_path / "landing" / "2014-06-25" / "sales.csv"
    p.parent.mkdir(parents=True)
    p.write_text("\n".join([header, *day_rows]) + "\n")
    d = date(2014, 6, 25)
    _, val = run_day(kc_spec, tmp_path, d, d + timedelta(days=1))
    assert (val["rows_read"], val["rows_accepted"], val["rows_quarantined"]) == (131, 130, 1)
    q = pl.read_parquet(parts(tmp_path, d)["quarantine"])
    assert q["id"].to_list() == ["2402100895"] and q["bedrooms"].to_list() == [33]


def test_whole_real_dataset(kc_spec, tmp_path):
    """Replay every day, ingest and validate 2014-05-01..2015-05-28: 21612 accepted, only the 33-bedroom row out."""
    from tasks.ingest.replay import replay

    replayed = replay(kc_spec, str(tmp_path / "landing"))
    ing, val = run_day(kc_spec, tmp_path, date(2014, 5, 1), date(2015, 5, 28))
    assert replayed["rows"] == ing["rows_landed"] == val["rows_read"] == 21613
    assert ing["coerce_errors"] == 0
    assert (val["rows_accepted"], val["rows_quarantined"]) == (21612, 1)
    q = pl.read_parquet(parts(tmp_path, date(2014, 6, 25))["quarantine"])
    assert q["id"].to_list() == ["2402100895"]
