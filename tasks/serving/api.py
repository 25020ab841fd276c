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
"""

import argparse
import html
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from datetime import date, datetime, timezone
from typing import Annotated, Any, Callable

import polars as pl
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model

from tasks.core import lake, storage, tracking
from tasks.core.settings import Settings, get_settings
from tasks.core.spec import DatasetSpec, get_spec
from tasks.registry import ledger

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

PY_TYPES: dict[str, type] = {"string": str, "int": int, "float": float, "date": date, "bool": bool}


# ---------------------------------------------------------------------------------------------
# The request model, generated from the spec and the expectation suite


def field_constraints(spec: DatasetSpec) -> tuple[dict[str, list[Callable]], list[str]]:
    """Per-column checks derived from the suite's single-column row-level expectations.

    Returns ({column: [validator, ...]}, [descriptions of expectations the endpoint cannot check
    per house: cross-column, runtime-parameterised or batch ones]).
    """
    from tasks.serving.score import listings_suite

    checks: dict[str, list[Callable]] = {}
    skipped = []
    for exp in listings_suite(spec).expectations:
        kind = exp.expectation_type
        col = getattr(exp, "column", None)
        row_level = (exp.meta or {}).get("severity") == "row"
        if col not in spec.columns or not row_level:
            skipped.append(f"{kind}({col or ''})")
            continue
        if kind == "expect_column_values_to_be_between":
            lo, hi = exp.min_value, exp.max_value
            if isinstance(lo, dict) or isinstance(hi, dict):
                skipped.append(f"{kind}({col}, runtime bounds)")
                continue
            checks.setdefault(col, []).append(_between(col, lo, hi))
        elif kind == "expect_column_values_to_be_in_set":
            checks.setdefault(col, []).append(_in_set(col, list(exp.value_set)))
        elif kind == "expect_column_values_to_match_regex":
            checks.setdefault(col, []).append(_regex(col, exp.regex))
        elif kind != "expect_column_values_to_not_be_null":  # required-ness comes from the spec
            skipped.append(f"{kind}({col})")
    return checks, skipped


def _between(col: str, lo: Any, hi: Any) -> Callable:
    def check(v):
        if v is not None and ((lo is not None and v < lo) or (hi is not None and v > hi)):
            raise ValueError(f"{col} must be between {_num(lo, '-inf')} and {_num(hi, 'inf')} (the data contract); "
                             f"got {v}")
        return v
    return check


def _num(x: Any, none: str) -> str:
    return none if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def _in_set(col: str, values: list) -> Callable:
    allowed = set(values)
    shown = ", ".join(map(str, sorted(values)[:12])) + (", ..." if len(values) > 12 else "")
    def check(v):
        if v is not None and v not in allowed:
            raise ValueError(f"{col} must be one of {len(values)} values ({shown}); got {v!r}")
        return v
    return check


def _regex(col: str, pattern: str) -> Callable:
    rx = re.compile(pattern)
    def check(v):
        if v is not None and not rx.search(str(v)):
            raise ValueError(f"{col} must match {pattern!r}; got {v!r}")
        return v
    return check


def _parse_date(fmt: str | None) -> Callable:
    def parse(v):
        if isinstance(v, str) and fmt:
            try:
                return datetime.strptime(v.strip(), fmt).date()
            except ValueError:
                pass
        if isinstance(v, str) and len(v.strip()) > 10 and v.strip()[10] in "T ":
            return v.strip()[:10]  # an ISO datetime: its day, as ingest does
        return v
    return parse


def _number_as_text(v):
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def house_model(spec: DatasetSpec) -> type[BaseModel]:
    """A pydantic model of one house: every spec column but the target, typed and checked."""
    checks, _ = field_constraints(spec)
    fields: dict[str, Any] = {}
    for name, cs in spec.columns.items():
        if name == spec.target:
            continue
        meta: list[Any] = []
        if cs.type == "date":
            meta.append(BeforeValidator(_parse_date(cs.format)))
        if cs.type == "string":
            meta.append(BeforeValidator(_number_as_text))
        meta += [AfterValidator(c) for c in checks.get(name, [])]
        base = PY_TYPES[cs.type]
        kwargs = {"allow_inf_nan": False} if cs.type == "float" else {}
        if cs.type == "string":
            kwargs["min_length"] = 1 if cs.required else 0
        ann = Annotated[base, Field(description=f"{cs.type}, role {cs.role}", **kwargs), *meta]
        fields[name] = (ann, ...) if cs.required else (ann | None, None)
    return create_model(f"{spec.name.title().replace('_', '')}House", __config__=ConfigDict(extra="forbid"), **fields)


def request_models(spec: DatasetSpec, max_batch: int) -> tuple[type[BaseModel], type[BaseModel]]:
    house = house_model(spec)
    request = create_model("PredictRequest", __config__=ConfigDict(extra="forbid"),
                           houses=(Annotated[list[house], Field(min_length=1, max_length=max_batch)], ...))
    return house, request


# ---------------------------------------------------------------------------------------------
# The champion, cached by version


class NoChampion(RuntimeError):
    pass


class ChampionCache:
    """The champion's bundle, reloaded only when the alias points at another version.

    The alias is read at most every ``ttl_s`` seconds; a request in between uses the cached bundle.
    """

    def __init__(self, settings: Settings, ttl_s: float | None = None):
        self.settings = settings
        self.ttl_s = settings.serving_alias_ttl_s if ttl_s is None else ttl_s
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self.version: str | None = None
        self.bundle = None
        self.info: dict = {}
        self.loads = 0
        self._client = None

    def _c(self):
        if self._client is None:
            self._client = tracking.client(self.settings)
        return self._client

    def get(self):
        """(version, bundle, info) of the champion now; raises NoChampion."""
        if self.bundle is not None and time.monotonic() - self._checked < self.ttl_s:
            return self.version, self.bundle, self.info
        with self._lock:
            if self.bundle is None or time.monotonic() - self._checked >= self.ttl_s:
                self._refresh()
        if self.bundle is None:
            raise NoChampion(f"model {self.settings.model_name!r} has no champion yet")
        return self.version, self.bundle, self.info

    def _refresh(self) -> None:
        c = self._c()
        mv = tracking.champion_version(c, self.settings.model_name)
        self._checked = time.monotonic()
        if mv is None or str(mv.version) == self.version:
            return
        from tasks.model.networks import ModelBundle

        tmp = tempfile.mkdtemp(prefix="homeworth-serving-")
        try:
            bundle = ModelBundle.load(tracking.download_model(c, self.settings.model_name, str(mv.version), tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        metrics = {}
        if mv.run_id:
            metrics = {k.removeprefix("test/"): v for k, v in c.get_run(mv.run_id).data.metrics.items()
                       if k.startswith("test/")}
        event = ledger.latest_for(self.settings, str(mv.version))
        self.info = {
            "model_name": self.settings.model_name, "model_version": str(mv.version), "test_metrics": metrics,
            "data_window": {"start": mv.tags.get("data.window_start"), "end": mv.tags.get("data.window_end")},
            "preprocessing_sha256": mv.tags.get("preprocessing.sha256"), "mlflow_run_id": mv.run_id,
            "model_config": bundle.describe(),
            "live_since": event.at.isoformat() if event else None, "live_by": event.who() if event else None,
            "reason": event.reason if event else mv.tags.get("promotion.reason"),
            "ledger_event": event.event_id if event else None,
            "loaded_at": datetime.now(timezone.utc).isoformat(),
        }
        self.version, self.bundle = str(mv.version), bundle
        self.loads += 1
        log.info("serving %s v%s", self.settings.model_name, self.version)


# ---------------------------------------------------------------------------------------------
# Pages

_STYLE = ("<style>body{font-family:sans-serif;margin:1.5em;max-width:80em}table{border-collapse:collapse;margin:1em 0}"
          "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f4f4f4}"
          ".live{background:#eaf6ee}small{color:#555}</style>")


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{_STYLE}"
                        f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def _report_names(settings: Settings) -> list[str]:
    return [n for n in storage.list_dir(settings.reports_uri)
            if not n.startswith(".") and storage.exists(storage.join(settings.reports_uri, n, lake.REPORT_FILE))]


def _report_name_for(settings: Settings, report_uri: str | None) -> str | None:
    if not report_uri:
        return None
    name = report_uri.rstrip("/").rsplit("/", 2)[-2]
    return name if name in _report_names(settings) else None


def ledger_page(settings: Settings) -> HTMLResponse:
    c = tracking.client(settings)
    mv = tracking.champion_version(c, settings.model_name)
    live = str(mv.version) if mv is not None else None
    events = list(reversed(ledger.read_all(settings)))
    live_event = next((x for x in events if x.to_version == live), None)
    rows = []
    for e in events:
        diff = (e.metrics or {}).get("difference") or {}
        ci = ((e.ci or {}).get("metrics") or {}).get("mdape")
        gain = f"{-diff['mdape']:+.4f}" if "mdape" in diff else "-"
        if ci:
            gain += f"<br><small>CI of improvement [{ci['ci_low']:+.4f}, {ci['ci_high']:+.4f}]</small>"
        window = e.data_window or {}
        val = e.validation or {}
        report = _report_name_for(settings, (e.evaluation or {}).get("report_uri"))
        link = f"<a href='reports/{html.escape(report)}'>report</a>" if report else ""
        cls = " class='live'" if e is live_event else ""
        rows.append(
            f"<tr{cls}><td>{e.seq}</td><td>{e.at:%Y-%m-%d %H:%M}Z</td><td>{e.kind}</td>"
            f"<td>{'v' + e.from_version if e.from_version else 'none'} &rarr; v{html.escape(e.to_version)}</td>"
            f"<td>{html.escape(e.who())}</td><td>{html.escape(e.reason)}</td><td>{gain}</td>"
            f"<td>{html.escape(str(window.get('start')))} .. {html.escape(str(window.get('end')))}</td>"
            f"<td>{val.get('rows_accepted', '-')} accepted, {val.get('rows_quarantined', '-')} quarantined</td>"
            f"<td>{link}</td></tr>")
    head = (f"<p>Live: <b>{html.escape(settings.model_name)} v{live}</b></p>" if live else "<p>No champion yet.</p>")
    table = ("<table><tr><th>#</th><th>when</th><th>kind</th><th>move</th><th>by</th><th>why</th>"
             "<th>mdape gain</th><th>data window</th><th>validation</th><th></th></tr>" + "".join(rows) + "</table>"
             if rows else "<p>The ledger is empty: the champion has never moved.</p>")
    return _page("Promotion ledger", head + table + "<p><a href='reports'>Evaluation reports</a></p>")


def reports_page(settings: Settings) -> HTMLResponse:
    names = sorted(_report_names(settings), reverse=True)
    items = "".join(f"<li><a href='reports/{html.escape(n)}'>{html.escape(n)}</a></li>" for n in names)
    return _page("Evaluation reports", f"<ul>{items}</ul>" if items else "<p>No evaluation reports yet.</p>")


def report_for_run(settings: Settings, dag_id: str, run_id: str) -> str | None:
    """The report folder of a ``price_model_retrain`` run, found through its MLflow training run."""
    c = tracking.client(settings)
    exp = c.get_experiment_by_name(settings.experiment_name)
    if exp is None:
        return None
    run = tracking.find_run(c, exp.experiment_id, dag_id, run_id, "train")
    if run is None or not run.data.tags.get("model_version"):
        return None
    t = run.data.tags
    name = lake.report_name(lake.evaluation_key(t.get("data.window_start"), t.get("data.window_end"), t["model_version"]))
    return name if name in _report_names(settings) else None


# ---------------------------------------------------------------------------------------------
# The app


def create_app(settings: Settings | None = None, spec: DatasetSpec | None = None,
               dependencies: list | None = None) -> FastAPI:
    """The app. ``dependencies`` guard every route but ``/health`` (the Airflow plugin passes its login)."""
    settings = settings or get_settings()
    spec = spec or get_spec(settings.dataset_spec)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    from tasks.serving.score import model_frame, prediction_column

    House, PredictRequest = request_models(spec, settings.serving_max_batch)
    _, unchecked = field_constraints(spec)
    cache = ChampionCache(settings)
    ids = spec.id_columns
    out_col = prediction_column(spec)
    from tasks.ingest.landing import POLARS_TYPES

    schema = {n: POLARS_TYPES[c.type] for n, c in spec.columns.items() if n != spec.target}
    app = FastAPI(title="homeworth", version="1",
                  description="House prices from the champion model. " + (__doc__ or "").split("\n\n")[1])
    app.state.cache, app.state.settings = cache, settings
    guard = list(dependencies or [])

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError) -> JSONResponse:
        """422 naming each bad field; inputs that JSON cannot carry (inf, NaN) are quoted, not a 500."""
        detail = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg"),
                   "input": _json_safe(e.get("input"))} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": detail})

    def champion():
        try:
            return cache.get()
        except NoChampion as exc:
            raise HTTPException(503, str(exc)) from exc

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict", dependencies=guard)
    def predict(body: PredictRequest) -> dict:  # type: ignore[valid-type]
        version, bundle, _ = champion()
        rows = pl.DataFrame([h.model_dump() for h in body.houses], schema=schema, orient="row")
        prices = bundle.predict(model_frame(spec, rows))
        key = rows.select(ids).to_dicts() if ids else [{} for _ in range(rows.height)]
        return {"model_name": settings.model_name, "model_version": version,
                "predictions": [{**k, out_col: float(p)} for k, p in zip(key, prices, strict=True)]}

    @app.get("/model", dependencies=guard)
    def model() -> dict:
        _, _, info = champion()
        return {**info, "request": {"path": "/predict", "body": "{\"houses\": [house, ...]}",
                                    "house_fields": list(House.model_fields)},
                "checked_per_house": "spec types and required columns; single-column row-level expectations",
                "not_checked_per_house": unchecked}

    @app.get("/ui/ledger", dependencies=guard, response_class=HTMLResponse)
    def ui_ledger():
        return ledger_page(settings)

    @app.get("/ui/reports", dependencies=guard, response_class=HTMLResponse)
    def ui_reports():
        return reports_page(settings)

    @app.get("/ui/reports/{name}", dependencies=guard, response_class=HTMLResponse)
    def ui_report(name: str):
        if name not in _report_names(settings):
            raise HTTPException(404, f"no evaluation report {name!r}")
        return HTMLResponse(storage.read_bytes(storage.join(settings.reports_uri, name, lake.REPORT_FILE)))

    @app.get("/ui/report", dependencies=guard, response_class=HTMLResponse)
    def ui_report_for_run(dag_id: str = Query(...), run_id: str = Query(...)):
        name = report_for_run(settings, dag_id, run_id)
        if name is None:
            return _page("Evaluation report", f"<p>No evaluation report for {html.escape(dag_id)} run "
                         f"{html.escape(run_id)} (only finished <code>price_model_retrain</code> runs have one).</p>"
                         "<p><a href='reports'>All reports</a> &middot; <a href='ledger'>Promotion ledger</a></p>")
        return RedirectResponse(f"reports/{name}", status_code=307)

    return app


def _json_safe(value: Any) -> Any:
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def airflow_user_dependency() -> list:
    """The Airflow API server's login (bearer token or the UI's session cookie) as a route dependency."""
    from airflow.api_fastapi.core_api.security import get_user

    return [Depends(get_user)]


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m tasks.serving.api", description="Serve the champion on its own.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
