"""Evaluation: the new model, the current champion and gradient boosting on the same test rows, and the report.

Gradient boosting (``tasks.train.train_gbm``: HistGradientBoostingRegressor on ln(price)) is trained
here on the very features, preprocessing vocabularies and train / val split the new model was
trained on, as a yardstick: its test metrics are ``metrics["gbm"]`` (MLflow ``gbm_test/*``) beside
``new`` and ``champion``. It plays no part in promotion.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import polars as pl

from tasks import storage, tracking
from tasks.metrics import price_metrics
from tasks.settings import Settings
from tasks.spec import DatasetSpec


log = logging.getLogger(__name__)


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", key)


def evaluate_step(spec: DatasetSpec, settings: Settings, features: dict, trained: dict) -> dict:
    """Score the test rows with the new model and the current champion; write the report."""
    from tasks.features import SPLIT
    from tasks.model import ModelBundle
    from tasks.report import render

    c = tracking.client(settings)
    version = str(trained["model_version"])
    test = pl.read_parquet(features["features_uri"]).filter(pl.col(SPLIT) == "test")
    champ = tracking.champion_version(c, settings.model_name)
    champion_version = str(champ.version) if champ is not None and str(champ.version) != version else None
    with tempfile.TemporaryDirectory() as tmp:
        new = ModelBundle.load(tracking.download_model(c, settings.model_name, version, f"{tmp}/new"))
        pred = test.select(*([spec.event_time] if spec.event_time else []), *spec.id_columns, spec.target)
        pred = pred.with_columns(pl.Series("pred_new", new.predict_features(test)))
        if champion_version is not None:
            old = ModelBundle.load(tracking.download_model(c, settings.model_name, champion_version, f"{tmp}/champion"))
            if old.prep.comps is not None:  # re-derived comps (if needed) read this lake's validated history
                from tasks.comps import lake_history

                old.history = lake_history(settings.lake_uri, old.prep.comps)
            needed = ({s.name for s in old.prep.numeric} | {v.name for v in old.prep.categorical}
                      | {t.name for t in old.prep.target_offset})
            old_pred = old.predict_features(test) if needed <= set(test.columns) else old.predict(test.select(list(spec.columns)))
            pred = pred.with_columns(pl.Series("pred_champion", old_pred))
        gbm_info = _gbm(features, new.prep, test)
        if gbm_info is not None:
            pred = pred.with_columns(pl.Series("pred_gbm", gbm_info.pop("pred")))
    actual = pred[spec.target].to_numpy()
    metrics = {"new": price_metrics(actual, pred["pred_new"].to_numpy())}
    if champion_version is not None:
        metrics["champion"] = price_metrics(actual, pred["pred_champion"].to_numpy())
    if gbm_info is not None:
        metrics["gbm"] = price_metrics(actual, pred["pred_gbm"].to_numpy())
    key = f"window={features['window_start']}_{features['window_end']}/model_version={version}"
    pred_uri = storage.join(settings.lake_uri, "evaluations", key, "predictions.parquet")
    storage.write_parquet_atomic(pred, pred_uri)
    labels = {"new": f"v{version} (new)", "champion": f"v{champion_version} (champion)",
              "gbm": "gradient boosting (same features)"}
    html = render(
        f"homeworth evaluation: model v{version}",
        {labels[m]: v for m, v in metrics.items()},
        pred.rename({f"pred_{m}": f"pred_{labels[m]}" for m in metrics}),
        spec.target,
        spec.event_time,
        {"model version": version, "champion version": champion_version or "none yet",
         "training window": f"{features['window_start']} .. {features['window_end']} (end exclusive)",
         "rows train/val/test": "/".join(str(features["rows"][s]) for s in ("train", "val", "test")),
         "model family": f"{new.cfg.family} ({trained.get('config_source', 'defaults')} configuration)",
         "training seconds (new / gbm)": f"{trained.get('train_seconds', '-')} / "
                                         f"{round(gbm_info['train_seconds'], 1) if gbm_info else '-'}",
         "MLflow run": trained["mlflow_run_id"]},
    )
    report_uri = storage.join(settings.reports_uri, _safe(key), "report.html")
    storage.write_bytes_atomic(report_uri, html.encode())
    run_id = trained["mlflow_run_id"]
    for m, values in metrics.items():
        for k, v in values.items():
            c.log_metric(run_id, f"{'test' if m == 'new' else m + '_test'}/{k}", v)
    if gbm_info is not None:
        for k in ("val_rmse_ln", "train_seconds", "n_iter"):
            c.log_metric(run_id, f"gbm/{k}", gbm_info[k])
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "report.html").write_text(html)
        c.log_artifact(run_id, str(Path(tmp) / "report.html"), "evaluation")
    return {"model_version": version, "champion_version": champion_version, "metrics": metrics,
            "report_uri": report_uri, "predictions_uri": pred_uri, "mlflow_run_id": run_id, "test_rows": pred.height,
            "gbm": gbm_info}


def _gbm(features: dict, prep, test: pl.DataFrame) -> dict | None:
    """Gradient boosting trained on the run's features and split; its test predictions. None if it fails."""
    from tasks.train import train_gbm

    try:
        result = train_gbm(features["features_uri"], prep)
        return {"pred": result.predict(prep, test), "val_rmse_ln": result.metrics["val_rmse_ln"],
                "train_seconds": result.seconds, "n_iter": result.metrics["n_iter"]}
    except Exception:  # the yardstick must never block an evaluation
        log.exception("gradient boosting yardstick failed; the evaluation goes on without it")
        return None
