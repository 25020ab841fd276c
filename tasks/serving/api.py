"""The predict endpoint and the champion's pages: a FastAPI app, in Airflow's API server or on its own.

    python -m tasks.serving.api --port 8000            # on its own (uvicorn, 127.0.0.1 by default)
    # in Airflow: plugins/homeworth_plugin.py mounts it at /homeworth (login and permission required there)

- ``POST /predict`` takes ``{"houses": [{...}, ...]}``. The request model is generated from the
  dataset spec (every column but the target, with the spec's types and required flags) and from the
  single-column row-level expectations of its Great Expectations suite (bounds, value sets,
  patterns), so a bad house gets a 422 that names the field. Prices come from
  ``ModelBundle.predict`` over the frame :func:`tasks.serving.score.model_frame` builds: the very call and
  input batch scoring uses, with the saved preprocessing artifact.
- ``GET /model``: the champion's version, test metrics, data window and why it is live.
- ``GET /ui/ledger``, ``/ui/reports``, ``/ui/reports/<name>``, ``/ui/report?dag_id=&run_id=``: the
  promotion ledger and the evaluation reports as pages (the Airflow UI shows them in iframes).

A new champion is picked up without a restart: the alias is re-read at most every
``serving_alias_ttl_s`` seconds (one small registry query) and a bundle is loaded only when the
version changes; requests in between use the cached bundle.

The pieces: ``schema`` (the request model), ``champion`` (the cached bundle), ``pages`` (HTML);
``python -m tasks.serving`` is the same as ``python -m tasks.serving.api``.

Security (docs/serving.md, "Security"; the middleware and guards are in ``guard``): on its own, with
``HOMEWORTH_API_TOKENS`` set every route but ``/health`` needs a bearer token (the docs routes too), and
without tokens it refuses to listen on a non-loopback address; in Airflow, Airflow's login and the
auth manager's permission on ``homeworth``. Bodies over ``HOMEWORTH_MAX_REQUEST_MB`` get 413 before
parsing; errors quote at most a snippet of the input; ``/health`` says only ``ok`` (200) or
``unavailable`` (503, no champion can be served).
"""

# No ``from __future__ import annotations``: FastAPI reads the generated request model from the live
# annotation of ``predict`` (a local class, which a string annotation could not name).
import argparse
import ipaddress
import logging
import math
import os

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from tasks.core import lake, storage
from tasks.core.settings import Settings, get_settings
from tasks.core.spec import DatasetSpec, get_spec
from tasks.serving import pages
from tasks.serving.champion import ChampionCache, NoChampion
from tasks.serving.guard import Guard, docs_routes, parse_tokens
from tasks.serving.schema import field_constraints, request_models, validation_detail

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, spec: DatasetSpec | None = None,
               dependencies: list | None = None) -> FastAPI:
    """The app. ``dependencies`` guard every route but ``/health`` (the Airflow plugin passes its login and
    permission check, and the tokens setting is then not used); without them, ``HOMEWORTH_API_TOKENS`` does."""
    settings = settings or get_settings()
    spec = spec or get_spec(settings.dataset_spec)
    set_torch_threads(settings.torch_threads)
    bound_mlflow_http(settings.mlflow_tracking_uri)
    # TTL 0 re-checks the alias on every request and serves a new champion on the very next one (tests); a positive
    # TTL swaps new champions in the background, no request waiting for the registry or a load (docs/serving.md).
    cache = ChampionCache(settings, background_swap=settings.serving_alias_ttl_s > 0)
    app = FastAPI(title="homeworth", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  description="House prices from the champion model. " + (__doc__ or "").split("\n\n")[1])
    app.state.cache, app.state.settings = cache, settings
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.get("/health", include_in_schema=False)(health)
    guard = list(dependencies or [])
    app.include_router(model_routes(settings, spec, cache), dependencies=guard)
    app.include_router(page_routes(settings), dependencies=guard)
    app.include_router(docs_routes(app, guard))
    tokens = [] if dependencies is not None else parse_tokens(settings.api_tokens)
    app.add_middleware(Guard, tokens=tokens, max_bytes=int(settings.max_request_mb * 2**20))
    return app


def bound_mlflow_http(tracking_uri: str) -> None:
    """A tracking server's requests time out in 10 s with 2 retries unless set otherwise, so a background
    refresh during an outage ends in about a minute rather than MLflow's default budget of many minutes."""
    if tracking_uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")


def set_torch_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


