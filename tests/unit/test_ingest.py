"""Unit tests of tasks.ingest.landing on tiny frames and files: reading, coercion, the raw partition."""

from __future__ import annotations

import hashlib
import io
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest

from tasks.core import lake, storage
from tasks.core.spec import DatasetSpec, load_spec
from tasks.ingest.landing import (
    COERCE_ERRORS,
    SOURCE_FILE,
    SOURCE_ROW,
    coerce,
    days_in_interval,
    ingest_day,
    ingest_interval,
    raw_schema,
)
from tasks.ingest.read import BatchError, read_landing_file
from tests.kc import KC_HEADER, KC_SPEC_PATH

REPO = Path(__file__).resolve().parents[2]

DAY = date(2014, 10, 13)
KC_ROWS = [
    '"7129300520","20141013T000000",221900,3,1,1180,5650,"1",0,0,3,7,1180,0,1955,0,"98178",47.5112,-122.257,1340,5650',
    '"1373800295","20141013T000000",1.45e+006,3,3,4380,6320,"2",0,3,5,10,3580,800,1952,0,"98199",47.6452,-122.411,3080,7680',
]


def tiny_spec(**csv) -> DatasetSpec:
    """A five-column spec covering every column type (bool optional)."""
    return DatasetSpec.model_validate({
        "name": "tiny",
        "columns": {
            "id": {"type": "string", "role": "id"},
            "date": {"type": "date", "role": "event_time", "format": "%Y%m%dT%H%M%S"},
            "price": {"type": "float", "role": "target"},
            "rooms": {"type": "int", "role": "numeric"},
            "new": {"type": "bool", "role": "numeric", "required": False},
        },
        "landing": {"csv": csv} if csv else {},
    })


@pytest.fixture(scope="module")
def kc_spec():
    return load_spec(KC_SPEC_PATH)


def _coerce_one(spec: DatasetSpec, column: str, values: list) -> tuple[list, list]:
    """Coerce ``values`` in ``column`` (other required columns filled with valid text)."""
    fill = {"id": "1", "date": "20141013T000000", "price": "1", "rooms": "1"}
    df = pl.DataFrame({c: [fill[c]] * len(values) for c in fill if c != column} | {column: values})
    out, _ = coerce(df, spec, "mem://f.csv", DAY)
    return out[column].to_list(), out[COERCE_ERRORS].to_list()


def _write(tmp_path: Path, name: str, data: bytes | str) -> str:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(p)


# ---------------------------------------------------------------- coercion, one type at a time
def test_coerce_float_accepts_exponents_and_quotes_rejects_non_finite():
    values, errors = _coerce_one(tiny_spec(), "price", ["1.225e+006", " 221900 ", "2.25", "", "NaN", "inf", "-Infinity", "abc"])
    assert values == [1_225_000.0, 221_900.0, 2.25, None, None, None, None, None]
    assert errors[:4] == [None] * 4  # an empty value is a null, not a coercion error
    assert errors[4] == "price='NaN' is not a valid float"
    assert errors[5] == "price='inf' is not a valid float"
    assert "price='abc'" in errors[7]


def test_coerce_int_accepts_whole_floats_only():
    values, errors = _coerce_one(tiny_spec(), "rooms", ["3", "3.0", "1e+001", "3.5", "three", "inf"])
    assert values == [3, 3, 10, None, None, None]
    assert errors[:3] == [None] * 3
    assert errors[3] == "rooms='3.5' is not a valid int" and "rooms='three'" in errors[4]


def test_coerce_string_strips_and_empty_is_null():
    values, errors = _coerce_one(tiny_spec(), "id", [" 7129300520 ", "", "   ", "0042"])
    assert values == ["7129300520", None, None, "0042"]
    assert errors == [None] * 4


