"""The compiled validation engine against the reference one (``validate_interval(engine="gx")``: GX judges
every row): same return value, same validated and quarantine files, same reasons, same Data Docs and
summaries, same failures, on the landing corpus and on synthetic days with injected faults.

Each case ingests once, copies the lake, validates one copy with each engine and compares every file
each validation wrote (Parquet byte for byte: a column that came out with another dtype would differ).
"""

from __future__ import annotations

import itertools
import json
import shutil
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml

from expectations.compiled import compile_row_check, plan_suite
from tasks.core import lake, storage
from tasks.ingest.landing import COERCE_ERRORS, ingest_interval
from tasks.quality.validate import (
    ValidationFailed,
    build_suite,
    expectation_parameters,
    run_gx,
    validate_interval,
)
from tests.kc import KC_SPEC_PATH

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"
MANIFEST = yaml.safe_load((CORPUS / "MANIFEST.yaml").read_text(encoding="utf-8"))
START = date(2014, 5, 2)
_COPIES = itertools.count()


@pytest.fixture(scope="module")
def kc_spec():
    from tasks.core.spec import load_spec

    return load_spec(KC_SPEC_PATH)


def _outcome(spec, lake_dir: Path, start: date, end: date, params: dict | None, engine: str) -> dict:
    """What one validation returned or raised, and every file under the lake but raw/, lake path blanked."""
    try:
        out, error = validate_interval(spec, str(lake_dir), start, end, params, engine=engine), None
    except ValidationFailed as exc:
        out, error = None, (str(exc), exc.details)
    files = {}
    for p in sorted(lake_dir.rglob("*")):
        rel = p.relative_to(lake_dir).as_posix()
        if p.is_file() and not rel.startswith("raw/"):
            data = p.read_bytes()
            if p.name.endswith(".sha256.json"):  # a hash sidecar also records the file's inode and mtime
                files[rel] = json.loads(data)["sha256"]
            else:
                files[rel] = data if p.suffix == ".parquet" else data.decode().replace(str(lake_dir), "LAKE")
    return {"out": repr(out).replace(str(lake_dir), "LAKE"), "error": repr(error).replace(str(lake_dir), "LAKE"),
            "files": files}


def assert_same(spec, lake_dir: Path, start: date, end: date, params: dict | None = None) -> dict:
    """Validate copies of ``lake_dir`` with both engines; they must agree on everything. Returns one outcome."""
    n = next(_COPIES)
    copies = {e: lake_dir.parent / f"{lake_dir.name}-{n}-{e}" for e in ("gx", "compiled")}
    for copy in copies.values():
        shutil.copytree(lake_dir, copy)
    got = {e: _outcome(spec, copy, start, end, params, e) for e, copy in copies.items()}
    ref, new = got["gx"], got["compiled"]
    assert new["error"] == ref["error"]
    assert new["out"] == ref["out"]
    assert sorted(new["files"]) == sorted(ref["files"])
    for name, content in ref["files"].items():
        assert new["files"][name] == content, f"{name} differs between the engines"
    return ref


# ---------------------------------------------------------------- the corpus
VALIDATED_CASES = sorted(n for n, c in MANIFEST["files"].items() if not (c["outcome"] == "failed" and c["stage"] == "ingest"))


@pytest.mark.parametrize("name", VALIDATED_CASES)
def test_corpus_same_outcome(kc_spec, name, tmp_path):
    case = MANIFEST["files"][name]
    day = date.fromisoformat(case.get("day", MANIFEST["default_day"]))
    landed = tmp_path / "landing" / day.isoformat() / name
    landed.parent.mkdir(parents=True)
    shutil.copyfile(CORPUS / name, landed)
    ingest_interval(kc_spec, str(tmp_path / "landing"), str(tmp_path / "lake"), day, day + timedelta(days=1))
    ref = assert_same(kc_spec, tmp_path / "lake", day, day + timedelta(days=1), case.get("params"))
    assert (ref["out"] == "None") == (case["outcome"] == "failed")


# ---------------------------------------------------------------- synthetic days with injected faults
def _synth_lake(spec, root: Path, rows: int, days: int) -> Path:
    from tasks.datasets.king_county.synth import generate

    generate(rows, days, 7, root / "landing", start=START)
    ingest_interval(spec, str(root / "landing"), str(root / "lake"), START, START + timedelta(days=days))
    return root / "lake"


def _rewrite_raw(lake_dir: Path, day: date, edit) -> None:
    path = Path(storage.local_path(lake.partition_uri(str(lake_dir), lake.RAW, day)))
    frame = edit(pl.read_parquet(path).with_row_index("_i")).drop("_i")
    path.unlink()
    frame.write_parquet(path)


def _at(i: int, value, column: str, dtype=None) -> pl.Expr:
    lit = pl.lit(value, dtype) if dtype is not None else pl.lit(value)
    return pl.when(pl.col("_i") == i).then(lit).otherwise(pl.col(column)).alias(column)


