"""Immutable inputs (issue 15, item 4; docs/reliability.md, "Immutable inputs").

Temporary names unique to the attempt (concurrent writers of one target never touch each other's file,
readers never list a temporary file, killed writers' files are swept), and feature tables keyed by their
inputs (a finished table is reused, never replaced under a reader, and concurrent builds of one window
do not interfere).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from tasks.core import lake as lake_paths
from tasks.core import storage
from tasks.features.build import build_features
from tests.unit.test_features import LAKE_DAYS, START, WINDOW_END, kc_rows, typed

HOUR = 3600


def _payload(writer: int, i: int, size: int = 256 * 1024) -> bytes:
    """A writer's i-th payload: its header, then bytes that only that header's writer writes."""
    head = f"{writer:04d}:{i:04d}:".encode()
    return head + bytes([writer % 251]) * (size - len(head))


def _complete_payload(data: bytes) -> bool:
    writer, i = (int(x) for x in data[:9].decode().split(":"))
    return data == _payload(writer, i, len(data))


def _write_many(target: str, writer: int, n: int) -> int:
    for i in range(n):
        storage.write_bytes_atomic(target, _payload(writer, i))
    return n


# ---------------------------------------------------------------------------------------------
# step 1: temporary names unique to the attempt


def test_temp_names_are_hidden_unique_and_beside_the_target(tmp_path):
    target = str(tmp_path / "t" / "part-0.parquet")
    names = {storage.temp_path(target) for _ in range(100)}
    assert len(names) == 100
    for name in names:
        folder, base = name.rsplit("/", 1)
        assert folder == str(tmp_path / "t") and base.startswith(".part-0.parquet.tmp-")
        assert storage.is_temp_name(base)
    assert storage.is_temp_name(".part-0.parquet.tmp-123")  # the old form, left by an older writer
    assert not storage.is_temp_name("part-0.parquet") and not storage.is_temp_name(".part-0.parquet.sha256.json")


def test_threads_writing_one_target_never_interfere(tmp_path):
    """Threads share a pid: with a ``.tmp-<pid>`` name they wrote into and renamed each other's file."""
    target = str(tmp_path / "t" / "ds=2015-03-01" / "part-0.parquet")
    with ThreadPoolExecutor(max_workers=8) as pool:
        done = [f.result() for f in [pool.submit(_write_many, target, w, 25) for w in range(8)]]
    assert sum(done) == 200
    assert _complete_payload(Path(target).read_bytes())
    assert os.listdir(Path(target).parent) == ["part-0.parquet"]  # no temporary file left


def test_processes_writing_one_target_never_interfere(tmp_path):
    target = str(tmp_path / "t" / "part-0.parquet")
    with ProcessPoolExecutor(max_workers=3, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = [f.result() for f in [pool.submit(_write_many, target, w, 30) for w in range(3)]]
    assert sum(done) == 90
    assert _complete_payload(Path(target).read_bytes())
    assert os.listdir(Path(target).parent) == ["part-0.parquet"]


def test_parquet_written_by_many_threads_is_one_writers_complete_file(tmp_path):
    uri = lake_paths.partition_uri(str(tmp_path / "lake"), "validated", date(2015, 3, 1))

    def write(w: int) -> None:
        for _ in range(10):
            storage.write_parquet_atomic(pl.DataFrame({"w": [w] * 5000, "i": range(5000)}), uri, record_sha256=True)

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(write, range(6)))
    df = pl.read_parquet(uri)
    assert df.height == 5000 and df["w"].n_unique() == 1
    assert sorted(os.listdir(Path(uri).parent)) == [".part-0.parquet.sha256.json", "part-0.parquet"]
    assert storage.cached_file_sha256(uri) == hashlib.sha256(Path(uri).read_bytes()).hexdigest()


def test_a_failed_write_removes_its_temporary_file(tmp_path):
    target = tmp_path / "t" / "x.json"
    target.mkdir(parents=True)  # a folder where the file should go: the rename fails
    with pytest.raises(OSError):
        storage.write_bytes_atomic(str(target), b"{}")
    assert os.listdir(target.parent) == ["x.json"]


