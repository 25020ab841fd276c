"""
### sales_ingest

Daily ingestion of house sales. For the run's data interval (one day when scheduled; any range through
the `from_date` / `to_date` Params of a manual bulk run) it:

1. **ingest**: reads `<landing>/<YYYY-MM-DD>/*.csv|*.parquet`, coerces them to the dataset spec and
   writes the `raw` partition of each day (landing files are only read);
2. **validate**: runs the Great Expectations suite from `expectations/` over those rows; passing rows
   go to `validated`, failing rows to `quarantine` with every reason; a failed batch-level expectation
   fails the task with the file, column and values. Emits an event on the `validated_sales` asset.

Re-running a day replaces exactly that day's partitions. Backfill with
`airflow backfill create --dag-id sales_ingest --from-date 2015-04-01 --to-date 2015-05-27`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, dag, task

from tasks.params import IngestParams, airflow_params

VALIDATED_SALES = Asset(name="validated_sales", uri="homeworth://lake/validated")


@dag(
    dag_id="sales_ingest",
    schedule="@daily",
    start_date=pendulum.datetime(2014, 5, 1, tz="UTC"),
    catchup=False,
    max_active_runs=2,
    params=airflow_params(IngestParams),
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "owner": "data-team"},
    tags=["homeworth", "ingest"],
    doc_md=__doc__,
)
def sales_ingest():
    @task
    def ingest(data_interval_start=None, data_interval_end=None, params=None) -> dict:
        from tasks.ingest import ingest_interval
        from tasks.params import interval_days
        from tasks.settings import get_settings
        from tasks.spec import get_spec

        start, end = interval_days(data_interval_start, data_interval_end, IngestParams(**params))
        result = ingest_interval(get_spec(), get_settings().landing_uri, get_settings().lake_uri, start, end)
        return {k: v for k, v in result.items() if k != "partitions"}

    @task(outlets=[VALIDATED_SALES])
    def validate(ingested: dict, outlet_events=None) -> dict:
        from datetime import date

        from tasks.settings import get_settings
        from tasks.spec import get_spec
        from tasks.validate import validate_interval

        start, end = date.fromisoformat(ingested["start"]), date.fromisoformat(ingested["end"])
        result = validate_interval(get_spec(), get_settings().lake_uri, start, end)
        summary = {k: result[k] for k in ("start", "end", "rows_read", "rows_accepted", "rows_quarantined")}
        outlet_events[VALIDATED_SALES].extra = summary
        return summary

    # main flow
    validate(ingest())


sales_ingest()
