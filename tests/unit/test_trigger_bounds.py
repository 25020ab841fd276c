"""Bounded trigger forms (issue 17): the bulk date range of sales_ingest and listings_score.

Dates outside 1900..2200 are refused by the form itself (the Param's JSON schema, checked by Airflow when a
run is triggered); a range longer than HOMEWORTH_MAX_BULK_DAYS, which two separate Params cannot express,
is refused at the first line of the ingest and scoring tasks, before anything is written.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import ParamValidationError
from pydantic import ValidationError

from tasks.core.params import EARLIEST_DATE, LATEST_DATE, IngestParams, airflow_params, check_date_range, interval_days

UTC = timezone.utc


def _form(**conf) -> dict:
    """What Airflow does with a trigger form's values: the DAG's Params updated with them and validated."""
    params = ParamsDict(airflow_params(IngestParams))
    params.update(conf)
    return params.validate()


@pytest.mark.parametrize("value", ["0001-01-01", "1899-12-31", "2201-01-01", "9999-12-31", "10000-01-01", "15-01-01"])
def test_the_form_refuses_implausible_dates(value):
    with pytest.raises(ParamValidationError):
        _form(from_date=value, to_date="2015-01-01")
    with pytest.raises(ParamValidationError):
        _form(from_date="2015-01-01", to_date=value)


@pytest.mark.parametrize("value", [EARLIEST_DATE.isoformat(), "2015-03-01", "2199-06-30", LATEST_DATE.isoformat()])
def test_the_form_accepts_plausible_dates_and_empty_ones(value):
    assert _form(from_date=value, to_date=value) == {"from_date": value, "to_date": value}
    assert _form() == {"from_date": None, "to_date": None}


def test_the_task_refuses_what_the_form_would_have(monkeypatch):
    # A run triggered through the API with a conf that bypassed the form still meets the model's bounds.
    with pytest.raises(ValidationError, match="greater than or equal to 1900-01-01"):
        IngestParams(from_date="0001-01-01", to_date="2015-01-01")
    with pytest.raises(ValidationError, match="less than or equal to 2200-12-31"):
        IngestParams(from_date="2015-01-01", to_date="2201-01-01")


@pytest.mark.parametrize("days, ok", [(1, True), (3653, True), (3654, False), (50_000, False)])
def test_a_range_is_at_most_max_bulk_days_long(days, ok):
    start = date(1901, 1, 1)
    params = IngestParams(from_date=start, to_date=start + timedelta(days=days - 1))
    if ok:
        assert interval_days(None, None, params, max_days=3653) == (start, start + timedelta(days=days))
    else:
        with pytest.raises(ValueError, match=f"spans {days} days, more than the 3653 .*HOMEWORTH_MAX_BULK_DAYS"):
            interval_days(None, None, params, max_days=3653)


def test_the_default_bound_is_the_setting(fresh_settings, monkeypatch):
    from tasks.core.settings import get_settings

    params = IngestParams(from_date=date(2015, 1, 1), to_date=date(2015, 1, 10))  # 10 days
    assert get_settings().max_bulk_days == 3653  # ten years
    assert interval_days(None, None, params)[1] == date(2015, 1, 11)
    monkeypatch.setenv("HOMEWORTH_MAX_BULK_DAYS", "9")
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="spans 10 days, more than the 9"):
        interval_days(None, None, params)


def test_a_data_interval_is_bounded_too():
    start, end = datetime(1, 1, 1, tzinfo=UTC), datetime(1, 1, 2, tzinfo=UTC)
    with pytest.raises(ValueError, match="outside the plausible dates 1900-01-01..2200-12-31"):
        interval_days(start, end, IngestParams())
    with pytest.raises(ValueError, match="spans 20000 days"):
        check_date_range(date(1950, 1, 1), date(1950, 1, 1) + timedelta(days=20_000), max_days=3653)
    check_date_range(LATEST_DATE, LATEST_DATE + timedelta(days=1), max_days=1)  # the last plausible day


def _no_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_a_bulk_ingest_from_year_one_is_refused_before_anything_is_written(fresh_settings):
    from tasks.core.spec import get_spec
    from tasks.ingest.landing import ingest_step

    settings = fresh_settings
    with pytest.raises(ValueError, match="outside the plausible dates"):
        ingest_step(get_spec(), settings, date(1, 1, 1), date(2015, 1, 1))
    with pytest.raises(ValueError, match="HOMEWORTH_MAX_BULK_DAYS"):
        ingest_step(get_spec(), settings, date(1950, 1, 1), date(2015, 1, 1))
    assert _no_files(Path(settings.lake_uri)) == []


def test_a_bulk_scoring_run_out_of_bounds_is_refused_before_the_model_is_loaded(fresh_settings, monkeypatch):
    from tasks.core.spec import get_spec
    from tasks.serving import score

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for a range that should have been refused")

    monkeypatch.setattr(score, "load_version", no_model)
    settings = fresh_settings
    with pytest.raises(ValueError, match="outside the plausible dates"):
        score.score_interval(get_spec(), settings, date(1, 1, 1), date(1, 1, 2), "1")
    with pytest.raises(ValueError, match="HOMEWORTH_MAX_BULK_DAYS"):
        score.score_interval(get_spec(), settings, date(1990, 1, 1), date(2015, 1, 1), "1")
    assert _no_files(Path(settings.lake_uri)) == []
