"""Hostile landing files (issue 17): the size cap, a decompression bomb, 20,000 columns, symbolic links, path
segments that leave their root, and headers spelt differently from the spec (issue 16).

Every refusal is a BatchError (or storage.UnsafePath) whose message names the file and what was wrong, and
a refused run writes nothing: no raw partition for any day of its range.
"""

from __future__ import annotations

import io
import os
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.core import lake, storage
from tasks.core.spec import DatasetSpec
from tasks.ingest import read
from tasks.ingest.landing import coerce, ingest_interval
from tasks.ingest.read import BatchError, read_landing_file
from tasks.ingest.replay import replay, split_by_day
from tests.kc import KC_HEADER, kc_spec

REPO = Path(__file__).resolve().parents[2]
GOOD = (REPO / "tests" / "corpus" / "good.csv").read_text()
DAY = date(2014, 10, 13)
NEXT = DAY + timedelta(days=1)
MIB = 2**20


@pytest.fixture(scope="module")
def spec() -> DatasetSpec:
    return kc_spec()


def _land(landing: Path, day: date, name: str, data: bytes | str) -> Path:
    path = landing / day.isoformat() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _ingest_fails(spec, tmp_path: Path, start: date, end: date, **kw) -> str:
    """Ingest [start, end) expecting a BatchError; checks that no raw partition was written. The message."""
    with pytest.raises(BatchError) as info:
        ingest_interval(spec, str(tmp_path / "landing"), str(tmp_path / "lake"), start, end, **kw)
    written = [d for d in range((end - start).days)
               if storage.exists(lake.partition_uri(str(tmp_path / "lake"), lake.RAW, start + timedelta(days=d)))]
    assert written == [], f"a refused run wrote partitions for days {written}"
    return str(info.value)


# ---------------------------------------------------------------------------------------------- size cap
def test_a_file_over_the_cap_fails_naming_file_size_and_cap_and_writes_nothing(spec, tmp_path):
    big = GOOD + "".join(GOOD.splitlines(keepends=True)[1:]) * 40  # ~40 kB
    path = _land(tmp_path / "landing", NEXT, "sales.csv", big)
    _land(tmp_path / "landing", DAY, "sales.csv", GOOD)  # the first day is fine, and must not be written either

    msg = _ingest_fails(spec, tmp_path, DAY, NEXT + timedelta(days=1), max_mb=0.01)

    assert str(path) in msg and f"{path.stat().st_size:,} bytes" in msg
    assert "cap of 0.01 MiB" in msg and "HOMEWORTH_MAX_LANDING_FILE_MB" in msg


def test_the_cap_comes_from_the_settings_and_a_file_under_it_is_read(spec, tmp_path, monkeypatch):
    from tasks.core.settings import get_settings

    path = _land(tmp_path / "landing", DAY, "sales.csv", GOOD)
    monkeypatch.setenv("HOMEWORTH_MAX_LANDING_FILE_MB", str(len(GOOD) / MIB / 2))
    get_settings.cache_clear()
    try:
        with pytest.raises(BatchError, match="HOMEWORTH_MAX_LANDING_FILE_MB"):
            read_landing_file(str(path), spec)
        monkeypatch.setenv("HOMEWORTH_MAX_LANDING_FILE_MB", str(len(GOOD) / MIB * 2))
        get_settings.cache_clear()
        assert read_landing_file(str(path), spec).height == 5
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


# ---------------------------------------------------------------------------------------------- Parquet bombs
def _parquet(table: pa.Table, **kw) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("encoding", ["dictionary", "plain"])
def test_a_parquet_decompression_bomb_is_refused_from_its_metadata(spec, tmp_path, encoding):
    # 6M zeros: run-length encoded in a dictionary (tiny pages, but 48 MB once decoded), or plain and
    # zstd-compressed (the pages themselves are 48 MB uncompressed). Both files are a few kB.
    table = pa.table({"price": pa.array([0] * 6_000_000, type=pa.int64())})
    data = _parquet(table, compression="zstd", use_dictionary=encoding == "dictionary")
    assert len(data) < 100_000
    path = _land(tmp_path / "landing", DAY, "bomb.parquet", data)

    msg = _ingest_fails(spec, tmp_path, DAY, NEXT, max_mb=1)

    assert str(path) in msg and "6,000,000 rows" in msg and "decompressed cap of 10 MiB" in msg and "not read" in msg