def _faults(day: date):
    """Every kind of row fault the suite catches, one or more rows each."""
    edits = [(0, -5.0, "price", None), (3, float("nan"), "price", None), (17, None, "price", pl.Float64),
             (17, "price: 'abc' is not a number", COERCE_ERRORS, pl.String), (22, float("-inf"), "long", None),
             (18, 99.0, "lat", None), (19, float("nan"), "floors", None), (1, None, "bedrooms", pl.Int64),
             (2, 33, "bedrooms", None), (20, 7, "waterfront", None), (21, None, "grade", pl.Int64),
             (23, -1, "view", None), (4, "12345", "zipcode", None), (5, None, "zipcode", pl.String),
             (6, "12a", "id", None), (7, "123\n", "id", None), (8, None, "id", pl.String), (14, None, "id", pl.String),
             (15, None, "id", pl.String), (9, 2100, "yr_built", None), (10, 2100, "yr_renovated", None),
             (11, day + timedelta(days=40), "date", None), (16, None, "date", pl.Date)]

    def edit(f: pl.DataFrame) -> pl.DataFrame:
        for i, value, column, dtype in edits:
            f = f.with_columns(_at(i, value, column, dtype))
        dup = f.filter(pl.col("_i") == 13).with_columns(pl.lit(10_000, pl.UInt32).alias("_i"),
                                                         pl.lit(99_999, pl.Int64).alias("_source_row"))
        return pl.concat([f, dup])
    return edit


def test_injected_faults_same_reasons(kc_spec, tmp_path, caplog):
    caplog.set_level("INFO", logger="tasks.quality.validate")
    lake_dir = _synth_lake(kc_spec, tmp_path, 900, 3)
    _rewrite_raw(lake_dir, START + timedelta(days=1), _faults(START + timedelta(days=1)))
    ref = assert_same(kc_spec, lake_dir, START, START + timedelta(days=3))
    assert "GX validates the whole batch" not in caplog.text  # the compiled engine did the work
    quarantine = [n for n in ref["files"] if n.startswith("quarantine/") and "part-0" in n]
    q = pl.concat([pl.read_parquet(ref["files"][n]) for n in quarantine])
    assert q.height >= 22  # every injected fault quarantined, with reasons from GX and from the prechecks
    reasons = " | ".join(r for rs in q["_reasons"].to_list() for r in rs)
    for needle in ("price, min_value=1000.0", "got 33.0", "match_regex", "in_set(zipcode", "a_to_be_greater_than_b",
                   "coercion: price", "duplicate (", "compound_columns_to_be_unique", "not_be_null(date)"):
        assert needle in reasons, needle


def test_clean_days_same_result(kc_spec, tmp_path):
    """No faults: GX sees no row in the compact call and every row of the narrow one."""
    lake_dir = _synth_lake(kc_spec, tmp_path, 600, 2)
    ref = assert_same(kc_spec, lake_dir, START, START + timedelta(days=2))
    assert "'rows_quarantined': 0" in ref["out"]


def test_reference_and_batch_failures_same(kc_spec, tmp_path):
    """With a reference window the distribution checks run; a failed one, and a failed row count, read the same."""
    lake_dir = _synth_lake(kc_spec, tmp_path, 3_000, 34)
    first = START + timedelta(days=30)
    validate_interval(kc_spec, str(lake_dir), START, first, engine="gx")
    _rewrite_raw(lake_dir, first + timedelta(days=1), _faults(first + timedelta(days=1)))
    ref = assert_same(kc_spec, lake_dir, first, first + timedelta(days=3))
    assert "target_median" not in ref["out"] and "expect_column_median_to_be_between" in ref["out"]
    for day in range(3):  # every price tripled: the median is out of the reference's range
        _rewrite_raw(lake_dir, first + timedelta(days=day), lambda f: f.with_columns(pl.col("price") * 3))
    failed = assert_same(kc_spec, lake_dir, first, first + timedelta(days=3))
    assert "expect_column_median_to_be_between" in failed["error"]
    capped = assert_same(kc_spec, lake_dir, first, first + timedelta(days=2), {"max_rows_per_day": 5})
    assert "expect_table_row_count_to_be_between" in capped["error"]


