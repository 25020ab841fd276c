"""Hyperparameter tuning: a seeded sampler over a documented search space, trials, the best pick, MLflow.

The ``price_model_tune`` DAG wires these steps: features once (the retrain's ``features_step``),
:func:`sample_trials` plans the trials, :func:`run_trial` trains one (a mapped task per trial),
:func:`record_best` picks the trial with the lowest validation rmse_ln and records it.

**Search space** (:data:`SEARCH_SPACE`; ``family`` is drawn first from the run's ``families``):

| name | values | applies to |
|---|---|---|
| ``k`` | 8, 16, 24 | tabm (ensemble members) |
| ``width`` x ``depth`` | 128, 256 x 1, 2 | all (``hidden`` = depth layers of width) |
| ``dropout`` | 0, 0.1, 0.2 | all |
| ``num_embedding_dim``, ``n_frequencies`` | 8, 16 | tabm, mlp_plr (periodic embeddings) |
| ``frequency_scale`` | log-uniform 0.03 .. 0.3 | tabm, mlp_plr |
| ``lr`` | log-uniform 5e-4 .. 4e-3 | all (AdamW) |
| ``weight_decay`` | log-uniform 1e-5 .. 1e-3 | all |
| ``batch_size`` | 256, 512 | all |
| ``loss`` / ``huber_delta`` | mse, huber / 0.2, 0.3, 0.5, 1.0 | all |

**Sampler**: trial 0 is the default configuration of the first family (so a tuning result is never
worse on validation than the default it would replace); trial ``i > 0`` draws every value from
``numpy.random.default_rng([seed, i])`` (independent streams of one SeedSequence), so a trial
depends only on the seed and its index
(no state shared between mapped tasks; adding trials never changes earlier ones).

**Retries**: a retried trial reuses its earlier try's run, whatever state a kill left it in, when that run
logged the trial's metric (:func:`settle_trial`); other earlier runs are marked orphan (FAILED, tag
``homeworth.orphan``) and the trial trains once more.

**Logs**: each trial logs one line per epoch in its task log (``trial-3 epoch 2/60: train loss ..., val loss
..., val rmse_ln ..., elapsed ..., left at most ...``: ``tasks.model.progress``), and trains on the devices
of ``HOMEWORTH_TRAIN_DEVICES`` / ``_STRATEGY`` / ``_NUM_NODES`` as the retrain does.

**Result**: a run in the MLflow experiment ``<experiment>-tuning`` tagged ``homeworth.kind =
tuning-result`` and ``dataset = <spec name>``, with the best configuration as params and as the JSON
tag ``homeworth.best_config`` (each trial is a run of its own there, tagged ``tuning-trial``).

**Precedence in ``price_model_retrain``** (:func:`resolve_config`): with ``use_tuned_config`` (the
default) and a tuning result for the dataset, the newest result's configuration is the base; a
Param set to a value other than its default overrides it (``model_family``: a family other than the
tuned one starts from that family's defaults; ``max_epochs``, ``seed``: replace the tuned values).
Without a tuning result, or with ``use_tuned_config`` false, the base is the family's default
configuration (``tasks.model.config.FAMILY_DEFAULTS``) with the Params' values.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.core import tracking
from tasks.core.handoffs import FeatureTable, Trial, TrialResult, TuningResult
from tasks.core.settings import Settings
from tasks.model.config import ModelConfig, default_config

if TYPE_CHECKING:
    from tasks.core.lineage import Lineage
    from tasks.core.params import RetrainParams

log = logging.getLogger(__name__)

TUNING_SUFFIX = "-tuning"
TAG_KIND, TAG_BEST, TAG_DATASET, TAG_TRIAL = "homeworth.kind", "homeworth.best_config", "dataset", "homeworth.trial"
KIND_RESULT, KIND_TRIAL = "tuning-result", "tuning-trial"
MONITOR = "val_rmse_ln"


@dataclass(frozen=True)
class Choice:
    values: tuple

    def sample(self, rng: "np.random.Generator") -> Any:
        return self.values[int(rng.integers(len(self.values)))]


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float

    def sample(self, rng: "np.random.Generator") -> float:
        value = math.exp(float(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(f"{value:.3g}")  # readable in MLflow and the UI


SEARCH_SPACE: dict[str, Choice | LogUniform] = {
    "k": Choice((8, 16, 24)),
    "width": Choice((128, 256)),
    "depth": Choice((1, 2)),
    "dropout": Choice((0.0, 0.1, 0.2)),
    "num_embedding_dim": Choice((8, 16)),
    "n_frequencies": Choice((8, 16)),
    "frequency_scale": LogUniform(0.03, 0.3),
    "lr": LogUniform(5e-4, 4e-3),
    "weight_decay": LogUniform(1e-5, 1e-3),
    "batch_size": Choice((256, 512)),
    "loss": Choice(("mse", "huber")),
    "huber_delta": Choice((0.2, 0.3, 0.5, 1.0)),
}


def tuning_settings(settings: Settings) -> Settings:
    """The settings with the tuning experiment's name."""
    return settings.model_copy(update={"experiment_name": settings.experiment_name + TUNING_SUFFIX})