def test_coerce_dates_compact_iso_and_invalid():
    values, errors = _coerce_one(tiny_spec(), "date",
                                 ["20141013T000000", "2014-10-13", "2014-10-13T08:30:00", "13/10/2014", "20141332T000000"])
    assert values == [DAY, DAY, DAY, None, None]
    assert errors[:3] == [None] * 3
    assert errors[3] == "date='13/10/2014' is not a valid date"


def test_coerce_bool():
    values, errors = _coerce_one(tiny_spec(), "new", ["true", "Y", "0", "no", "", "maybe"])
    assert values == [True, True, False, False, None, None]
    assert errors[-1] == "new='maybe' is not a valid bool"


def test_coerce_typed_parquet_columns():
    df = pl.DataFrame({
        "id": [7129300520, 42],                      # an integer id becomes its text
        "date": [datetime(2014, 10, 13, 8, 30)] * 2,
        "price": [221900.0, float("nan")],
        "rooms": [3.0, 3.5],
    })
    out, extra = coerce(df, tiny_spec(), "mem://f.parquet", DAY)
    assert out["id"].to_list() == ["7129300520", "42"]
    assert out["date"].to_list() == [DAY, DAY]
    assert out["price"].to_list() == [221900.0, None]
    assert out["rooms"].to_list() == [3, None]
    assert out["new"].to_list() == [None, None]  # optional column absent: nulls, not an error
    assert out[COERCE_ERRORS].to_list() == [None, "price='NaN' is not a valid float; rooms='3.5' is not a valid int"]
    assert extra == []


def test_coerce_adds_bookkeeping_and_reports_extra_columns():
    df = pl.DataFrame({"id": ["a"], "date": ["2014-10-13"], "price": ["1"], "rooms": ["2"], "agent": ["x"]})
    out, extra = coerce(df, tiny_spec(), "mem://f.csv", DAY)
    assert extra == ["agent"]
    assert out.columns == ["id", "date", "price", "rooms", "new", "ds", SOURCE_FILE, SOURCE_ROW, COERCE_ERRORS]
    assert out.row(0)[-4:] == (DAY, "mem://f.csv", 1, None)


def test_missing_and_renamed_columns_fail_naming_them():
    df = pl.DataFrame({"id": ["a"], "date": ["2014-10-13"], "cost": ["1"], "room_count": ["2"]})
    with pytest.raises(BatchError) as exc:
        coerce(df, tiny_spec(), "mem://f.csv", DAY)
    msg = str(exc.value)
    assert msg.startswith("mem://f.csv: missing required column(s) ['price', 'rooms']")
    assert "columns not in the spec: ['cost', 'room_count']" in msg
    df = pl.DataFrame({"id": ["a"], "date": ["x"], "price": ["1"], "Rooms_": ["2"]}).rename({"Rooms_": "rooms_"})
    assert "'rooms' renamed to 'rooms_'?" in _raises(lambda: coerce(df, tiny_spec(), "mem://g.csv", DAY))


def test_nested_parquet_column_fails():
    df = pl.DataFrame({"id": ["a"], "date": ["2014-10-13"], "price": [[1.0, 2.0]], "rooms": [1]})
    assert "column 'price' has type List(Float64)" in _raises(lambda: coerce(df, tiny_spec(), "mem://f.parquet", DAY))


def _raises(fn) -> str:
    with pytest.raises(BatchError) as exc:
        fn()
    return str(exc.value)


# ---------------------------------------------------------------- reading landing files
def test_read_csv_quoted_values_bom_case_and_blank_lines(tmp_path, kc_spec):
    text = "\ufeff" + KC_HEADER.upper() + "\r\n\r\n" + "\r\n".join(KC_ROWS) + "\r\n\r\n"
    df = read_landing_file(_write(tmp_path, "a.csv", text), kc_spec)
    assert df.columns == KC_HEADER.split(",")
    assert df.height == 2
    assert df["id"].to_list() == ["7129300520", "1373800295"]  # quotes removed
    assert df["price"].to_list() == ["221900", "1.45e+006"]
    out, _ = coerce(df, kc_spec, "a.csv", DAY)
    assert out["price"].to_list() == [221900.0, 1_450_000.0]
    assert out["floors"].to_list() == [1.0, 2.0] and out["zipcode"].to_list() == ["98178", "98199"]


