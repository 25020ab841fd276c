"""homeworth in the Airflow UI and API server.

- ``fastapi_apps``: the app of ``tasks/serving/api.py`` at ``/homeworth`` (``POST /homeworth/predict``,
  ``GET /homeworth/model``, the ledger and report pages, its docs), behind Airflow's login (a bearer token
  from ``POST /auth/token`` or the UI's session cookie) and the auth manager's permission on the custom
  view ``homeworth`` (GET for reads, POST for ``/predict``); ``/homeworth/health`` alone is open and says only
  ``ok`` or ``unavailable``. ``HOMEWORTH_API_TOKENS`` is for the standalone server and is not used here.
- ``external_views``: "Promotion ledger" and "Evaluation reports" in the navigation, and an
  "Evaluation report" tab on every DAG run (it shows the report of a ``price_model_retrain`` run).

Airflow loads plugins in every component, task processes included, so this file imports nothing
heavy: the app is built on its first request (torch, MLflow and the model load then, in the API
server only; see ``tasks.serving.lazy``).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tasks.serving.lazy import LazyApp

app = LazyApp("tasks.serving.api:create_app")


class HomeworthPlugin(AirflowPlugin):
    name = "homeworth"
    fastapi_apps = [{"app": app, "url_prefix": "/homeworth", "name": "homeworth"}]
    # hrefs are relative to the UI's <base href>, so they work under any API base URL.
    external_views = [
        {"name": "Promotion ledger", "href": "homeworth/ui/ledger", "destination": "nav", "category": "browse",
         "url_route": "homeworth-ledger"},
        {"name": "Evaluation reports", "href": "homeworth/ui/reports", "destination": "nav", "category": "browse",
         "url_route": "homeworth-reports"},
        {"name": "Evaluation report", "href": "homeworth/ui/report?dag_id={DAG_ID}&run_id={RUN_ID}",
         "destination": "dag_run", "url_route": "homeworth-report"},
    ]