def test_readers_never_list_hidden_names(tmp_path):
    (tmp_path / "ds=2015-03-01").mkdir()
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "ds=2015-03-01" / "part-0.parquet").write_text("x")
    (tmp_path / "ds=2015-03-01" / f".part-0.parquet.tmp-7-{'a' * 32}").write_text("half")
    assert storage.list_dir(str(tmp_path)) == ["ds=2015-03-01"]
    assert storage.list_dir(str(tmp_path / "ds=2015-03-01")) == ["part-0.parquet"]
    assert storage.list_dir(str(tmp_path / "ds=2015-03-01"), hidden=True) == [
        f".part-0.parquet.tmp-7-{'a' * 32}", "part-0.parquet"]


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_sweep_removes_only_temporary_files_older_than_the_bound(tmp_path):
    day = tmp_path / "validated" / "ds=2015-03-01"
    day.mkdir(parents=True)
    stale, fresh = day / f".part-0.parquet.tmp-11-{'b' * 32}", day / f".part-0.parquet.tmp-12-{'c' * 32}"
    old_form, sidecar, part = day / ".part-0.parquet.tmp-13", day / ".part-0.parquet.sha256.json", day / "part-0.parquet"
    for p in (stale, fresh, old_form, sidecar, part):
        p.write_text("x")
    for p in (stale, old_form, sidecar, part):
        _age(p, 7 * HOUR)
    _age(fresh, 1 * HOUR)

    removed = storage.sweep_stale_temp(str(tmp_path), older_than_s=6 * HOUR)

    assert sorted(Path(p).name for p in removed) == sorted([stale.name, old_form.name])
    assert sorted(p.name for p in day.iterdir()) == sorted([fresh.name, sidecar.name, part.name])
    assert storage.sweep_stale_temp(str(tmp_path / "missing")) == []


def test_ingest_and_validate_sweep_the_days_they_write(spec, tmp_path):
    from tasks.ingest.landing import ingest_day
    from tasks.quality.validate import sweep_days

    lake_uri, day = str(tmp_path / "lake"), date(2015, 3, 1)
    left = {}
    for table in ("raw", "validated", "quarantine"):
        folder = Path(lake_paths.partition_dir(lake_uri, table, day))
        folder.mkdir(parents=True)
        left[table] = folder / f".part-0.parquet.tmp-99-{'d' * 32}"
        left[table].write_text("killed mid-write")
        _age(left[table], storage.STALE_TEMP_S + HOUR)
    docs = Path(lake_paths.data_docs_day_dir(lake_uri, day))
    docs.mkdir(parents=True)
    left["docs"] = docs / f".result.json.tmp-99-{'e' * 32}"
    left["docs"].write_text("{")
    _age(left["docs"], storage.STALE_TEMP_S + HOUR)

    ingest_day(spec, str(tmp_path / "landing"), lake_uri, day)
    assert not left["raw"].exists() and left["validated"].exists()
    sweep_days(lake_uri, [day])
    assert not any(p.exists() for p in left.values())


# ---------------------------------------------------------------------------------------------
# step 2: feature tables keyed by their inputs


@pytest.fixture
def lake(tmp_path, spec) -> str:
    lake_uri = str(tmp_path / "lake")
    next_id = 0
    for day, (n, split) in LAKE_DAYS.items():
        zips = ("98001", "98002") if split == "train" else ("98001", "98999")
        storage.write_parquet_atomic(typed(spec, kc_rows(day, n, next_id, zips)),
                                     lake_paths.partition_uri(lake_uri, "validated", day), record_sha256=True)
        next_id += n
    return lake_uri


def _inputs_folder(meta: dict) -> Path:
    return Path(storage.local_path(meta["features_uri"])).parent


def test_the_table_is_keyed_by_its_inputs_and_reused(spec, lake, caplog):
    first = build_features(spec, lake, START, WINDOW_END)
    folder = _inputs_folder(first)
    assert folder.parent == Path(storage.local_path(lake_paths.features_dir(lake, START, WINDOW_END)))
    assert folder.name.startswith("inputs=") and len(folder.name) == len("inputs=") + 16
    assert sorted(os.listdir(folder)) == ["manifest.json", "part-0.parquet"]
    assert json.loads((folder / "manifest.json").read_text())["metadata"] == first
    inode = os.stat(first["features_uri"]).st_ino

    with caplog.at_level(logging.INFO, logger="tasks"):
        again = build_features(spec, lake, START, WINDOW_END)
    assert again == first and "reused" in caplog.text
    assert os.stat(first["features_uri"]).st_ino == inode  # not rewritten

    other_mode = build_features(spec, lake, START, WINDOW_END, comps_mode="off")
    assert _inputs_folder(other_mode) != folder and _inputs_folder(other_mode).parent == folder.parent


