"""``homeworth spec infer``: types, nullable, date formats, headers, roles, the split, the suite; and the
dataset-aware rules a spec without an id brings (whole-row duplicates, nullable columns) through the real
ingest and Great Expectations validation."""

from __future__ import annotations

import gzip
import importlib.util
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml

from tasks.cli import main as cli_main
from tasks.core.infer import infer
from tasks.core.infer_render import render_spec, render_suite
from tasks.core.spec import DatasetSpec, load_spec, normalise_header
from tests.kc import KC_SPEC_PATH

REPO = Path(__file__).resolve().parents[2]
HEADER = "\ufeffSuburb ,Address,Rooms,Type,Price,Date,Lattitude,Longtitude,BuildingArea,YearBuilt,Postcode,Sold,Flag"
DAY0 = date(2017, 3, 4)


def _rows(n: int = 60) -> list[str]:
    """Melbourne-like rows: day-first dates, floats written for counts, empty cells, a free-text address."""
    out = []
    for i in range(n):
        day = DAY0 + timedelta(days=7 * (i % 10))
        area = "" if i % 4 == 0 else f"{80 + i}.5"
        year = "NA" if i % 5 == 0 else f"{1900 + i}.0"
        out.append(f"{['Abbotsford', 'Richmond', 'Kew'][i % 3]},{i + 1} {['Turner', 'Bloom'][i % 2]} St,{2 + i % 3},"
                   f"{'hu'[i % 2]},{(900_000 + 37_000 * i) * (3 if i % 9 == 0 else 1)}.0,{day.day}/{day.month:02d}/{day.year},"
                   f"{-37.80 - i / 1000:.4f},{144.99 + i / 1000:.4f},{area},{year},{3067 + i % 4}.0,"
                   f"{'yes' if i % 2 else 'no'},x")
    return out


@pytest.fixture
def melb_like(tmp_path: Path) -> Path:
    p = tmp_path / "sales.csv"
    p.write_text("\n".join([HEADER, *_rows()]) + "\n", encoding="utf-8")
    return p


def _cols(inferred) -> dict:
    return {c.name: c for c in inferred.columns}


def test_types_nullable_dates_bom_and_headers_as_spelt(melb_like: Path):
    inf = infer(melb_like, "melb", "price")  # the target named in another case
    cols = _cols(inf)
    assert list(cols) == ["Suburb", "Address", "Rooms", "Type", "Price", "Date", "Lattitude", "Longtitude",
                          "BuildingArea", "YearBuilt", "Postcode", "Sold", "Flag"], "BOM and spaces gone, case kept"
    assert inf.file["bom"] is True
    assert cols["Price"].role == "target" and cols["Price"].type == "float"
    assert cols["Rooms"].type == "int", "'2.0'-style whole numbers are ints"
    assert cols["Date"].type == "date" and cols["Date"].format == "%d/%m/%Y" and cols["Date"].role == "event_time"
    assert cols["Sold"].type == "bool"
    assert cols["BuildingArea"].type == "float" and cols["BuildingArea"].nullable
    assert cols["YearBuilt"].type == "float" and cols["YearBuilt"].nullable, "NA is a missing value, not text"
    assert cols["YearBuilt"].stats["na_tokens"] == ["NA"]
    assert not cols["Rooms"].nullable and not cols["Price"].nullable


def test_roles_free_text_constants_and_comps_guesses(melb_like: Path):
    cols = _cols(infer(melb_like, "melb", "Price"))
    assert cols["Address"].role == "ignore" and "per-row unique" in "; ".join(cols["Address"].notes)
    assert cols["Flag"].role == "ignore" and "single value" in "; ".join(cols["Flag"].notes)
    assert cols["Suburb"].role == "categorical" and cols["Type"].role == "categorical"
    assert cols["Postcode"].role == "categorical" and cols["Postcode"].comps == "location"
    assert (cols["Lattitude"].comps, cols["Longtitude"].comps) == ("latitude", "longitude"), "misspelt names"
    assert cols["BuildingArea"].comps == "living_area"
    assert cols["Rooms"].role == "numeric" and cols["Rooms"].comps is None