def sample_config(rng: "np.random.Generator", families: list[str], max_epochs: int, max_time_s: int | None = None) -> dict:
    """One configuration drawn from :data:`SEARCH_SPACE` (values of every name are drawn, in order)."""
    family = Choice(tuple(sorted(families))).sample(rng)
    v = {name: dist.sample(rng) for name, dist in SEARCH_SPACE.items()}
    cfg: dict[str, Any] = {"family": family, "hidden": [v["width"]] * v["depth"], "dropout": v["dropout"], "lr": v["lr"],
                           "weight_decay": v["weight_decay"], "batch_size": v["batch_size"], "loss": v["loss"],
                           "max_epochs": max_epochs, "max_time_s": max_time_s}
    if v["loss"] == "huber":
        cfg["huber_delta"] = v["huber_delta"]
    if family in ("tabm", "mlp_plr"):
        cfg.update(num_embedding_dim=v["num_embedding_dim"], n_frequencies=v["n_frequencies"],
                   frequency_scale=v["frequency_scale"])
    if family == "tabm":
        cfg["k"] = v["k"]
    out = json.loads(ModelConfig(**cfg).model_dump_json())
    if family != "tabm":
        out.pop("k")  # not a parameter of this family: keep the record honest
    return out


def sample_trials(n_trials: int, seed: int, families: list[str], max_epochs: int,
                  max_time_s: int | None = None) -> list[Trial]:
    """Trial 0 the default configuration, the others drawn (seeded); each config a ``ModelConfig`` as JSON.

    ``max_time_s`` caps each trial's training (and so the retrain that later uses the configuration).
    """
    first = "tabm" if "tabm" in families else families[0]
    cap = {"max_time_s": max_time_s} if max_time_s else {}
    trials = [Trial(trial=0, config=json.loads(default_config(first, max_epochs=max_epochs, **cap).model_dump_json()))]
    if first != "tabm":
        trials[0].config.pop("k")
    for i in range(1, n_trials):
        rng = np.random.default_rng([seed, i])
        trials.append(Trial(trial=i, config=sample_config(rng, list(families), max_epochs, max_time_s)))
    return trials


def pick_best(results: list[TrialResult]) -> TrialResult:
    """The trial with the lowest finite validation rmse_ln (ties: the lower trial index)."""
    ok = [r for r in results if r.val_rmse_ln is not None and math.isfinite(r.val_rmse_ln)]
    if not ok:
        raise ValueError(f"no trial finished with a finite {MONITOR}: {[r.to_xcom() for r in results]}")
    return min(ok, key=lambda r: (r.val_rmse_ln, r.trial))


# ---------------------------------------------------------------------------------------------
# Steps (the DAG's tasks)


