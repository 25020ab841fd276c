"""
### sales_ingest

Daily ingestion of house sales. For the run's data interval (one day when scheduled; any range through
the `from_date` / `to_date` Params of a manual bulk run) it:

1. **ingest**: reads `<landing>/<YYYY-MM-DD>/*.csv|*.parquet`, coerces them to the dataset spec and
   writes the `raw` partition of each day (landing files are only read);
2. **validate**: runs the Great Expectations suite from `expectations/` over those rows; passing rows
   go to `validated`, failing rows to `quarantine` with every reason; a failed batch-level expectation
   fails the task with the file, column and values. Emits an event on the `validated_sales` asset.

**Data Docs**: every validation (failed ones too) writes an HTML report per day,
`<lake>/_validation/ds=<day>/data_docs.html` (every expectation, its severity, success, unexpected count
and sample values, the day's files and rows), beside its `result.json`. The validate task logs the page
to open and returns it as `data_docs` in its XCom; the task's **Data Docs** extra link opens it through
the `homeworth_datadocs` plugin.

**Failures**: a task that fails for good logs a summary (days, failed expectations, rows, the error's
first lines, the Data Docs page); with `HOMEWORTH_NOTIFY_EMAIL` set it is also mailed (SmtpNotifier).

**Drift**: with `HOMEWORTH_DRIFT_ACTION=trigger_retrain`, validate also compares the last
`drift_recent_days` days of validated sales with the champion's training data (PSI per feature) and,
when a feature drifts, emits an event on the `sales_drift` asset (through the `sales_drift_detected`
alias), which `price_model_retrain` can be scheduled on.

Re-running a day replaces exactly that day's partitions. Backfill with
`airflow backfill create --dag-id sales_ingest --from-date 2015-04-01 --to-date 2015-05-27`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, AssetAlias, BaseOperatorLink, dag, task

from tasks.core.notify import failure_callbacks
from tasks.core.params import IngestParams, airflow_params
from tasks.core.settings import get_settings

VALIDATED_SALES = Asset(name="validated_sales", uri="homeworth://lake/validated")
# Feature drift of the newest validated sales against the champion's training data. Events arrive
# through the alias only when a feature is flagged (drift_action="trigger_retrain"); schedule
# price_model_retrain on AssetOrTimeSchedule(timetable=<its cron>, assets=SALES_DRIFT) to retrain then.
SALES_DRIFT = Asset(name="sales_drift", uri="homeworth://lake/drift")
SALES_DRIFT_ALIAS = AssetAlias(name="sales_drift_detected")
# Read when the DAG is parsed, like the failure e-mail (see tasks/core/settings.py).
TRIGGER_RETRAIN = get_settings().drift_action == "trigger_retrain"
DATA_DOCS_XCOM = "data_docs"  # the XCom key of the Data Docs page (pushed on success and on failure)

# Any year's data: a run whose logical date is before start_date would "succeed" without running a task.
# With catchup=False the scheduler still creates only the latest interval's run.
START_DATE = pendulum.datetime(1900, 1, 1, tz="UTC")


class DataDocsLink(BaseOperatorLink):
    """The validate task's "Data Docs" button: the page of its last validation, served by
    plugins/homeworth_datadocs.py at ``<api base_url>/homeworth-datadocs/``."""

    name = "Data Docs"

    def get_link(self, operator, *, ti_key) -> str:
        from airflow.sdk.bases.xcom import BaseXCom

        path = BaseXCom.get_value(ti_key=ti_key, key=DATA_DOCS_XCOM)
        if not path:
            return ""
        from airflow.sdk.configuration import conf

        from tasks.core.settings import get_settings

        root = get_settings().lake_uri.rstrip("/") + "/_validation/"
        if not str(path).startswith(root):
            return str(path)
        base = conf.get("api", "base_url", fallback="http://localhost:8080/").rstrip("/")
        return f"{base}/homeworth-datadocs/{str(path)[len(root):]}"


@dag(
    dag_id="sales_ingest",
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=2,
    params=airflow_params(IngestParams),
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "owner": "data-team",
                  "on_failure_callback": failure_callbacks()},
    tags=["homeworth", "ingest"],
    doc_md=__doc__,
)
def sales_ingest():
    @task
    def ingest(data_interval_start=None, data_interval_end=None, params=None) -> dict:
        from tasks.core.params import interval_days, no_retry_on_refusal
        from tasks.core.settings import get_settings
        from tasks.core.spec import get_spec
        from tasks.ingest.landing import ingest_step

        with no_retry_on_refusal():  # a date range out of bounds fails again: no retries
            start, end = interval_days(data_interval_start, data_interval_end, IngestParams(**params))
            return ingest_step(get_spec(), get_settings(), start, end).to_xcom()

    @task(outlets=[VALIDATED_SALES, *([SALES_DRIFT_ALIAS] if TRIGGER_RETRAIN else [])])
    def validate(ingested: dict, outlet_events=None, run_id=None, ti=None) -> dict:
        from datetime import date

        from tasks.core.handoffs import IngestResult
        from tasks.core.settings import get_settings
        from tasks.core.spec import get_spec
        from tasks.quality.validate import ValidationFailed, summarize, validate_interval

        settings, spec, ingested = get_settings(), get_spec(), IngestResult.from_xcom(ingested)
        start, end = date.fromisoformat(ingested.start), date.fromisoformat(ingested.end)
        try:
            result = validate_interval(spec, settings.lake_uri, start, end, run_id=run_id)
        except ValidationFailed as exc:
            if exc.details.get("data_docs"):
                ti.xcom_push(key=DATA_DOCS_XCOM, value=exc.details["data_docs"])
            raise
        ti.xcom_push(key=DATA_DOCS_XCOM, value=result["data_docs"])
        print(f"Data Docs: {result['data_docs']}")
        summary = summarize(result)
        outlet_events[VALIDATED_SALES].extra = summary.model_dump(exclude={"data_docs", "drift"})
        if TRIGGER_RETRAIN:
            from tasks.quality.drift import check_after_ingest

            summary.drift, event = check_after_ingest(spec, settings, end)
            if event is not None:
                outlet_events[SALES_DRIFT_ALIAS].add(SALES_DRIFT, extra=event)
        return summary.to_xcom()

    # main flow
    validated = validate(ingest())
    validated.operator.operator_extra_links = (DataDocsLink(),)


sales_ingest()