def test_free_text_with_repeats_is_ignored(tmp_path: Path):
    words = ["lovely family home near the park", "renovated unit with city views", "quiet street close to shops"]
    lines = ["price,remarks,beds"] + [f"{100 + i},{words[i % 3]} number {i % 20},{i % 4}" for i in range(100)]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    cols = _cols(infer(tmp_path / "s.csv", "t", "price", split="random"))
    assert cols["remarks"].role == "ignore" and "free text" in "; ".join(cols["remarks"].notes)


@pytest.mark.parametrize("written, fmt", [
    ("20141013T000000", "%Y%m%dT%H%M%S"), ("2014-10-13", "%Y-%m-%d"), ("10/13/2014", "%m/%d/%Y"),
    ("13.10.2014", "%d.%m.%Y"), ("2014/10/13", "%Y/%m/%d"),
])
def test_date_formats(tmp_path: Path, written: str, fmt: str):
    lines = ["id,sold_on,price", *[f"{i},{written},{100 + i}" for i in range(5)], f"9,{written},7"]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    inf = infer(tmp_path / "d.csv", "d", "price", time_col="SOLD_ON")
    assert _cols(inf)["sold_on"].format == fmt
    assert pl.Series([written]).str.to_datetime(fmt).dt.date()[0] == date(2014, 10, 13), "the ingest parses it back"


def test_no_time_column_gives_a_random_split_and_leading_zeros_stay_text(tmp_path: Path):
    lines = ["zip,rooms,value"] + [f"0{2100 + i % 7},{i % 5},{1000 + 10 * i}" for i in range(50)]
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    inf = infer(tmp_path / "x.csv", "x", "value")
    assert inf.split == {"method": "random"}
    assert _cols(inf)["zip"].type == "string" and _cols(inf)["zip"].comps == "location"
    spec = DatasetSpec.model_validate(yaml.safe_load(render_spec(inf, "x.csv")))
    assert spec.event_time is None and spec.split.method == "random"
    with pytest.raises(ValueError, match="needs an event time"):
        infer(tmp_path / "x.csv", "x", "value", split="time")


def test_rendered_spec_loads_keeps_spelling_and_says_why(melb_like: Path, tmp_path: Path):
    text = render_spec(infer(melb_like, "melb", "Price"), melb_like.name)
    (tmp_path / "spec.yaml").write_text(text)
    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.target == "Price" and spec.event_time == "Date" and spec.id_columns == []
    assert spec.columns["YearBuilt"].accepts_null and not spec.columns["Rooms"].accepts_null
    assert spec.columns["YearBuilt"].required, "always present, sometimes empty"
    assert spec.comps_columns("latitude") == ["Lattitude"]
    assert spec.target_transform == "log" and spec.landing.csv.na_values == ["NA"]
    assert "# Address: ignored: per-row unique" in text
    assert "comps latitude: guessed from its name and values" in text
    assert spec.split.method == "time" and spec.split.test_days > 0
    assert {normalise_header(h) for h in HEADER.split(",")} == {normalise_header(c) for c in spec.columns}


def test_parquet_and_gzip_input(melb_like: Path, tmp_path: Path):
    gz = tmp_path / "sales.csv.gz"
    gz.write_bytes(gzip.compress(melb_like.read_bytes()))
    assert [c.type for c in infer(gz, "m", "Price").columns] == [c.type for c in infer(melb_like, "m", "Price").columns]
    pq = tmp_path / "sales.parquet"
    pl.DataFrame({"price": [1.5e5, 2e5, 9e5], "when": [date(2020, 1, d) for d in (1, 2, 3)], "beds": [1, 2, None],
                  "kind": ["a", "b", "a"]}).write_parquet(pq)
    cols = _cols(infer(pq, "p", "price"))
    assert (cols["when"].type, cols["when"].role) == ("date", "event_time")
    assert cols["beds"].type == "float" and cols["beds"].nullable, "whole numbers with gaps are floats"