def run_trial(settings: Settings, features: FeatureTable, trial: Trial, lineage: "Lineage") -> TrialResult:
    """Train one trial's configuration on the features; a run in the tuning experiment. Returns its result."""
    from tasks.features.preprocessing import load_preprocessing
    from tasks.model.train import train

    ts = tuning_settings(settings)
    c = tracking.client(ts)
    exp = tracking.experiment_id(c, ts)
    task = f"trial-{trial.trial}"
    done = settle_trial(c, tracking.find_runs(c, exp, lineage.dag_id, lineage.run_id, task))
    if done is not None:
        log.info("reusing MLflow run %s of trial %s from an earlier try", done.info.run_id, trial.trial)
        m = done.data.metrics
        return TrialResult(trial=trial.trial, config=trial.config, val_rmse_ln=m.get(MONITOR),
                           best_epoch=int(m["best_epoch"]) if "best_epoch" in m else None,
                           seconds=m.get("train_seconds"), mlflow_run_id=done.info.run_id, reused=True)
    cfg = ModelConfig(**trial.config)
    prep = load_preprocessing(features.preprocessing_uri)
    tags = {**lineage.tags(), tracking.TAG_TASK: task, TAG_KIND: KIND_TRIAL, TAG_TRIAL: str(trial.trial),
            TAG_DATASET: prep.dataset, "preprocessing.sha256": features.preprocessing_sha256}
    run = c.create_run(exp, run_name=f"{lineage.run_id}__{task}", tags=tags)
    try:
        for k, v in cfg.model_dump().items():
            c.log_param(run.info.run_id, k, v)
        result = train(cfg, features.features_uri, prep, threads=settings.torch_threads, devices=settings.train_devices,
                       strategy=settings.train_strategy, num_nodes=settings.train_num_nodes, label=task)
        value = result.val_error
        if math.isfinite(value):
            c.log_metric(run.info.run_id, MONITOR, value)
        c.log_metric(run.info.run_id, "best_epoch", result.best_epoch)
        c.log_metric(run.info.run_id, "train_seconds", result.seconds)
        c.set_terminated(run.info.run_id, "FINISHED")
    except BaseException:
        c.set_terminated(run.info.run_id, "FAILED")
        raise
    log.info("trial %s (%s): val rmse_ln %.4f in %.0fs", trial.trial, cfg.family, value, result.seconds)
    return TrialResult(trial=trial.trial, config=trial.config, val_rmse_ln=value, best_epoch=result.best_epoch,
                       epochs=result.epochs_run, seconds=round(result.seconds, 1), mlflow_run_id=run.info.run_id,
                       reused=False)


def settle_trial(c, runs: list):
    """The earlier try's run of a trial to reuse, or None; every other earlier run is marked orphan (FAILED,
    tag ``homeworth.orphan``). Reused: a FINISHED run (its metric is absent only when training diverged: the
    result is then None, as the first try returned), else a run a killed try left with the metric logged (it
    is ended FINISHED). ``runs``: newest first."""
    usable = [r for r in runs if not r.data.tags.get(tracking.TAG_ORPHAN)
              and (r.info.status == "FINISHED" or MONITOR in r.data.metrics)]
    done = min(usable, key=lambda r: r.info.status != "FINISHED", default=None)
    reusable = {r.info.run_id for r in usable}
    for r in runs:
        if r is done:
            continue
        why = (f"superseded by run {done.info.run_id} of the same trial" if r.info.run_id in reusable
               else f"attempt ended {r.info.status} before logging {MONITOR}")
        tracking.mark_orphan_run(c, r, why)
    if done is not None and done.info.status != "FINISHED":
        c.set_terminated(done.info.run_id, "FINISHED")
        done = c.get_run(done.info.run_id)
    return done


