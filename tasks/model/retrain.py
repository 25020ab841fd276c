"""The first retraining steps the ``price_model_retrain`` DAG wires: features and train.

Evaluation is in ``tasks/registry/evaluate.py``, the promotion policy in ``tasks/registry/policy.py`` and the
promote step in ``tasks/registry/promote.py``.

Each step takes and returns a small handoff model (``tasks.core.handoffs``: what XCom carries as JSON:
URIs, counts, versions, metrics), reads its inputs from the lake or the MLflow store, and can run again with the same
result: features are keyed by the window, a retried train reuses the model version an earlier try
registered (whatever state its MLflow run was left in) or marks that try orphan and trains once, the
evaluation is keyed by the window and the model version, and moving the alias is one call.
"""

from __future__ import annotations

import json
import logging
import tempfile
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from tasks.core import lake, storage, tracking
from tasks.core.faults import fault_point
from tasks.core.handoffs import FeatureTable, TrainedModel
from tasks.core.lineage import Lineage, training_window
from tasks.core.params import RetrainParams
from tasks.core.settings import Settings
from tasks.core.spec import DatasetSpec

if TYPE_CHECKING:
    from tasks.features.preprocessing import Preprocessing
    from tasks.model.config import ModelConfig
    from tasks.model.train import TrainResult

log = logging.getLogger(__name__)


def features_step(spec: DatasetSpec, settings: Settings, interval_end: date, params: RetrainParams) -> FeatureTable:
    from tasks.features.build import build_features

    fault_point("build_features", "start")
    start, end = training_window(interval_end, params.window_days)
    built = build_features(spec, settings.lake_uri, start, end, comps_mode=settings.comps)
    fault_point("build_features", "after_effect")
    return FeatureTable.model_validate(built)


def train_step(settings: Settings, features: FeatureTable, params: RetrainParams, lineage: Lineage) -> TrainedModel:
    """Train the window's model in an MLflow run, save and register its bundle. One model version per
    Airflow run: a retried task reuses the complete version an earlier try registered, even one killed before
    it could end its run, or marks what the earlier tries left orphan and trains once more
    (``tasks.model.attempts``)."""
    from tasks.features.preprocessing import load_preprocessing
    from tasks.model.attempts import settle

    fault_point("train", "start")
    c = tracking.client(settings)
    exp = tracking.experiment_id(c, settings)
    kept = settle(c, settings.model_name, tracking.find_runs(c, exp, lineage.dag_id, lineage.run_id, "train"))
    if kept is not None:
        log.info("reusing MLflow run %s and model version %s of an earlier try", kept.run.info.run_id,
                 kept.version.version)
        return reused_result(kept.run)
    prep = load_preprocessing(features.preprocessing_uri)
    cfg, config_source, tuning_run = model_config(settings, prep.dataset, params)
    tags = run_tags(lineage, features, prep.dataset, cfg.family, config_source, tuning_run)
    run = c.create_run(exp, run_name=f"{lineage.dag_id}__{lineage.run_id}", tags=tags)
    with _finished_or_failed(c, run.info.run_id):
        result = _train_logged(c, settings, run.info.run_id, cfg, prep, features, params)
        version = _save_and_register(c, settings, run, result, cfg, prep, features.features_uri, tags)
        fault_point("train", "after_effect")
    return train_result(run.info.run_id, version, result, cfg.family, config_source)


def reused_result(done) -> TrainedModel:
    """What ``train_step`` returns for the MLflow run of an earlier try whose model version it reuses."""
    return TrainedModel(mlflow_run_id=done.info.run_id, model_version=done.data.tags["model_version"],
                        val_rmse_ln=done.data.metrics.get("best/val_rmse_ln", done.data.metrics.get("best/val_rmse")),
                        reused=True,
                        refit=json.loads(done.data.tags.get("train.refit", "null")))


def run_tags(lineage: Lineage, features: FeatureTable, dataset: str, family: str, config_source: str,
             tuning_run: str | None) -> dict[str, str]:
    """The training run's tags: lineage, the data and preprocessing hashes, the model's family and origin."""
    tags = {**lineage.tags(), tracking.TAG_TASK: "train", "data.partitions": str(features.partitions),
            "data.partitions_sha256": features.partitions_sha256, "data.features_sha256": features.features_sha256,
            "preprocessing.sha256": features.preprocessing_sha256, "dataset": dataset,
            "model.family": family, "model.config_source": config_source}
    if tuning_run:
        tags["tuning.run_id"] = tuning_run
    return tags


def train_result(run_id: str, version, result: TrainResult, family: str, config_source: str) -> TrainedModel:
    """What ``train_step`` returns (XCom) for a model it trained."""
    return TrainedModel(mlflow_run_id=run_id, model_version=str(version), val_rmse_ln=result.val_error,
                        epochs=result.epochs_run, best_epoch=result.best_epoch,
                        train_seconds=round(result.seconds + ((result.refit or {}).get("seconds") or 0), 2),
                        refit=result.refit, model_family=family, config_source=config_source, reused=False)


