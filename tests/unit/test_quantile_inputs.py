"""The quantile (rank-Gauss) transform of the numeric inputs: knots fitted on the training split into the JSON
preprocessing artifact (tasks.features.fit.rank_knots), applied by the network (tasks.model.networks.RankGauss);
artifacts fitted before it load and score as before."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl
import pytest
import torch
from pydantic import ValidationError
from pydantic_core import to_json
from scipy.stats import norm

from tasks.features.featureset import SPLIT, FeatureSet
from tasks.features.fit import fit_preprocessing, rank_knots, with_rank_knots
from tasks.features.preprocessing import NumericStat, Preprocessing
from tasks.model.config import default_config
from tasks.model.networks import RankGauss, build_net

FSET = FeatureSet(numeric=["x", "t", "k"], categorical=["z"], target_transform="log", derive=lambda lf: lf,
                  module=None, unclipped=("t",))


@pytest.fixture
def table(tmp_path) -> tuple[str, pl.DataFrame]:
    """3000 training rows: x heavy-tailed (lognormal, some nulls), t unclipped, k constant; a few val / test rows."""
    rng = np.random.default_rng(3)
    n = 3000
    x = rng.lognormal(6.0, 1.5, n)
    train = pl.DataFrame({"x": np.where(np.arange(n) % 10 == 0, np.nan, x), "t": rng.normal(0, 1, n),
                          "k": np.full(n, 3.0), "z": rng.choice(["a", "b"], n),
                          "price": rng.lognormal(12.0, 0.4, n), SPLIT: ["train"] * n})
    train = train.with_columns(pl.col("x").fill_nan(None))
    other = train.head(20).with_columns(pl.Series(SPLIT, ["val"] * 10 + ["test"] * 10))
    path = tmp_path / "features.parquet"
    pl.concat([train, other]).write_parquet(path)
    return str(path), train


def test_rank_knots_give_discrete_values_their_mid_rank():
    knots, levels = rank_knots(np.array([1.0, 1.0, 2.0, 2.0, 2.0, 3.0, np.nan]), mean=0.0, std=1.0)
    assert knots == [1.0, 2.0, 3.0]
    # (#below + #at or below) / 2n over the 6 values: 1 -> (0 + 2) / 12, 2 -> (2 + 5) / 12, 3 -> (5 + 6) / 12
    assert levels == pytest.approx([2 / 12, 7 / 12, 11 / 12])
    knots, _ = rank_knots(np.array([10.0, 20.0, 30.0]), mean=20.0, std=10.0)  # standardized
    assert knots == [-1.0, 0.0, 1.0]
    assert rank_knots(np.array([5.0, 5.0, np.nan]), 0.0, 1.0) is None  # one distinct value: no transform


def test_fit_stores_knots_of_clipped_columns_only_and_round_trips(spec, table):
    prep = fit_preprocessing(table[0], spec, FSET, {})
    x, t, k = prep.numeric
    assert x.rank_knots is not None and t.rank_knots is None and k.rank_knots is None  # t unclipped, k constant
    assert 10 <= len(x.rank_knots) <= 100  # about n / 30 (2700 values)
    assert all(b > a for a, b in zip(x.rank_knots, x.rank_knots[1:]))
    assert all(0 < q < 1 for q in x.rank_levels)
    # the knots are standardized clipped training quantiles
    clipped = np.clip(table[1]["x"].drop_nulls().to_numpy(), x.lo, x.hi)
    assert x.rank_knots[0] == pytest.approx((clipped.min() - x.mean) / x.std)
    assert x.rank_knots[-1] == pytest.approx((clipped.max() - x.mean) / x.std)
    back = Preprocessing.model_validate_json(prep.model_dump_json(indent=2))
    assert back == prep and back.sha256() == prep.sha256()


def test_rank_gauss_maps_training_values_to_a_standard_normal(spec, table):
    prep = fit_preprocessing(table[0], spec, FSET, {})
    rows = table[1].filter(pl.col("x").is_not_null())
    x = torch.as_tensor(prep.numeric_matrix(rows))
    z = RankGauss(prep.numeric)(x)
    assert z[:, 0].mean().item() == pytest.approx(0.0, abs=0.02)  # the heavy tail is gone
    assert z[:, 0].std().item() == pytest.approx(1.0, abs=0.03)
    # lognormal x: its normal scores are (nearly) the standardized ln x, far from linear in x
    assert np.corrcoef(z[:, 0].numpy(), np.log(rows["x"].to_numpy()))[0, 1] > 0.99
    assert np.corrcoef(z[:, 0].numpy(), x[:, 0].numpy())[0, 1] < 0.9
    order = np.argsort(x[:, 0].numpy())
    assert np.all(np.diff(z[order, 0].numpy()) >= 0)  # monotone
    torch.testing.assert_close(z[:, 1:], x[:, 1:])  # unclipped and constant columns unchanged
    # at a knot the value is Phi^-1 of its level; beyond the outer knots the outer level
    s = prep.numeric[0]
    probe = torch.tensor([[s.rank_knots[5], 0.0, 0.0], [1e6, 0.0, 0.0], [-1e6, 0.0, 0.0]])
    out = RankGauss(prep.numeric)(probe)[:, 0].numpy()
    np.testing.assert_allclose(out, norm.ppf([s.rank_levels[5], s.rank_levels[-1], s.rank_levels[0]]), rtol=1e-5)


def test_network_applies_the_transform_and_old_artifacts_score_as_before(spec, table):
    prep = fit_preprocessing(table[0], spec, FSET, {})
    # an artifact fitted before the transform existed: no rank fields in its JSON
    raw = json.loads(prep.model_dump_json())
    for s in raw["numeric"]:
        del s["rank_knots"], s["rank_levels"]
    old = Preprocessing.model_validate(raw)
    assert not old.has_ranks()
    # ... and its hash is the one computed before the fields existed: of its JSON without them (nor the
    # empty comps, offset and missing-value indicators, left out as before)
    before = {k: v for k, v in raw.items() if k not in ("comps", "target_offset", "null_indicators")}
    assert old.sha256() == hashlib.sha256(to_json(before)).hexdigest()
    assert prep.sha256() != old.sha256()

    cfg = default_config("mlp_plr", seed=1)
    rows = table[1].head(50)
    x_num = torch.as_tensor(prep.numeric_matrix(rows))
    x_cat = torch.as_tensor(prep.categorical_matrix(rows))
    torch.manual_seed(0)
    new_net = build_net(prep, cfg).eval()
    torch.manual_seed(0)
    old_net = build_net(old, cfg).eval()
    assert hasattr(new_net, "ranks") and not hasattr(old_net, "ranks")
    # the knots are not weights: the same state dict loads into either network
    assert not any(k.startswith("ranks.") for k in new_net.state_dict())
    old_net.load_state_dict(new_net.state_dict())
    with torch.no_grad():
        transformed = RankGauss(prep.numeric)(x_num)
        torch.testing.assert_close(new_net(x_num, x_cat), old_net(transformed, x_cat))
        assert not torch.allclose(new_net(x_num, x_cat), old_net(x_num, x_cat))
    # the switch in the configuration: off, the knots are ignored
    off = build_net(prep, default_config("mlp_plr", quantile_inputs=False))
    assert not hasattr(off, "ranks")
    # saved weights load into a network built from the same artifact, which scores the same
    again = build_net(prep, cfg).eval()
    again.load_state_dict(new_net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again(x_num, x_cat), new_net(x_num, x_cat), rtol=0, atol=0)


def test_inconsistent_knots_are_refused():
    base = {"name": "x", "lo": 0.0, "hi": 1.0, "mean": 0.5, "std": 0.2}
    NumericStat(**base, rank_knots=[-1.0, 0.0, 1.0], rank_levels=[0.1, 0.5, 0.9])
    for knots, levels in (([-1.0, -1.0, 1.0], [0.1, 0.5, 0.9]),  # not strictly increasing
                          ([-1.0, 0.0, 1.0], [0.0, 0.5, 0.9]),  # a level outside (0, 1)
                          ([-1.0, 0.0, 1.0], [0.1, 0.5]),  # lengths differ
                          ([-1.0, 0.0, 1.0], None)):  # one without the other
        with pytest.raises(ValidationError):
            NumericStat(**base, rank_knots=knots, rank_levels=levels)


def test_with_rank_knots_skips_unclipped_columns():
    stats = [NumericStat(name="a", lo=0.0, hi=10.0, mean=5.0, std=2.0),
             NumericStat(name="b", lo=None, hi=None, mean=0.0, std=1.0)]
    prep = Preprocessing(dataset="d", spec_sha256="s", features_module=None, numeric=stats, categorical=[],
                         target="price", target_transform="log", target_mean=0.0, target_std=1.0, fitted_on={})
    train = pl.DataFrame({"a": [float(v) for v in range(40)], "b": [float(v) for v in range(40)]})
    fitted = with_rank_knots(prep, train)
    a, b = fitted.numeric
    assert b.rank_knots is None and a.rank_knots is not None
    assert a.rank_knots[-1] == pytest.approx((10.0 - 5.0) / 2.0)  # clipped at hi before the quantiles
