"""Data Docs in the Airflow UI and API server.

- ``fastapi_apps``: ``<lake>/_validation/`` (the Data Docs that ``tasks.quality.validate`` writes) served read-only
  at ``/homeworth-datadocs/``, behind Airflow's login and the permission on the custom view ``homeworth``
  (no OpenAPI or docs routes): ``/homeworth-datadocs/`` lists the validated
  intervals, ``/homeworth-datadocs/ds=<day>/data_docs.html`` is a day's page (and ``result.json`` its
  JSON), ``/homeworth-datadocs/<start>_<end>.html`` an interval's index.
- ``external_views``: "Data Docs" in the Browse menu.

The validate task of ``sales_ingest`` links here through its "Data Docs" extra link (dags/sales_ingest.py).
Airflow loads plugins in every component, so this file imports nothing heavy: the app
(``tasks.serving.datadocs_app.create_app``) is built on its first request (``tasks.serving.lazy``).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tasks.serving.lazy import LazyApp

app = LazyApp("tasks.serving.datadocs_app:create_app")


class HomeworthDataDocsPlugin(AirflowPlugin):
    name = "homeworth_datadocs"
    fastapi_apps = [{"app": app, "url_prefix": "/homeworth-datadocs", "name": "homeworth-datadocs"}]
    external_views = [
        {"name": "Data Docs", "href": "homeworth-datadocs/", "destination": "nav", "category": "browse",
         "url_route": "homeworth-datadocs"},
    ]
