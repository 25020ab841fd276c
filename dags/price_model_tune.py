"""
### price_model_tune

Hyperparameter search for the house-price model; its result becomes `price_model_retrain`'s
default configuration. Manual runs (no schedule; set `schedule="@weekly"` to re-tune weekly).

1. **build_features**: once, exactly as the retrain does (the `window_days` before the run's
   interval end; comparable sales; time split).
2. **plan_trials**: `n_trials` configurations from a seeded sampler over the search space documented
   in `tasks/model/tune.py` (trial 0 is the current default configuration).
3. **run_trial**: one mapped task per trial (dynamic task mapping), each training on the same
   features and logging a run in the MLflow experiment `<experiment>-tuning`.
4. **record_best**: the trial with the lowest validation `rmse_ln` (test rows are never looked at)
   is recorded as a run tagged `homeworth.kind=tuning-result` with the JSON tag
   `homeworth.best_config`. `price_model_retrain` starts from the newest one for its dataset unless
   its Params say otherwise (`use_tuned_config`, or a non-default family, max epochs or seed).

The trials run on the Celery queue `HOMEWORTH_TRAINING_QUEUE`, like the retrain's `train`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task

from tasks.core.notify import failure_callbacks
from tasks.core.params import TuneParams, airflow_params
from tasks.core.settings import get_settings

# Any year's data: a run whose logical date is before start_date would "succeed" without running a task.
# With catchup=False the scheduler still creates only the latest interval's run.
START_DATE = pendulum.datetime(1900, 1, 1, tz="UTC")


def _lineage(dag_run, as_of, params):
    from tasks.core.lineage import Lineage, training_window

    start, end = training_window(as_of.date(), TuneParams(**params).window_days)
    return Lineage(dag_id=dag_run.dag_id, run_id=dag_run.run_id, run_type=str(dag_run.run_type),
                   window_start=start.isoformat(), window_end=end.isoformat())


def _as_of(data_interval_end, dag_run):
    """The run's interval end; a manual run of an unscheduled DAG may have none: when it was triggered."""
    return data_interval_end or dag_run.logical_date or dag_run.run_after


@dag(
    dag_id="price_model_tune",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    params=airflow_params(TuneParams),
    default_args={"on_failure_callback": failure_callbacks(),
                  "retries": 1, "retry_delay": timedelta(minutes=1), "owner": "ml-team"},
    tags=["homeworth", "training", "tuning"],
    doc_md=__doc__,
)
def price_model_tune():
    @task
    def build_features(data_interval_end=None, dag_run=None, params=None) -> dict:
        from tasks.core.settings import get_settings
        from tasks.core.spec import get_spec
        from tasks.model.retrain import features_step

        as_of = _as_of(data_interval_end, dag_run)
        return features_step(get_spec(), get_settings(), as_of.date(), TuneParams(**params)).to_xcom()

    @task
    def plan_trials(params=None) -> list[dict]:
        from tasks.model.tune import sample_trials

        p = TuneParams(**params)
        return [t.to_xcom() for t in sample_trials(p.n_trials, p.seed, list(p.families), p.max_epochs, p.max_time_s)]

    # Routed like the retrain's `train` to the Celery queue `HOMEWORTH_TRAINING_QUEUE`.
    @task(execution_timeout=timedelta(hours=2), queue=get_settings().training_queue)
    def run_trial(trial: dict, features: dict, dag_run=None, data_interval_end=None, params=None) -> dict:
        from tasks.core.handoffs import FeatureTable, Trial
        from tasks.core.settings import get_settings
        from tasks.model.tune import run_trial as run

        lineage = _lineage(dag_run, _as_of(data_interval_end, dag_run), params)
        return run(get_settings(), FeatureTable.from_xcom(features), Trial.from_xcom(trial), lineage).to_xcom()

    @task
    def record_best(results: list[dict], features: dict, dag_run=None, data_interval_end=None, params=None) -> dict:
        from tasks.core.handoffs import FeatureTable, TrialResult
        from tasks.core.settings import get_settings
        from tasks.core.spec import get_spec
        from tasks.model.tune import record_best as record

        lineage = _lineage(dag_run, _as_of(data_interval_end, dag_run), params)
        trials = [TrialResult.from_xcom(r) for r in results]
        return record(get_settings(), get_spec().name, FeatureTable.from_xcom(features), trials, lineage).to_xcom()

    features = build_features()
    results = run_trial.partial(features=features).expand(trial=plan_trials())
    record_best(results, features)


price_model_tune()