def test_a_finished_table_is_never_replaced_when_its_inputs_change(spec, lake):
    first = build_features(spec, lake, START, WINDOW_END)
    before = Path(first["features_uri"]).read_bytes()
    reader = open(first["features_uri"], "rb")  # a running train or evaluate
    try:
        day = date(2015, 1, 1)  # a day of the window re-validated with one more sale
        storage.write_parquet_atomic(typed(spec, kc_rows(day, 3, 500, ("98001", "98999"))),
                                     lake_paths.partition_uri(lake, "validated", day), record_sha256=True)
        second = build_features(spec, lake, START, WINDOW_END)
        assert second["features_uri"] != first["features_uri"]
        assert second["rows"]["val"] == first["rows"]["val"] + 1
        assert Path(first["features_uri"]).read_bytes() == before  # the first table is still there, unchanged
        assert reader.read() == before
    finally:
        reader.close()
    assert lake_paths.find_features_uri(lake, START, WINDOW_END, first["features_sha256"]) == first["features_uri"]
    assert lake_paths.find_features_uri(lake, START, WINDOW_END, second["features_sha256"]) == second["features_uri"]


def test_concurrent_builds_of_one_window_do_not_interfere(spec, lake):
    """Two builds of one window shared ``part-0.parquet.tmp`` and removed each other's file."""
    barrier = threading.Barrier(4)

    def build(_: int) -> dict:
        barrier.wait()
        return build_features(spec, lake, START, WINDOW_END)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(build, range(4)))
    assert all(r == results[0] for r in results)
    folder = _inputs_folder(results[0])
    assert sorted(os.listdir(folder)) == ["manifest.json", "part-0.parquet"]  # no temporary file left
    assert hashlib.sha256(Path(results[0]["features_uri"]).read_bytes()).hexdigest() == results[0]["features_sha256"]


def test_a_build_killed_before_its_manifest_is_completed_without_a_rewrite(spec, lake):
    first = build_features(spec, lake, START, WINDOW_END)
    folder = _inputs_folder(first)
    (folder / "manifest.json").unlink()  # killed after the table's publication, before the manifest
    inode = os.stat(first["features_uri"]).st_ino
    stale = folder / f".part-0.parquet.tmp-4242-{'f' * 32}"  # and an older attempt killed mid-write
    stale.write_bytes(b"PAR1 half a table")
    _age(stale, storage.STALE_TEMP_S + HOUR)

    again = build_features(spec, lake, START, WINDOW_END)

    assert again == first
    assert os.stat(first["features_uri"]).st_ino == inode
    assert sorted(os.listdir(folder)) == ["manifest.json", "part-0.parquet"]


def test_publish_once_keeps_the_first_file(tmp_path):
    target = tmp_path / "part-0.parquet"
    for i, expect in ((1, True), (2, False)):
        tmp = storage.temp_path(str(target))
        Path(tmp).write_bytes(f"attempt {i}".encode())
        assert storage.publish_once(tmp, str(target)) is expect
        assert not Path(tmp).exists()
    assert target.read_bytes() == b"attempt 1"


def test_find_features_uri_falls_back_to_the_newest_complete_table_then_the_old_layout(tmp_path):
    lake_uri, ws, we = str(tmp_path / "lake"), "2014-05-28", "2015-05-28"
    assert lake_paths.find_features_uri(lake_uri, ws, we) == f"{lake_uri}/features/window={ws}_{we}/part-0.parquet"
    for key, sha, age in (("a" * 16, "sha-a", 2 * HOUR), ("b" * 16, "sha-b", 1 * HOUR), ("c" * 16, None, 0)):
        uri = lake_paths.features_uri(lake_uri, ws, we, key)
        storage.write_bytes_atomic(uri, b"table")
        if sha:  # "c" has no manifest: not complete
            storage.write_json_atomic(lake_paths.manifest_uri(uri), {"metadata": {"features_sha256": sha}})
            _age(Path(lake_paths.manifest_uri(uri)), age)
    newest = lake_paths.features_uri(lake_uri, ws, we, "b" * 16)
    assert lake_paths.find_features_uri(lake_uri, ws, we) == newest
    assert lake_paths.find_features_uri(lake_uri, ws, we, "sha-a") == lake_paths.features_uri(lake_uri, ws, we, "a" * 16)
    assert lake_paths.find_features_uri(lake_uri, ws, we, "unknown") == newest


# ---------------------------------------------------------------------------------------------
# step 3: a day's validation result is published as one unit


def _run_day(spec, root: Path, lines: list[str]) -> dict:
    from tasks.ingest.landing import ingest_interval
    from tasks.quality.validate import validate_interval
    from tests.unit.test_validate import DAY, NEXT, land

    land(root, DAY, "sales.csv", lines)
    ingest_interval(spec, str(root / "landing"), str(root / "lake"), DAY, NEXT)
    return validate_interval(spec, str(root / "lake"), DAY, NEXT, run_id="run-" + str(len(lines)))


def _read_day(lake_uri: str, day: date) -> tuple[int, int]:
    """(accepted, quarantined) as a reader sees the day: through lake.day_file."""
    return tuple(pl.read_parquet(lake_paths.day_file(lake_uri, t, day)).height for t in ("validated", "quarantine"))


