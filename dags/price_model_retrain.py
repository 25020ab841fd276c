"""
### price_model_retrain

Nightly retraining of the house-price model, and manual runs with the typed Params below.

1. **build_features**: Polars over the `validated` partitions of the training window (`window_days`
   before the run's interval end); time split with the newest days as test; the fitted preprocessing
   is saved as a versioned artifact that scoring reuses.
2. **train**: Lightning (`accelerator="auto"`), early stopping on `val/rmse_ln`, deterministic under
   `seed`; logged to MLflow with lineage tags and registered as a new model version. The model
   configuration is the newest `price_model_tune` result for the dataset when there is one and
   `use_tuned_config` is on; a `model_family`, `max_epochs` or `seed` other than its default
   overrides it; otherwise the family's defaults (`tasks/model/tune.py`, `docs/model.md`).
3. **evaluate**: the new model and the current `champion` on the same test rows (mdape, ppe10, rmse_ln,
   rmse, mae), beside gradient boosting trained on the same features and split; an HTML report is
   written and logged.
4. **check_drift**: per-feature PSI between the training split and the newest (test) rows, logged to
   MLflow; with `HOMEWORTH_DRIFT_ACTION=block_promotion` a drifted feature blocks promotion.
5. **promote**: absolute bars, then relative improvement over the champion (or `force_promotion`);
   the decision and reason become MLflow tags and the `champion` alias moves in one call. Backfill runs
   evaluate but never promote.

With the setting `HOMEWORTH_PROMOTION_APPROVAL=true` an inconclusive comparison (a bootstrap interval
of the paired metric differences contains 0) waits for a person: **assess** branches to **approval**,
a human-in-the-loop task offering "Promote" or "Keep champion" (keep after the timeout), and
**promote** records who decided.

**train** runs on the Celery queue `HOMEWORTH_TRAINING_QUEUE` (default `default`; LocalExecutor ignores
it). A task that fails for good logs a failure summary, mailed too with `HOMEWORTH_NOTIFY_EMAIL`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from tasks.core.notify import failure_callbacks
from tasks.core.params import RetrainParams, airflow_params
from tasks.core.resources import with_peak_rss
from tasks.core.settings import get_settings

NIGHTLY = "0 3 * * *"

# Any year's data: a run whose logical date is before start_date would "succeed" without running a task.
# With catchup=False the scheduler still creates only the latest interval's run.
START_DATE = pendulum.datetime(1900, 1, 1, tz="UTC")


def _schedule():
    """Nightly; with HOMEWORTH_DRIFT_ACTION=trigger_retrain also on sales_ingest's `sales_drift` events."""
    from airflow.sdk import Asset, AssetOrTimeSchedule, CronDataIntervalTimetable

    from tasks.core.settings import get_settings

    if get_settings().drift_action != "trigger_retrain":
        return NIGHTLY
    return AssetOrTimeSchedule(timetable=CronDataIntervalTimetable(NIGHTLY, timezone="UTC"),
                               assets=Asset(name="sales_drift", uri="homeworth://lake/drift"))


def _as_of(dag_run, data_interval_end):
    """End of the training window: the data interval's end, or when the run was due (asset-triggered runs)."""
    return (data_interval_end or dag_run.run_after).date()


def _lineage(dag_run, data_interval_end, params):
    from tasks.core.lineage import Lineage, training_window
    from tasks.core.params import RetrainParams

    start, end = training_window(_as_of(dag_run, data_interval_end), RetrainParams(**params).window_days)
    return Lineage(dag_id=dag_run.dag_id, run_id=dag_run.run_id, run_type=str(dag_run.run_type),
                   window_start=start.isoformat(), window_end=end.isoformat())


def _approval_enabled() -> bool:
    from tasks.core.settings import get_settings

    return get_settings().promotion_approval