async def invalid_request(_request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field; inputs that JSON cannot carry (inf, NaN) are quoted, not a 500."""
    return JSONResponse(status_code=422, content={"detail": validation_detail(exc.errors())})


def health(request: Request) -> JSONResponse:
    """200 ``ok`` when a champion can be served, else 503 ``unavailable``; nothing else (it is open)."""
    try:
        request.app.state.cache.get()
    except NoChampion:
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})


def model_routes(settings: Settings, spec: DatasetSpec, cache: ChampionCache) -> APIRouter:
    """``POST /predict`` and ``GET /model``, over the champion in ``cache``."""
    import polars as pl

    from tasks.ingest.landing import POLARS_TYPES
    from tasks.serving.score import model_frame, prediction_column

    House, PredictRequest = request_models(spec, settings.serving_max_batch)
    _, unchecked = field_constraints(spec)
    ids, out_col = spec.id_columns, prediction_column(spec)
    schema = {n: POLARS_TYPES[c.type] for n, c in spec.columns.items() if n != spec.target}
    router = APIRouter()

    def champion():
        try:
            return cache.get()
        except NoChampion as exc:
            raise HTTPException(503, str(exc)) from exc

    @router.post("/predict")
    async def predict(body: PredictRequest) -> dict:  # type: ignore[valid-type]
        # A few milliseconds of numpy and torch: run inline on the event loop, no hop to the thread pool (on a busy
        # machine each hop waits for a time slice). Only a call that may wait (no champion cached yet, or the
        # cache waits for refreshes) goes to the thread pool.
        if cache.background_swap and cache.bundle is not None:
            return prices(body)
        return await run_in_threadpool(prices, body)

    def prices(body) -> dict:
        version, bundle, _ = champion()
        rows = pl.DataFrame([h.model_dump() for h in body.houses], schema=schema, orient="row")
        prices = bundle.predict(model_frame(spec, rows), fresh=False)  # the comps index, refreshed in the background
        bad = [i for i, p in enumerate(prices) if not math.isfinite(float(p))]
        if bad:
            raise HTTPException(422, f"the model gives no finite price for houses {bad[:20]} (inputs far outside "
                                     "the training data)")
        key = rows.select(ids).to_dicts() if ids else [{} for _ in range(rows.height)]
        return {"model_name": settings.model_name, "model_version": version,
                "predictions": [{**k, out_col: float(p)} for k, p in zip(key, prices, strict=True)]}

    @router.get("/model")
    def model() -> dict:
        _, _, info = champion()
        return {**info, "serving": cache.status(), "request": {"path": "/predict", "body": "{\"houses\": [house, ...]}",
                                    "house_fields": list(House.model_fields)},
                "checked_per_house": "spec types and required columns; single-column row-level expectations",
                "not_checked_per_house": unchecked}

    return router


def page_routes(settings: Settings) -> APIRouter:
    """The ledger and evaluation report pages under ``/ui``."""
    router = APIRouter(prefix="/ui")

    @router.get("/ledger", response_class=HTMLResponse)
    def ui_ledger():
        return HTMLResponse(pages.ledger_page(settings))

    @router.get("/reports", response_class=HTMLResponse)
    def ui_reports():
        return HTMLResponse(pages.reports_page(settings))

    @router.get("/reports/{name}", response_class=HTMLResponse)
    def ui_report(name: str):
        if name not in pages.report_names(settings):
            raise HTTPException(404, f"no evaluation report {name!r}")
        return HTMLResponse(storage.read_bytes(storage.join(settings.reports_uri, name, lake.REPORT_FILE)))

    @router.get("/report", response_class=HTMLResponse)
    def ui_report_for_run(dag_id: str = Query(...), run_id: str = Query(...)):
        name = pages.report_for_run(settings, dag_id, run_id)
        if name is None:
            return HTMLResponse(pages.no_report_page(dag_id, run_id))
        return RedirectResponse(f"reports/{name}", status_code=307)

    return router


def main(argv: list[str] | None = None, prog: str = "python -m tasks.serving.api") -> None:
    import uvicorn

    p = argparse.ArgumentParser(prog=prog, description="Serve the champion on its own.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    settings = get_settings()
    check_exposure(args.host, settings)
    # One house is too small a product to split over threads; concurrent requests use the cores instead.
    set_torch_threads(settings.torch_threads or 1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, access_log=False)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost`` counts; a name or a wildcard does not)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, settings: Settings) -> None:
    """Refuse (SystemExit) to listen on a non-loopback address without tokens."""
    if not is_loopback(host) and not parse_tokens(settings.api_tokens):
        raise SystemExit(f"refusing to serve on {host}: a non-loopback address needs HOMEWORTH_API_TOKENS "
                         "(comma-separated bearer tokens); or listen on 127.0.0.1")


if __name__ == "__main__":
    main()
