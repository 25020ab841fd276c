"""Unit tests of the model (tasks.model: networks, train, bundle, tensors): short CPU runs, determinism, the
safetensors bundle, batching."""

from __future__ import annotations

import json
import struct

import numpy as np
import polars as pl
import pytest
import pytorch_lightning as L
import torch
from safetensors.torch import load_file

from tasks.core.handoffs import TrainedModel
from tasks.features.featureset import SPLIT
from tasks.features.preprocessing import NumericStat, Preprocessing, Vocabulary
from tasks.model.bundle import CONFIG, PREPROCESSING, WEIGHTS, ModelBundle, save_bundle
from tasks.model.config import ModelConfig
from tasks.model.networks import TabularNet
from tasks.model.tensors import IndexBatches
from tasks.model.train import train

ROWS = {"train": 240, "val": 80, "test": 40}
PREP = Preprocessing(
    dataset="synthetic", spec_sha256="0" * 64, features_module=None,
    numeric=[NumericStat(name=f"x{i}", lo=-3.0, hi=3.0, mean=0.0, std=1.0) for i in range(3)],
    categorical=[Vocabulary(name="zone", values=["a", "b", "c"])],
    target="price", target_transform="log", target_mean=12.0, target_std=0.5, fitted_on={},
)


def synthetic_frame(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    zone = rng.choice(["a", "b", "c", "d"], size=n)  # "d" is not in the vocabulary
    effect = np.select([zone == "a", zone == "b"], [0.2, -0.1], 0.0)
    price = np.exp(12.0 + 0.3 * x[:, 0] - 0.2 * x[:, 1] + effect + rng.normal(scale=0.05, size=n))
    return pl.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "zone": zone, "price": price})


@pytest.fixture(scope="module")
def features_uri(tmp_path_factory) -> str:
    df = synthetic_frame(sum(ROWS.values()))
    df = df.with_columns(pl.Series(SPLIT, [s for s, n in ROWS.items() for _ in range(n)]))
    path = tmp_path_factory.mktemp("features") / "part-0.parquet"
    df.write_parquet(path)
    return str(path)


def config(family: str, seed: int = 42) -> ModelConfig:
    return ModelConfig(family=family, hidden=[16, 16], cat_embedding_dim=4, n_frequencies=4, num_embedding_dim=4,
                       batch_size=64, max_epochs=2, seed=seed)


@pytest.fixture(scope="module", params=["mlp", "mlp_plr"])
def runs(request, features_uri):
    """Three two-epoch runs of one family: seed 42 twice, seed 43 once."""
    family = request.param
    return family, [train(config(family, seed), features_uri, PREP, accelerator="cpu") for seed in (42, 42, 43)]


def test_short_training_run(runs):
    family, (result, _, _) = runs

    assert result.epochs_run == 2
    assert result.best_epoch in (0, 1)
    assert result.rows == ROWS
    assert np.isfinite(result.metrics["val_rmse_ln"]) and result.metrics["val_rmse_ln"] > 0
    assert isinstance(result.net.numeric, torch.nn.Identity) == (family == "mlp")
    assert not result.net.training
    # The weights moved away from their seeded initialisation.
    L.seed_everything(42, verbose=False)
    init = TabularNet(3, [3], config(family)).state_dict()
    trained = result.net.state_dict()
    assert init.keys() == trained.keys()
    assert any(not torch.equal(init[k], trained[k]) for k in init)


def test_training_is_deterministic_under_the_seed(runs):
    _, (a, b, c) = runs
    sa, sb, sc = a.net.state_dict(), b.net.state_dict(), c.net.state_dict()

    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.metrics["val_rmse_ln"] == b.metrics["val_rmse_ln"]
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_bundle_round_trip_is_safetensors_and_predicts_the_same(runs, tmp_path):
    family, (result, _, _) = runs
    cfg = config(family)
    df = synthetic_frame(50, seed=1)

    save_bundle(tmp_path / "model", result.net, cfg, PREP)
    loaded = ModelBundle.load(tmp_path / "model")

    before = ModelBundle(result.net, cfg, PREP).predict(df)
    after = loaded.predict(df)
    assert after.shape == (50,) and np.all(np.isfinite(after)) and np.all(after > 0)
    np.testing.assert_array_equal(before, after)
    assert loaded.cfg == cfg and loaded.prep == PREP

    weights = tmp_path / "model" / WEIGHTS
    raw = weights.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])  # safetensors: u64 header length + JSON, then raw tensors
    assert not raw.startswith((b"\x80", b"PK"))  # neither a pickle nor a torch zip archive
    tensors = load_file(str(weights))
    state = result.net.state_dict()
    assert set(tensors) == set(state) == set(header) - {"__metadata__"}
    assert all(torch.equal(tensors[k], state[k]) for k in state)
    assert ModelConfig.model_validate_json((tmp_path / "model" / CONFIG).read_text()) == cfg
    assert Preprocessing.model_validate_json((tmp_path / "model" / PREPROCESSING).read_text()) == PREP