def test_metadata_sizes_bound_what_a_file_decodes_to(tmp_path):
    table = pa.table({"a": pa.array(range(100_000), type=pa.int64()), "b": pa.array(["x" * 20] * 100_000)})
    meta = pq.read_metadata(io.BytesIO(_parquet(table, compression="zstd", use_dictionary=False)))
    uncompressed, cells = read.parquet_decoded_bytes(meta)
    assert cells == 100_000 * 2 * read.CELL_BYTES
    assert uncompressed >= 100_000 * (8 + 20)  # plain pages: every value written out
    read.check_parquet_size("f.parquet", meta, max(uncompressed, cells))  # exactly at the cap: accepted
    with pytest.raises(BatchError, match="f.parquet: Parquet file declares 100,000 rows x 2 columns"):
        read.check_parquet_size("f.parquet", meta, max(uncompressed, cells) - 1)


def test_an_ordinary_parquet_file_under_the_caps_is_read(spec, tmp_path):
    df = pl.read_csv(io.StringIO(GOOD), infer_schema=False)
    path = _land(tmp_path / "landing", DAY, "sales.parquet", _parquet(df.to_arrow()))
    assert read_landing_file(str(path), spec, max_mb=1).height == 5


# ---------------------------------------------------------------------------------------------- 20,000 columns
class _Counted(str):
    """A header that counts how often it is hashed and compared: the duplicate check's work, not its time."""

    calls = {"eq": 0, "hash": 0}

    def __eq__(self, other):
        _Counted.calls["eq"] += 1
        return str.__eq__(self, other)

    def __hash__(self):
        _Counted.calls["hash"] += 1
        return str.__hash__(self)


@pytest.mark.parametrize("n", [2_000, 20_000])
def test_the_duplicate_header_check_does_linear_work(monkeypatch, n):
    monkeypatch.setattr(read, "normalize_header", lambda h: h)  # keeps the counting objects themselves
    header = [_Counted(f"col_{i}") for i in range(n)] + [_Counted("col_7")]
    _Counted.calls.update(eq=0, hash=0)

    with pytest.raises(BatchError, match=r"columns \['col_7'\] appear more than once"):
        read._check_duplicate_headers("f.csv", header)

    # A pairwise check (list.count, `in` over a list) compares each name with every other: n*n/2 calls.
    assert _Counted.calls["eq"] <= 4 * len(header), _Counted.calls
    assert _Counted.calls["hash"] <= 4 * len(header), _Counted.calls


def test_a_file_with_20000_columns_is_read_its_extras_dropped_and_reported_briefly(spec, tmp_path):
    extras = [f"extra_{i}" for i in range(20_000)]
    lines = GOOD.splitlines()
    text = "\n".join([",".join([lines[0], *extras]), *(",".join([row, *["0"] * len(extras)]) for row in lines[1:])])
    _land(tmp_path / "landing", DAY, "wide.csv", text + "\n")

    out = ingest_interval(spec, str(tmp_path / "landing"), str(tmp_path / "lake"), DAY, NEXT)

    assert out["rows_landed"] == 5
    (dropped,) = out["dropped_columns"].values()
    assert dropped[:3] == extras[:3] and len(dropped) == 101 and dropped[-1] == "... and 19900 more"


