"""The valuation metrics, computed the same way for every model on the same rows."""

from __future__ import annotations

import numpy as np

METRICS = ("mdape", "ppe10", "rmse_ln", "rmse", "mae")
# Which way is better, for gates and reports.
HIGHER_IS_BETTER = {"mdape": False, "ppe10": True, "rmse_ln": False, "rmse": False, "mae": False}


def price_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Median absolute percentage error, share within +-10%, RMSE of ln(price), RMSE and MAE in dollars."""
    actual = np.asarray(actual, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if actual.shape != predicted.shape or actual.size == 0:
        raise ValueError(f"need equal, non-empty arrays; got {actual.shape} and {predicted.shape}")
    ape = np.abs(predicted - actual) / actual
    return {
        "mdape": float(np.median(ape)),
        "ppe10": float(np.mean(ape <= 0.10)),
        "rmse_ln": float(np.sqrt(np.mean((np.log(predicted) - np.log(actual)) ** 2))),
        "rmse": float(np.sqrt(np.mean((predicted - actual) ** 2))),
        "mae": float(np.mean(np.abs(predicted - actual))),
    }