# ---------------------------------------------------------------- what is compiled, and what is not
def test_the_row_checks_are_compiled(kc_spec, tmp_path):
    """Every King County expectation is placed; its row-level ones are all compiled, so a clean batch
    sends GX no row but one per column with nulls (pandas' dtype for the column)."""
    suite = build_suite(kc_spec)
    params = expectation_parameters(kc_spec, START, START + timedelta(days=1))
    lake_dir = _synth_lake(kc_spec, tmp_path, 300, 1)
    raw = pl.read_parquet(storage.local_path(lake.partition_uri(str(lake_dir), lake.RAW, START)))
    view = raw.with_columns((pl.col("date").dt.year() + 1).alias("_sale_year_plus_1"))
    plan = plan_suite(suite.expectations, params, view.schema, ["id", "date"])
    rows = [i for i, e in enumerate(suite.expectations) if (e.meta or {}).get("severity") == "row"]
    assert set(rows) <= set(plan.compact) and len(plan.sure) == len(rows)
    assert plan.narrow and set(plan.columns) <= {"price"}
    nulls = [c for c in view.columns if view[c].null_count()]
    assert view.select(plan.candidates(nulls)).to_series().sum() == len(nulls)
    bad = view.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(0.0).otherwise(pl.col("price")).alias("price"))
    assert bad.select(plan.candidates(nulls)).to_series().sum() == len(nulls) + 1


def test_what_is_not_compiled_goes_to_every_row(kc_spec):
    import great_expectations as gx

    schema = pl.Schema({"id": pl.String, "n": pl.Int64, "t": pl.Datetime("us", "UTC"), "b": pl.Boolean})
    assert compile_row_check("expect_column_values_to_match_regex", {"column": "id", "regex": r"^(?=\d)\d+$"},
                             schema, []) is None  # a lookahead: engines differ
    assert compile_row_check("expect_column_values_to_match_regex", {"column": "id", "regex": r"^\d+$"},
                             schema, []) is None  # \d is Unicode in some engines, ASCII in others
    for rx in ("^[0-9]{,5}$", "^[0-9]{1,2$", "^[0-9$"):  # a brace Python reads as a quantifier, broken ones
        assert compile_row_check("expect_column_values_to_match_regex", {"column": "id", "regex": rx},
                                 schema, []) is None, rx
    assert compile_row_check("expect_column_values_to_match_regex", {"column": "id", "regex": "^[0-9]{1,10}$"},
                             schema, []) is not None
    assert compile_row_check("expect_column_values_to_be_between", {"column": "n", "min_value": 0, "mostly": 0.9},
                             schema, []) is None
    assert compile_row_check("expect_column_values_to_be_between", {"column": "n", "min_value": 5, "max_value": 1},
                             schema, []) is None  # GX raises: it must see the rows
    assert compile_row_check("expect_column_values_to_be_between", {"column": "id", "min_value": 0},
                             schema, []) is None
    assert compile_row_check("expect_column_values_to_be_in_set", {"column": "b", "value_set": [True]},
                             schema, []) is None
    assert compile_row_check("expect_compound_columns_to_be_unique", {"column_list": ["id", "n"]},
                             schema, ["id"]) is None  # not the key the prechecks made unique
    exps = [gx.expectations.ExpectColumnValuesToBeBetween(column="n", min_value=0, mostly=0.5),
            gx.expectations.ExpectColumnValuesToNotBeNull(column="id"),
            gx.expectations.ExpectTableRowCountToBeBetween(min_value=1)]
    plan = plan_suite(exps, {}, schema, [])
    assert (plan.compact, plan.narrow, plan.columns) == ([1], [0, 2], ["n"])
    conditional = [gx.expectations.ExpectColumnValuesToNotBeNull(column="id", row_condition='n>1',
                                                                 condition_parser="pandas")]
    assert plan_suite(conditional, {}, schema, []) is None
    missing = [gx.expectations.ExpectColumnMedianToBeBetween(column="no_such_column", min_value=1)]
    assert plan_suite(missing, {}, schema, []) is None


def test_same_gx_result_on_a_frame(kc_spec, tmp_path, caplog):
    """run_gx itself: the compiled engine's result lists the same unexpected rows and values per expectation,
    without falling back to the whole batch."""
    lake_dir = _synth_lake(kc_spec, tmp_path, 400, 1)
    _rewrite_raw(lake_dir, START, _faults(START))
    frame = pl.read_parquet(storage.local_path(lake.partition_uri(str(lake_dir), lake.RAW, START)))
    frame = frame.unique(["id", "date"], keep="first", maintain_order=True).with_row_index("_row_id")
    caplog.set_level("INFO", logger="tasks.quality.validate")
    results = {e: run_gx(kc_spec, frame, START, START + timedelta(days=1), engine=e) for e in ("gx", "compiled")}
    ref, new = results["gx"], results["compiled"]
    assert "GX validates the whole batch" not in caplog.text
    assert (new.success, new.statistics, new.suite_name) == (ref.success, ref.statistics, ref.suite_name)
    for a, b in zip(ref.results, new.results, strict=True):
        assert a.expectation_config.type == b.expectation_config.type and a.success == b.success
        for key in ("unexpected_count", "unexpected_index_list", "unexpected_list", "observed_value"):
            assert repr(a.result.get(key)) == repr(b.result.get(key)), (a.expectation_config.type, key)
    with pytest.raises(ValueError, match="engine 'fast'"):
        run_gx(kc_spec, frame, START, START + timedelta(days=1), engine="fast")
