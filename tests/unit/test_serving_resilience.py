"""The endpoint keeps serving (issue 17): a champion whose artifacts are refused (a tampered
preprocessing.json, an oversize model_config.json) is never loaded and the previous one stays in service;
during an MLflow outage the cached champion serves at once while the refresh runs in the background, and
GET /model reports how stale it is."""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from tests.kc import KC_SPEC_PATH
from tests.support import private_home


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from fastapi.testclient import TestClient

    from benchmarks.serving import houses_json, register_version, sample_csv, typed_rows
    from tasks.core.settings import Settings
    from tasks.core.spec import load_spec
    from tasks.serving.api import create_app

    home = tmp_path_factory.mktemp("resilience")
    with private_home(home / "state"):
        spec = load_spec(KC_SPEC_PATH)
        settings = Settings(serving_alias_ttl_s=0)  # re-check the alias on every request
        rows = typed_rows(spec, sample_csv(spec, home / "fit.csv", every=40))
        version = register_version(settings, spec, rows)
        houses = houses_json(spec, typed_rows(spec, sample_csv(spec, home / "houses.csv", every=97, limit=5)))
        with TestClient(create_app(settings, spec)) as client:
            yield settings, client, version, houses


def register_tampered(settings, version: str, edit) -> str:
    """A copy of ``version`` whose bundle files ``edit(folder)`` changed, registered and made champion."""
    from tasks.core import tracking

    c = tracking.client(settings)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tracking.download_model(c, settings.model_name, version, tmp))
        edit(folder)
        run = c.create_run(tracking.experiment_id(c, settings), run_name="tampered")
        c.log_artifacts(run.info.run_id, str(folder), "model")
    mv = c.create_model_version(settings.model_name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    c.set_registered_model_alias(settings.model_name, tracking.CHAMPION, mv.version)
    return str(mv.version)


def _preprocessing_names_this(folder: Path) -> None:
    path = folder / "preprocessing.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "features_module": "this"}))


def _oversize_config(folder: Path) -> None:
    path = folder / "model_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "family": "tabm", "hidden": [4096] * 8, "k": 64}))


@pytest.mark.parametrize(("edit", "says"), [(_preprocessing_names_this, "features_module 'this'"),
                                            (_oversize_config, "refused before allocating")])
def test_refused_champion_leaves_the_previous_one_serving(served, edit, says):
    from tasks.core import tracking

    settings, client, version, houses = served
    assert "this" not in sys.modules
    before = client.post("/predict", json={"houses": houses}).json()
    bad = register_tampered(settings, version, edit)
    try:
        r = client.post("/predict", json={"houses": houses})
        assert r.status_code == 200 and r.json() == before, "the previous champion keeps serving"
        status = client.get("/model").json()["serving"]
        assert says in status["refused_versions"][bad] and f"v{bad} refused" in status["last_error"]
        assert client.get("/health").status_code == 200
        assert "this" not in sys.modules, "the tampered module was never imported"
    finally:
        tracking.client(settings).set_registered_model_alias(settings.model_name, tracking.CHAMPION, version)
    assert client.post("/predict", json={"houses": houses}).status_code == 200
    client.app.state.cache._thread.join(30)  # noqa: SLF001
    assert client.get("/model").json()["serving"]["stale"] is False


@pytest.fixture
def black_hole():
    """A TCP port that accepts connections and never answers: an MLflow server that hangs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_mlflow_outage_serves_the_cached_champion_at_once(served, black_hole, monkeypatch):
    from mlflow import MlflowClient

    from tasks.core import tracking

    settings, client, version, houses = served
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cache = client.app.state.cache
    assert client.post("/predict", json={"houses": houses}).status_code == 200
    good, cache.wait_s = cache._client, 0.5  # noqa: SLF001
    cache._client = MlflowClient(tracking_uri=black_hole, registry_uri=black_hole)  # noqa: SLF001
    try:
        r = client.post("/predict", json={"houses": houses})
        assert r.status_code == 200 and r.json()["model_version"] == version
        assert client.get("/model").json()["serving"]["refresh_in_flight"] is True
        cache._thread.join(30)  # noqa: SLF001  the registry call times out in the background
        status = client.get("/model").json()["serving"]
        assert status["stale"] is True and status["last_error"] and status["last_refresh_age_s"] > 0
        for _ in range(3):  # once a refresh has failed, requests do not wait at all
            assert client.post("/predict", json={"houses": houses}).json()["model_version"] == version
        assert client.get("/health").json() == {"status": "ok"}
    finally:
        cache._thread.join(30)  # noqa: SLF001
        cache._client = good  # noqa: SLF001
    client.get("/model")
    cache._thread.join(30)  # noqa: SLF001
    status = client.get("/model").json()["serving"]
    assert status["stale"] is False and status["last_error"] is None
    assert str(tracking.champion_version(good, settings.model_name).version) == version
