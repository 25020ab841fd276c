"""Evaluation: the new model, the current champion and gradient boosting on the same test rows, and the report.

Gradient boosting (``tasks.model.train.train_gbm``: HistGradientBoostingRegressor on ln(price)) is trained
here on the very features, preprocessing vocabularies and train / val split the new model was
trained on, and refit on train + val when the new model was (``RetrainParams.refit_on_val``), as a
yardstick: its test metrics are ``metrics["gbm"]`` (MLflow ``gbm_test/*``) beside ``new`` and
``champion``. It plays no part in promotion.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import polars as pl

from tasks.core import lake, storage, tracking
from tasks.core.metrics import price_metrics
from tasks.core.settings import Settings
from tasks.core.spec import DatasetSpec

log = logging.getLogger(__name__)

# Test rows scored per batch (the new model, the champion and the boosting each predict a batch).
EVAL_BATCH_ROWS = 500_000


def evaluate_step(spec: DatasetSpec, settings: Settings, features: dict, trained: dict) -> dict:
    """Score the test rows with the new model and the current champion; write the report."""
    from tasks.model.data import iter_split
    from tasks.model.networks import ModelBundle
    from tasks.registry.report import render

    c = tracking.client(settings)
    version = str(trained["model_version"])
    uri = features["features_uri"]
    columns = set(pl.read_parquet_schema(storage.local_path(uri) or uri))
    champ = tracking.champion_version(c, settings.model_name)
    champion_version = str(champ.version) if champ is not None and str(champ.version) != version else None
    keep = [*([spec.event_time] if spec.event_time else []), *spec.id_columns, spec.target]
    parts: list[pl.DataFrame] = []
    with tempfile.TemporaryDirectory() as tmp:
        new = ModelBundle.load(tracking.download_model(c, settings.model_name, version, f"{tmp}/new"))
        old = None
        if champion_version is not None:
            old = ModelBundle.load(tracking.download_model(c, settings.model_name, champion_version, f"{tmp}/champion"))
            if old.prep.comps is not None:  # re-derived comps (if needed) read this lake's validated history
                from tasks.features.comps import lake_history

                old.history = lake_history(settings.lake_uri, old.prep.comps)
            needed = ({s.name for s in old.prep.numeric} | {v.name for v in old.prep.categorical}
                      | {t.name for t in old.prep.target_offset})
            old_from_features = needed <= columns
        # The yardstick gets the deep model's treatment: refit on train + val when the model was.
        gbm = _gbm(features, new.prep, refit=bool((trained.get("refit") or {}).get("done")))
        # The test split in batches of rows (memory ~ one batch whatever the window's size); only the
        # keys, the target and the predictions are kept.
        for test in iter_split(uri, "test", EVAL_BATCH_ROWS):
            part = test.select(keep).with_columns(pl.Series("pred_new", new.predict_features(test)))
            if old is not None:
                old_pred = old.predict_features(test) if old_from_features else old.predict(test.select(list(spec.columns)))
                part = part.with_columns(pl.Series("pred_champion", old_pred))
            if gbm is not None:
                try:
                    part = part.with_columns(pl.Series("pred_gbm", gbm["model"].predict(new.prep, test)))
                except Exception:  # the yardstick must never block an evaluation
                    log.exception("gradient boosting yardstick failed to predict; the evaluation goes on without it")
                    gbm, parts = None, [p.drop("pred_gbm", strict=False) for p in parts]
            parts.append(part)
            del test  # the batch's feature columns are not needed past its predictions
    if not parts:
        raise ValueError(f"{uri}: no test rows to evaluate on")
    pred = pl.concat(parts)
    parts.clear()  # one copy of the predictions from here on (12M test rows: ~0.7 GiB each)
    gbm_info = None if gbm is None else {k: v for k, v in gbm.items() if k != "model"}
    actual = pred[spec.target].to_numpy()
    metrics = {"new": price_metrics(actual, pred["pred_new"].to_numpy())}
    if champion_version is not None:
        metrics["champion"] = price_metrics(actual, pred["pred_champion"].to_numpy())
    if gbm_info is not None:
        metrics["gbm"] = price_metrics(actual, pred["pred_gbm"].to_numpy())
    key = lake.evaluation_key(features["window_start"], features["window_end"], str(version))
    pred_uri = lake.evaluation_predictions_uri(settings.lake_uri, key)
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
    report_uri = lake.report_uri(settings.reports_uri, key)
    storage.write_bytes_atomic(report_uri, html.encode())
    run_id = trained["mlflow_run_id"]
    for m, values in metrics.items():
        for k, v in values.items():
            c.log_metric(run_id, f"{'test' if m == 'new' else m + '_test'}/{k}", v)
    if gbm_info is not None:
        for k in ("val_rmse_ln", "train_seconds", "n_iter", "train_rows", "refit"):
            c.log_metric(run_id, f"gbm/{k}", float(gbm_info[k]))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "report.html").write_text(html)
        c.log_artifact(run_id, str(Path(tmp) / "report.html"), "evaluation")
    return {"model_version": version, "champion_version": champion_version, "metrics": metrics,
            "report_uri": report_uri, "predictions_uri": pred_uri, "mlflow_run_id": run_id, "test_rows": pred.height,
            "gbm": gbm_info}


def _gbm(features: dict, prep, refit: bool = False) -> dict | None:
    """Gradient boosting trained on the run's features and split (``model``, its metrics). None if it fails."""
    from tasks.model.train import train_gbm

    try:
        result = train_gbm(features["features_uri"], prep, refit=refit)
        return {"model": result, "val_rmse_ln": result.metrics["val_rmse_ln"], "train_seconds": result.seconds,
                "n_iter": result.metrics["n_iter"], "train_rows": result.metrics["train_rows"],
                "refit": bool(result.metrics["refit"])}
    except Exception:  # the yardstick must never block an evaluation
        log.exception("gradient boosting yardstick failed; the evaluation goes on without it")
        return None