@contextmanager
def _finished_or_failed(c, run_id: str) -> Iterator[None]:
    """Terminates the MLflow run FINISHED when the block completes, FAILED when it raises."""
    try:
        yield
        c.set_terminated(run_id, "FINISHED")
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise


def _train_logged(c, settings: Settings, run_id: str, cfg: ModelConfig, prep: Preprocessing, features: FeatureTable,
                  params: RetrainParams) -> TrainResult:
    """Train with Lightning logging into the run; its params before, its results after."""
    from pytorch_lightning.loggers import MLFlowLogger

    from tasks.model.train import train

    for k, v in {**cfg.model_dump(), **{f"rows_{s}": n for s, n in features.rows.items()}}.items():
        c.log_param(run_id, k, v)
    logger = MLFlowLogger(experiment_name=settings.experiment_name, tracking_uri=settings.mlflow_tracking_uri,
                          run_id=run_id)
    result = train(cfg, features.features_uri, prep, logger=logger, threads=settings.torch_threads,
                   refit=params.refit_on_val)
    _log_result(c, run_id, result, params.refit_on_val)
    return result


def _log_result(c, run_id: str, result: TrainResult, refit_on_val: bool) -> None:
    # rmse_ln only when the monitored error is on ln (a log target transform); rmse otherwise.
    c.log_metric(run_id, "best/val_rmse_ln" if "val_rmse_ln" in result.metrics else "best/val_rmse", result.val_error)
    c.log_param(run_id, "refit_on_val", refit_on_val)
    if result.refit is not None:
        c.set_tag(run_id, "train.refit", json.dumps(result.refit))
        if result.refit["done"]:
            c.log_metric(run_id, "refit/epochs", result.refit["epochs"])
            c.log_metric(run_id, "refit/rows", result.refit["rows"])
            c.log_metric(run_id, "refit/seconds", result.refit["seconds"])
    c.log_metric(run_id, "best/epoch", result.best_epoch)
    c.log_metric(run_id, "train_seconds", result.seconds)
    c.log_metric(run_id, "train_samples_per_second", result.metrics["samples_per_second"])


def _save_and_register(c, settings: Settings, run, result: TrainResult, cfg: ModelConfig, prep: Preprocessing,
                       features_uri: str, tags: dict[str, str]):
    """Log the bundle (also an MLflow pyfunc model: ``tasks.model.pyfunc``, its input example the first
    rows of the features table) and the features' manifest as the run's artifacts, register the bundle as a new
    version of the settings' model (tagged as the run, less the task, plus the bundle's file sizes, which a
    retry checks before reusing it) and tag the run with it."""
    from tasks.model.attempts import TAG_BUNDLE_SIZES
    from tasks.model.bundle import save_bundle

    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        save_bundle(Path(tmp) / "model", result.net, cfg, prep, example=example_rows(features_uri))
        sizes = {f.name: f.stat().st_size for f in sorted((Path(tmp) / "model").iterdir()) if f.is_file()}
        c.log_artifacts(run_id, str(Path(tmp) / "model"), "model")
        manifest = lake.manifest_uri(features_uri)
        (Path(tmp) / "manifest.json").write_bytes(storage.read_bytes(manifest))
        c.log_artifact(run_id, str(Path(tmp) / "manifest.json"), "lineage")
    tracking.ensure_registered_model(c, settings.model_name)
    given_up = c.get_run(run_id).data.tags.get(tracking.TAG_ORPHAN)  # by a later try: this one is a zombie
    if given_up:
        raise RuntimeError(f"MLflow run {run_id} was marked orphan by a later try of this task ({given_up}); "
                           "not registering a second model version for the Airflow run")
    mv = c.create_model_version(settings.model_name, source=f"{run.info.artifact_uri}/model", run_id=run_id,
                                tags={**{k: v for k, v in tags.items() if k != tracking.TAG_TASK},
                                      TAG_BUNDLE_SIZES: json.dumps(sizes, sort_keys=True)})
    c.set_tag(run_id, "model_version", mv.version)
    return mv.version


def example_rows(features_uri: str, n: int = 3):
    """The first ``n`` rows of the features table: the MLflow model's input example (its input columns)."""
    import polars as pl

    return pl.scan_parquet(features_uri).head(n).collect()


def model_config(settings: Settings, dataset: str, params: RetrainParams):
    """(ModelConfig, "tuned" | "defaults", tuning run id or None): the tuned configuration by default.

    Precedence (see ``tasks/model/tune.py``): Params changed from their defaults > the newest tuning result
    of the dataset (when ``use_tuned_config``) > the family's defaults.
    """
    from tasks.model.tune import best_config, resolve_config

    found = best_config(settings, dataset) if params.use_tuned_config else None
    cfg, source = resolve_config(params, found[0] if found else None)
    log.info("model configuration from %s: %s", source, cfg.model_dump())
    return cfg, source, (found[1] if found and source == "tuned" else None)