def test_unknown_columns_fail_naming_the_file(melb_like: Path):
    with pytest.raises(ValueError, match=r"sales.csv: --target 'Prize' is not a column"):
        infer(melb_like, "m", "Prize")
    with pytest.raises(ValueError, match=r"target column 'Suburb' is string, not a number"):
        infer(melb_like, "m", "Suburb")


def test_cli_writes_the_spec_and_a_working_suite(melb_like: Path, capsys, monkeypatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["spec", "infer", str(melb_like), "--name", "melb", "--target", "Price", "--suite",
                     "suites/melb_suite.py"]) == 0
    text = capsys.readouterr().out
    assert "expectations_module: \"suites.melb_suite\"" in text
    spec = DatasetSpec.model_validate(yaml.safe_load(text))
    mod_spec = importlib.util.spec_from_file_location("melb_suite", tmp_path / "suites" / "melb_suite.py")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    lo, hi = module.BOUNDS["Price"]
    assert 0 < lo < 900_000 and hi > 3 * (900_000 + 37_000 * 54), "widened beyond the observed quantiles"
    assert module.VALUE_SETS == {}, "60 rows are too few to fix a code list"
    suite = module.build_suite(spec, ["ds", "_source_file", "_source_row", "_coerce_errors"])
    kinds = {(type(e).__name__, getattr(e, "column", None)) for e in suite.expectations}
    assert ("ExpectColumnValuesToNotBeNull", "Rooms") in kinds
    assert ("ExpectColumnValuesToNotBeNull", "YearBuilt") not in kinds, "nullable: no not-null check"
    assert ("ExpectColumnValuesToBeBetween", "Price") in kinds


def test_suite_bounds_and_value_sets_on_a_large_sample(tmp_path: Path):
    lines = ["price,kind,beds"] + [f"{100_000 + 13 * i},{'abc'[i % 3]},{i % 6}" for i in range(1500)]
    (tmp_path / "b.csv").write_text("\n".join(lines) + "\n")
    inf = infer(tmp_path / "b.csv", "b", "price", split="random")
    text = render_suite(inf, "b.csv")
    assert '"kind": ["a", "b", "c"]' in text and '"beds": (0.0, 8.0)' in text


def test_king_county_spec_stays_valid_and_strict():
    spec = load_spec(KC_SPEC_PATH)
    assert spec.not_null_columns == list(spec.columns), "required and no nullable: empty values are quarantined"
    assert spec.duplicate_key() == (["id", "date"], False)
    assert spec.target_transform is None
    # King County keeps its absolute bars in its own spec; the boosting is reported, not a bar.
    assert (spec.promotion.max_mdape, spec.promotion.min_ppe10, spec.promotion.max_mdape_vs_boosting) == (0.15, 0.40, None)


def test_inferring_king_county_names_its_id_and_date_format():
    inf = infer(REPO / "tasks/datasets/king_county/kc_house_data.csv.gz", "kc", "price", id_col="id",
                rows=3000)
    cols = _cols(inf)
    assert (cols["id"].role, cols["id"].type) == ("id", "string")
    assert (cols["date"].format, cols["date"].role) == ("%Y%m%dT%H%M%S", "event_time")
    assert cols["zipcode"].comps == "location" and cols["sqft_living"].comps == "living_area"
    assert cols["sqft_living15"].comps is None and (cols["lat"].comps, cols["long"].comps) == ("latitude", "longitude")


