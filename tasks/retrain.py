"""The retraining steps the ``price_model_retrain`` DAG wires: features, train, evaluate, promote.

Each step takes and returns small JSON-able dicts (what XCom carries: URIs, counts, versions,
metrics), reads its inputs from the lake or the MLflow store, and can run again with the same
result: features are keyed by the window, a retried train reuses the MLflow run it finished, the
evaluation is keyed by the window and the model version, and moving the alias is one call.
"""

from __future__ import annotations

import logging
import re
import tempfile
from datetime import date, timedelta
from pathlib import Path

import polars as pl
from pydantic import BaseModel

from tasks import storage, tracking
from tasks.metrics import price_metrics
from tasks.params import RetrainParams
from tasks.settings import Settings
from tasks.spec import DatasetSpec

log = logging.getLogger(__name__)


class Lineage(BaseModel):
    """Where a run came from; recorded as MLflow tags on the run and the model version."""

    dag_id: str
    run_id: str
    run_type: str = "manual"
    window_start: str
    window_end: str

    def tags(self) -> dict[str, str]:
        return {tracking.TAG_DAG_ID: self.dag_id, tracking.TAG_RUN_ID: self.run_id, "airflow.run_type": self.run_type,
                "data.window_start": self.window_start, "data.window_end": self.window_end,
                "git.commit": tracking.git_commit()}


def training_window(interval_end: date, window_days: int) -> tuple[date, date]:
    """[start, end): the ``window_days`` before the end of the run's data interval."""
    return interval_end - timedelta(days=window_days), interval_end


def features_step(spec: DatasetSpec, settings: Settings, interval_end: date, params: RetrainParams) -> dict:
    from tasks.features import build_features

    start, end = training_window(interval_end, params.window_days)
    return build_features(spec, settings.lake_uri, start, end)


def train_step(settings: Settings, features: dict, params: RetrainParams, lineage: Lineage) -> dict:
    from pytorch_lightning.loggers import MLFlowLogger

    from tasks.features import load_preprocessing
    from tasks.model import ModelConfig, save_bundle
    from tasks.train import train

    c = tracking.client(settings)
    exp = tracking.experiment_id(c, settings)
    done = tracking.find_run(c, exp, lineage.dag_id, lineage.run_id, "train")
    if done is not None and done.data.tags.get("model_version"):
        log.info("reusing finished MLflow run %s of an earlier try", done.info.run_id)
        return {"mlflow_run_id": done.info.run_id, "model_version": done.data.tags["model_version"],
                "val_rmse_ln": done.data.metrics.get("best/val_rmse_ln"), "reused": True}

    cfg = ModelConfig(family=params.model_family, max_epochs=params.max_epochs, seed=params.seed)
    prep = load_preprocessing(features["preprocessing_uri"])
    tags = {**lineage.tags(), tracking.TAG_TASK: "train", "data.partitions": str(features["partitions"]),
            "data.partitions_sha256": features["partitions_sha256"], "data.features_sha256": features["features_sha256"],
            "preprocessing.sha256": features["preprocessing_sha256"], "dataset": prep.dataset}
    run = c.create_run(exp, run_name=f"{lineage.dag_id}__{lineage.run_id}", tags=tags)
    run_id = run.info.run_id
    try:
        for k, v in {**cfg.model_dump(), **{f"rows_{s}": n for s, n in features["rows"].items()}}.items():
            c.log_param(run_id, k, v)
        logger = MLFlowLogger(experiment_name=settings.experiment_name, tracking_uri=settings.mlflow_tracking_uri,
                              run_id=run_id)
        result = train(cfg, features["features_uri"], prep, logger=logger, threads=settings.torch_threads)
        c.log_metric(run_id, "best/val_rmse_ln", result.metrics["val_rmse_ln"])
        c.log_metric(run_id, "best/epoch", result.best_epoch)
        c.log_metric(run_id, "train_seconds", result.seconds)
        c.log_metric(run_id, "train_samples_per_second", result.metrics["samples_per_second"])
        with tempfile.TemporaryDirectory() as tmp:
            save_bundle(Path(tmp) / "model", result.net, cfg, prep)
            c.log_artifacts(run_id, str(Path(tmp) / "model"), "model")
            manifest = storage.join(features["features_uri"].rsplit("/", 1)[0], "manifest.json")
            (Path(tmp) / "manifest.json").write_bytes(storage.read_bytes(manifest))
            c.log_artifact(run_id, str(Path(tmp) / "manifest.json"), "lineage")
        tracking.ensure_registered_model(c, settings.model_name)
        mv = c.create_model_version(settings.model_name, source=f"{run.info.artifact_uri}/model", run_id=run_id,
                                    tags={k: v for k, v in tags.items() if k != tracking.TAG_TASK})
        c.set_tag(run_id, "model_version", mv.version)
        c.set_terminated(run_id, "FINISHED")
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
    return {"mlflow_run_id": run_id, "model_version": str(mv.version), "val_rmse_ln": result.metrics["val_rmse_ln"],
            "epochs": result.epochs_run, "best_epoch": result.best_epoch, "train_seconds": round(result.seconds, 2),
            "reused": False}


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
            needed = {s.name for s in old.prep.numeric} | {v.name for v in old.prep.categorical}
            old_pred = old.predict_features(test) if needed <= set(test.columns) else old.predict(test.select(list(spec.columns)))
            pred = pred.with_columns(pl.Series("pred_champion", old_pred))
    actual = pred[spec.target].to_numpy()
    metrics = {"new": price_metrics(actual, pred["pred_new"].to_numpy())}
    if champion_version is not None:
        metrics["champion"] = price_metrics(actual, pred["pred_champion"].to_numpy())
    key = f"window={features['window_start']}_{features['window_end']}/model_version={version}"
    pred_uri = storage.join(settings.lake_uri, "evaluations", key, "predictions.parquet")
    storage.write_parquet_atomic(pred, pred_uri)
    labels = {"new": f"v{version} (new)", "champion": f"v{champion_version} (champion)"}
    html = render(
        f"homeworth evaluation: model v{version}",
        {labels[m]: v for m, v in metrics.items()},
        pred.rename({f"pred_{m}": f"pred_{labels[m]}" for m in metrics}),
        spec.target,
        spec.event_time,
        {"model version": version, "champion version": champion_version or "none yet",
         "training window": f"{features['window_start']} .. {features['window_end']} (end exclusive)",
         "rows train/val/test": "/".join(str(features["rows"][s]) for s in ("train", "val", "test")),
         "MLflow run": trained["mlflow_run_id"]},
    )
    report_uri = storage.join(settings.reports_uri, _safe(key), "report.html")
    storage.write_bytes_atomic(report_uri, html.encode())
    run_id = trained["mlflow_run_id"]
    for m, values in metrics.items():
        for k, v in values.items():
            c.log_metric(run_id, f"{'test' if m == 'new' else 'champion_test'}/{k}", v)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "report.html").write_text(html)
        c.log_artifact(run_id, str(Path(tmp) / "report.html"), "evaluation")
    return {"model_version": version, "champion_version": champion_version, "metrics": metrics,
            "report_uri": report_uri, "predictions_uri": pred_uri, "mlflow_run_id": run_id, "test_rows": pred.height}


