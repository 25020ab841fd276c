"""The feature build's fixed costs (issue 21, item 4; issue 18): the validated table is listed once, not
probed day by day, and finds exactly the files ``lake.day_file`` finds; the area statistics' sums are the
same whatever the history's grouping."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta

import polars as pl
import pytest

from tasks.core import lake as lake_paths
from tasks.core import storage
from tests.unit.test_features import kc_rows, typed

DAYS = [date(2015, 3, 1) + timedelta(days=i) for i in range(6)]


def _manifest_day(spec, lake_uri: str, day: date, n: int) -> str:
    """A day published by a manifest, as validation publishes one: its file named by its content."""
    data = storage.parquet_bytes(typed(spec, kc_rows(day, n, 0)))
    sha = hashlib.sha256(data).hexdigest()
    uri = lake_paths.addressed_part_uri(lake_uri, "validated", day, sha)
    storage.write_bytes_atomic(uri, data)
    doc = {"validated": {"uri": uri, "sha256": sha, "rows": n}, "quarantine": {"uri": None, "sha256": None, "rows": 0}}
    storage.write_json_atomic(lake_paths.day_manifest_uri(lake_uri, day), doc)
    return uri


@pytest.fixture()
def lake(spec, tmp_path) -> str:
    """Six days: two published by manifests, two of the older layout (``part-0.parquet`` only), one with
    only a temporary file and a nested file (no partition), one absent."""
    lake_uri = str(tmp_path / "lake")
    _manifest_day(spec, lake_uri, DAYS[0], 3)
    storage.write_parquet_atomic(typed(spec, kc_rows(DAYS[1], 2, 0)), lake_paths.partition_uri(lake_uri, "validated", DAYS[1]))
    _manifest_day(spec, lake_uri, DAYS[2], 4)
    odd = tmp_path / "lake" / "validated" / f"ds={DAYS[3]}"
    (odd / "deeper").mkdir(parents=True)
    (odd / ".part-0.parquet.tmp-123").write_bytes(b"partial")
    (odd / "deeper" / "part-0.parquet").write_bytes(b"not a partition")
    storage.write_parquet_atomic(typed(spec, kc_rows(DAYS[5], 5, 0)), lake_paths.partition_uri(lake_uri, "validated", DAYS[5]))
    return lake_uri


def test_the_window_lists_the_same_files_as_day_file(lake):
    from tasks.features.plan import validated_days, window_partitions

    start, end = DAYS[0] - timedelta(days=2), DAYS[-1] + timedelta(days=3)
    expected = []
    for i in range((end - start).days):
        day = start + timedelta(days=i)
        if (uri := lake_paths.day_file(lake, "validated", day)) is not None:
            expected.append({"day": day.isoformat(), "uri": uri, "sha256": storage.cached_file_sha256(uri)})
    assert [p["day"] for p in expected] == [d.isoformat() for d in (DAYS[0], DAYS[1], DAYS[2], DAYS[5])]
    assert window_partitions(lake, start, end) == expected
    listing = validated_days(lake)
    assert set(listing) == {d.isoformat() for d in (DAYS[0], DAYS[1], DAYS[2], DAYS[3], DAYS[5])}
    assert window_partitions(lake, DAYS[1], DAYS[3], listing) == expected[1:3]
    assert window_partitions(lake, DAYS[3], DAYS[5], listing) == []


def test_the_window_is_listed_once_not_probed_per_day(lake, monkeypatch):
    from tasks.features import plan

    def probe(*args, **kwargs):
        raise AssertionError("a day was probed")

    listings = []
    real = plan.validated_days
    monkeypatch.setattr(plan, "validated_days", lambda uri: listings.append(uri) or real(uri))
    monkeypatch.setattr(storage, "exists", probe)
    monkeypatch.setattr(lake_paths, "day_file", probe)
    monkeypatch.setattr(lake_paths, "published_day", probe)
    window = plan.plan_window(lake, DAYS[2], DAYS[-1] + timedelta(days=1), None)
    assert [p["day"] for p in window.parts] == [DAYS[2].isoformat(), DAYS[5].isoformat()]
    assert [p["rows"] for p in window.info] == [4, 5]
    assert listings == [lake]


def test_a_lake_without_a_validated_table_has_no_partitions(tmp_path):
    from tasks.features.plan import plan_window, validated_days, window_partitions

    lake_uri = str(tmp_path / "empty")
    assert validated_days(lake_uri) == {}
    assert window_partitions(lake_uri, DAYS[0], DAYS[-1]) == []
    with pytest.raises(ValueError, match="no validated partitions"):
        plan_window(lake_uri, DAYS[0], DAYS[-1], None)


def test_footers_keep_the_partitions_order(lake):
    from tasks.features.plan import partition_info, window_partitions

    parts = window_partitions(lake, DAYS[0], DAYS[-1] + timedelta(days=1))
    info = partition_info(parts * 5, "date")
    assert [p["day"] for p in info] == [p["day"] for p in parts] * 5
    assert [p["rows"] for p in info] == [3, 2, 4, 5] * 5
    assert all(p["tmin"] == p["tmax"] == date.fromisoformat(p["day"]) for p in info)


def test_area_sums_do_not_depend_on_how_the_history_is_grouped(spec):
    """The cells' sums come from the finest (zipcode, cell, day) sums, re-summed by the streaming engine:
    the same exact decimals as a direct aggregation by (cell, day)."""
    from tasks.features.comps.area import _cell_key, _fine_sums, _resum
    from tasks.features.comps.config import _cells
    from tasks.features.comps.market import _history_values, _sums
    from tasks.features.featureset import feature_set

    cfg = feature_set(spec, "area").comps
    rows = pl.concat([typed(spec, kc_rows(d, 40, i)) for i, d in enumerate(DAYS)])
    fine = _fine_sums(rows.lazy(), cfg, DAYS[1], DAYS[-1], True)
    got = _resum(fine, ["_ck"], cfg.time).sort("_ck", cfg.time)
    ci, cj = _cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.cell_deg)
    hist = _history_values(rows.lazy(), cfg).filter(pl.col(cfg.time) < DAYS[-1]).with_columns(_cell_key(ci, cj).alias("_ck"))
    want = _sums(hist, ["_ck"], cfg).collect().sort("_ck", cfg.time)
    assert got.height > len(DAYS) and got.equals(want)


def test_an_object_store_lake_reads_its_metadata_on_threads_in_order(monkeypatch):
    import threading

    from tasks.features import plan

    seen = set()

    def square(x: int) -> int:
        seen.add(threading.get_ident())
        return x * x

    assert plan._map(square, list(range(50)), "/a/local/lake") == [x * x for x in range(50)]
    assert seen == {threading.get_ident()}, "a local lake's metadata is read in turn"
    seen.clear()
    monkeypatch.setattr(storage, "local_path", lambda uri: None)  # as for s3://
    assert plan._map(square, list(range(50)), "s3://bucket/lake") == [x * x for x in range(50)]
    assert threading.get_ident() not in seen
