"""The champion is an MLflow model (issue 20, item 1): MLflow's own tools load and serve it.

A real retrain step (``train_step``: Lightning, one epoch, the comparable-sales features built from a small
validated lake of King County sales) registers a version; the test makes it the champion and loads it with
``mlflow.pyfunc.load_model("models:/<name>@champion")`` and through ``mlflow models serve --env-manager
local`` (a subprocess on 127.0.0.1, stopped at the end). Both must price a pandas frame of houses exactly as
``ModelBundle.predict`` does on the validated rows (what batch scoring and the endpoint call), with the
comps history read from the configured lake. No pickle in the logged model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import httpx
import polars as pl
import pytest

from tasks.core import tracking
from tests.kc import KC_DATA_PATH, KC_SPEC_PATH
from tests.support import free_port, private_home
from tools import servers

REPO = Path(__file__).resolve().parents[2]


def write_validated_lake(lake: str, spec, every: int = 8) -> pl.DataFrame:
    """Every ``every``-th bundled sale as validated day partitions of ``lake`` (typed as the spec says)."""
    from tasks.core import lake as lake_paths
    from tasks.core import storage
    from tasks.ingest.landing import DS, POLARS_TYPES

    raw = pl.read_csv(KC_DATA_PATH, infer_schema=False).gather_every(every)
    df = raw.select([
        (pl.col(c).str.strptime(pl.Date, cs.format) if cs.type == "date" else pl.col(c).cast(POLARS_TYPES[cs.type]))
        .alias(c) for c, cs in spec.columns.items()
    ]).with_columns(pl.col(spec.event_time).alias(DS))
    for (day,), part in df.group_by(DS):
        storage.write_parquet_atomic(part, lake_paths.partition_uri(lake, "validated", day))
    return df.drop(DS)


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """(settings, spec, version, houses): a trained version made champion; ``houses`` the last weeks' sales."""
    from tasks.core.handoffs import FeatureTable
    from tasks.core.lineage import Lineage
    from tasks.core.params import RetrainParams
    from tasks.core.settings import get_settings
    from tasks.core.spec import load_spec
    from tasks.features.build import build_features
    from tasks.model.retrain import train_step

    home = tmp_path_factory.mktemp("pyfunc")
    with private_home(home / "state"):
        settings, spec = get_settings(), load_spec(KC_SPEC_PATH)
        sold = write_validated_lake(settings.lake_uri, spec)
        built = build_features(spec, settings.lake_uri, date(2014, 5, 28), date(2015, 5, 28), comps_mode=settings.comps)
        params = RetrainParams(model_family="mlp", max_epochs=1, use_tuned_config=False, refit_on_val=False)
        lineage = Lineage(dag_id="price_model_retrain", run_id="manual__pyfunc", window_start="2014-05-28",
                          window_end="2015-05-28")
        trained = train_step(settings, FeatureTable.model_validate(built), params, lineage)
        c = tracking.client(settings)
        c.set_registered_model_alias(settings.model_name, tracking.CHAMPION, trained.model_version)
        houses = sold.filter(pl.col(spec.event_time) >= date(2015, 5, 1)).drop(spec.target)
        with pytest.MonkeyPatch.context() as mp:  # where mlflow.pyfunc.load_model("models:/...") looks
            mp.setenv("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
            yield settings, spec, trained.model_version, houses


def bundle_prices(settings, spec, version, houses: pl.DataFrame, tmp_path) -> list[float]:
    """What batch scoring and the endpoint compute: ``ModelBundle.predict`` of the typed rows, target null."""
    from tasks.model.bundle import ModelBundle

    folder = tracking.download_model(tracking.client(settings), settings.model_name, version, str(tmp_path))
    frame = houses.with_columns(pl.lit(None, dtype=pl.Float64).alias(spec.target)).select(list(spec.columns))
    return ModelBundle.load(folder, lake_uri=settings.lake_uri).predict(frame).tolist()


def test_the_registered_version_is_an_mlflow_model_without_pickle(champion, tmp_path):
    from mlflow.models import Model

    settings, spec, version, _ = champion
    folder = Path(tracking.download_model(tracking.client(settings), settings.model_name, version, str(tmp_path)))
    names = {p.name for p in folder.rglob("*") if p.is_file()}
    assert {"MLmodel", "pyfunc_model.py", "model.safetensors", "model_config.json", "preprocessing.json"} <= names
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".cloudpickle"))], names
    model = Model.load(str(folder))
    pyfunc = model.flavors["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in pyfunc
    expected = [c for c, cs in spec.columns.items() if cs.role not in ("target", "split")]
    assert model.signature.inputs.input_names() == expected
    assert model.signature.outputs.input_names() == [*spec.id_columns, f"predicted_{spec.target}"]
    example = json.loads((folder / "input_example.json").read_text())
    assert example["columns"] == expected and len(example["data"]) == 3


def test_pyfunc_champion_prices_a_pandas_frame_as_the_bundle_does(champion, tmp_path):
    import mlflow

    settings, spec, version, houses = champion
    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@{tracking.CHAMPION}")
    assert model.metadata.get_model_info().signature is not None
    out = model.predict(houses.to_pandas())
    assert out["id"].tolist() == houses["id"].to_list()
    assert out[f"predicted_{spec.target}"].tolist() == bundle_prices(settings, spec, version, houses, tmp_path)


def test_pyfunc_reads_the_comps_history_from_the_configured_lake(champion, tmp_path, monkeypatch):
    """The model's features use comparable sales: loaded where the settings name another home, it prices from
    that home's lake (empty: no comps, other prices); with ``HOMEWORTH_LAKE_URI`` naming the lake, as before."""
    import mlflow

    from tasks.features.preprocessing import Preprocessing

    settings, spec, version, houses = champion
    expected = bundle_prices(settings, spec, version, houses, tmp_path / "b")
    folder = tracking.download_model(tracking.client(settings), settings.model_name, version, str(tmp_path / "m"))
    assert Preprocessing.model_validate_json((Path(folder) / "preprocessing.json").read_text()).comps is not None
    column = f"predicted_{spec.target}"
    with private_home(tmp_path / "elsewhere"):
        elsewhere = mlflow.pyfunc.load_model(folder).predict(houses.to_pandas())[column].tolist()
        monkeypatch.setenv("HOMEWORTH_LAKE_URI", settings.lake_uri)
        from tasks.core.settings import get_settings

        get_settings.cache_clear()
        named = mlflow.pyfunc.load_model(folder).predict(houses.to_pandas())[column].tolist()
        monkeypatch.delenv("HOMEWORTH_LAKE_URI")
    assert elsewhere != expected
    assert named == expected


def test_pyfunc_names_the_column_and_value_it_cannot_use(champion):
    import mlflow
    from mlflow.exceptions import MlflowException

    settings, spec, _, houses = champion
    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@{tracking.CHAMPION}")
    with pytest.raises(MlflowException, match="sqft_living"):
        model.predict(houses.drop("sqft_living").to_pandas())
    bad = houses.head(2).to_pandas().astype({"bedrooms": "float64"})
    bad.loc[1, "bedrooms"] = 2.5
    with pytest.raises(MlflowException, match="bedrooms"):
        model.predict(bad)


def _serve(settings, port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,
               HOMEWORTH_HOME=str(settings.home))
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m",
           f"models:/{settings.model_name}@{tracking.CHAMPION}", "--env-manager", "local", "-h", "127.0.0.1",
           "-p", str(port), "-w", "1"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_ready(base: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow models serve exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base}/ping", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow models serve not ready in {timeout}s:\n{log.read_text()[-4000:]}")


