"""Unit tests of tasks.ingest.replay (the bundled CSV as a daily feed) and tasks.core.storage (layout, atomic writes)."""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tasks.core import lake, storage
from tasks.ingest.replay import replay
from tests.kc import KC_HEADER

HEADER = KC_HEADER + "\n"
# Original King County quirks: quoted ids and floors, compact ISO dates, prices in exponent notation.
LINES = {
    date(2014, 10, 13): [
        '"7129300520","20141013T000000",221900,3,1,1180,5650,"1",0,0,3,7,1180,0,1955,0,"98178",47.5112,-122.257,1340,5650\n',
        '"6414100192","20141013T000000",538000,3,2.25,2570,7242,"2",0,0,3,7,2170,400,1951,1991,"98125",47.721,-122.319,1690,7639\n',
    ],
    date(2014, 12, 9): [
        '"2487200875","20141209T000000",604000,4,3,1960,5000,"1",0,0,5,7,1050,910,1965,0,"98136",47.5208,-122.393,1360,5000\n',
    ],
    date(2015, 2, 25): [
        '"1321400060","20150225T000000",1.225e+006,4,4.5,5420,101930,"1",0,0,3,11,3890,1530,2001,0,"98053",47.6561,-122.005,4760,101930\n',
    ],
}
# Source order interleaves the days: grouping must keep each day's lines in their original order.
SOURCE_ORDER = [LINES[date(2014, 10, 13)][0], LINES[date(2014, 12, 9)][0], LINES[date(2015, 2, 25)][0],
                LINES[date(2014, 10, 13)][1]]


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "kc.csv"
    path.write_bytes((HEADER + "".join(SOURCE_ORDER)).encode())
    return path


def landing_file(landing: Path, day: date) -> Path:
    return landing / day.isoformat() / "sales.csv"


def test_replay_writes_one_folder_per_day_byte_for_byte(spec, source, tmp_path):
    landing = tmp_path / "landing"

    result = replay(spec, str(landing), source=source)

    assert sorted(p.name for p in landing.iterdir()) == ["2014-10-13", "2014-12-09", "2015-02-25"]
    for day, lines in LINES.items():
        assert landing_file(landing, day).read_bytes() == (HEADER + "".join(lines)).encode()
    assert result == {"rows": 4, "files_written": 3, "files_existing": 0, "first_day": "2014-10-13",
                      "last_day": "2015-02-25"}


def test_replay_reads_gzip_and_keeps_crlf(spec, tmp_path):
    crlf = [line.replace("\n", "\r\n") for line in SOURCE_ORDER]
    source = tmp_path / "kc.csv.gz"
    source.write_bytes(gzip.compress((HEADER.replace("\n", "\r\n") + "".join(crlf)).encode()))
    landing = tmp_path / "landing"

    result = replay(spec, str(landing), source=source)

    day = date(2014, 10, 13)
    expected = HEADER.replace("\n", "\r\n") + "".join(line.replace("\n", "\r\n") for line in LINES[day])
    assert landing_file(landing, day).read_bytes() == expected.encode()
    assert result["files_written"] == 3


def test_replay_start_and_end_filter_half_open(spec, source, tmp_path):
    landing = tmp_path / "landing"

    result = replay(spec, str(landing), source=source, start=date(2014, 12, 9), end=date(2015, 2, 25))

    assert [p.name for p in landing.iterdir()] == ["2014-12-09"]
    assert result == {"rows": 1, "files_written": 1, "files_existing": 0, "first_day": "2014-12-09",
                      "last_day": "2014-12-09"}


def test_replay_of_an_empty_range_writes_nothing(spec, source, tmp_path):
    result = replay(spec, str(tmp_path / "landing"), source=source, start=date(2016, 1, 1))

    assert result == {"rows": 0, "files_written": 0, "files_existing": 0, "first_day": None, "last_day": None}
    assert not (tmp_path / "landing").exists()


def test_replay_never_rewrites_an_existing_landing_file(spec, source, tmp_path):
    landing = tmp_path / "landing"
    existing = landing_file(landing, date(2014, 10, 13))
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"id,date,price\nsomething the feed wrote\n")

    first = replay(spec, str(landing), source=source)
    again = replay(spec, str(landing), source=source)

    assert existing.read_bytes() == b"id,date,price\nsomething the feed wrote\n"
    assert (first["files_written"], first["files_existing"]) == (2, 1)
    assert (again["files_written"], again["files_existing"]) == (0, 3)
    assert sorted(p.name for p in existing.parent.iterdir()) == ["sales.csv"]