def decide(new: dict, champion: dict | None, params: RetrainParams) -> tuple[bool, str]:
    """The promotion gate: absolute bars, then relative improvement of mdape over the champion."""
    failures = []
    if new["mdape"] > params.max_mdape:
        failures.append(f"mdape {new['mdape']:.4f} > bar {params.max_mdape}")
    if new["ppe10"] < params.min_ppe10:
        failures.append(f"ppe10 {new['ppe10']:.4f} < bar {params.min_ppe10}")
    if failures:
        return False, "fails the absolute bars: " + "; ".join(failures)
    if champion is None:
        return True, f"no champion yet and the absolute bars pass (mdape {new['mdape']:.4f}, ppe10 {new['ppe10']:.4f})"
    gain = (champion["mdape"] - new["mdape"]) / champion["mdape"]
    verdict = (f"mdape {new['mdape']:.4f} vs champion {champion['mdape']:.4f}: relative improvement {gain:+.2%}, "
               f"required {params.min_relative_improvement:.2%}")
    return gain >= params.min_relative_improvement, verdict


def promote_step(settings: Settings, evaluation: dict, params: RetrainParams, lineage: Lineage) -> dict:
    c = tracking.client(settings)
    version = str(evaluation["model_version"])
    metrics = evaluation["metrics"]
    ok, reason = decide(metrics["new"], metrics.get("champion"), params)
    if lineage.run_type == "backfill":
        ok, reason = False, f"backfill runs evaluate but never promote ({reason})"
    elif not ok and params.force_promotion:
        ok, reason = True, f"forced by the run's force_promotion param ({reason})"
    current = tracking.champion_version(c, settings.model_name)
    previous = str(current.version) if current is not None else None
    decision = "promoted" if ok else "rejected"
    for k, v in {"promotion.decision": decision, "promotion.reason": reason,
                 "promotion.previous_champion": previous or "none",
                 "promotion.airflow_run_id": lineage.run_id}.items():
        c.set_model_version_tag(settings.model_name, version, k, v)
        c.set_tag(evaluation["mlflow_run_id"], k, v)
    if ok and previous != version:
        c.set_registered_model_alias(settings.model_name, tracking.CHAMPION, version)
    log.info("model v%s %s: %s", version, decision, reason)
    champion = version if ok else previous
    return {"model_version": version, "promoted": ok, "reason": reason, "previous_champion": previous,
            "champion_version": champion}
