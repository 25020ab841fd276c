"""The predict endpoint (FastAPI TestClient), its generated request model, hot swap, pages and the plugin."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.kc import KC_SPEC_PATH
from tests.support import private_home

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from fastapi.testclient import TestClient

    from benchmarks.serving import houses_json, register_version, sample_csv, typed_rows
    from tasks.core.settings import Settings
    from tasks.core.spec import load_spec
    from tasks.serving.api import create_app

    home = tmp_path_factory.mktemp("serving")
    with private_home(home / "state"):
        spec = load_spec(KC_SPEC_PATH)
        settings = Settings(serving_alias_ttl_s=0)  # re-check the alias on every request
        rows = typed_rows(spec, sample_csv(spec, home / "fit.csv", every=20))
        version = register_version(settings, spec, rows)
        houses = houses_json(spec, typed_rows(spec, sample_csv(spec, home / "houses.csv", every=50, offset=7, limit=120)))
        with TestClient(create_app(settings, spec)) as client:
            yield settings, spec, client, version, rows, houses


def test_predict_batch(served):
    settings, spec, client, version, _, houses = served
    r = client.post("/predict", json={"houses": houses[:100]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == version and body["model_name"] == settings.model_name
    assert [p["id"] for p in body["predictions"]] == [h["id"] for h in houses[:100]]
    assert all(p["predicted_price"] > 0 for p in body["predictions"])
    one = client.post("/predict", json={"houses": houses[:1]}).json()["predictions"][0]
    assert one["predicted_price"] == pytest.approx(body["predictions"][0]["predicted_price"], rel=1e-6)


def _errors(r) -> dict:
    assert r.status_code == 422, r.text
    return {tuple(e["loc"][2:]): e["msg"] for e in r.json()["detail"]}


def test_request_model_comes_from_the_spec_and_the_contract(served):
    settings, spec, client, *_ , houses = served
    schema = client.app.openapi()["components"]["schemas"]
    house = next(v for k, v in schema.items() if k.endswith("House"))
    assert set(house["properties"]) == set(spec.columns) - {spec.target}
    assert set(house["required"]) == {c for c in spec.required_columns if c != spec.target}

    bad = dict(houses[0], bedrooms=40, zipcode="10001", sqft_living="big", extra_col=1, lat=float("inf"))
    del bad["grade"]
    # json.dumps writes inf as Infinity, which Python's JSON parser (and so FastAPI's) reads back.
    errs = _errors(client.post("/predict", content=json.dumps({"houses": [houses[1], bad]}),
                               headers={"content-type": "application/json"}))
    assert "between 0" in errs[(1, "bedrooms")] and "15" in errs[(1, "bedrooms")]
    assert "one of 70 values" in errs[(1, "zipcode")] and "10001" in errs[(1, "zipcode")]
    assert "number" in errs[(1, "sqft_living")]
    assert errs[(1, "grade")] == "Field required"
    assert "Extra inputs" in errs[(1, "extra_col")]
    assert "finite" in errs[(1, "lat")]
    assert (0,) not in errs, "the good house has no error"
    assert _errors(client.post("/predict", json={"houses": []}))
    assert client.post("/predict", json={"rows": houses[:1]}).status_code == 422
    too_many = {"houses": houses[:1] * (settings.serving_max_batch + 1)}
    assert client.post("/predict", json=too_many).status_code == 422
    # The feed's own spellings are accepted as ingest accepts them: the spec's date format, a numeric id.
    feed = dict(houses[0], date=houses[0]["date"].replace("-", "") + "T000000", id=int(houses[0]["id"]), bedrooms="3")
    r = client.post("/predict", json={"houses": [feed]})
    assert r.status_code == 200, r.text


def test_model_info(served):
    settings, spec, client, version, *_ = served
    info = client.get("/model").json()
    assert info["model_version"] == version and set(info["test_metrics"]) >= {"mdape", "ppe10", "rmse_ln"}
    assert info["data_window"]["start"] and info["preprocessing_sha256"]
    assert any("date" in x for x in info["not_checked_per_house"])
    assert client.get("/health").json() == {"status": "ok"}


def test_new_champion_is_served_without_restart(served):
    from benchmarks.serving import register_version
    from tasks.core import tracking

    settings, spec, client, version, rows, houses = served
    cache = client.app.state.cache
    before = client.post("/predict", json={"houses": houses[:5]}).json()
    loads = cache.loads
    v2 = register_version(settings, spec, rows, seed=1)  # moves the alias
    after = client.post("/predict", json={"houses": houses[:5]}).json()
    assert after["model_version"] == v2 != before["model_version"]
    assert after["predictions"] != before["predictions"] and cache.loads == loads + 1
    client.post("/predict", json={"houses": houses[:5]})
    assert cache.loads == loads + 1, "the bundle is loaded once per version"
    c = tracking.client(settings)
    c.set_registered_model_alias(settings.model_name, tracking.CHAMPION, version)  # back, as a rollback would
    assert client.post("/predict", json={"houses": houses[:5]}).json() == before


def test_alias_is_checked_at_most_every_ttl(served):
    from tasks.serving.champion import ChampionCache

    settings, *_ = served
    cache = ChampionCache(settings, ttl_s=3600)
    version, bundle, _ = cache.get()
    calls = []
    cache._refresh = lambda: calls.append(1)  # noqa: SLF001
    assert cache.get()[0] == version and calls == [], "within the TTL no registry query is made"


def test_no_champion_is_503(fresh_settings):
    from fastapi.testclient import TestClient

    from tasks.serving.api import create_app

    client = TestClient(create_app(fresh_settings))
    r = client.get("/model")
    assert r.status_code == 503 and "no champion" in r.json()["detail"]


def test_pages(served, tmp_path):
    from tasks.core import storage
    from tasks.registry import ledger

    settings, spec, client, version, *_ = served
    storage.write_bytes_atomic(storage.join(settings.reports_uri, "window=a_b_model_version=1", "report.html"),
                               b"<html><body>Predicted vs actual</body></html>")
    ledger.append(settings, ledger.new_event("t", kind="promotion", at="2015-05-28T03:00:00Z",
                                             model_name=settings.model_name, from_version=None, to_version=version,
                                             reason="no champion yet <script>", actor={"type": "user", "user": "t"},
                                             evaluation={"report_uri": storage.join(settings.reports_uri,
                                                                                    "window=a_b_model_version=1",
                                                                                    "report.html")}))
    page = client.get("/ui/ledger").text
    assert f"v{version}" in page and "no champion yet &lt;script&gt;" in page and "reports/window=a_b_model_version=1" in page
    assert "window=a_b_model_version=1" in client.get("/ui/reports").text
    assert "Predicted vs actual" in client.get("/ui/reports/window=a_b_model_version=1").text
    assert client.get("/ui/reports/..%2F..%2Fetc").status_code == 404
    r = client.get("/ui/report", params={"dag_id": "sales_ingest", "run_id": "x"})
    assert r.status_code == 200 and "No evaluation report" in r.text


def test_plugin_is_light_and_guards_its_app(served):
    import subprocess
    import sys

    from fastapi.testclient import TestClient

    spec_ = importlib.util.spec_from_file_location("homeworth_plugin", REPO / "plugins" / "homeworth_plugin.py")
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    plugin = module.HomeworthPlugin
    assert plugin.fastapi_apps[0]["url_prefix"] == "/homeworth"
    assert {v["destination"] for v in plugin.external_views} == {"nav", "dag_run"}
    assert all(not v["href"].startswith("/") for v in plugin.external_views), "relative to the UI's base URL"
    # Without an Airflow login the mounted app refuses (the API server's auth manager decides).
    r = TestClient(module.app).get("/model")
    assert r.status_code in (401, 403)
    # Every Airflow component imports plugins: this one must not pull in torch, MLflow or GX.
    code = ("import sys, runpy; runpy.run_path('plugins/homeworth_plugin.py'); "
            "print(sorted(m for m in ('torch', 'mlflow', 'great_expectations', 'polars') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-2000:]
