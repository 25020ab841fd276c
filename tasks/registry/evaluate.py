"""Evaluation: the new model, the current champion and gradient boosting on the same test rows, and the report.

Gradient boosting (``tasks.model.gbm.train_gbm``: HistGradientBoostingRegressor on ln(price)) is trained
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
from tasks.core.faults import fault_point
from tasks.core.handoffs import Evaluation, FeatureTable, TrainedModel
from tasks.core.metrics import price_metrics
from tasks.core.settings import Settings
from tasks.core.spec import DatasetSpec

log = logging.getLogger(__name__)

# Test rows scored per batch (the new model, the champion and the boosting each predict a batch).
EVAL_BATCH_ROWS = 500_000


def evaluate_step(spec: DatasetSpec, settings: Settings, features: FeatureTable, trained: TrainedModel) -> Evaluation:
    """Score the test rows with the new model and the current champion; write the report."""
    fault_point("evaluate", "start")
    c = tracking.client(settings)
    version = str(trained.model_version)
    run_id = trained.mlflow_run_id
    champion_version = _champion_to_compare(c, settings, version)
    with tempfile.TemporaryDirectory() as tmp:
        new, old = _load_models(c, settings, version, champion_version, tmp)
        # The yardstick gets the deep model's treatment: refit on train + val when the model was.
        gbm = _gbm(features, new.prep, refit=bool((trained.refit or {}).get("done")))
        pred, gbm = _predict_test(spec, features.features_uri, new, old, gbm)
    gbm_info = None if gbm is None else {k: v for k, v in gbm.items() if k != "model"}
    metrics = _metrics(pred, spec.target, champion_version is not None, gbm_info is not None)
    key = lake.evaluation_key(features.window_start, features.window_end, str(version))
    pred_uri = lake.evaluation_predictions_uri(settings.lake_uri, key)
    storage.write_parquet_atomic(pred, pred_uri)
    html = _report(spec, pred, metrics, _facts(version, champion_version, features, trained, new.cfg.family, gbm_info),
                   version, champion_version)
    report_uri = lake.report_uri(settings.reports_uri, key)
    storage.write_bytes_atomic(report_uri, html.encode())
    _log_to_mlflow(c, run_id, metrics, gbm_info, html)
    fault_point("evaluate", "after_effect")
    return Evaluation(model_version=version, champion_version=champion_version, metrics=metrics,
                      report_uri=report_uri, predictions_uri=pred_uri, mlflow_run_id=run_id, test_rows=pred.height,
                      gbm=gbm_info)


def _champion_to_compare(c, settings: Settings, version: str) -> str | None:
    """The live champion's version, unless there is none or it is the new model itself."""
    # strict: an unreachable tracking server fails the task (and its retry), never reads as "no champion".
    champ = tracking.champion_version(c, settings.model_name, strict=True)
    return str(champ.version) if champ is not None and str(champ.version) != version else None


def _load_models(c, settings: Settings, version: str, champion_version: str | None, tmp: str):
    """(new, champion or None) bundles downloaded under ``tmp``; the champion's comps read this lake's history."""
    from tasks.model.bundle import ModelBundle

    new = ModelBundle.load(tracking.download_model(c, settings.model_name, version, f"{tmp}/new"))
    old = None
    if champion_version is not None:
        old = ModelBundle.load(tracking.download_model(c, settings.model_name, champion_version, f"{tmp}/champion"))
        if old.prep.comps is not None:  # re-derived comps (if needed) read this lake's validated history
            from tasks.features.comps import lake_history

            old.history = lake_history(settings.lake_uri, old.prep.comps)
    return new, old


def _predict_test(spec: DatasetSpec, uri: str, new, old, gbm: dict | None) -> tuple[pl.DataFrame, dict | None]:
    """The test rows' keys, target and ``pred_new`` / ``pred_champion`` / ``pred_gbm``, and the yardstick (None
    if it failed to predict)."""
    from tasks.model.data import iter_split

    keep = [*([spec.event_time] if spec.event_time else []), *spec.id_columns, spec.target]
    old_from_features = False
    if old is not None:  # the champion scores the feature table when it holds every input the champion needs
        columns = set(pl.read_parquet_schema(storage.local_path(uri) or uri))
        needed = ({s.name for s in old.prep.numeric} | {v.name for v in old.prep.categorical}
                  | {t.name for t in old.prep.target_offset})
        old_from_features = needed <= columns
    parts: list[pl.DataFrame] = []
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
    parts.clear()  # one copy of the predictions from here on (their memory at scale: docs/benchmarks.md)
    return pred, gbm


