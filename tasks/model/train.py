"""Training: ``train(cfg, features_uri, prep) -> TrainResult``, a plain function the DAG task calls.

Deterministic under ``cfg.seed`` (seeded shuffling, ``deterministic=True``); early stopping on the
validation RMSE of ln(price) (``val/rmse_ln``; ``val/rmse`` when the target is not ln(price):
``tasks.model.module.error_metric``); the best epoch's weights are kept in memory and returned, so nothing
is pickled. ``accelerator="auto"`` uses a GPU where there is one. One log line per epoch
(``tasks.model.progress``).

Devices: ``HOMEWORTH_TRAIN_DEVICES`` / ``_STRATEGY`` / ``_NUM_NODES`` (or train()'s arguments). With more
than one process in all, train() launches DDP worker processes of this module
(``python -m tasks.model.train --ddp-job DIR``, ``tasks.model.distributed``), each training its shard of
every epoch; rank 0 keeps the best weights, refits, and hands the result back.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytorch_lightning as L
import torch

from tasks.features.featureset import SPLIT, SPLITS
from tasks.features.preprocessing import Preprocessing
from tasks.model import distributed
from tasks.model.config import ModelConfig
from tasks.model.module import PriceModule, TabularDataModule, error_metric
from tasks.model.networks import TabularNet, build_net
from tasks.model.progress import EpochProgress

log = logging.getLogger(__name__)
MONITOR = "val/rmse_ln"  # the monitored metric when the target is ln(price) (monitor_of: otherwise)


def monitor_of(prep: Preprocessing) -> str:
    """The validation metric early stopping and the best weights follow: ``val/rmse_ln`` on ln(price)."""
    return f"val/{error_metric(prep.target_transform)}"


class BestWeights(L.Callback):
    """Keeps a copy of the weights of the epoch with the lowest ``monitor`` (``val/rmse_ln``). Under DDP
    every rank sees the same value (validation is not sharded) and the same weights; rank 0's are returned."""

    def __init__(self, monitor: str = MONITOR) -> None:
        self.best, self.best_epoch, self.state, self.monitor = float("inf"), -1, None, monitor

    def on_validation_epoch_end(self, trainer, module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) < self.best:
            self.best, self.best_epoch = float(value), trainer.current_epoch
            self.state = copy.deepcopy(module.net.state_dict())


