"""The landing-input corpus (tests/corpus/MANIFEST.yaml): every file through ingest and validate alone.

For each file: copy it into a fresh landing folder for its day, ingest and validate that day, and check
the outcome the manifest records (accepted / quarantined with reasons / failed with a message naming the
file, the column and the value). Whatever the outcome, the landing file must be byte-for-byte unchanged,
and a run that does not fail accounts for every row read: rows read = rows accepted + rows quarantined.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml

from tasks.core import lake, storage
from tasks.ingest.landing import ingest_interval
from tasks.ingest.read import BatchError
from tasks.quality.validate import REASONS, ValidationFailed, validate_interval
from tests.kc import KC_SPEC_PATH

REPO = Path(__file__).resolve().parents[2]

CORPUS = REPO / "tests" / "corpus"
MANIFEST = yaml.safe_load((CORPUS / "MANIFEST.yaml").read_text(encoding="utf-8"))
CASES: dict[str, dict] = MANIFEST["files"]
ERRORS = {"BatchError": BatchError, "ValidationFailed": ValidationFailed}


@pytest.fixture(scope="module")
def kc_spec():
    from tasks.core.spec import load_spec

    return load_spec(KC_SPEC_PATH)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(spec, name: str, case: dict, tmp_path: Path) -> dict:
    """Land ``name`` alone for its day, ingest and validate; returns what the checks need."""
    day = date.fromisoformat(case.get("day", MANIFEST["default_day"]))
    landing, lake_dir = tmp_path / "landing", tmp_path / "lake"
    landed = landing / day.isoformat() / name
    landed.parent.mkdir(parents=True)
    shutil.copyfile(CORPUS / name, landed)
    before = _sha(landed)
    out = {"day": day, "lake": str(lake_dir), "landed": landed, "error": None, "stage": None}
    try:
        out["stage"] = "ingest"
        out["ingest"] = ingest_interval(spec, str(landing), str(lake_dir), day, day + timedelta(days=1))
        out["stage"] = "validate"
        out["validate"] = validate_interval(spec, str(lake_dir), day, day + timedelta(days=1), case.get("params"))
        out["stage"] = None
    except (BatchError, ValidationFailed) as exc:
        out["error"] = exc
    assert _sha(landed) == before == _sha(CORPUS / name), f"{name}: the landing file was modified"
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_corpus_file(kc_spec, name, tmp_path):
    case = CASES[name]
    res = _run(kc_spec, name, case, tmp_path)
    day, lake_uri = res["day"], res["lake"]
    parts = {t: lake.partition_uri(lake_uri, t, day) for t in (lake.RAW, lake.VALIDATED, lake.QUARANTINE)}

    if case["outcome"] == "failed":
        exc = res["error"]
        assert exc is not None, f"{name}: expected {case['error']} at {case['stage']}, but the day went through"
        assert isinstance(exc, ERRORS[case["error"]]), f"{name}: {type(exc).__name__}: {exc}"
        assert res["stage"] == case["stage"], f"{name}: failed at {res['stage']}, expected {case['stage']}: {exc}"
        message = str(exc)
        assert name in message, f"message does not name the file: {message}"
        if case["column"] is not None:
            assert case["column"] in message, f"message does not name the column {case['column']!r}: {message}"
        assert case["value"] in message, f"message does not name the value {case['value']!r}: {message}"
        # A failed step writes nothing for the day.
        written = ["raw", "validated", "quarantine"] if case["stage"] == "ingest" else ["validated", "quarantine"]
        assert not any(storage.exists(parts[t]) for t in written), f"{name}: partitions written by a failed step"
        return

    assert res["error"] is None, f"{name}: unexpected {type(res['error']).__name__}: {res['error']}"
    ing, val = res["ingest"], res["validate"]
    assert ing["rows_landed"] == case["rows"], ing
    assert val["rows_read"] == ing["rows_landed"]
    assert val["rows_read"] == val["rows_accepted"] + val["rows_quarantined"], val
    assert ing["dropped_columns"] == ({str(res["landed"]): case["dropped"]} if case.get("dropped") else {})

    validated = pl.read_parquet(parts["validated"])
    quarantine = pl.read_parquet(parts["quarantine"])
    assert validated.height == val["rows_accepted"] and quarantine.height == val["rows_quarantined"]
    assert REASONS not in validated.columns and REASONS in quarantine.columns
    # Every landed row ends up exactly once, in validated or in quarantine.
    rows = sorted(validated["_source_row"].to_list() + quarantine["_source_row"].to_list())
    assert rows == list(range(1, case["rows"] + 1))
    assert all(f.endswith(name) for f in validated["_source_file"].to_list() + quarantine["_source_file"].to_list())

    expected = {int(k): v for k, v in (case.get("quarantine") or {}).items()}
    if case["outcome"] == "accepted":
        assert not expected, f"{name}: an accepted case lists quarantined rows"
        assert val["rows_accepted"] == case["rows"] and val["rows_quarantined"] == 0, quarantine[REASONS].to_list()
        return
    assert case["outcome"] == "quarantined"
    got = {row["_source_row"]: " | ".join(row[REASONS]) for row in quarantine.iter_rows(named=True)}
    assert set(got) == set(expected), f"{name}: quarantined rows {got}"
    for row, needles in expected.items():
        for needle in needles:
            assert needle in got[row], f"{name} row {row}: {needle!r} not in reasons {got[row]!r}"
    assert val["rows_accepted"] == case["rows"] - len(expected)


def test_corpus_is_complete():
    """Every corpus file has a manifest entry and vice versa; the brief asks for at least 25 files."""
    files = {p.name for p in CORPUS.iterdir() if p.is_file() and p.name != "MANIFEST.yaml"}
    assert files == set(CASES)
    assert len(files) >= 25
    outcomes = {c["outcome"] for c in CASES.values()}
    assert outcomes == {"accepted", "quarantined", "failed"}
    for name, case in CASES.items():
        assert case.get("why"), f"{name}: say why this is the outcome a data team wants"
        if case["outcome"] == "failed":
            assert {"stage", "error", "column", "value"} <= set(case), name
        else:
            assert isinstance(case.get("rows"), int), name


def test_truncated_parquet_is_half_of_good_parquet():
    good = (CORPUS / "good.parquet").read_bytes()
    assert (CORPUS / "truncated.parquet").read_bytes() == good[: len(good) // 2]


def test_parquet_and_csv_ingest_to_the_same_rows(kc_spec, tmp_path):
    """good.csv, good.parquet (typed) and good_text.parquet hold the same sales: the raw rows agree."""
    day = date.fromisoformat(MANIFEST["default_day"])
    frames = []
    for name in ("good.csv", "good.parquet", "good_text.parquet"):
        landing = tmp_path / name / "landing"
        (landing / day.isoformat()).mkdir(parents=True)
        shutil.copyfile(CORPUS / name, landing / day.isoformat() / name)
        lake_uri = str(tmp_path / name / "lake")
        ingest_interval(kc_spec, str(landing), lake_uri, day, day + timedelta(days=1))
        frames.append(pl.read_parquet(lake.partition_uri(lake_uri, lake.RAW, day)).drop("_source_file"))
    assert frames[0].equals(frames[1]) and frames[0].equals(frames[2])
    assert frames[0]["price"].to_list()[3] == 1_450_000.0  # "1.45e+006"


def test_docs_corpus_table_matches_manifest():
    """docs/data-contract.md lists every corpus file with the manifest's outcome."""
    doc = (REPO / "docs" / "data-contract.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\|\s*`([^`]+)`\s*\|\s*(\w+)", doc, flags=re.M)}
    for name, case in CASES.items():
        assert rows.get(name) == case["outcome"], f"docs/data-contract.md: corpus row for {name}"
