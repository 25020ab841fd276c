"""Unit tests of tasks.core.params: the ingest interval and the Airflow Params built from the pydantic models."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
from airflow.sdk import Param
from airflow.sdk.exceptions import ParamValidationError

from tasks.core.params import IngestParams, RetrainParams, airflow_params, interval_days
from tasks.ingest.landing import days_in_interval

UTC = timezone.utc
DAY = date(2015, 3, 1)

# ---------------------------------------------------------------------------------------------
# interval_days


def test_daily_data_interval_is_one_day():
    start, end = datetime(2015, 3, 1, tzinfo=UTC), datetime(2015, 3, 2, tzinfo=UTC)

    days = interval_days(start, end, IngestParams())

    assert days == (DAY, date(2015, 3, 2))
    assert days_in_interval(*days) == [DAY]


def test_plain_dates_are_accepted():
    assert interval_days(DAY, date(2015, 3, 4), IngestParams()) == (DAY, date(2015, 3, 4))


@pytest.mark.parametrize("end", [datetime(2015, 3, 1, tzinfo=UTC), datetime(2015, 3, 1, 12, tzinfo=UTC)])
def test_zero_length_interval_names_its_day(end):
    # `airflow dags test` (and a manual run) gives data_interval_start == data_interval_end.
    start = datetime(2015, 3, 1, tzinfo=UTC)

    first, stop = interval_days(start, end, IngestParams())

    assert first == DAY and stop >= first
    assert days_in_interval(first, stop) == [DAY]


def test_from_and_to_date_override_the_interval_inclusively():
    params = IngestParams(from_date=date(2015, 3, 1), to_date=date(2015, 3, 3))

    with_interval = interval_days(datetime(2016, 1, 1, tzinfo=UTC), datetime(2016, 1, 2, tzinfo=UTC), params)
    without_interval = interval_days(None, None, params)

    assert with_interval == without_interval == (date(2015, 3, 1), date(2015, 3, 4))
    assert days_in_interval(*with_interval) == [date(2015, 3, 1), date(2015, 3, 2), date(2015, 3, 3)]


def test_a_single_day_range():
    params = IngestParams(from_date=DAY, to_date=DAY)
    assert interval_days(None, None, params) == (DAY, date(2015, 3, 2))


@pytest.mark.parametrize("params", [
    IngestParams(from_date=DAY),
    IngestParams(to_date=DAY),
    IngestParams(from_date=date(2015, 3, 2), to_date=DAY),
])
def test_incomplete_or_reversed_range_is_an_error(params):
    with pytest.raises(ValueError, match="from_date and to_date must both be set"):
        interval_days(datetime(2015, 3, 1, tzinfo=UTC), datetime(2015, 3, 2, tzinfo=UTC), params)


@pytest.mark.parametrize("start, end", [(None, None), (datetime(2015, 3, 1, tzinfo=UTC), None)])
def test_no_data_interval_is_an_error(start, end):
    with pytest.raises(ValueError, match="no data interval"):
        interval_days(start, end, IngestParams())


def test_ingest_params_parse_strings_as_a_trigger_form_sends_them():
    params = IngestParams(**{"from_date": "2015-03-01", "to_date": "2015-03-02"})
    assert interval_days(None, None, params) == (DAY, date(2015, 3, 3))


# ---------------------------------------------------------------------------------------------
# airflow_params


def test_retrain_params_mirror_the_pydantic_defaults_and_bounds():
    params = airflow_params(RetrainParams)
    defaults = RetrainParams().model_dump()

    assert set(params) == set(defaults)
    assert all(isinstance(p, Param) for p in params.values())
    assert {k: p.value for k, p in params.items()} == defaults
    wd = params["window_days"].schema
    assert (wd["type"], wd["minimum"], wd["maximum"]) == ("integer", 30, 36500)
    assert params["model_family"].schema["enum"] == ["tabm", "mlp_plr", "mlp"]
    assert params["max_mdape"].schema["exclusiveMinimum"] == 0
    assert params["force_promotion"].schema["type"] == "boolean"
    assert params["window_days"].schema["title"] == "window days"
    assert params["window_days"].description == RetrainParams.model_fields["window_days"].description


@pytest.mark.parametrize("name, value", [("window_days", 29), ("window_days", 36501), ("model_family", "xgboost"),
                                         ("max_mdape", 0), ("min_ppe10", 1.5), ("seed", -1)])
def test_retrain_params_reject_out_of_bounds_values(name, value):
    params = airflow_params(RetrainParams)

    with pytest.raises(ParamValidationError):
        params[name].resolve(value)


def test_retrain_params_accept_the_bounds():
    params = airflow_params(RetrainParams)
    assert params["window_days"].resolve(30) == 30
    assert params["model_family"].resolve("mlp") == "mlp"


def test_ingest_params_are_optional_dates():
    params = airflow_params(IngestParams)

    assert set(params) == {"from_date", "to_date"}
    for p in params.values():
        assert p.value is None
        assert sorted(p.schema["type"]) == ["null", "string"] and p.schema["format"] == "date"
        assert p.resolve(None) is None
        assert p.resolve("2015-03-01") == "2015-03-01"
        with pytest.raises(ParamValidationError):
            p.resolve("2015-13-45")