class LearningRates(L.Callback):
    """The optimizer's learning rate at the start of each training epoch (what a refit replays)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.lrs.append(float(trainer.optimizers[0].param_groups[0]["lr"]))


class WeightAverage(L.Callback):
    """The mean of the network's weights at the end of each training epoch from ``first_epoch`` on
    (float64 sums; integer tensors keep their last value); :meth:`average` is the resulting state."""

    def __init__(self, first_epoch: int) -> None:
        self.first_epoch, self.count, self.sums, self.dtypes = first_epoch, 0, None, {}

    def on_train_epoch_end(self, trainer, module) -> None:
        if trainer.current_epoch < self.first_epoch:
            return
        state = module.net.state_dict()
        if self.sums is None:
            self.dtypes = {k: v.dtype for k, v in state.items()}
            self.sums = {k: v.detach().double().clone() if v.is_floating_point() else v.detach().clone()
                         for k, v in state.items()}
        else:
            for k, v in state.items():
                if v.is_floating_point():
                    self.sums[k] += v.detach().double()
                else:
                    self.sums[k] = v.detach().clone()
        self.count += 1

    def average(self) -> dict:
        return {k: (v / self.count).to(self.dtypes[k]) if self.dtypes[k].is_floating_point else v
                for k, v in self.sums.items()}


@dataclass
class TrainResult:
    net: TabularNet
    metrics: dict[str, float]
    best_epoch: int
    epochs_run: int
    seconds: float
    rows: dict[str, int] = field(default_factory=dict)
    # What the refit on train + val did (``train(refit=True)``): done, and epochs / rows / seconds, or why not.
    refit: dict | None = None

    @property
    def val_error(self) -> float:
        """The best validation error early stopping followed: ``val_rmse_ln`` (``val_rmse`` when the
        target is not ln(price), see ``tasks.model.module.error_metric``)."""
        return self.metrics["val_rmse_ln"] if "val_rmse_ln" in self.metrics else self.metrics["val_rmse"]


# Above this many training rows, train() streams the feature table (tasks/model/data.py) instead of
# holding it in memory; at or below it, the in-memory path (results as before out-of-core training).
IN_MEMORY_MAX_ROWS = 2_000_000
# When the training split is streamed, validate (and keep the best weights, count early-stopping
# patience) after every this many training samples, not only at the end of an epoch: an epoch of tens
# of millions of rows may outlast the time cap (max_time_s) before its end.
VAL_EVERY_SAMPLES = 1_000_000


def load_splits(features_uri: str, columns: list[str] | None = None) -> dict[str, pl.DataFrame]:
    """The whole feature table in memory, one frame per split (the small-data path; see train())."""
    from tasks.core.objectstore import storage_options

    df = pl.read_parquet(features_uri, columns=columns, storage_options=storage_options(features_uri))
    return {s: df.filter(pl.col(SPLIT) == s) for s in SPLITS}


def _set_clamp(net: TabularNet, prep: Preprocessing, df: pl.DataFrame) -> None:
    x = torch.as_tensor(prep.numeric_matrix(df))
    net.num_lo.copy_(x.min(dim=0).values)
    net.num_hi.copy_(x.max(dim=0).values)


def _data(cfg: ModelConfig, features_uri: str, prep: Preprocessing, net: TabularNet, in_memory_max_rows: int,
          buffer_rows: int | None) -> tuple[L.LightningDataModule, dict[str, int], dict[str, pl.DataFrame] | None]:
    """The DataModule, the rows per split and the frames (None when streamed): in memory up to
    ``in_memory_max_rows`` training rows, else streamed.

    Also sets the clamp range of ``net`` (``cfg.clamp_inputs``) from the training rows.
    """
    from tasks.model.data import BUFFER_ROWS, StreamingDataModule, numeric_range, parquet_file, split_counts

    # The whole table fits under the threshold (Parquet footer; local or object store): no need to count the split.
    small = parquet_file(features_uri).metadata.num_rows <= in_memory_max_rows
    counts = None if small else split_counts(features_uri)
    if counts is not None and counts["train"] > in_memory_max_rows:
        log.info("training split of %d rows > %d: streaming the feature table", counts["train"], in_memory_max_rows)
        if cfg.clamp_inputs and counts["train"]:
            lo, hi = numeric_range(features_uri, prep, "train")
            net.num_lo.copy_(lo)
            net.num_hi.copy_(hi)
        dm = StreamingDataModule(features_uri, prep, cfg.batch_size, cfg.seed,
                                 buffer_rows if buffer_rows is not None else BUFFER_ROWS, counts=counts)
        return dm, counts, None
    frames = load_splits(features_uri)
    dm = TabularDataModule({"train": frames["train"], "val": frames["val"]}, prep, cfg.batch_size, cfg.seed)
    if cfg.clamp_inputs and len(frames["train"]):
        _set_clamp(net, prep, frames["train"])
    return dm, {s: len(f) for s, f in frames.items()}, frames


def _may_use_cuda(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _trainer(max_epochs: int, accelerator: str, callbacks: list, max_time_s: int | None, logger=None,
             devices: dict | None = None, **extra) -> L.Trainer:
    """A deterministic Trainer that writes nothing (no checkpoints, progress bar or summary); one device
    unless ``devices`` (``devices`` / ``num_nodes`` / ``strategy`` of a DDP worker) says otherwise."""
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator=accelerator,
        **(devices or {"devices": 1}),
        # CUDA's embedding backward has no deterministic kernel: warn there instead of failing (a CUDA run is
        # close to, not equal to, a CPU run of the same seed); the CPU runs stay deterministic.
        deterministic="warn" if _may_use_cuda(accelerator) else True,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        max_time=timedelta(seconds=max_time_s) if max_time_s else None,
        **extra,
    )


def _val_every(cfg: ModelConfig, train_rows: int, in_memory_max_rows: int,
               limit_train_batches: int | float | None) -> int | None:
    """Validate every this many training batches: None (each epoch's end) in memory; streamed, every
    :data:`VAL_EVERY_SAMPLES` samples, at most once an epoch's batches."""
    if train_rows <= in_memory_max_rows:
        return None
    batches = math.ceil(train_rows / cfg.batch_size)
    if limit_train_batches is not None:
        batches = min(batches, limit_train_batches if isinstance(limit_train_batches, int)
                      else max(1, int(batches * limit_train_batches)))
    return max(1, min(batches, VAL_EVERY_SAMPLES // cfg.batch_size))


def _fit(trainer: L.Trainer, module: L.LightningModule, dm: L.LightningDataModule) -> float:
    """``trainer.fit``; its wall-clock seconds."""
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - t0


def train(
    cfg: ModelConfig,
    features_uri: str,
    prep: Preprocessing,
    logger: L.pytorch.loggers.Logger | None = None,  # type: ignore[name-defined]
    accelerator: str = "auto",
    threads: int = 0,
    limit_train_batches: int | float | None = None,
    in_memory_max_rows: int = IN_MEMORY_MAX_ROWS,
    buffer_rows: int | None = None,
    refit: bool = False,
    *,
    devices: str | int | None = None,
    strategy: str | None = None,
    num_nodes: int | None = None,
    precision: str | None = None,
    label: str = "train",
) -> TrainResult:
    """Train ``cfg``'s network on the feature table's train split, early-stopping on val.

    Up to ``in_memory_max_rows`` training rows the splits are loaded into memory
    (``TabularDataModule``); above it they are streamed from the Parquet file in row groups through a
    seeded shuffle buffer of ``buffer_rows`` rows (``tasks.model.data.StreamingDataModule``), so memory
    does not grow with the table.

    ``refit``: then train a fresh network (same seed) on train + val for the number of epochs the
    first run chose, replaying its learning rates, and return that one (:func:`_refit`; the
    validation metrics stay those of the first run, the only ones measured on unseen rows). The
    validation split holds the most recent sales before the test period; with a time split a model
    that has seen them predicted the next months better in the backtests. Its weights are averaged
    over its last ``cfg.refit_average_epochs`` epochs: its last epoch alone varied with the seed
    (docs/model.md).

    ``devices`` / ``strategy`` / ``num_nodes``: Lightning's; None takes the settings'
    (``HOMEWORTH_TRAIN_*``, default one device). More than one process in all: DDP worker processes
    (:mod:`tasks.model.distributed`; ``cfg.batch_size`` stays the global batch, each rank computing its
    share of it). ``precision``: Lightning's (``bf16-mixed``, ``16-mixed``; None: 32-bit). ``label``:
    the name in the per-epoch log lines (``tasks.model.progress``).
    """
    p = distributed.plan(devices, strategy, num_nodes, accelerator)
    opts = {"accelerator": accelerator, "threads": threads, "limit_train_batches": limit_train_batches,
            "in_memory_max_rows": in_memory_max_rows, "buffer_rows": buffer_rows, "refit": refit,
            "precision": precision, "label": label}
    if p.world > 1 and not distributed.in_worker():
        return _launch(p, cfg, features_uri, prep, logger, opts)
    ranks = {"devices": p.devices, "num_nodes": p.num_nodes, "strategy": p.strategy} if p.world > 1 else None
    return _train(cfg, features_uri, prep, logger, ranks, **opts)


def _train(cfg: ModelConfig, features_uri: str, prep: Preprocessing, logger, ranks: dict | None, accelerator: str,
           threads: int, limit_train_batches: int | float | None, in_memory_max_rows: int, buffer_rows: int | None,
           refit: bool, precision: str | None, label: str) -> TrainResult:
    """train() in this process: one device, or this rank of a DDP run (``ranks``: the Trainer's devices,
    num_nodes and strategy)."""
    if threads:
        torch.set_num_threads(threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    net = build_net(prep, cfg)
    dm, rows, frames = _data(cfg, features_uri, prep, net, in_memory_max_rows, buffer_rows)
    metric = error_metric(prep.target_transform)
    monitor = f"val/{metric}"
    module = PriceModule(net, cfg, prep.target_std, metric=metric)
    best, lrs = BestWeights(monitor), LearningRates()
    progress = EpochProgress(label, cfg.max_epochs, cfg.max_time_s, ("val/loss", monitor))
    extra = {"precision": precision} if precision else {}
    trainer = _trainer(cfg.max_epochs, accelerator,
                       [best, lrs, progress, L.callbacks.EarlyStopping(monitor, patience=cfg.patience, mode="min")],
                       cfg.max_time_s, logger, ranks, limit_train_batches=limit_train_batches,
                       val_check_interval=_val_every(cfg, rows["train"], in_memory_max_rows, limit_train_batches),
                       **extra)
    seconds = _same_on_every_rank(_fit(trainer, module, dm))
    if best.state is not None:
        net.load_state_dict(best.state)
    net.cpu().eval()
    metrics = {f"val_{metric}": best.best, "train_seconds": seconds,
               "samples_per_second": trainer.global_step * cfg.batch_size / seconds}  # (last batches may be short)
    log.info("trained %d epochs in %.1fs; best %s %.4f at epoch %d", trainer.current_epoch, seconds, monitor,
             best.best, best.best_epoch)
    refit_info = None
    if refit:
        refitted, refit_info = _refit(cfg, prep, frames, best.best_epoch, lrs.lrs, seconds, trainer.current_epoch,
                                      accelerator, limit_train_batches, ranks, extra, label)
        if refitted is not None:
            net = refitted
    return TrainResult(net=net, metrics=metrics, best_epoch=best.best_epoch, epochs_run=trainer.current_epoch,
                       seconds=seconds, rows=rows, refit=refit_info)


def _same_on_every_rank(seconds: float) -> float:
    """Rank 0's ``seconds`` on every rank (a tensor broadcast, no pickle): the refit's decision depends on it,
    and every rank must take the same one. As is without torch.distributed."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return seconds
    t = torch.tensor([seconds], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return float(t.item())


# A refit starts only if its estimated time (the first run's seconds per epoch, scaled to its epochs
# and rows) times this margin fits in cfg.max_time_s, which caps the refit on its own (a budget shared
# with the first run made the refit depend on the machine's load: skipped beside the test suite).
REFIT_TIME_MARGIN = 1.1


def _refit_skip_reason(cfg: ModelConfig, frames: dict[str, pl.DataFrame] | None, best_epoch: int, seconds: float,
                       epochs_run: int) -> str | None:
    """Why a refit on train + val is not done (see :func:`_refit`), or None: it is."""
    if frames is None:
        return "the training split was streamed"
    if best_epoch < 0 or not len(frames["val"]):
        return "no best epoch" if best_epoch < 0 else "no validation rows"
    epochs = best_epoch + 1
    rows = len(frames["train"]) + len(frames["val"])
    budget = cfg.max_time_s
    estimate = seconds / max(epochs_run, 1) * epochs * rows / max(len(frames["train"]), 1)
    if budget is not None and estimate * REFIT_TIME_MARGIN > budget:
        return f"max_time_s: about {estimate:.0f} s needed, the cap is {budget} s"
    return None


def _refit(cfg: ModelConfig, prep: Preprocessing, frames: dict[str, pl.DataFrame] | None, best_epoch: int,
           lrs: list[float], seconds: float, epochs_run: int, accelerator: str,
           limit_train_batches: int | float | None, ranks: dict | None = None, extra: dict | None = None,
           label: str = "train") -> tuple[TabularNet | None, dict]:
    """A fresh network (same seed and configuration) trained on train + val for ``best_epoch + 1``
    epochs with the learning rates ``lrs`` of those epochs, its weights averaged over the last
    ``cfg.refit_average_epochs`` of them (:class:`WeightAverage`): (the network, what was done), or (None,
    why not). Not done when the splits were streamed (the first run validated within epochs), when the
    first run had no best epoch or val has no rows, or when its estimated time passes ``cfg.max_time_s``
    (its own cap, as the first run has): then, or if the cap stops it before its last epoch, the
    first run's network is kept."""
    def skipped(reason: str) -> tuple[None, dict]:
        log.info("no refit on train + val: %s", reason)
        return None, {"done": False, "reason": reason}

    reason = _refit_skip_reason(cfg, frames, best_epoch, seconds, epochs_run)
    if reason is not None:
        return skipped(reason)
    epochs = best_epoch + 1
    rows = len(frames["train"]) + len(frames["val"])
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    net = build_net(prep, cfg)
    both = pl.concat([frames["train"], frames["val"]])
    if cfg.clamp_inputs:
        _set_clamp(net, prep, both)
    dm = TabularDataModule({"train": both, "val": frames["val"]}, prep, cfg.batch_size, cfg.seed)
    averaged = min(cfg.refit_average_epochs, epochs)
    average = WeightAverage(epochs - averaged)
    progress = EpochProgress(f"{label} refit", epochs, cfg.max_time_s, ())
    trainer = _trainer(epochs, accelerator, [average, progress], cfg.max_time_s, devices=ranks,
                       limit_val_batches=0, limit_train_batches=limit_train_batches, **(extra or {}))
    module = PriceModule(net, cfg, prep.target_std, lr_schedule=lrs[:epochs], metric=error_metric(prep.target_transform))
    took = _fit(trainer, module, dm)
    if trainer.current_epoch < epochs:
        return skipped(f"max_time_s stopped it after {trainer.current_epoch} of {epochs} epochs")
    net.load_state_dict(average.average())
    net.cpu().eval()
    log.info("refit on train + val: %d rows, %d epochs in %.1fs; weights averaged over the last %d", rows, epochs,
             took, averaged)
    return net, {"done": True, "epochs": epochs, "rows": rows, "seconds": round(took, 2), "averaged_epochs": averaged}


# ---------------------------------------------------------------------------------------------
# DDP: the launching task (_launch) and the worker processes (python -m tasks.model.train --ddp-job DIR)


def _mlflow_target(logger) -> dict | None:
    """Where an ``MLFlowLogger`` logs (rank 0 of the workers logs its epochs into the same run), or None."""
    from pytorch_lightning.loggers import MLFlowLogger

    if logger is None:
        return None
    if not isinstance(logger, MLFlowLogger):
        log.warning("DDP: the workers log epochs to MLflow only; %s is not passed on", type(logger).__name__)
        return None
    return {"experiment_name": logger._experiment_name, "tracking_uri": logger._tracking_uri, "run_id": logger.run_id}


def _launch(p: distributed.Plan, cfg: ModelConfig, features_uri: str, prep: Preprocessing, logger,
            opts: dict) -> TrainResult:
    """train() over ``p.world`` DDP processes (tasks.model.distributed): rank 0's result as a TrainResult."""
    threads = opts["threads"] or max(1, (os.cpu_count() or 1) // p.devices)  # no oversubscribed cores
    job = {"config": json.loads(cfg.model_dump_json()), "preprocessing": json.loads(prep.model_dump_json()),
           "features_uri": features_uri, "options": {**opts, "threads": threads}, "mlflow": _mlflow_target(logger),
           "threads": threads}
    state, figures = distributed.launch(p, job, threads)
    net = build_net(prep, cfg)
    net.load_state_dict(state)
    net.eval()
    return TrainResult(net=net, metrics=figures["metrics"], best_epoch=figures["best_epoch"],
                       epochs_run=figures["epochs_run"], seconds=figures["seconds"], rows=figures["rows"],
                       refit=figures["refit"])


def _worker(job_dir: Path) -> None:
    """One DDP rank of the job in ``job_dir``: trains its shard; rank 0 writes the result there."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    # Validation is not sharded (every rank scores the whole split) and the training sums are reduced by
    # PriceModule.train_epoch_means: Lightning's advice to sync_dist these epoch metrics does not apply.
    warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
    job = json.loads((job_dir / distributed.JOB).read_text())
    p = distributed.Plan(**job["plan"])
    logger = None
    if rank == 0 and job.get("mlflow"):
        from pytorch_lightning.loggers import MLFlowLogger

        logger = MLFlowLogger(**job["mlflow"])
    result = train(ModelConfig(**job["config"]), job["features_uri"], Preprocessing.model_validate(job["preprocessing"]),
                   logger, devices=p.devices, strategy=p.strategy, num_nodes=p.num_nodes, **job["options"])
    if rank == 0:
        figures = {"metrics": result.metrics, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                   "seconds": result.seconds, "rows": result.rows, "refit": result.refit}
        distributed.write_result(job_dir, result.net.state_dict(), figures)


def main(argv: list[str] | None = None) -> None:
    """``--ddp-job DIR``: a worker rank (launched by tasks.model.distributed); with ``--node-rank K``, start
    node K's workers of a multi-node job (docs/production.md, "Multi-device training")."""
    ap = argparse.ArgumentParser(prog="python -m tasks.model.train", description=main.__doc__)
    ap.add_argument("--ddp-job", type=Path, required=True)
    ap.add_argument("--node-rank", type=int, default=None)
    args = ap.parse_args(argv)
    if args.node_rank is not None:
        distributed.run_node(args.ddp_job, args.node_rank)
    elif distributed.in_worker():
        _worker(args.ddp_job)
    else:
        ap.error("--ddp-job without --node-rank runs only in a worker that tasks.model.distributed launched")


if __name__ == "__main__":
    main()
