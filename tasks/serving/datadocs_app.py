"""The Data Docs of the lake, served read-only: the app the ``homeworth_datadocs`` plugin mounts.

``/`` lists the validated intervals, ``/ds=<day>/data_docs.html`` is a day's page (and ``result.json``
its JSON), ``/<start>_<end>.html`` an interval's index: the files ``tasks.quality.datadocs`` writes
under ``<lake>/_validation/``, and no other path. FastAPI is imported when the app is built, so the
plugin that names this module stays light.
"""

from __future__ import annotations

import re

from tasks.core import lake, storage
from tasks.core.html import esc, page

# Only the files tasks/quality/datadocs.py writes can be read (no other path below the lake).
ALLOWED = re.compile(r"^(ds=\d{4}-\d{2}-\d{2}/(data_docs\.html|result\.json)|\d{4}-\d{2}-\d{2}_\d{4}-\d{2}-\d{2}\.(html|json))$")
INDEX_CSS = "body{font:14px system-ui,sans-serif;margin:24px}"


def index_page(names: list[str]) -> str:
    """The list of validated intervals (their index pages among ``names``), newest first."""
    pages = sorted((n for n in names if ALLOWED.match(n) and n.endswith(".html")), reverse=True)
    items = "".join(f'<li><a href="{esc(n)}">{esc(n.removesuffix(".html").replace("_", " .. "))}</a></li>'
                    for n in pages)
    return page("Data Docs", "<h1>Data Docs: validated intervals</h1><p>newest first; an interval's page links to "
                f"each day's page</p><ul>{items or '<li>none yet</li>'}</ul>", css=INDEX_CSS)


def create_app(lake_uri: str | None = None, dependencies: list | None = None):
    """The FastAPI app serving the Data Docs of ``lake_uri`` (default: the settings' lake)."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, Response

    if lake_uri is None:
        from tasks.core.settings import get_settings

        lake_uri = get_settings().lake_uri
    root = lake.validation_dir(lake_uri)
    # No OpenAPI or docs routes: FastAPI's own would skip ``dependencies`` (the login), and a page app needs none.
    app = FastAPI(title="homeworth Data Docs", dependencies=dependencies or [], docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return index_page(storage.list_dir(root))

    @app.get("/{path:path}")
    def docs(path: str) -> Response:
        if not ALLOWED.match(path):
            raise HTTPException(status_code=404, detail="not a Data Docs page")
        uri = storage.join(root, path)
        if not storage.exists(uri):
            raise HTTPException(status_code=404, detail=f"no Data Docs at {path}")
        kind = "application/json" if path.endswith(".json") else "text/html; charset=utf-8"
        return Response(storage.read_bytes(uri), media_type=kind)

    return app
