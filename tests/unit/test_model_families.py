"""Every model family trains (one short epoch on a tiny frame), TabM's ensemble, the losses, the GBM yardstick."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from tasks.features.featureset import SPLIT
from tasks.features.preprocessing import NumericStat, Preprocessing, Vocabulary
from tasks.model.bundle import ModelBundle, save_bundle
from tasks.model.config import FAMILY_DEFAULTS, ModelConfig, default_config
from tasks.model.gbm import gbm_matrix, train_gbm
from tasks.model.module import PriceModule
from tasks.model.networks import BatchEnsembleLinear, TabularNet
from tasks.model.train import train

ROWS = {"train": 160, "val": 60, "test": 40}
PREP = Preprocessing(
    dataset="synthetic", spec_sha256="0" * 64, features_module=None,
    numeric=[NumericStat(name=f"x{i}", lo=-3.0, hi=3.0, mean=0.0, std=1.0) for i in range(3)],
    categorical=[Vocabulary(name="zone", values=["a", "b", "c"])],
    target="price", target_transform="log", target_mean=12.0, target_std=0.5, fitted_on={},
)


def frame(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    x[rng.uniform(size=n) < 0.1, 2] = np.nan  # missing values (a comp without history)
    zone = rng.choice(["a", "b", "c", "d"], size=n)
    price = np.exp(12.0 + 0.3 * x[:, 0] - 0.2 * x[:, 1] + np.where(zone == "a", 0.2, 0.0) + rng.normal(0, 0.05, n))
    return pl.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "zone": zone, "price": price})


@pytest.fixture(scope="module")
def features_uri(tmp_path_factory) -> str:
    df = frame(sum(ROWS.values())).with_columns(pl.Series(SPLIT, [s for s, n in ROWS.items() for _ in range(n)]))
    path = tmp_path_factory.mktemp("families") / "part-0.parquet"
    df.write_parquet(path)
    return str(path)


def small(family: str, **kw) -> ModelConfig:
    return ModelConfig(**{"family": family, "hidden": [16, 16], "cat_embedding_dim": 4, "n_frequencies": 4,
                          "num_embedding_dim": 4, "batch_size": 64, "max_epochs": 1, "k": 4, **kw})


@pytest.mark.parametrize("family", ["mlp", "mlp_plr", "tabm"])
def test_one_epoch_of_each_family_trains_and_round_trips(family, features_uri, tmp_path):
    cfg = small(family)
    result = train(cfg, features_uri, PREP, accelerator="cpu")
    assert result.epochs_run == 1 and np.isfinite(result.metrics["val_rmse_ln"])
    x_num, x_cat = torch.randn(5, 3), torch.tensor([[1], [2], [3], [0], [1]])
    members = result.net.forward_members(x_num, x_cat)
    assert members.shape == (5, 4 if family == "tabm" else 1)
    torch.testing.assert_close(result.net(x_num, x_cat), members.mean(dim=1))
    save_bundle(tmp_path / "model", result.net, cfg, PREP)
    df = frame(30, seed=2)
    before = ModelBundle(result.net, cfg, PREP).predict(df)
    after = ModelBundle.load(tmp_path / "model").predict(df)
    assert after.shape == (30,) and np.all(after > 0)
    np.testing.assert_array_equal(before, after)


def test_tabm_members_share_the_weights_and_start_different():
    torch.manual_seed(0)
    layer = BatchEnsembleLinear(10, 7, k=8, r_init="random-signs")
    shared = layer.weight.numel()
    per_member = layer.r.numel() + layer.s.numel() + layer.bias.numel()
    assert shared == 70 and per_member == 8 * (10 + 7 + 7)
    assert set(layer.r.detach().unique().tolist()) == {-1.0, 1.0}
    net = TabularNet(3, [3], small("tabm", k=8, hidden=[32, 32]))
    out = net.forward_members(torch.randn(6, 3), torch.ones(6, 1, dtype=torch.long))
    assert out.shape == (6, 8) and out.std(dim=1).min() > 0  # the members disagree from the start
    # One shared MLP with k rank-1 adapters: far fewer parameters than k separate MLPs.
    n_tabm = sum(p.numel() for p in net.parameters())
    n_mlp = sum(p.numel() for p in TabularNet(3, [3], small("mlp_plr", hidden=[32, 32])).parameters())
    assert n_tabm < 2 * n_mlp


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_training_fits_every_member_and_validation_scores_their_mean(loss):
    cfg = small("tabm", loss=loss, huber_delta=0.3)
    net = TabularNet(3, [3], cfg)
    module = PriceModule(net, cfg, target_std=0.5)
    logged = {}
    module.log = lambda name, value, **_: logged.__setitem__(name, float(value.detach()))
    net.eval()  # no dropout: the step sees the same outputs as this test
    batch = (torch.randn(9, 3), torch.ones(9, 1, dtype=torch.long), torch.randn(9))
    members = net.forward_members(batch[0], batch[1])
    target = batch[2][:, None].expand_as(members)
    expected = (torch.nn.functional.huber_loss(members, target, delta=0.3) if loss == "huber"
                else torch.nn.functional.mse_loss(members, target))
    torch.testing.assert_close(module.training_step(batch, 0), expected)
    module.validation_step(batch, 0)
    mean_mse = torch.nn.functional.mse_loss(members.mean(dim=1), batch[2])
    assert logged["val/rmse_ln"] == pytest.approx(float(mean_mse.sqrt()) * 0.5, rel=1e-5)


def test_family_defaults_are_valid_and_overridable():
    assert set(FAMILY_DEFAULTS) == {"tabm", "mlp_plr", "mlp"}
    for family in FAMILY_DEFAULTS:
        cfg = default_config(family, max_epochs=3, seed=9)
        assert cfg.family == family and cfg.max_epochs == 3 and cfg.seed == 9
    assert default_config("tabm").max_time_s, "the default model's training time is bounded"


def test_gbm_trains_on_the_same_features_with_missing_values(features_uri):
    result = train_gbm(features_uri, PREP)
    test = pl.read_parquet(features_uri).filter(pl.col(SPLIT) == "test")
    x = gbm_matrix(PREP, test)
    assert x.shape == (40, 4) and np.isnan(x[:, 2]).any()  # trees see NaN, not an imputed value
    assert set(np.unique(x[:, 3])) <= {0.0, 1.0, 2.0, 3.0}  # vocabulary codes, 0 for the unseen zone "d"
    pred = result.predict(PREP, test)
    assert pred.shape == (40,) and np.all(np.isfinite(pred)) and np.all(pred > 0)
    assert np.isfinite(result.metrics["val_rmse_ln"]) and result.metrics["n_iter"] >= 1
    # Same seed, same model.
    np.testing.assert_array_equal(train_gbm(features_uri, PREP).predict(PREP, test), pred)


# ---------------------------------------------------------------------------------------------
# Refit on train + val (RetrainParams.refit_on_val)


def test_refit_trains_a_fresh_network_on_train_and_val_for_the_chosen_epochs(features_uri):
    cfg = small("tabm", max_epochs=4, patience=2)
    first = train(cfg, features_uri, PREP, accelerator="cpu")
    refit = train(cfg, features_uri, PREP, accelerator="cpu", refit=True)
    again = train(cfg, features_uri, PREP, accelerator="cpu", refit=True)
    # The first run is the same; its validation metrics are what the result reports.
    assert (refit.best_epoch, refit.epochs_run, refit.metrics["val_rmse_ln"]) == \
        (first.best_epoch, first.epochs_run, first.metrics["val_rmse_ln"])
    assert refit.refit["done"] and refit.refit["epochs"] == first.best_epoch + 1
    assert refit.refit["rows"] == ROWS["train"] + ROWS["val"]
    x_num, x_cat = torch.randn(7, 3), torch.tensor([[1], [2], [3], [0], [1], [2], [3]])
    assert not torch.equal(refit.net(x_num, x_cat), first.net(x_num, x_cat))  # another network ...
    torch.testing.assert_close(refit.net(x_num, x_cat), again.net(x_num, x_cat), rtol=0, atol=0)  # ... deterministic
    assert first.refit is None


def test_weight_average_is_the_mean_of_the_last_epochs_weights():
    from types import SimpleNamespace

    from tasks.model.train import WeightAverage

    cfg = small("tabm")
    net = TabularNet(3, [3], cfg)
    module, average, states = SimpleNamespace(net=net), WeightAverage(first_epoch=2), []
    for epoch in range(5):  # epochs 0 and 1 are before the averaged ones
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        states.append({k: v.clone() for k, v in net.state_dict().items()})
        average.on_train_epoch_end(SimpleNamespace(current_epoch=epoch), module)
    got = average.average()
    assert average.count == 3 and got.keys() == states[-1].keys()
    for k, v in got.items():
        assert v.dtype == states[-1][k].dtype
        expected = sum(s[k].double() for s in states[2:]) / 3 if v.is_floating_point() else states[-1][k]
        torch.testing.assert_close(v, expected.to(v.dtype))
    weight = next(k for k, v in got.items() if v.is_floating_point() and v.numel() > 1)
    assert not torch.equal(got[weight], states[-1][weight])  # not simply the last epoch's


def test_refit_averages_the_weights_of_its_last_epochs(features_uri):
    cfg = small("tabm", max_epochs=4, patience=2)
    last = train(cfg.model_copy(update={"refit_average_epochs": 1}), features_uri, PREP, accelerator="cpu", refit=True)
    averaged = train(cfg.model_copy(update={"refit_average_epochs": 2}), features_uri, PREP, accelerator="cpu",
                     refit=True)
    assert last.refit["epochs"] == averaged.refit["epochs"] == 4  # the loss still falls: 4 epochs chosen
    assert last.refit["averaged_epochs"] == 1 and averaged.refit["averaged_epochs"] == 2
    x_num, x_cat = torch.randn(7, 3), torch.tensor([[1], [2], [3], [0], [1], [2], [3]])
    assert not torch.equal(averaged.net(x_num, x_cat), last.net(x_num, x_cat))


def test_refit_replays_the_first_runs_learning_rates():
    cfg = small("mlp", lr=1e-2)
    module = PriceModule(TabularNet(3, [3], cfg), cfg, 0.5, lr_schedule=[1e-2, 5e-3, 2.5e-3])
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1e-2, 5e-3, 2.5e-3, 2.5e-3, 2.5e-3])


def test_refit_is_skipped_when_streamed_or_out_of_time(features_uri, monkeypatch):
    import tasks.model.train

    cfg = small("mlp", max_epochs=2)
    streamed = train(cfg, features_uri, PREP, accelerator="cpu", refit=True, in_memory_max_rows=10, buffer_rows=64)
    assert streamed.refit == {"done": False, "reason": "the training split was streamed"}
    # The estimated refit time (with its margin) does not fit in what the time cap leaves: the first
    # run's network is kept.
    capped_cfg = small("mlp", max_epochs=2, max_time_s=3600)
    first = train(capped_cfg, features_uri, PREP, accelerator="cpu")
    monkeypatch.setattr(tasks.model.train, "REFIT_TIME_MARGIN", 1e9)
    capped = train(capped_cfg, features_uri, PREP, accelerator="cpu", refit=True)
    assert not capped.refit["done"] and capped.refit["reason"].startswith("max_time_s: about")
    x_num, x_cat = torch.randn(4, 3), torch.tensor([[1], [2], [3], [0]])
    torch.testing.assert_close(capped.net(x_num, x_cat), first.net(x_num, x_cat), rtol=0, atol=0)


def test_gbm_refit_fits_train_and_val_with_the_chosen_trees(features_uri):
    first = train_gbm(features_uri, PREP)
    refit = train_gbm(features_uri, PREP, refit=True)
    assert refit.metrics["n_iter"] == first.metrics["n_iter"] == refit.model.n_iter_
    assert refit.metrics["val_rmse_ln"] == first.metrics["val_rmse_ln"]
    assert refit.metrics["train_rows"] == ROWS["train"] + ROWS["val"] and refit.metrics["refit"] == 1.0
    test = pl.read_parquet(features_uri).filter(pl.col(SPLIT) == "test")
    assert not np.array_equal(refit.predict(PREP, test), first.predict(PREP, test))
