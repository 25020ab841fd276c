"""The deep model's yardstick: gradient boosting on the same features and split (``evaluate_step`` scores
it beside the new model and the champion).

``train_gbm`` fits sklearn's ``HistGradientBoostingRegressor`` on the standardized target (ln price),
the deep model's inputs (:func:`gbm_matrix`) and at most :data:`GBM_MAX_ROWS` rows per split.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from tasks.features.preprocessing import Preprocessing

log = logging.getLogger(__name__)

# HistGradientBoostingRegressor on ln(price): early stopping on the validation split (the same one
# the deep model stops on); the rest are sklearn's usual settings with a smaller learning rate.
GBM_PARAMS = {"learning_rate": 0.05, "max_iter": 3000, "max_leaf_nodes": 31, "min_samples_leaf": 20,
              "l2_regularization": 0.0, "n_iter_no_change": 100}


@dataclass
class GbmResult:
    model: object
    columns: list[str]
    metrics: dict[str, float]
    seconds: float

    def predict(self, prep: Preprocessing, df: pl.DataFrame):
        """Prices for rows that carry the features (as ``ModelBundle.predict_features``)."""
        return prep.decode_rows(self.model.predict(gbm_matrix(prep, df)), df)


def gbm_matrix(prep: Preprocessing, df: pl.DataFrame):
    """The deep model's inputs, for trees: the numeric columns as they are (nulls as NaN, trees need
    no scaling), then the categorical columns as vocabulary codes (0: unseen), declared categorical."""
    num = df.select([pl.col(s.name).cast(pl.Float64).fill_nan(None) for s in prep.numeric]).to_numpy()
    num = np.asarray(num, dtype=np.float64)
    cat = prep.categorical_matrix(df).astype(np.float64)
    return np.column_stack([num, cat]) if cat.size else num


# Rows the yardstick trains and stops on at most (every k-th row of the split beyond that), so that its
# memory and time stay bounded whatever the window's size (why these bounds: docs/out-of-core.md).
GBM_MAX_ROWS = {"train": 250_000, "val": 100_000}


def train_gbm(features_uri: str, prep: Preprocessing, seed: int = 0, params: dict | None = None,
              max_rows: dict[str, int] | None = None, refit: bool = False) -> GbmResult:
    """HistGradientBoostingRegressor on the standardized target (ln price), features of ``prep``, val split.

    Train and val are read whole up to ``max_rows`` (default :data:`GBM_MAX_ROWS`), else sampled
    (``tasks.model.data.sample_split``); the result's metrics say how many rows were used.
    ``refit``: as the deep model's :func:`train` does, fit again on train + val with the number of
    trees early stopping chose (``val_rmse_ln`` stays that of the first fit).
    """
    from sklearn.ensemble import HistGradientBoostingRegressor

    from tasks.model.data import sample_split

    limits = {**GBM_MAX_ROWS, **(max_rows or {})}
    frames = {s: sample_split(features_uri, s, limits[s]) for s in ("train", "val")}
    n_num = len(prep.numeric)
    # HistGradientBoosting takes categories with fewer than 255 codes; larger vocabularies stay as codes.
    cats = [n_num + i for i, v in enumerate(prep.categorical) if len(v.values) < 254] or None
    model = HistGradientBoostingRegressor(**{**GBM_PARAMS, **(params or {})}, categorical_features=cats,
                                          early_stopping=True, random_state=seed)
    y = {s: prep.encode_rows(frames[s]) for s in ("train", "val")}
    t0 = time.perf_counter()
    x = {s: gbm_matrix(prep, frames[s]) for s in ("train", "val")}
    model.fit(x["train"], y["train"], X_val=x["val"], y_val=y["val"])
    seconds = time.perf_counter() - t0
    val_z = model.predict(x["val"])
    val_rmse_ln = float(np.sqrt(np.mean((val_z - y["val"]) ** 2)) * prep.target_std)
    # Logged as rmse_ln only when the fitted target is ln(price); the metrics key is renamed by evaluate.
    err_key = "val_rmse_ln" if prep.target_transform == "log" else "val_rmse"
    log.info("gbm: %d iterations in %.1fs; %s %.4f", model.n_iter_, seconds, err_key, val_rmse_ln)
    n_iter, train_rows = model.n_iter_, len(frames["train"])
    if refit and len(frames["val"]):
        model = HistGradientBoostingRegressor(**{**GBM_PARAMS, **(params or {}), "max_iter": n_iter},
                                              categorical_features=cats, early_stopping=False, random_state=seed)
        model.fit(np.vstack([x["train"], x["val"]]),
                  np.concatenate([y["train"], y["val"]]))
        train_rows += len(frames["val"])
        seconds = time.perf_counter() - t0
        log.info("gbm: refit on train + val (%d rows, %d iterations); %.1fs in all", train_rows, n_iter, seconds)
    return GbmResult(model=model, columns=[s.name for s in prep.numeric] + [v.name for v in prep.categorical],
                     metrics={"val_rmse_ln": val_rmse_ln, "n_iter": float(n_iter), "train_seconds": seconds,
                              "train_rows": float(train_rows), "refit": float(bool(refit and len(frames["val"])))},
                     seconds=seconds)