def _metrics(pred: pl.DataFrame, target: str, champion: bool, gbm: bool) -> dict[str, dict[str, float]]:
    """``price_metrics`` of each model's predictions: ``new``, then ``champion`` and ``gbm`` when present."""
    actual = pred[target].to_numpy()
    metrics = {"new": price_metrics(actual, pred["pred_new"].to_numpy())}
    if champion:
        metrics["champion"] = price_metrics(actual, pred["pred_champion"].to_numpy())
    if gbm:
        metrics["gbm"] = price_metrics(actual, pred["pred_gbm"].to_numpy())
    return metrics


def _facts(version: str, champion_version: str | None, features: FeatureTable, trained: TrainedModel, family: str,
           gbm_info: dict | None) -> dict[str, str]:
    """The report's table of facts about the run."""
    return {"model version": version, "champion version": champion_version or "none yet",
            "training window": f"{features.window_start} .. {features.window_end} (end exclusive)",
            "rows train/val/test": "/".join(str(features.rows[s]) for s in ("train", "val", "test")),
            "model family": f"{family} ({trained.config_source or 'defaults'} configuration)",
            "training seconds (new / gbm)": f"{'-' if trained.train_seconds is None else trained.train_seconds} / "
                                            f"{round(gbm_info['train_seconds'], 1) if gbm_info else '-'}",
            "MLflow run": trained.mlflow_run_id}


def _report(spec: DatasetSpec, pred: pl.DataFrame, metrics: dict, facts: dict[str, str], version: str,
            champion_version: str | None) -> str:
    """The evaluation report's HTML (``tasks.registry.report.render``), each model under its label."""
    from tasks.registry.report import render

    labels = {"new": f"v{version} (new)", "champion": f"v{champion_version} (champion)",
              "gbm": "gradient boosting (same features)"}
    return render(
        f"homeworth evaluation: model v{version}",
        {labels[m]: v for m, v in metrics.items()},
        pred.rename({f"pred_{m}": f"pred_{labels[m]}" for m in metrics}),
        spec.target,
        spec.event_time,
        facts,
    )


def _log_to_mlflow(c, run_id: str, metrics: dict, gbm_info: dict | None, html: str) -> None:
    """Test metrics (``test/*``, ``champion_test/*``, ``gbm_test/*``), the yardstick's ``gbm/*`` and the report."""
    for m, values in metrics.items():
        for k, v in values.items():
            c.log_metric(run_id, f"{'test' if m == 'new' else m + '_test'}/{k}", v)
    if gbm_info is not None:
        for k in (val_rmse_name(gbm_info), "train_seconds", "n_iter", "train_rows", "refit"):
            c.log_metric(run_id, f"gbm/{k}", float(gbm_info[k]))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "report.html").write_text(html)
        c.log_artifact(run_id, str(Path(tmp) / "report.html"), "evaluation")


def val_rmse_name(gbm_info: dict) -> str:
    """The key of the yardstick's validation RMSE in ``gbm_info``: ``val_rmse_ln`` only when it is on ln."""
    return "val_rmse_ln" if "val_rmse_ln" in gbm_info else "val_rmse"


def _gbm(features: FeatureTable, prep, refit: bool = False) -> dict | None:
    """Gradient boosting trained on the run's features and split (``model``, its metrics). None if it fails.

    Its validation RMSE is in the units of the fitted target: ``val_rmse_ln`` when the preprocessing takes
    ln of the target, else ``val_rmse`` (in the target's own units): a metric is named ``_ln`` only when it is."""
    from tasks.model.gbm import train_gbm

    try:
        result = train_gbm(features.features_uri, prep, refit=refit)
        name = "val_rmse_ln" if getattr(prep, "target_transform", "log") == "log" else "val_rmse"
        return {"model": result, name: result.metrics["val_rmse_ln"], "train_seconds": result.seconds,
                "n_iter": result.metrics["n_iter"], "train_rows": result.metrics["train_rows"],
                "refit": bool(result.metrics["refit"])}
    except Exception:  # the yardstick must never block an evaluation
        log.exception("gradient boosting yardstick failed; the evaluation goes on without it")
        return None