def test_a_repeated_column_among_20000_is_named(spec, tmp_path):
    header = [*KC_HEADER.split(","), *(f"extra_{i}" for i in range(20_000)), "EXTRA_19999"]
    path = _land(tmp_path / "landing", DAY, "wide.csv", ",".join(header) + "\n")
    with pytest.raises(BatchError, match=r"columns \['extra_19999'\] appear more than once") as info:
        read_landing_file(str(path), spec)
    assert str(path) in str(info.value) and len(str(info.value)) < 1000


# ---------------------------------------------------------------------------------------------- bounded memory
def test_csv_batches_give_the_same_frame_as_reading_whole(spec, tmp_path, monkeypatch):
    rows = GOOD.splitlines()[1:]
    text = "\n".join([GOOD.splitlines()[0], *(rows * 9)]) + "\n"  # 45 rows
    path = _land(tmp_path / "landing", DAY, "sales.csv", text)
    whole = read_landing_file(str(path), spec)
    monkeypatch.setattr(read, "CSV_BATCH_ROWS", 7)

    batched = read_landing_file(str(path), spec)

    assert batched.height == 45 and batched.n_chunks() > 1
    assert batched.equals(whole) and batched.equals(pl.read_csv(io.StringIO(text), infer_schema=False))


def test_a_ragged_row_after_several_batches_names_its_row_and_line(spec, tmp_path, monkeypatch):
    lines = GOOD.splitlines()
    rows = lines[1:] * 6
    rows[22] = rows[22].rsplit(",", 3)[0]  # row 23 loses its last three fields
    path = _land(tmp_path / "landing", DAY, "sales.csv", "\n".join([lines[0], *rows]) + "\n")
    monkeypatch.setattr(read, "CSV_BATCH_ROWS", 5)

    with pytest.raises(BatchError) as info:
        read_landing_file(str(path), spec)

    assert f"{path}: row 23 (line 24) has 18 fields but the header has 21" in str(info.value)
    assert repr(rows[22][:200]) in str(info.value)


# ---------------------------------------------------------------------------------------------- symbolic links
def test_a_symlinked_landing_file_is_refused_without_echoing_its_target(spec, tmp_path):
    secret = tmp_path / "outside" / "credentials.csv"
    secret.parent.mkdir()
    secret.write_text("id,date,price\nSECRET-TOKEN-42,x,y\n")
    link = tmp_path / "landing" / DAY.isoformat() / "sales.csv"
    link.parent.mkdir(parents=True)
    link.symlink_to(secret)

    msg = _ingest_fails(spec, tmp_path, DAY, NEXT)

    assert str(link) in msg and "symbolic link" in msg
    assert "SECRET" not in msg and "outside" not in msg and "credentials" not in msg


def test_a_dangling_link_and_a_linked_day_folder_are_refused(spec, tmp_path):
    folder = tmp_path / "landing" / DAY.isoformat()
    folder.mkdir(parents=True)
    (folder / "sales.csv").symlink_to(tmp_path / "nowhere.csv")
    assert "symbolic link" in _ingest_fails(spec, tmp_path, DAY, NEXT)

    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / "sales.csv").write_text(GOOD)
    (tmp_path / "landing" / NEXT.isoformat()).symlink_to(real, target_is_directory=True)
    msg = _ingest_fails(spec, tmp_path, NEXT, NEXT + timedelta(days=1))
    assert "symbolic link" in msg and "elsewhere" not in msg


def test_a_link_swapped_in_after_the_check_is_not_followed(tmp_path):
    target = tmp_path / "target.csv"
    target.write_text("secret")
    link = tmp_path / "sales.csv"
    link.symlink_to(target)
    with pytest.raises(storage.UnsafePath, match="symbolic link"):
        storage.open_input(str(link))  # O_NOFOLLOW: the kernel refuses it