def test_predict_of_no_rows_is_empty(runs):
    family, (result, _, _) = runs
    out = ModelBundle(result.net, config(family), PREP).predict(synthetic_frame(0))
    assert out.shape == (0,)


def test_comps_history_is_passed_in_never_read_from_settings(tmp_path):
    from tasks.features.comps import CompsConfig

    cfg = config("mlp")
    prep = PREP.model_copy(update={"comps": CompsConfig(time="date", target="price", size="x0", lat="x1", long="x2")})
    bundle = ModelBundle(TabularNet(3, [3], cfg), cfg, prep)
    with pytest.raises(ValueError, match="history of validated sales"):
        bundle.history_frame()  # neither a history nor a lake: no silent fallback to the settings' lake
    given = pl.DataFrame({"price": [1.0]})
    assert bundle.history_frame(given) is given
    lake = ModelBundle(TabularNet(3, [3], cfg), cfg, prep, lake_uri=str(tmp_path / "lake"))
    assert lake.history_frame().height == 0  # a lake with no validated partitions yet


def test_train_step_payloads_are_typed_handoffs():
    from types import SimpleNamespace

    from tasks.model.retrain import reused_result, train_result
    from tasks.model.train import TrainResult

    result = TrainResult(net=None, metrics={"val_rmse_ln": 0.2}, best_epoch=3, epochs_run=5, seconds=10.004,
                         refit={"done": True, "seconds": 2.0})
    out = train_result("r1", 7, result, "tabm", "tuned").to_xcom()
    assert out == {"mlflow_run_id": "r1", "model_version": "7", "val_rmse_ln": 0.2, "epochs": 5, "best_epoch": 3,
                   "train_seconds": 12.0, "refit": {"done": True, "seconds": 2.0}, "model_family": "tabm",
                   "config_source": "tuned", "reused": False}
    done = SimpleNamespace(info=SimpleNamespace(run_id="r0"),
                           data=SimpleNamespace(tags={"model_version": "6"}, metrics={"best/val_rmse_ln": 0.3}))
    reused = reused_result(done)
    assert (reused.mlflow_run_id, reused.model_version, reused.val_rmse_ln, reused.reused, reused.refit) == (
        "r0", "6", 0.3, True, None)
    assert TrainedModel.from_xcom(reused.to_xcom()) == reused  # JSON over XCom and back


# ---------------------------------------------------------------------------------------------
# IndexBatches


def _epoch(ds: IndexBatches) -> list[tuple[torch.Tensor, ...]]:
    return list(iter(ds))


def test_index_batches_cover_every_row_once_per_epoch():
    idx = torch.arange(10)
    ds = IndexBatches((idx, idx * 2), batch_size=3, shuffle=True, seed=5)

    epochs = [_epoch(ds), _epoch(ds)]

    assert len(ds) == 4
    for batches in epochs:
        assert [len(b[0]) for b in batches] == [3, 3, 3, 1]
        rows = torch.cat([b[0] for b in batches])
        assert torch.equal(torch.sort(rows).values, idx)
        assert all(torch.equal(b[1], b[0] * 2) for b in batches)  # tensors stay aligned
    first, second = (torch.cat([b[0] for b in e]) for e in epochs)
    assert not torch.equal(first, second)  # reshuffled between epochs


def test_index_batches_shuffle_is_deterministic_per_seed_and_epoch():
    idx = torch.arange(10)
    a = IndexBatches((idx,), batch_size=4, shuffle=True, seed=5)
    b = IndexBatches((idx,), batch_size=4, shuffle=True, seed=5)

    orders_a = [torch.cat([t for (t,) in _epoch(a)]) for _ in range(3)]
    orders_b = [torch.cat([t for (t,) in _epoch(b)]) for _ in range(3)]

    expected = [torch.randperm(10, generator=torch.Generator().manual_seed(5 + e)) for e in range(3)]
    for oa, ob, ex in zip(orders_a, orders_b, expected):
        assert torch.equal(oa, ob) and torch.equal(oa, ex)


def test_index_batches_without_shuffle_keep_row_order():
    idx = torch.arange(7)
    ds = IndexBatches((idx,), batch_size=4, shuffle=False, seed=0)

    batches = [_epoch(ds), _epoch(ds)]

    for e in batches:
        assert [t.tolist() for (t,) in e] == [[0, 1, 2, 3], [4, 5, 6]]
