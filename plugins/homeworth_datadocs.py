"""Data Docs in the Airflow UI and API server.

- ``fastapi_apps``: ``<lake>/_validation/`` (the Data Docs that ``tasks.quality.validate`` writes) served read-only
  at ``/homeworth-datadocs/``, behind Airflow's login: ``/homeworth-datadocs/`` lists the validated
  intervals, ``/homeworth-datadocs/ds=<day>/data_docs.html`` is a day's page (and ``result.json`` its
  JSON), ``/homeworth-datadocs/<start>_<end>.html`` an interval's index.
- ``external_views``: "Data Docs" in the Browse menu.

The validate task of ``sales_ingest`` links here through its "Data Docs" extra link (dags/sales_ingest.py).
Airflow loads plugins in every component, so this file imports nothing heavy: the app is built on its
first request.
"""

from __future__ import annotations

import asyncio
import re

from airflow.plugins_manager import AirflowPlugin

# Only the files tasks/quality/datadocs.py writes can be read (no other path below the lake).
ALLOWED = re.compile(r"^(ds=\d{4}-\d{2}-\d{2}/(data_docs\.html|result\.json)|\d{4}-\d{2}-\d{2}_\d{4}-\d{2}-\d{2}\.(html|json))$")


def create_app(dependencies: list | None = None):
    """The FastAPI app serving the Data Docs of the lake named by the settings."""
    import html

    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, Response

    from tasks.core import lake, storage
    from tasks.core.settings import get_settings

    app = FastAPI(title="homeworth Data Docs", dependencies=dependencies or [])

    def root() -> str:
        return lake.validation_dir(get_settings().lake_uri)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        pages = sorted((n for n in storage.list_dir(root()) if ALLOWED.match(n) and n.endswith(".html")), reverse=True)
        items = "".join(f'<li><a href="{html.escape(n)}">{html.escape(n.removesuffix(".html").replace("_", " .. "))}'
                        "</a></li>" for n in pages)
        return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Data Docs</title></head>"
                "<body style=\"font:14px system-ui,sans-serif;margin:24px\"><h1>Data Docs: validated intervals</h1>"
                f"<p>newest first; an interval's page links to each day's page</p><ul>{items or '<li>none yet</li>'}"
                "</ul></body></html>")

    @app.get("/{path:path}")
    def page(path: str) -> Response:
        if not ALLOWED.match(path):
            raise HTTPException(status_code=404, detail="not a Data Docs page")
        uri = storage.join(root(), path)
        if not storage.exists(uri):
            raise HTTPException(status_code=404, detail=f"no Data Docs at {path}")
        kind = "application/json" if path.endswith(".json") else "text/html; charset=utf-8"
        return Response(storage.read_bytes(uri), media_type=kind)

    return app


class LazyApp:
    """Builds :func:`create_app` (with Airflow's login) on its first request."""

    def __init__(self) -> None:
        self._app = None
        self._lock: asyncio.Lock | None = None

    @staticmethod
    def _build():
        from airflow.api_fastapi.core_api.security import get_user
        from fastapi import Depends

        return create_app(dependencies=[Depends(get_user)])

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._app is None:
                    self._app = await asyncio.to_thread(self._build)
        await self._app(scope, receive, send)


app = LazyApp()


class HomeworthDataDocsPlugin(AirflowPlugin):
    name = "homeworth_datadocs"
    fastapi_apps = [{"app": app, "url_prefix": "/homeworth-datadocs", "name": "homeworth-datadocs"}]
    external_views = [
        {"name": "Data Docs", "href": "homeworth-datadocs/", "destination": "nav", "category": "browse",
         "url_route": "homeworth-datadocs"},
    ]