def _approval(evaluation):
    """assess (branch) -> approval (human in the loop) for inconclusive results; see the module doc."""
    from airflow.providers.standard.operators.hitl import HITLOperator

    from tasks.core.settings import get_settings

    @task.branch
    def assess(evaluation: dict, params=None, ti=None) -> str:
        from tasks.core.handoffs import Evaluation
        from tasks.core.settings import get_settings
        from tasks.core.spec import get_spec
        from tasks.registry.promote import assess_step

        verdict = assess_step(get_settings(), Evaluation.from_xcom(evaluation), RetrainParams(**params),
                              target=get_spec().target)
        ti.xcom_push(key="verdict", value=verdict.to_xcom())
        return "approval" if verdict.outcome == "inconclusive" else "promote"

    approval = HITLOperator(
        task_id="approval",
        subject="Promote model v{{ ti.xcom_pull(task_ids='assess', key='verdict')['model_version'] }} "
                "over the champion?",
        body="The comparison with the champion is inconclusive:\n\n"
             "{{ ti.xcom_pull(task_ids='assess', key='verdict')['reason'] }}",
        options=["Promote", "Keep champion"],  # tasks.registry.policy.APPROVE / KEEP (not imported: parse time)
        defaults=["Keep champion"],
        response_timeout=timedelta(hours=get_settings().promotion_approval_timeout_hours),
    )
    branch = assess(evaluation)
    branch >> approval
    return [branch, approval]


@dag(
    dag_id="price_model_retrain",
    schedule=_schedule(),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    params=airflow_params(RetrainParams),
    default_args={"on_failure_callback": failure_callbacks(),
                  "retries": 1, "retry_delay": timedelta(minutes=1), "owner": "ml-team"},
    tags=["homeworth", "training"],
    doc_md=__doc__,
)
def price_model_retrain():
    @task
    def build_features(dag_run=None, data_interval_end=None, params=None) -> dict:
        from tasks.core.settings import get_settings
        from tasks.core.spec import get_spec
        from tasks.model.retrain import features_step

        as_of = _as_of(dag_run, data_interval_end)
        return with_peak_rss(features_step(get_spec(), get_settings(), as_of, RetrainParams(**params)))

    # Routed to the Celery queue `HOMEWORTH_TRAINING_QUEUE` (GPU workers; "default" otherwise; LocalExecutor ignores it).
    @task(execution_timeout=timedelta(hours=6), queue=get_settings().training_queue)
    def train(features: dict, dag_run=None, data_interval_end=None, params=None) -> dict:
        from tasks.core.handoffs import FeatureTable
        from tasks.core.settings import get_settings
        from tasks.model.retrain import train_step

        lineage = _lineage(dag_run, data_interval_end, params)
        return with_peak_rss(train_step(get_settings(), FeatureTable.from_xcom(features), RetrainParams(**params),
                                        lineage))

    @task
    def evaluate(features: dict, trained: dict) -> dict:
        from tasks.core.handoffs import FeatureTable, TrainedModel
        from tasks.core.settings import get_settings
        from tasks.core.spec import get_spec
        from tasks.registry.evaluate import evaluate_step

        return with_peak_rss(evaluate_step(get_spec(), get_settings(), FeatureTable.from_xcom(features),
                                           TrainedModel.from_xcom(trained)))

    @task
    def check_drift(features: dict, trained: dict) -> dict:
        from tasks.core.handoffs import FeatureTable, TrainedModel
        from tasks.core.settings import get_settings
        from tasks.core.spec import get_spec
        from tasks.quality.drift import drift_step

        return with_peak_rss(drift_step(get_spec(), get_settings(), FeatureTable.from_xcom(features),
                                        TrainedModel.from_xcom(trained)))

    @task(trigger_rule="none_failed_min_one_success")
    def promote(evaluation: dict, drift: dict, dag_run=None, data_interval_end=None, params=None, ti=None) -> dict:
        from tasks.core.handoffs import DriftReport, Evaluation
        from tasks.core.settings import get_settings
        from tasks.core.spec import get_spec
        from tasks.registry.promote import promote_step

        lineage = _lineage(dag_run, data_interval_end, params)
        approval = ti.xcom_pull(task_ids="approval") if "approval" in ti.task.dag.task_dict else None
        return with_peak_rss(promote_step(get_settings(), Evaluation.from_xcom(evaluation), RetrainParams(**params),
                                          lineage, approval=approval, event_time=data_interval_end,
                                          triggered_by=dag_run.triggering_user_name,
                                          drift=DriftReport.from_xcom(drift) if drift else None,
                                          target=get_spec().target))

    # main flow
    features = build_features()
    trained = train(features)
    evaluation = evaluate(features, trained)
    drift = check_drift(features, trained)
    if _approval_enabled():
        _approval(evaluation) >> promote(evaluation, drift)
    else:
        promote(evaluation, drift)


price_model_retrain()
