"""
### champion_rollback

Moves the `champion` alias of the house-price model back to an earlier champion, from the Airflow
UI: *Trigger* opens a form with two required Params, `version` (the model version to make live
again) and `reason` (why; it is recorded). The single task **rollback** checks that the version
exists, is not already live and was a champion before, appends a `rollback` event to the promotion
ledger (`<lake>/ledger/`: when, by which run and user, from which version to which, the metrics and
data window of the version going live) and moves the alias. Serving and `listings_score` pick the
new champion up without a restart. A retried task finds its ledger event and does not add another.
The same from a shell: `homeworth rollback --version N --reason "..."`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from tasks.core.notify import failure_callbacks

# Any year's data: a run whose logical date is before start_date would "succeed" without running a task.
# With catchup=False the scheduler still creates only the latest interval's run.
START_DATE = pendulum.datetime(1900, 1, 1, tz="UTC")


@dag(
    dag_id="champion_rollback",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    params={
        "version": Param(type="integer", minimum=1, title="version",
                         description="Model version to make the champion again (an earlier champion)."),
        "reason": Param(type="string", minLength=3, title="reason",
                        description="Why the champion is rolled back; recorded in the promotion ledger."),
    },
    default_args={"on_failure_callback": failure_callbacks(),
                  "retries": 1, "retry_delay": timedelta(seconds=30), "owner": "ml-team"},
    tags=["homeworth", "operations"],
    doc_md=__doc__,
)
def champion_rollback():
    @task
    def rollback(dag_run=None, params=None) -> dict:
        from tasks.core.settings import get_settings
        from tasks.registry.rollback import rollback as do_rollback

        at = dag_run.logical_date or dag_run.run_after  # the run's time, not the clock's
        actor = {"type": "dag_run", "dag_id": dag_run.dag_id, "run_id": dag_run.run_id,
                 "run_type": str(dag_run.run_type), "task": "rollback",
                 "triggered_by": getattr(dag_run, "triggering_user_name", None)}
        return do_rollback(get_settings(), params["version"], params["reason"], actor, at,
                           key=f"{dag_run.dag_id}/{dag_run.run_id}/rollback")

    rollback()


champion_rollback()