def test_read_csv_quoted_newline_and_separator_in_a_field(tmp_path):
    text = 'id,date,price,rooms\n"a","2014-10-13","1","2"\n"b\nc","2014-10-13","1,5",3\n'
    df = read_landing_file(_write(tmp_path, "q.csv", text), tiny_spec())
    assert df["id"].to_list() == ["a", "b\nc"] and df["price"].to_list() == ["1", "1,5"]


def test_read_csv_header_only_is_an_empty_frame(tmp_path):
    df = read_landing_file(_write(tmp_path, "h.csv", "id,date,price,rooms\n"), tiny_spec())
    assert df.height == 0 and df.columns == ["id", "date", "price", "rooms"]


@pytest.mark.parametrize(
    "text, needles",
    [
        ("", ["e.csv: file is empty (0 bytes"]),
        (" \n\n", ["e.csv: file is empty (3 bytes"]),
        ("id|date|price|rooms\na|b|c|d\n", ["single column 'id|date|price|rooms'", "looks '|'-separated"]),
        ("id,date,price,rooms\na,b,c,d,e\n", ["row 1 (line 2) has 5 fields but the header has 4",
                                              "extra value 'e' after column 'rooms'", "'a,b,c,d,e'"]),
        ("id,date,price,rooms\na,b,c,d\n\"x,y\n", ["malformed CSV in the record starting at line 3", "unexpected end of data", "'\"x,y'"]),
        ("id,date,price,rooms\na,\"b\"x,c,d\n", ["malformed CSV in the record starting at line 2", "'a,\"b\"x,c,d'"]),
        ("[1, 2, 3]\n", ["not a CSV file: it looks like JSON"]),
        ("id,date,Price,PRICE,rooms\n1,2,3,4,5\n", ["columns ['price'] appear more than once", "['Price', 'PRICE']"]),
    ],
)
def test_read_csv_failures_name_file_and_problem(tmp_path, text, needles):
    msg = _raises(lambda: read_landing_file(_write(tmp_path, "e.csv", text), tiny_spec()))
    assert msg.startswith(str(tmp_path / "e.csv") + ": ")
    for needle in needles:
        assert needle in msg, msg


def test_non_utf8_fails_naming_byte_offset_row_and_column(tmp_path):
    data = "id,date,price,rooms\na,2014-10-13,1,2\n".encode() + b"caf\xe9,2014-10-13,1,2\n"
    msg = _raises(lambda: read_landing_file(_write(tmp_path, "l.csv", data), tiny_spec()))
    assert "not valid UTF-8" in msg and "byte 0xe9 at offset 40, line 3" in msg
    assert "row 2, column 'id', value b'caf\\xe9'" in msg


def test_utf8_lossy_spec_replaces_bad_bytes(tmp_path):
    data = b"id,date,price,rooms\ncaf\xe9,2014-10-13,1,2\n"
    df = read_landing_file(_write(tmp_path, "l.csv", data), tiny_spec(encoding="utf8-lossy"))
    assert df["id"].to_list() == ["caf\ufffd"]


def test_semicolon_spec_reads_semicolons(tmp_path):
    df = read_landing_file(_write(tmp_path, "s.csv", "id;date;price;rooms\na;2014-10-13;1,5;2\n"), tiny_spec(separator=";"))
    assert df.row(0) == ("a", "2014-10-13", "1,5", "2")


