"""Train/serve parity: the same houses through batch scoring and through the endpoint give identical prices.

Batch scoring reads a landing file (CSV text, coerced by ingest's code, checked by the contract);
the endpoint gets the same houses as JSON, once with the feed's own text values and once typed,
from a real uvicorn on 127.0.0.1 and from the in-process app. Both go through
``tasks.serving.score.model_frame`` and ``ModelBundle.predict`` with the bundle's saved preprocessing.
MLflow's own loader, ``mlflow.pyfunc.load_model("models:/<name>@champion")``, prices a pandas frame of the same
houses identically (the registered version is an MLflow pyfunc model: ``tasks/model/pyfunc.py``).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from tasks.core import storage
from tests.kc import KC_DATA_PATH, KC_SPEC_PATH
from tests.support import private_home

REPO = Path(__file__).resolve().parents[2]
DAY = date(2015, 4, 22)


@pytest.fixture(scope="module")
def parity_env(tmp_path_factory):
    from benchmarks.serving import register_version, sample_csv, typed_rows
    from tasks.core.settings import get_settings
    from tasks.core.spec import load_spec

    home = tmp_path_factory.mktemp("parity")
    with private_home(home / "state"):
        settings, spec = get_settings(), load_spec(KC_SPEC_PATH)
        version = register_version(settings, spec, typed_rows(spec, sample_csv(spec, home / "fit.csv", every=20)), seed=3)
        # The day's sales as listings: the original CSV text, without the price column.
        lines = gzip.decompress((KC_DATA_PATH).read_bytes()).decode().splitlines()
        header = next(csv.reader([lines[0]]))
        rows = [next(csv.reader([ln])) for ln in lines[1:] if f'"{DAY:%Y%m%d}T' in ln]
        keep = [i for i, h in enumerate(header) if h != spec.target]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([header[i] for i in keep])
        writer.writerows([[r[i] for i in keep] for r in rows])
        folder = Path(settings.landing_uri) / "listings" / DAY.isoformat()
        folder.mkdir(parents=True)
        (folder / "listings.csv").write_text(out.getvalue())
        text_houses = [{header[i]: r[i] for i in keep} for r in rows]
        yield settings, spec, version, text_houses


@pytest.fixture(scope="module")
def batch(parity_env):
    from tasks.serving.score import score_day

    settings, spec, version, _ = parity_env
    result = score_day(spec, settings, DAY, version)
    assert result["rejected"] == 0 and result["scored"] > 50
    return pl.read_parquet(storage.read_bytes(result["predictions_uri"]))


def test_same_houses_same_prices_batch_vs_uvicorn(parity_env, batch):
    import httpx

    from benchmarks.serving import start_server, wait_ready
    from tools.servers import free_port, stop

    settings, spec, version, text_houses = parity_env
    port = free_port()
    log = Path(settings.home) / "uvicorn.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = start_server(env, port, log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, log)
        r = httpx.post(f"http://127.0.0.1:{port}/predict", json={"houses": text_houses}, timeout=60)
    finally:
        stop(proc)
    assert proc.poll() is not None, "the server is stopped"
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == version == batch["model_version"][0]
    served = [p["predicted_price"] for p in body["predictions"]]
    assert [p["id"] for p in body["predictions"]] == batch["id"].to_list()
    assert served == batch["predicted_price"].to_list(), "identical, not merely close"


def test_same_houses_same_prices_batch_vs_app_with_typed_json(parity_env, batch):
    from fastapi.testclient import TestClient

    from benchmarks.serving import houses_json
    from tasks.serving.api import create_app

    settings, spec, version, _ = parity_env
    typed = houses_json(spec, batch)  # the validated, typed rows as a client would send them
    with TestClient(create_app(settings, spec)) as client:
        body = client.post("/predict", json={"houses": typed}).json()
    assert [p["predicted_price"] for p in body["predictions"]] == batch["predicted_price"].to_list()


def test_both_use_the_registered_bundle_and_its_preprocessing(parity_env, batch, tmp_path):
    from tasks.core import tracking
    from tasks.model.bundle import PREPROCESSING, ModelBundle
    from tasks.serving.score import model_frame

    settings, spec, version, _ = parity_env
    c = tracking.client(settings)
    folder = tracking.download_model(c, settings.model_name, version, str(tmp_path))
    bundle = ModelBundle.load(folder, lake_uri=settings.lake_uri)
    assert bundle.prep.sha256() == c.get_model_version(settings.model_name, version).tags["preprocessing.sha256"]
    assert (Path(folder) / PREPROCESSING).exists()
    direct = bundle.predict(model_frame(spec, batch))
    assert direct.tolist() == batch["predicted_price"].to_list()


def test_same_houses_same_prices_batch_vs_mlflow_pyfunc_champion(parity_env, batch):
    import mlflow
    import pandas as pd

    from tasks.core import tracking

    settings, spec, _, _ = parity_env
    tracking.client(settings)  # MLflow's tracking and registry URIs: this home's store
    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@{tracking.CHAMPION}")
    expected = batch["predicted_price"].to_list()
    typed = batch.select([c for c in spec.columns if c != spec.target]).to_pandas()
    out = model.predict(typed)
    assert out["id"].tolist() == batch["id"].to_list()
    assert out["predicted_price"].tolist() == expected, "identical, not merely close"
    # The feed's own listings file read with pandas: ids and zipcodes as text, the float columns as floats (MLflow
    # does not widen int64 to double: docs/mlflow.md), the date in the feed's format.
    listing = Path(settings.landing_uri) / "listings" / DAY.isoformat() / "listings.csv"
    floats = {c: "float64" for c, cs in spec.columns.items() if cs.type == "float" and c != spec.target}
    raw = pd.read_csv(listing, dtype={"id": str, "zipcode": str, **floats})
    raw["date"] = pd.to_datetime(raw["date"], format=spec.columns["date"].format)
    assert model.predict(raw)["predicted_price"].tolist() == expected
