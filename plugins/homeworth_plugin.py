"""homeworth in the Airflow UI and API server.

- ``fastapi_apps``: the app of ``tasks/serving/api.py`` at ``/homeworth`` (``POST /homeworth/predict``,
  ``GET /homeworth/model``, the ledger and report pages), behind Airflow's login: a bearer token
  from ``POST /auth/token`` or the UI's session cookie.
- ``external_views``: "Promotion ledger" and "Evaluation reports" in the navigation, and an
  "Evaluation report" tab on every DAG run (it shows the report of a ``price_model_retrain`` run).

Airflow loads plugins in every component, task processes included, so this file imports nothing
heavy: the app is built on its first request (torch, MLflow and the model load then, in the API
server only).
"""

from __future__ import annotations

import asyncio

from airflow.plugins_manager import AirflowPlugin


class LazyApp:
    """An ASGI app that builds ``tasks.serving.api.create_app`` (with Airflow's login) on its first request."""

    def __init__(self) -> None:
        self._app = None
        self._lock: asyncio.Lock | None = None

    @staticmethod
    def _build():
        from tasks.serving.api import airflow_user_dependency, create_app

        return create_app(dependencies=airflow_user_dependency())

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._app is None:
                    self._app = await asyncio.to_thread(self._build)
        await self._app(scope, receive, send)


app = LazyApp()


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