def test_replay_of_a_missing_source_fails(spec, tmp_path):
    with pytest.raises(FileNotFoundError):
        replay(spec, str(tmp_path / "landing"), source=tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------------------
# storage


def test_partition_uri_layout():
    day = date(2015, 3, 1)

    assert lake.partition_uri("/lake", "validated", day) == "/lake/validated/ds=2015-03-01/part-0.parquet"
    assert lake.partition_uri("/lake/", "raw", day) == "/lake/raw/ds=2015-03-01/part-0.parquet"
    assert (lake.partition_uri("s3://bucket/prefix", "quarantine", day)
            == "s3://bucket/prefix/quarantine/ds=2015-03-01/part-0.parquet")


def test_write_parquet_atomic_replaces_and_leaves_no_temp_file(tmp_path):
    uri = lake.partition_uri(str(tmp_path / "lake"), "validated", date(2015, 3, 1))
    old = pl.DataFrame({"id": ["a", "b"], "price": [1.0, 2.0]})
    new = pl.DataFrame({"id": ["c"], "price": [3.0]})

    storage.write_parquet_atomic(old, uri)
    sha = storage.write_parquet_atomic(new, uri)

    folder = uri.rsplit("/", 1)[0]
    assert storage.list_dir(folder, hidden=True) == ["part-0.parquet"]  # no ".part-0.parquet.tmp-..." left behind
    assert_frame_equal(pl.read_parquet(uri), new)
    assert sha == hashlib.sha256(Path(uri).read_bytes()).hexdigest() == storage.file_sha256(uri)


def test_write_parquet_atomic_to_a_file_uri(tmp_path):
    uri = (tmp_path / "lake").as_uri() + "/t/ds=2015-03-01/part-0.parquet"
    df = pl.DataFrame({"x": [1, 2, 3]})

    storage.write_parquet_atomic(df, uri)

    assert storage.exists(uri)
    assert storage.local_path(uri) == str(tmp_path / "lake" / "t" / "ds=2015-03-01" / "part-0.parquet")
    assert_frame_equal(pl.read_parquet(storage.read_bytes(uri)), df)


def test_list_dir(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("x")

    assert storage.list_dir(str(tmp_path / "missing")) == []
    assert storage.list_dir(str(tmp_path / "a.txt")) == []  # a file is not a folder
    assert storage.list_dir(str(tmp_path)) == ["a.txt", "b"]


def test_exists_and_json(tmp_path):
    uri = str(tmp_path / "x" / "m.json")
    assert not storage.exists(uri)

    sha = storage.write_json_atomic(uri, {"b": 1, "a": date(2015, 3, 1)})

    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b'{\n  "a": "2015-03-01",\n  "b": 1\n}'
    assert sha == storage.file_sha256(uri)


def test_cached_file_sha256_reuses_a_recorded_hash_until_the_file_changes(tmp_path):
    uri = lake.partition_uri(str(tmp_path / "lake"), "validated", date(2015, 3, 1))
    sha = storage.write_parquet_atomic(pl.DataFrame({"x": [1, 2]}), uri, record_sha256=True)
    sidecar = Path(uri).parent / ".part-0.parquet.sha256.json"
    assert json.loads(sidecar.read_text())["sha256"] == sha
    assert storage.list_dir(str(Path(uri).parent), hidden=True) == [".part-0.parquet.sha256.json", "part-0.parquet"]

    # The recorded hash is what is returned while the file is unchanged (a planted one proves it is read) ...
    rec = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**rec, "sha256": "planted"}))
    assert storage.cached_file_sha256(uri) == "planted"
    # ... and a file rewritten under the same name is hashed again, the sidecar replaced.
    new = storage.write_parquet_atomic(pl.DataFrame({"x": [3]}), uri)
    assert storage.cached_file_sha256(uri) == new == storage.file_sha256(uri)
    assert json.loads(sidecar.read_text())["sha256"] == new
    # An unreadable sidecar is ignored.
    sidecar.write_text("{not json")
    assert storage.cached_file_sha256(uri) == new
    # Without a sidecar, the first call records one.
    sidecar.unlink()
    assert storage.cached_file_sha256(uri) == new and json.loads(sidecar.read_text())["sha256"] == new


def _hash_while(tmp_path: Path, write) -> storage.GrowingFileHash:
    path = str(tmp_path / "growing.bin")
    growing = storage.GrowingFileHash(path, block=1000, poll_s=0.001)
    hasher = threading.Thread(target=growing.run)
    hasher.start()
    try:
        write(path)
    finally:
        growing.finish()
    hasher.join()
    return growing


def test_a_file_hashed_as_it_grows_gets_the_hash_of_its_bytes(tmp_path):
    """The writer appends in pieces, with pauses (the hasher catches up and waits); then the file is
    renamed while the hasher may still be reading it."""
    pieces = [bytes([i]) * (700 + 37 * i) for i in range(40)]

    def write(path):
        time.sleep(0.01)  # the hasher waits for the file to appear
        with open(path, "wb") as f:
            for i, piece in enumerate(pieces):
                f.write(piece)
                f.flush()
                if i % 7 == 0:
                    time.sleep(0.005)

    path = tmp_path / "growing.bin"
    growing = storage.GrowingFileHash(str(path), block=1000, poll_s=0.001)
    hasher = threading.Thread(target=growing.run)
    hasher.start()
    write(str(path))
    growing.finish()
    path.rename(tmp_path / "final.bin")
    hasher.join()
    assert growing.result() == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_a_growing_hash_is_refused_when_the_writer_did_not_only_append(tmp_path):
    def shrink(path):
        with open(path, "wb") as f:
            f.write(b"x" * 5000)
            f.flush()
            time.sleep(0.05)  # the hasher reads the 5000 bytes
            f.truncate(100)

    assert _hash_while(tmp_path, shrink).result() is None
    # A writer that fails before creating the file: no hash, and finish() does not wait forever.
    assert _hash_while(tmp_path / "nowhere", lambda path: None).result() is None
