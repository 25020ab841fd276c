"""The dataset's promotion bars (tasks.registry.policy.Bars, bars_for) and the boosting bar."""

from __future__ import annotations

from tasks.core.params import RetrainParams
from tasks.core.spec import PromotionBars
from tasks.registry import policy

MELB_FIRST = {"mdape": 0.141, "ppe10": 0.372}  # a harder market than King County: fails its Params' ppe10 bar


def test_without_dataset_bars_the_params_bars_apply_as_before():
    bars = policy.bars_for(RetrainParams())
    assert (bars.max_mdape, bars.min_ppe10, bars.max_mdape_vs_boosting) == (
        RetrainParams().max_mdape, RetrainParams().min_ppe10, None)


def test_the_first_model_of_a_new_market_is_promoted_when_no_worse_than_the_boosting():
    params = RetrainParams()  # the form's defaults: nobody chose bars for this run
    bars = policy.bars_for(params, PromotionBars())
    assert (bars.max_mdape, bars.min_ppe10, bars.max_mdape_vs_boosting) == (None, None, 0.0)
    ok = policy.gate(MELB_FIRST, None, params, None, gbm={"mdape": 0.150, "ppe10": 0.35}, bars=bars)
    assert ok.promote and "no champion yet" in ok.reason and "boosting of the same run: mdape 0.1500" in ok.reason
    worse = policy.gate(MELB_FIRST, None, params, None, gbm={"mdape": 0.123, "ppe10": 0.414}, bars=bars)
    assert worse.outcome == "reject"
    assert "worse than the gradient boosting" in worse.reason and "0.1410 vs boosting 0.1230" in worse.reason
    legacy = policy.gate(MELB_FIRST, None, params, None, gbm={"mdape": 0.150, "ppe10": 0.35})
    assert legacy.outcome == "reject" and "ppe10 0.3720 < bar" in legacy.reason, "no bars given: the Params' bars"


def test_a_tolerance_against_the_boosting_and_no_boosting_bar():
    params = RetrainParams()
    gbm = {"mdape": 0.135, "ppe10": 0.4}
    loose = policy.bars_for(params, PromotionBars(max_mdape_vs_boosting=0.05))  # 0.135 * 1.05 = 0.14175
    assert policy.gate(MELB_FIRST, None, params, None, gbm=gbm, bars=loose).promote
    off = policy.bars_for(params, PromotionBars(max_mdape_vs_boosting=None))
    assert policy.gate(MELB_FIRST, None, params, None, gbm={"mdape": 0.01}, bars=off).promote
    assert policy.gate(MELB_FIRST, None, params, None, gbm=None, bars=policy.bars_for(params, PromotionBars())).promote


def test_spec_bars_apply_and_a_runs_explicit_bars_win():
    spec_bars = PromotionBars(max_mdape=0.13, min_ppe10=0.30)
    params = RetrainParams()
    bars = policy.bars_for(params, spec_bars)
    assert (bars.max_mdape, bars.min_ppe10) == (0.13, 0.30)
    v = policy.gate(MELB_FIRST, None, params, None, bars=bars)
    assert v.outcome == "reject" and v.reason.startswith("fails the absolute bars: mdape 0.1410 > bar 0.13")
    assert "from the dataset spec" in v.reason
    chosen = RetrainParams(max_mdape=0.2)
    bars = policy.bars_for(chosen, spec_bars)
    assert (bars.max_mdape, bars.min_ppe10) == (0.2, 0.30) and "max_mdape from the run's Params" in bars.source
    assert policy.gate(MELB_FIRST, None, chosen, None, bars=bars).promote


def test_with_a_champion_both_the_boosting_and_the_champion_bars_apply():
    params = RetrainParams(min_relative_improvement=0.01)
    bars = policy.bars_for(params, PromotionBars())
    champion = {"mdape": 0.150, "ppe10": 0.35}
    better = policy.gate(MELB_FIRST, champion, params, None, gbm={"mdape": 0.145}, bars=bars)
    assert better.promote and "relative improvement" in better.reason
    behind_boosting = policy.gate(MELB_FIRST, champion, params, None, gbm={"mdape": 0.12}, bars=bars)
    assert behind_boosting.outcome == "reject" and "boosting" in behind_boosting.reason
