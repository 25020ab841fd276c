"""The predict endpoint and the champion's pages: a FastAPI app, in Airflow's API server or on its own.

    python -m tasks.serving.api --port 8000            # on its own (uvicorn, 127.0.0.1 by default)
    # in Airflow: plugins/homeworth_plugin.py mounts it at /homeworth (login required there)

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
"""

# No ``from __future__ import annotations``: FastAPI reads the generated request model from the live
# annotation of ``predict`` (a local class, which a string annotation could not name).
import argparse
import logging

from fastapi import APIRouter, FastAPI, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from tasks.core import lake, storage
from tasks.core.settings import Settings, get_settings
from tasks.core.spec import DatasetSpec, get_spec
from tasks.serving import pages
from tasks.serving.champion import ChampionCache, NoChampion
from tasks.serving.schema import field_constraints, request_models, validation_detail

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, spec: DatasetSpec | None = None,
               dependencies: list | None = None) -> FastAPI:
    """The app. ``dependencies`` guard every route but ``/health`` (the Airflow plugin passes its login)."""
    settings = settings or get_settings()
    spec = spec or get_spec(settings.dataset_spec)
    set_torch_threads(settings.torch_threads)
    cache = ChampionCache(settings)
    app = FastAPI(title="homeworth", version="1",
                  description="House prices from the champion model. " + (__doc__ or "").split("\n\n")[1])
    app.state.cache, app.state.settings = cache, settings
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.get("/health")(health)
    guard = list(dependencies or [])
    app.include_router(model_routes(settings, spec, cache), dependencies=guard)
    app.include_router(page_routes(settings), dependencies=guard)
    return app


def set_torch_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


async def invalid_request(_request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field; inputs that JSON cannot carry (inf, NaN) are quoted, not a 500."""
    return JSONResponse(status_code=422, content={"detail": validation_detail(exc.errors())})


def health() -> dict:
    return {"status": "ok"}


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
    def predict(body: PredictRequest) -> dict:  # type: ignore[valid-type]
        version, bundle, _ = champion()
        rows = pl.DataFrame([h.model_dump() for h in body.houses], schema=schema, orient="row")
        prices = bundle.predict(model_frame(spec, rows))
        key = rows.select(ids).to_dicts() if ids else [{} for _ in range(rows.height)]
        return {"model_name": settings.model_name, "model_version": version,
                "predictions": [{**k, out_col: float(p)} for k, p in zip(key, prices, strict=True)]}

    @router.get("/model")
    def model() -> dict:
        _, _, info = champion()
        return {**info, "request": {"path": "/predict", "body": "{\"houses\": [house, ...]}",
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