@pytest.mark.parametrize(
    "name, data, needle",
    [
        ("x.csv", b"\x1f\x8b\x08\x00rest", "it looks like gzip-compressed data"),
        ("x.csv", b"PK\x03\x04rest", "it looks like a ZIP archive"),
        ("x.csv", b"id,da\x00te\n", "it looks like binary data"),
        ("x.parquet", b"id,date\n1,2\n", "not a Parquet file: it looks like text"),
        ("x.parquet", b"PAR1" + b"\x00" * 20, "truncated or corrupt Parquet file: 24 bytes"),
        ("x.xlsx", b"PK\x03\x04", "unsupported landing format 'xlsx'"),
        ("noext", b"id\n", "unsupported landing format ''"),
    ],
)
def test_not_a_table(tmp_path, name, data, needle):
    msg = _raises(lambda: read_landing_file(_write(tmp_path, name, data), tiny_spec()))
    assert msg.startswith(str(tmp_path / name)) and needle in msg, msg


def test_parquet_roundtrip(tmp_path):
    buf = io.BytesIO()
    pl.DataFrame({"ID": ["a"], "date": ["2014-10-13"], "price": [1.5], "rooms": [2]}).write_parquet(buf)
    df = read_landing_file(_write(tmp_path, "p.parquet", buf.getvalue()), tiny_spec())
    assert df.columns == ["id", "date", "price", "rooms"] and df["price"].to_list() == [1.5]


# ---------------------------------------------------------------- days and partitions
def test_days_in_interval():
    assert days_in_interval(DAY, date(2014, 10, 16)) == [DAY, date(2014, 10, 14), date(2014, 10, 15)]
    assert days_in_interval(DAY, DAY) == [DAY]


def test_day_without_landing_folder_writes_empty_partition(tmp_path, kc_spec):
    lake_uri = str(tmp_path / "lake")
    report = ingest_day(kc_spec, str(tmp_path / "landing"), lake_uri, DAY)
    assert report.rows == 0 and report.files == []
    raw = pl.read_parquet(lake.partition_uri(lake_uri, lake.RAW, DAY))
    assert raw.height == 0 and raw.schema == pl.Schema(raw_schema(kc_spec))


def test_hidden_and_marker_files_are_ignored(tmp_path):
    folder = tmp_path / "landing" / DAY.isoformat()
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("id,date,price,rooms\na,2014-10-13,1,2\n")
    (folder / "_SUCCESS").write_text("")
    (folder / ".a.csv.tmp-1").write_bytes(b"\x89PNG")
    report = ingest_day(tiny_spec(), str(tmp_path / "landing"), str(tmp_path / "lake"), DAY)
    assert report.rows == 1 and [Path(f).name for f in report.files] == ["a.csv"]


def test_one_bad_file_fails_the_day_and_writes_nothing(tmp_path):
    folder = tmp_path / "landing" / DAY.isoformat()
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("id,date,price,rooms\na,2014-10-13,1,2\n")
    (folder / "b.csv").write_text("id;date;price;rooms\n")
    lake_uri = str(tmp_path / "lake")
    msg = _raises(lambda: ingest_interval(tiny_spec(), str(tmp_path / "landing"), lake_uri, DAY, date(2014, 10, 14)))
    assert "b.csv" in msg and "';'-separated" in msg
    assert not storage.exists(lake.partition_uri(lake_uri, lake.RAW, DAY))


def test_ingest_is_idempotent_and_leaves_landing_untouched(tmp_path, kc_spec):
    folder = tmp_path / "landing" / DAY.isoformat()
    folder.mkdir(parents=True)
    landed = folder / "sales.csv"
    landed.write_text(KC_HEADER + "\n" + "\n".join(KC_ROWS) + "\n")
    before = hashlib.sha256(landed.read_bytes()).hexdigest()
    lake_uri = str(tmp_path / "lake")
    runs = [ingest_interval(kc_spec, str(tmp_path / "landing"), lake_uri, DAY, date(2014, 10, 15)) for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0]["rows_landed"] == 2 and runs[0]["files"] == 1 and runs[0]["days"] == 2
    part = lake.partition_uri(lake_uri, lake.RAW, DAY)
    assert runs[0]["partitions"][DAY.isoformat()] == storage.file_sha256(part)
    assert hashlib.sha256(landed.read_bytes()).hexdigest() == before
