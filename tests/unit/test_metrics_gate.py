"""Unit tests of tasks.core.metrics.price_metrics, the point-estimate promotion gate and the training window."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import pytest

from tasks.core.lineage import training_window
from tasks.core.metrics import HIGHER_IS_BETTER, METRICS, price_metrics
from tasks.core.params import RetrainParams
from tasks.registry.policy import decide

# ---------------------------------------------------------------------------------------------
# price_metrics


def test_price_metrics_by_hand():
    actual = np.array([100.0, 200.0, 400.0, 1000.0])
    predicted = np.array([110.0, 180.0, 400.0, 1500.0])  # errors +10%, -10%, 0, +50%

    m = price_metrics(actual, predicted)

    assert set(m) == set(METRICS) == set(HIGHER_IS_BETTER)
    assert m["mdape"] == pytest.approx(0.10)  # median of 0.1, 0.1, 0, 0.5
    assert m["ppe10"] == 0.75  # exactly 10% counts as within 10%
    assert m["rmse_ln"] == pytest.approx(math.sqrt((math.log(1.1) ** 2 + math.log(0.9) ** 2 + 0 + math.log(1.5) ** 2) / 4))
    assert m["rmse"] == pytest.approx(math.sqrt((10**2 + 20**2 + 0 + 500**2) / 4))
    assert m["mae"] == pytest.approx((10 + 20 + 0 + 500) / 4)
    assert all(isinstance(v, float) for v in m.values())


def test_ppe10_boundary():
    actual = [100.0, 100.0, 300.0, 300.0]
    predicted = [90.0, 110.01, 330.0, 269.99]  # exactly -10%; just over +10%; exactly +10%; just over -10%

    assert price_metrics(actual, predicted)["ppe10"] == 0.5


def test_perfect_predictions():
    m = price_metrics([250_000.0, 1_225_000.0], [250_000.0, 1_225_000.0])
    assert m == {"mdape": 0.0, "ppe10": 1.0, "rmse_ln": 0.0, "rmse": 0.0, "mae": 0.0}


@pytest.mark.parametrize("actual, predicted", [([], []), ([1.0, 2.0], [1.0]), ([[1.0, 2.0]], [1.0, 2.0])])
def test_price_metrics_rejects_empty_or_mismatched_input(actual, predicted):
    with pytest.raises(ValueError, match="equal, non-empty"):
        price_metrics(np.array(actual), np.array(predicted))


# ---------------------------------------------------------------------------------------------
# decide: the point-estimate gate

PARAMS = RetrainParams(max_mdape=0.15, min_ppe10=0.40, min_relative_improvement=0.01)


def test_gate_rejects_a_model_that_fails_the_absolute_bars():
    ok_mdape, bad_mdape = {"mdape": 0.10, "ppe10": 0.30}, {"mdape": 0.16, "ppe10": 0.50}

    low_ppe = decide(ok_mdape, None, PARAMS)
    high_mdape = decide(bad_mdape, {"mdape": 0.30, "ppe10": 0.20}, PARAMS)  # even against a worse champion
    both = decide({"mdape": 0.20, "ppe10": 0.10}, None, PARAMS)

    assert low_ppe == (False, "fails the absolute bars: ppe10 0.3000 < bar 0.4")
    assert high_mdape == (False, "fails the absolute bars: mdape 0.1600 > bar 0.15")
    assert both[0] is False and "mdape 0.2000 > bar 0.15" in both[1] and "ppe10 0.1000 < bar 0.4" in both[1]


def test_gate_promotes_when_there_is_no_champion():
    promoted, reason = decide({"mdape": 0.12, "ppe10": 0.45}, None, PARAMS)

    assert promoted is True
    assert "no champion" in reason and "0.1200" in reason and "0.4500" in reason


@pytest.mark.parametrize("gain, promoted", [(0.0101, True), (0.0099, False), (0.05, True), (-0.05, False)])
def test_gate_relative_improvement_threshold(gain, promoted):
    champion = {"mdape": 0.12, "ppe10": 0.5}
    new = {"mdape": 0.12 * (1 - gain), "ppe10": 0.5}

    ok, reason = decide(new, champion, PARAMS)

    assert ok is promoted
    assert f"mdape {new['mdape']:.4f} vs champion 0.1200" in reason
    assert f"relative improvement {gain:+.2%}" in reason
    assert "required 1.00%" in reason


# ---------------------------------------------------------------------------------------------
# training_window


def test_training_window_ends_at_the_interval_end():
    start, end = training_window(date(2015, 5, 28), 730)

    assert (start, end) == (date(2013, 5, 28), date(2015, 5, 28))
    assert (end - start).days == 730


def test_training_window_of_minimum_length():
    assert training_window(date(2015, 3, 1), 30) == (date(2015, 1, 30), date(2015, 3, 1))
