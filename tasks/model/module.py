"""Training with Lightning: the ``LightningModule`` and the in-memory ``LightningDataModule``.

As in lightning-hydra-template, :class:`PriceModule` holds the loss, one shared step for
train/val/test and the optimizer around a plain network (:mod:`tasks.model.networks`);
:class:`TabularDataModule` holds whole tensors and serves shuffled index slices
(:class:`tasks.model.tensors.IndexBatches`) rather than rows through a per-row ``__getitem__``
(docs/model.md).
"""

from __future__ import annotations

import polars as pl
import pytorch_lightning as L
import torch
from torch import nn

from tasks.features.preprocessing import Preprocessing
from tasks.model.config import ModelConfig
from tasks.model.networks import TabularNet
from tasks.model.tensors import IndexBatches, to_tensors


class PriceModule(L.LightningModule):
    def __init__(self, net: TabularNet, cfg: ModelConfig, target_std: float, lr_schedule: list[float] | None = None):
        """``lr_schedule``: the learning rate of each epoch, replayed instead of reducing it when the
        validation loss plateaus (a refit, which has no validation rows of its own, replays the
        schedule of the run that chose its number of epochs)."""
        super().__init__()
        self.net, self.cfg, self.lr_schedule = net, cfg, lr_schedule
        # The target is standardized ln(price): rmse in ln units is the loss scaled back.
        self.target_std = target_std
        self._train_sums: torch.Tensor | None = None  # (sum of loss x n, sum of rmse_ln x n, n) this epoch

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
        # The target is standardized ln(price): rmse in ln units is the ensemble's rmse scaled back.
        return loss, ensemble_mse.sqrt() * self.target_std, len(y)

    def _step(self, batch, stage: str):
        loss, rmse_ln, n = self._losses(batch, stage)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=n, prog_bar=True)
        self.log(f"{stage}/rmse_ln", rmse_ln, on_step=False, on_epoch=True, batch_size=n)
        return loss

    # Training metrics are summed here and logged once an epoch (the same batch-size-weighted means as
    # self.log(on_epoch=True) would give): every self.log in a training step makes Lightning move its
    # result collection to the device before each batch (its cost: docs/benchmarks.md, "Lightning
    # against the raw loop").
    def on_train_epoch_start(self) -> None:
        self._train_sums = torch.zeros(3, dtype=torch.float64, device=self.device)

    def training_step(self, batch, _):
        loss, rmse_ln, n = self._losses(batch, "train")
        if self._train_sums is None:
            self.on_train_epoch_start()
        with torch.no_grad():
            self._train_sums += torch.stack([loss.detach().double() * n, rmse_ln.detach().double() * n,
                                             torch.tensor(float(n), dtype=torch.float64, device=self.device)])
        return loss

    def on_train_epoch_end(self) -> None:
        if self._train_sums is None:
            return
        total, rmse, n = self._train_sums.tolist()
        if n:
            self.log("train/loss", total / n)
            self.log("train/rmse_ln", rmse / n)

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
        ds = IndexBatches(self.data[split], self.batch_size if shuffle else 8192, shuffle, self.seed)
        return torch.utils.data.DataLoader(ds, batch_size=None)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)
