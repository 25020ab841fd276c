"""Batch-level checks against a reference window: volume and the target's median and quartiles."""

from __future__ import annotations

import os
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from tasks.core import lake as lake_paths
from tasks.core import storage
from tasks.ingest.landing import ingest_interval  # noqa: E402
from tasks.ingest.replay import replay  # noqa: E402
from tasks.quality.validate import ValidationFailed, reference_window, validate_interval  # noqa: E402

DAY = date(2014, 10, 15)  # a weekday with 60+ sales, after 28 days of history


@pytest.fixture
def lake(tmp_path, spec):
    landing, lake = str(tmp_path / "landing"), str(tmp_path / "lake")
    replay(spec, landing, start=DAY - timedelta(days=28), end=DAY + timedelta(days=1))
    ingest_interval(spec, landing, lake, DAY - timedelta(days=28), DAY)
    validate_interval(spec, lake, DAY - timedelta(days=28), DAY)
    return landing, lake


def _rewrite_day(landing: str, spec, fn) -> None:
    """Replace the day's landing folder by one holding a changed copy of its file."""
    folder = Path(landing) / DAY.isoformat()
    df = pl.read_csv(folder / "sales.csv", infer_schema=False)
    folder.rename(folder.with_name("original-" + DAY.isoformat()))
    folder.mkdir()
    fn(df).write_csv(folder / "sales_changed.csv")


def test_reference_window_summarises_the_days_before(lake, spec):
    _, lake_uri = lake
    ref = reference_window(spec, lake_uri, DAY, 28)
    validated = pl.read_parquet(Path(lake_uri) / "validated" / "ds=*" / "part-0.parquet")
    assert ref["rows_per_day"] == pytest.approx(validated.height / 28)
    assert ref["median"] == pytest.approx(validated["price"].median())
    assert reference_window(spec, lake_uri, DAY - timedelta(days=40), 28) is None  # no history yet


def test_a_normal_day_passes_against_its_reference(lake, spec):
    landing, lake_uri = lake
    ingest_interval(spec, landing, lake_uri, DAY, DAY + timedelta(days=1))
    out = validate_interval(spec, lake_uri, DAY, DAY + timedelta(days=1))
    assert out["rows_accepted"] > 30
    assert any("median" in e["expectation"] for e in out["expectations"])


def test_prices_tripled_fail_the_distribution_check(lake, spec):
    landing, lake_uri = lake
    _rewrite_day(landing, spec, lambda df: df.with_columns((pl.col("price").cast(pl.Float64) * 3).alias("price")))
    ingest_interval(spec, landing, lake_uri, DAY, DAY + timedelta(days=1))
    with pytest.raises(ValidationFailed, match=r"median.*price|price.*median") as err:
        validate_interval(spec, lake_uri, DAY, DAY + timedelta(days=1))
    assert "sales_changed.csv" in str(err.value)
    assert not storage.exists(lake_paths.partition_uri(lake_uri, "validated", DAY))


def test_a_volume_spike_against_the_reference_fails(lake, spec):
    landing, lake_uri = lake

    def spike(df: pl.DataFrame) -> pl.DataFrame:  # the day's sales six times over, with fresh ids
        copies = [df.with_columns((pl.col("id").cast(pl.Int64) + 10 ** 9 * (k + 1)).cast(pl.String).alias("id"))
                  for k in range(6)]
        return pl.concat([df, *copies])

    _rewrite_day(landing, spec, spike)
    ingest_interval(spec, landing, lake_uri, DAY, DAY + timedelta(days=1))
    with pytest.raises(ValidationFailed, match="row_count"):
        validate_interval(spec, lake_uri, DAY, DAY + timedelta(days=1))


def test_the_volume_bound_follows_the_sale_days_not_the_calendar(tmp_path, spec):
    """A market selling one day a week: its reference is the average of its sale days, so a busy sale day
    passes while a runaway feed (over 5x that average) still fails."""
    from tasks.core import lake as lake_paths
    from tasks.core import storage
    from tasks.quality.validate import expectation_parameters

    lake_uri = str(tmp_path / "lake")
    for i in range(28):
        day = DAY - timedelta(days=28 - i)
        rows = 100 if i % 7 == 0 else 0
        storage.write_parquet_atomic(pl.DataFrame({"price": [500_000.0] * rows}, schema={"price": pl.Float64}),
                                     lake_paths.partition_uri(lake_uri, "validated", day))
    ref = reference_window(spec, lake_uri, DAY, 28)
    assert (ref["sale_days"], ref["rows_per_sale_day"], ref["rows_per_day"]) == (4, 100.0, pytest.approx(400 / 28))
    params = expectation_parameters(spec, DAY, DAY + timedelta(days=1), reference=ref)
    assert params["max_rows"] == 500  # 5 x 100: a sale day of 341 passes; 8x the calendar average would not