def test_a_folder_or_fifo_in_the_landing_zone_is_not_read(spec, tmp_path):
    folder = tmp_path / "landing" / DAY.isoformat()
    (folder / "nested.csv").mkdir(parents=True)
    assert "is not a regular file" in _ingest_fails(spec, tmp_path, DAY, NEXT)
    (folder / "nested.csv").rmdir()
    os.mkfifo(folder / "pipe.csv")
    assert "is not a regular file" in _ingest_fails(spec, tmp_path, DAY, NEXT)  # and it did not block


# ---------------------------------------------------------------------------------------------- path segments
@pytest.mark.parametrize("part", ["..", "../etc", "a/../../b", "ds=1/..", "..\\..\\windows", "/etc/passwd",
                                  "\\\\server\\share", "C:\\Windows", "c:/x", "s3://other-bucket/x", "a\x00b"])
def test_storage_refuses_parts_that_leave_their_root(part, tmp_path):
    with pytest.raises(storage.UnsafePath):
        storage.join(str(tmp_path), part)
    with pytest.raises(storage.UnsafePath):
        storage.join(str(tmp_path), "ok", part)


@pytest.mark.parametrize("part", ["ds=2015-01-01/part-0.parquet", "a..b", "..hidden", "x/.y", "2015-01-01"])
def test_storage_joins_ordinary_relative_parts(part, tmp_path):
    assert storage.join(str(tmp_path) + "/", part) == f"{tmp_path}/{part}"


# ---------------------------------------------------------------------------------------------- header spelling
def _capitalised_spec() -> DatasetSpec:
    """King County's spec with every column name capitalised (ID, Date, Price, Bedrooms, ...)."""
    kc = kc_spec()
    data = kc.model_dump(exclude={"source_hash"})
    data["columns"] = {name.capitalize(): col for name, col in data["columns"].items()}
    return DatasetSpec.model_validate(data)


@pytest.mark.parametrize("header_case", ["lower", "upper", "as_spec"])
def test_a_spec_with_capitalised_names_reads_files_of_any_spelling(tmp_path, header_case):
    spec = _capitalised_spec()
    lines = GOOD.splitlines()
    header = {"lower": lines[0], "upper": lines[0].upper(), "as_spec": ",".join(spec.columns)}[header_case]
    path = _land(tmp_path / "landing", DAY, "sales.csv", "\ufeff" + " , ".join(header.split(",")) + "\n"
                 + "\n".join(lines[1:]) + "\n")

    df = read_landing_file(str(path), spec)
    typed, extra = coerce(df, spec, str(path), DAY)

    assert df.columns == list(spec.columns) and extra == []
    assert typed["Price"].to_list()[0] == 221900.0 and typed["Date"].to_list()[0] == DAY
    out = ingest_interval(spec, str(tmp_path / "landing"), str(tmp_path / "lake"), DAY, NEXT)
    assert out["rows_landed"] == 5 and out["coerce_errors"] == 0


def test_replay_finds_the_event_time_column_whatever_its_case(tmp_path):
    lines = GOOD.splitlines()
    source = tmp_path / "sales.csv"
    source.write_text("\n".join([lines[0].replace("date", "Date").replace("id,", "ID,"), *lines[1:]]) + "\n")
    for spec in (kc_spec(), _capitalised_spec()):  # spec `date` with header `Date`, and spec `Date`
        header, by_day = split_by_day(spec, source)
        assert header.startswith("ID,Date,") and list(by_day) == [DAY] and len(by_day[DAY]) == 5

    counts = replay(_capitalised_spec(), str(tmp_path / "landing"), source)
    assert counts["rows"] == 5 and counts["files_written"] == 1
    assert read_landing_file(str(tmp_path / "landing" / DAY.isoformat() / "sales.csv"), kc_spec()).height == 5


def test_replay_names_a_missing_event_time_column(tmp_path):
    source = tmp_path / "sales.csv"
    source.write_text("id,when,price\n1,2014-10-13,3\n")
    with pytest.raises(ValueError, match=r"no column 'date' in the header .*\['id', 'when', 'price'\]"):
        split_by_day(kc_spec(), source)