def test_a_days_result_is_published_by_its_manifest_written_last(spec, tmp_path):
    from tests.unit.test_validate import DAY, GOOD, NEGATIVE, NEXT

    _run_day(spec, tmp_path, [GOOD, NEGATIVE])
    lake_uri = str(tmp_path / "lake")
    published = lake_paths.published_day(lake_uri, DAY)
    assert published["run_id"] == "run-2"
    for table, rows in (("validated", 1), ("quarantine", 1)):
        entry = published[table]
        assert Path(entry["uri"]).name == f"part-{entry['sha256'][:16]}.parquet" and entry["rows"] == rows
        assert hashlib.sha256(Path(entry["uri"]).read_bytes()).hexdigest() == entry["sha256"]
        assert lake_paths.day_file(lake_uri, table, DAY) == entry["uri"]
        legacy = Path(lake_paths.partition_uri(lake_uri, table, DAY))  # the older layout stays readable
        assert legacy.read_bytes() == Path(entry["uri"]).read_bytes()
    raw = Path(lake_paths.partition_uri(lake_uri, "raw", DAY))
    assert published["raw"] == {"uri": str(raw), "sha256": hashlib.sha256(raw.read_bytes()).hexdigest()}
    from tasks.features.plan import window_partitions

    [part] = window_partitions(lake_uri, DAY, NEXT)
    assert part["uri"] == published["validated"]["uri"] and part["sha256"] == published["validated"]["sha256"]


def test_a_validation_killed_before_its_manifest_changes_nothing_a_reader_sees(spec, tmp_path, monkeypatch):
    """Before: validated and quarantine were two renames over the readers' files; a run killed between them,
    or two overlapping runs, left one run's accepted rows beside another's rejected rows."""
    import tasks.quality.validate as v
    from tests.unit.test_validate import DAY, GOOD, GOOD2, NEGATIVE

    lake_uri = str(tmp_path / "lake")
    _run_day(spec, tmp_path, [GOOD, NEGATIVE])
    assert _read_day(lake_uri, DAY) == (1, 1)
    before = lake_paths.published_day(lake_uri, DAY)

    def killed(*args, **kwargs):
        raise SystemExit("killed before the manifest")

    monkeypatch.setattr(v, "publish_days", killed)
    with pytest.raises(SystemExit):
        _run_day(spec, tmp_path, [GOOD, GOOD2])  # both accepted: a different validated file, an empty quarantine
    assert lake_paths.published_day(lake_uri, DAY) == before
    assert _read_day(lake_uri, DAY) == (1, 1)

    monkeypatch.undo()
    _run_day(spec, tmp_path, [GOOD, GOOD2])
    assert _read_day(lake_uri, DAY) == (2, 0)


def test_files_no_longer_published_are_swept_once_old(spec, tmp_path):
    from tasks.quality.validate import sweep_days
    from tests.unit.test_validate import DAY, GOOD, GOOD2, NEGATIVE

    lake_uri = str(tmp_path / "lake")
    _run_day(spec, tmp_path, [GOOD, NEGATIVE])
    first = lake_paths.published_day(lake_uri, DAY)
    _run_day(spec, tmp_path, [GOOD, GOOD2])
    second = lake_paths.published_day(lake_uri, DAY)
    old = [Path(first[t]["uri"]) for t in ("validated", "quarantine")]
    assert all(p.exists() for p in old)  # a feature build planned before the re-validation may read them
    for p in [*old, *(Path(second[t]["uri"]) for t in ("validated", "quarantine"))]:
        _age(p, storage.STALE_TEMP_S + HOUR)
    sweep_days(lake_uri, [DAY])
    assert not any(p.exists() for p in old)
    assert all(Path(second[t]["uri"]).exists() for t in ("validated", "quarantine"))
    assert _read_day(lake_uri, DAY) == (2, 0)


def test_a_day_validated_before_manifests_is_still_read(spec, tmp_path):
    from tasks.features.plan import window_partitions

    lake_uri, day = str(tmp_path / "lake"), date(2015, 3, 1)
    uri = lake_paths.partition_uri(lake_uri, "validated", day)
    sha = storage.write_parquet_atomic(typed(spec, kc_rows(day, 2, 0)), uri)
    assert lake_paths.published_day(lake_uri, day) is None
    assert lake_paths.day_file(lake_uri, "validated", day) == uri
    assert lake_paths.day_file(lake_uri, "quarantine", day) is None
    assert window_partitions(lake_uri, day, date(2015, 3, 2)) == [{"day": "2015-03-01", "uri": uri, "sha256": sha}]