def _ingest_and_validate(spec: DatasetSpec, root: Path, day: date, text: str) -> dict:
    from tasks.ingest.landing import ingest_interval
    from tasks.quality.validate import validate_interval

    folder = root / "landing" / day.isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sales.csv").write_text(text)
    ingest_interval(spec, str(root / "landing"), str(root / "lake"), day, day + timedelta(days=1))
    return validate_interval(spec, str(root / "lake"), day, day + timedelta(days=1))


def test_a_file_without_an_id_keeps_all_its_rows(tmp_path: Path):
    """Many sales on one day and empty cells in nullable columns: every row accepted; only an exact
    repeat of a row (empty cells included) is a duplicate."""
    day = date(2017, 3, 4)
    rows = [f"s{i % 3},{2 + i % 3},{'' if i % 4 == 0 else 80 + i},{900_000 + 1000 * i},4/03/2017" for i in range(40)]
    text = "\n".join(["suburb,rooms,area,price,date", *rows]) + "\n"
    (tmp_path / "sample.csv").write_text(text)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(render_spec(infer(tmp_path / "sample.csv", "noid", "price"), "sample.csv"))
    spec = load_spec(spec_path)
    assert spec.id_columns == [] and spec.columns["area"].accepts_null
    out = _ingest_and_validate(spec, tmp_path / "a", day, text)
    assert (out["rows_read"], out["rows_accepted"], out["rows_quarantined"]) == (40, 40, 0)
    repeated = text + rows[1] + "\n" + rows[0] + "\n"  # rows[0] has an empty area: still a repeat
    out = _ingest_and_validate(spec, tmp_path / "b", day, repeated)
    assert (out["rows_accepted"], out["rows_quarantined"]) == (40, 2)
    from tasks.core import lake

    q = pl.read_parquet(lake.day_file(str(tmp_path / "b" / "lake"), lake.QUARANTINE, day))
    assert sorted(q["_source_row"].to_list()) == [41, 42]
    assert all("every spec column equal to" in r[0] and "row 2" in r[0] or "row 1" in r[0] for r in q["_reasons"])


def test_not_nullable_columns_still_quarantine_empty_values(tmp_path: Path):
    day = date(2017, 3, 4)
    text = "suburb,rooms,price,date\na,2,900000,4/03/2017\nb,,800000,4/03/2017\nc,3,700000,4/03/2017\n"
    (tmp_path / "s.csv").write_text(text)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(render_spec(infer(tmp_path / "s.csv", "t", "price"), "s.csv")
                         .replace("rooms: {type: float, role: numeric, required: true, nullable: true}",
                                  "rooms: {type: float, role: numeric, required: true, nullable: false}"))
    spec = load_spec(spec_path)
    assert not spec.columns["rooms"].accepts_null
    out = _ingest_and_validate(spec, tmp_path, day, text)
    assert (out["rows_accepted"], out["rows_quarantined"]) == (2, 1)


def test_melbourne_spec_is_what_spec_infer_writes_plus_marked_edits():
    """The committed spec is the tool's output; every difference is a block introduced by ``# EDIT``."""
    import difflib

    folder = REPO / "tasks/datasets/melbourne"
    inferred = render_spec(infer(folder / "melb_data.csv.gz", "melbourne", "Price"), "melb_data.csv.gz",
                           "tasks.datasets.melbourne.expectations").splitlines()
    committed = (folder / "spec.yaml").read_text().splitlines()
    edits = 0
    for op, _, _, j1, j2 in difflib.SequenceMatcher(a=inferred, b=committed, autojunk=False).get_opcodes():
        if op != "equal":
            edits += 1
            assert j2 > j1 and committed[j1].lstrip().startswith("# EDIT"), f"unmarked change: {committed[j1:j2]}"
    assert 1 <= edits <= 3
    spec = load_spec(folder / "spec.yaml")
    assert spec.id_columns == [] and spec.bundled_path().exists()
    assert (spec.split.test_days, spec.split.val_days) == (85, 61)  # test >= 2017-07-01 with the data's last day