def record_best(settings: Settings, dataset: str, features: FeatureTable, results: list[TrialResult],
                lineage: "Lineage") -> TuningResult:
    """Pick the best trial by validation rmse_ln and record it as the dataset's tuning result in MLflow."""
    ts = tuning_settings(settings)
    c = tracking.client(ts)
    exp = tracking.experiment_id(c, ts)
    runs = tracking.find_runs(c, exp, lineage.dag_id, lineage.run_id, "record_best")
    done = next((r for r in runs if r.info.status == "FINISHED" and r.data.tags.get(TAG_BEST)), None)
    for r in runs:
        if r.info.status != "FINISHED":  # a killed try's result run, never found by best_config: say so
            tracking.mark_orphan_run(c, r, f"attempt ended {r.info.status} before recording the result")
    if done is not None:
        return TuningResult(best=json.loads(done.data.tags[TAG_BEST]), best_trial=int(done.data.tags.get(TAG_TRIAL, -1)),
                            val_rmse_ln=done.data.metrics.get(f"best/{MONITOR}"), mlflow_run_id=done.info.run_id,
                            reused=True)
    best = pick_best(results)
    config = best.config
    tags = {**lineage.tags(), tracking.TAG_TASK: "record_best", TAG_KIND: KIND_RESULT, TAG_DATASET: dataset,
            TAG_BEST: json.dumps(config, sort_keys=True), TAG_TRIAL: str(best.trial),
            "preprocessing.sha256": features.preprocessing_sha256, "data.features_sha256": features.features_sha256}
    run = c.create_run(exp, run_name=f"{lineage.dag_id}__{lineage.run_id}__best", tags=tags)
    try:
        for k, v in config.items():
            c.log_param(run.info.run_id, k, v)
        c.log_metric(run.info.run_id, f"best/{MONITOR}", best.val_rmse_ln)
        c.log_metric(run.info.run_id, "n_trials", len(results))
        table = sorted((r.model_dump(include={"trial", MONITOR, "seconds", "mlflow_run_id", "config"}) for r in results),
                       key=lambda r: r["trial"])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "trials.json").write_text(json.dumps(table, indent=2))
            c.log_artifact(run.info.run_id, str(Path(tmp) / "trials.json"), "tuning")
        c.set_terminated(run.info.run_id, "FINISHED")
    except BaseException:
        c.set_terminated(run.info.run_id, "FAILED")
        raise
    log.info("best of %d trials: trial %s, val rmse_ln %.4f: %s", len(results), best.trial, best.val_rmse_ln, config)
    return TuningResult(best=config, best_trial=best.trial, val_rmse_ln=best.val_rmse_ln, mlflow_run_id=run.info.run_id,
                        trials=[{"trial": r.trial, "family": r.config["family"], MONITOR: r.val_rmse_ln} for r in results],
                        reused=False)


# ---------------------------------------------------------------------------------------------
# Reading the result back (price_model_retrain)


def best_config(settings: Settings, dataset: str) -> tuple[dict, str] | None:
    """(configuration, MLflow run id) of the newest tuning result for ``dataset``, or None."""
    ts = tuning_settings(settings)
    c = tracking.client(ts)
    exp = c.get_experiment_by_name(ts.experiment_name)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id],
                         filter_string=f"tags.`{TAG_KIND}` = '{KIND_RESULT}' and tags.`{TAG_DATASET}` = '{dataset}' "
                                       "and attributes.status = 'FINISHED'",
                         order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    return json.loads(runs[0].data.tags[TAG_BEST]), runs[0].info.run_id


def resolve_config(params: "RetrainParams", tuned: dict | None) -> tuple["ModelConfig", str]:
    """The retrain's model configuration and where it came from (``tuned`` or ``defaults``); see the module doc."""
    from tasks.core.params import RetrainParams

    defaults = RetrainParams()
    family_set = params.model_family != defaults.model_family
    if tuned is not None and params.use_tuned_config and (not family_set or tuned.get("family") == params.model_family):
        cfg = dict(tuned)
        if params.max_epochs != defaults.max_epochs:
            cfg["max_epochs"] = params.max_epochs
        if params.seed != defaults.seed:
            cfg["seed"] = params.seed
        return ModelConfig(**cfg), "tuned"
    return default_config(params.model_family, max_epochs=params.max_epochs, seed=params.seed), "defaults"