def test_mlflow_models_serve_answers_invocations_with_the_same_prices(champion, tmp_path):
    settings, spec, version, houses = champion
    port, log = free_port(), tmp_path / "serve.log"
    pdf = houses.to_pandas()
    split = json.loads(pdf.to_json(orient="split", index=False, date_format="iso"))
    # As a client writes them: whole numbers without a fraction (the server types them by the signature).
    split["data"] = [[int(v) if isinstance(v, float) and v.is_integer() else v for v in row] for row in split["data"]]
    assert any(isinstance(v, int) for v in split["data"][0][2:])
    payload = {"dataframe_split": split}
    proc = _serve(settings, port, log)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc, log)
        r = httpx.post(f"http://127.0.0.1:{port}/invocations", json=payload, timeout=120)
    finally:
        servers.stop(proc)
    assert proc.poll() is not None, "the server is stopped"
    assert r.status_code == 200, r.text
    served = r.json()["predictions"]
    assert [p["id"] for p in served] == houses["id"].to_list()
    assert [p[f"predicted_{spec.target}"] for p in served] == bundle_prices(settings, spec, version, houses, tmp_path)


def test_model_frame_types_houses_and_names_what_it_cannot_use():
    """The pyfunc's own typing (used whatever MLflow's signature let through): ISO date text becomes a date, the
    target is null, a missing column or a value of the wrong type is named."""
    from tasks.core.spec import load_spec
    from tasks.model.pyfunc import matching_spec, model_config, model_frame

    spec = load_spec(KC_SPEC_PATH)
    houses = house_frame(spec)
    config = model_config(_prep_of(spec), spec)
    assert matching_spec(_prep_of(spec)) is not None
    frame = model_frame(houses, config)
    assert frame.columns == list(spec.columns) and frame[spec.target].is_null().all()
    assert frame["date"].to_list() == [date(2015, 4, 22)] and frame["bedrooms"].dtype == pl.Int64
    with pytest.raises(ValueError, match="'lat'"):
        model_frame(houses.drop(columns=["lat"]), config)
    with pytest.raises(ValueError, match="column 'bedrooms': value 'three' is not of type int"):
        model_frame(houses.assign(bedrooms="three"), config)


def house_frame(spec):
    """One house as a client's pandas frame: numbers typed, the date as ISO text."""
    import pandas as pd

    row = {c: 1.0 for c, cs in spec.columns.items() if cs.type == "float"}
    row.update({c: 1 for c, cs in spec.columns.items() if cs.type == "int"})
    row.update({"id": "1", "zipcode": "98001", "date": "2015-04-22"})
    return pd.DataFrame([{c: v for c, v in row.items() if c != spec.target}])


def _prep_of(spec):
    from tasks.features.preprocessing import Preprocessing

    return Preprocessing(dataset=spec.name, spec_sha256=spec.source_hash, features_module=spec.features_module,
                         numeric=[], categorical=[], target=spec.target, target_transform="log", target_mean=0.0,
                         target_std=1.0, fitted_on={})
