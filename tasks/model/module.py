"""Training with Lightning: the ``LightningModule`` and the in-memory ``LightningDataModule``.

As in lightning-hydra-template, :class:`PriceModule` holds the loss, one shared step for
train/val/test and the optimizer around a plain network (:mod:`tasks.model.networks`);
:class:`TabularDataModule` holds whole tensors and serves shuffled index slices
(:class:`tasks.model.tensors.IndexBatches`) rather than rows through a per-row ``__getitem__``
(docs/model.md).
"""

from __future__ import annotations

import math

import polars as pl
import pytorch_lightning as L
import torch
from torch import nn

from tasks.features.preprocessing import Preprocessing
from tasks.model.config import ModelConfig
from tasks.model.data import ShardedIndexBatches
from tasks.model.networks import TabularNet
from tasks.model.tensors import IndexBatches, to_tensors


def error_metric(target_transform: str) -> str:
    """The name of the RMSE the module logs: ``rmse_ln`` only when the target is ln(price) (the
    standardized target's RMSE times its std is then the RMSE of ln(price)); otherwise ``rmse`` (in the
    target's own units)."""
    return "rmse_ln" if target_transform == "log" else "rmse"


class PriceModule(L.LightningModule):
    def __init__(self, net: TabularNet, cfg: ModelConfig, target_std: float, lr_schedule: list[float] | None = None,
                 metric: str = "rmse_ln"):
        """``lr_schedule``: the learning rate of each epoch, replayed instead of reducing it when the
        validation loss plateaus (a refit, which has no validation rows of its own, replays the
        schedule of the run that chose its number of epochs). ``metric``: the name of the logged RMSE
        (:func:`error_metric` of the preprocessing's target transform)."""
        super().__init__()
        self.net, self.cfg, self.lr_schedule, self.metric = net, cfg, lr_schedule, metric
        # The target is standardized (ln) price: the RMSE in target units is the loss scaled back.
        self.target_std = target_std
        self._train_sums: torch.Tensor | None = None  # (sum of loss x n, sum of rmse x n, n) this epoch
        self._train_means: tuple[float, float] | None = None  # their means over all ranks, once an epoch

    def forward(self, x_num, x_cat):
        return self.net(x_num, x_cat)

    def _losses(self, batch, stage: str):
        x_num, x_cat, y = batch
        members = self.net.forward_members(x_num, x_cat)  # (B, k): every member is fitted on its own
        ensemble_mse = nn.functional.mse_loss(members.mean(dim=1), y)
        if stage != "train":
            loss = ensemble_mse
        elif self.cfg.loss == "huber":
            loss = nn.functional.huber_loss(members, y[:, None].expand_as(members), delta=self.cfg.huber_delta)
        else:
            loss = nn.functional.mse_loss(members, y[:, None].expand_as(members))
        # The target is standardized (ln) price: the rmse in target units is the ensemble's rmse scaled back.
        return loss, ensemble_mse.sqrt() * self.target_std, len(y)

    def _step(self, batch, stage: str):
        loss, rmse_ln, n = self._losses(batch, stage)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=n, prog_bar=True)
        self.log(f"{stage}/{self.metric}", rmse_ln, on_step=False, on_epoch=True, batch_size=n)
        return loss

    # Training metrics are summed here and logged once an epoch (the same batch-size-weighted means as
    # self.log(on_epoch=True) would give): every self.log in a training step makes Lightning move its
    # result collection to the device before each batch (its cost: docs/benchmarks.md, "Lightning
    # against the raw loop").
    def on_train_epoch_start(self) -> None:
        self._train_sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self._train_means = None

    def training_step(self, batch, _):
        loss, rmse_ln, n = self._losses(batch, "train")
        if self._train_sums is None:
            self.on_train_epoch_start()
        with torch.no_grad():
            self._train_sums += torch.stack([loss.detach().double() * n, rmse_ln.detach().double() * n,
                                             torch.tensor(float(n), dtype=torch.float64, device=self.device)])
        return loss

    def train_epoch_means(self) -> tuple[float, float] | None:
        """(loss, rmse) of this training epoch, means over the batches of every rank (the sums are
        reduced once an epoch: a collective call under DDP, so every rank calls it; cached)."""
        if self._train_means is None and self._train_sums is not None:
            sums = self._train_sums
            if self.trainer.world_size > 1:
                sums = self.trainer.strategy.reduce(sums.clone(), reduce_op="sum")
            total, rmse, n = sums.tolist()
            self._train_means = (total / n, rmse / n) if n else (math.nan, math.nan)
        return self._train_means

    def on_train_epoch_end(self) -> None:
        means = self.train_epoch_means()
        if means is not None and not math.isnan(means[0]):
            self.log("train/loss", means[0])
            self.log(f"train/{self.metric}", means[1])

    def validation_step(self, batch, _):
        self._step(batch, "val")

    def test_step(self, batch, _):
        self._step(batch, "test")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        if self.lr_schedule is not None:
            lrs = self.lr_schedule
            replay = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: lrs[min(e, len(lrs) - 1)] / self.cfg.lr)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": replay, "interval": "epoch"}}
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(self.cfg.patience // 2, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss"}}


class TabularDataModule(L.LightningDataModule):
    def __init__(self, frames: dict[str, pl.DataFrame], prep: Preprocessing, batch_size: int, seed: int):
        super().__init__()
        self.frames, self.prep, self.batch_size, self.seed = frames, prep, batch_size, seed
        self.data: dict[str, tuple[torch.Tensor, ...]] = {}

    def setup(self, stage: str | None = None) -> None:
        if not self.data:
            self.data = {name: to_tensors(self.prep, df) for name, df in self.frames.items()}

    def _loader(self, split: str, shuffle: bool):
        # training batches are sharded by rank (tasks.model.data); validation and test are whole on every rank
        if shuffle:
            ds = ShardedIndexBatches(self.data[split], self.batch_size, shuffle, self.seed)
        else:
            ds = IndexBatches(self.data[split], 8192, shuffle, self.seed)
        return torch.utils.data.DataLoader(ds, batch_size=None)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)
