"""
### listings_score

Daily batch scoring of new listings (houses on the market, no price yet) with the `champion` model.
For the run's data interval (one day when scheduled; the `from_date` / `to_date` Params re-score a
range) it:

1. **champion**: resolves the version holding the `champion` alias once, so a retried scoring task
   uses the same model even if the alias moved meanwhile;
2. **score**: reads `<landing>/listings/<YYYY-MM-DD>/*.csv|*.parquet`, coerces them like sales (the
   price optional), checks every row-level expectation of the sales contract except those on the
   price, prices the passing rows with the model's saved preprocessing and writes
   `<lake>/predictions/ds=<day>/part-0.parquet` (with the model version) and the failing rows with
   their reasons to `<lake>/predictions_rejected/ds=<day>/part-0.parquet`. Emits an event on the
   `listing_predictions` asset.

Re-running a day replaces exactly that day's two files. One-off files:
`homeworth score --file listings.csv`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, dag, task

from tasks.core.notify import failure_callbacks
from tasks.core.params import IngestParams, airflow_params

LISTING_PREDICTIONS = Asset(name="listing_predictions", uri="homeworth://lake/predictions")

# Any year's data: a run whose logical date is before start_date would "succeed" without running a task.
# With catchup=False the scheduler still creates only the latest interval's run.
START_DATE = pendulum.datetime(1900, 1, 1, tz="UTC")


@dag(
    dag_id="listings_score",
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=2,
    params=airflow_params(IngestParams),
    default_args={"on_failure_callback": failure_callbacks(),
                  "retries": 2, "retry_delay": timedelta(seconds=30), "owner": "ml-team"},
    tags=["homeworth", "scoring"],
    doc_md=__doc__,
)
def listings_score():
    @task
    def champion() -> dict:
        from tasks.core.settings import get_settings
        from tasks.serving.score import champion as resolve

        return resolve(get_settings()).to_xcom()

    @task(outlets=[LISTING_PREDICTIONS])
    def score(model: dict, data_interval_start=None, data_interval_end=None, params=None, outlet_events=None) -> dict:
        from tasks.core.handoffs import ChampionRef
        from tasks.core.params import interval_days, no_retry_on_refusal
        from tasks.core.settings import get_settings
        from tasks.core.spec import get_spec
        from tasks.serving.score import score_interval

        with no_retry_on_refusal():  # a date range out of bounds fails again: no retries
            start, end = interval_days(data_interval_start, data_interval_end, IngestParams(**params))
            result = score_interval(get_spec(), get_settings(), start, end, ChampionRef.from_xcom(model).model_version)
        outlet_events[LISTING_PREDICTIONS].extra = result.model_dump(include={"start", "end", "model_version",
                                                                             "scored", "rejected"})
        return result.to_xcom()

    # main flow
    score(champion())


listings_score()
