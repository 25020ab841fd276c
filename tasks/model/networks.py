"""The network, its LightningModule and DataModule, and the saved model bundle.

Three layers, as in lightning-hydra-template: ``TabularNet`` is a plain ``nn.Module``;
``PriceModule`` holds the loss, one shared step for train/val/test and the optimizer;
``TabularDataModule`` holds whole tensors and serves shuffled index slices (a per-row
``__getitem__`` DataLoader is several times slower on tabular data).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import polars as pl
import pytorch_lightning as L
import torch
from pydantic import BaseModel, Field
from torch import nn

from tasks.features.preprocessing import Preprocessing


class ModelConfig(BaseModel):
    """Architecture and optimisation settings; logged as MLflow params and saved with the weights."""

    # mlp: plain MLP; mlp_plr: periodic embeddings of numeric features; tabm: mlp_plr's embeddings and a
    # parameter-efficient ensemble of ``k`` members sharing the MLP's weights (rank-1 adapters per member).
    family: Literal["mlp", "mlp_plr", "tabm"] = "mlp_plr"
    hidden: list[int] = Field(default=[256, 256])  # widths of the hidden layers
    dropout: float = 0.1
    cat_embedding_dim: int = 16  # embedding width of each categorical feature
    n_frequencies: int = 16  # periodic embeddings: frequencies per feature
    frequency_scale: float = 0.1  # periodic embeddings: std of the initial frequencies
    num_embedding_dim: int = 16  # periodic embeddings: output width per feature
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 60
    patience: int = 8  # early stopping on val/rmse_ln
    seed: int = 42
    k: int = Field(default=16, ge=1, le=64)  # tabm: ensemble members (BatchEnsemble adapters per member)
    # Training loss on standardized ln(price): mse, or huber (quadratic within huber_delta standard
    # deviations, linear beyond: a few wild sales weigh less). Validation always reports rmse_ln.
    loss: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(default=0.5, gt=0)
    # Wall-clock cap on training (the best epoch so far is kept), and on a refit separately (tasks.model.train);
    # None: epochs and early stopping only.
    # Runs that hit it are no longer deterministic under the seed (how far they got depends on the machine).
    max_time_s: int | None = Field(default=None, ge=1)
    # A refit on train + val (tasks.model.train) returns the average of the weights at the end of its last
    # this many epochs (1: its last epoch's weights). It has no validation rows to select an epoch on,
    # and its last epoch varied with the seed; the average of the last few varied less, and scored
    # better, in the backtests (docs/model.md).
    refit_average_epochs: int = Field(default=4, ge=1)
    # Clamp every numeric input to the range it had in training (learned at fit time, saved with the
    # weights), as trees do and as quantile-normalised inputs are: periodic embeddings map an
    # out-of-range value (market time after the training window) to an arbitrary point.
    clamp_inputs: bool = False


# The default configuration of each family (what a retrain uses without a tuning result). The tabm
# default was compared on the King County time split with gradient boosting (docs/model.md).
FAMILY_DEFAULTS: dict[str, dict] = {
    "tabm": {"family": "tabm", "k": 16, "hidden": [256], "dropout": 0.1, "num_embedding_dim": 8, "n_frequencies": 8,
             "frequency_scale": 0.1, "lr": 2e-3, "weight_decay": 3e-4, "batch_size": 512, "loss": "huber",
             "huber_delta": 0.3, "max_time_s": 200},
    "mlp_plr": {"family": "mlp_plr"},
    "mlp": {"family": "mlp"},
}


def default_config(family: str, **overrides) -> ModelConfig:
    """The family's default configuration, with ``overrides`` (e.g. max_epochs, seed) applied."""
    return ModelConfig(**{**FAMILY_DEFAULTS[family], **overrides})


class PeriodicEmbedding(nn.Module):
    """x -> ReLU(W [sin(2 pi c x), cos(2 pi c x)]) per feature (Gorishniy et al., 2022, "PLR")."""

    def __init__(self, n_features: int, n_frequencies: int, scale: float, d_out: int):
        super().__init__()
        self.coefficients = nn.Parameter(torch.randn(n_features, n_frequencies) * scale)
        self.weight = nn.Parameter(torch.empty(n_features, 2 * n_frequencies, d_out))
        self.bias = nn.Parameter(torch.zeros(n_features, d_out))
        nn.init.uniform_(self.weight, -1 / math.sqrt(2 * n_frequencies), 1 / math.sqrt(2 * n_frequencies))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, n * d_out)
        z = 2 * math.pi * self.coefficients[None] * x[..., None]
        z = torch.cat([torch.sin(z), torch.cos(z)], dim=-1)
        z = torch.einsum("bnf,nfd->bnd", z, self.weight) + self.bias
        return torch.relu(z).flatten(1)


class BatchEnsembleLinear(nn.Module):
    """``k`` linear layers sharing one weight matrix: member i computes ((x * r_i) W) * s_i + b_i.

    BatchEnsemble (Wen et al., 2020) as TabM uses it (Gorishniy et al., 2024, yandex-research/tabm):
    the rank-1 adapters r, s and the biases are the only per-member parameters. ``r_init`` is
    "random-signs" for the first layer (the members start different) and "ones" after it.
    """

    def __init__(self, d_in: int, d_out: int, k: int, r_init: Literal["ones", "random-signs"] = "ones"):
        super().__init__()
        bound = 1 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(d_in, d_out).uniform_(-bound, bound))
        self.r = nn.Parameter(torch.ones(k, d_in))
        if r_init == "random-signs":
            with torch.no_grad():
                self.r.copy_(torch.randint(0, 2, (k, d_in)).float() * 2 - 1)
        self.s = nn.Parameter(torch.ones(k, d_out))
        self.bias = nn.Parameter(torch.empty(d_out).uniform_(-bound, bound).repeat(k, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, k, d_in) -> (B, k, d_out)
        return (x * self.r) @ self.weight * self.s + self.bias


class LinearEnsemble(nn.Module):
    """``k`` independent linear layers (the members' own output heads)."""

    def __init__(self, d_in: int, d_out: int, k: int):
        super().__init__()
        bound = 1 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(k, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(k, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, k, d_in) -> (B, k, d_out)
        return torch.einsum("bki,kio->bko", x, self.weight) + self.bias


class TabularNet(nn.Module):
    """Embeddings of the inputs, then an MLP (``mlp``, ``mlp_plr``) or a TabM ensemble (``tabm``).

    ``forward`` returns one prediction per row (the mean of the members for ``tabm``);
    ``forward_members`` returns every member's, shape (B, k), which training fits one by one.
    """

    def __init__(self, n_numeric: int, cardinalities: list[int], cfg: ModelConfig):
        super().__init__()
        self.family = cfg.family
        if cfg.clamp_inputs:  # set by tasks.model.train.train from the training rows
            self.register_buffer("num_lo", torch.full((n_numeric,), -torch.inf))
            self.register_buffer("num_hi", torch.full((n_numeric,), torch.inf))
        self.embeddings = nn.ModuleList([nn.Embedding(c + 1, cfg.cat_embedding_dim) for c in cardinalities])
        if cfg.family in ("mlp_plr", "tabm"):
            self.numeric = PeriodicEmbedding(n_numeric, cfg.n_frequencies, cfg.frequency_scale, cfg.num_embedding_dim)
            d_num = n_numeric * cfg.num_embedding_dim
        else:
            self.numeric = nn.Identity()
            d_num = n_numeric
        d = d_num + len(cardinalities) * cfg.cat_embedding_dim
        if cfg.family == "tabm":
            self.k = cfg.k
            blocks: list[nn.Module] = []
            for i, width in enumerate(cfg.hidden):
                blocks += [BatchEnsembleLinear(d, width, cfg.k, "random-signs" if i == 0 else "ones"), nn.ReLU(),
                           nn.Dropout(cfg.dropout)]
                d = width
            self.backbone = nn.Sequential(*blocks)
            self.head = LinearEnsemble(d, 1, cfg.k)
        else:
            self.k = 1
            layers: list[nn.Module] = []
            for width in cfg.hidden:
                layers += [nn.Linear(d, width), nn.ReLU(), nn.Dropout(cfg.dropout)]
                d = width
            layers.append(nn.Linear(d, 1))
            self.mlp = nn.Sequential(*layers)

    def _inputs(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "num_lo"):
            x_num = torch.minimum(torch.maximum(x_num, self.num_lo), self.num_hi)
        parts = [self.numeric(x_num)] + [emb(x_cat[:, i]) for i, emb in enumerate(self.embeddings)]
        return torch.cat(parts, dim=1)

    def forward_members(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        x = self._inputs(x_num, x_cat)
        if self.family != "tabm":
            return self.mlp(x)  # (B, 1)
        x = x.unsqueeze(1).expand(-1, self.k, -1)
        return self.head(self.backbone(x)).squeeze(-1)  # (B, k)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        return self.forward_members(x_num, x_cat).mean(dim=1)


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
    # result collection to the device before each batch, ~1 ms a batch on a CPU, ~10% of a step.
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


class IndexBatches(torch.utils.data.IterableDataset):
    """Whole batches sliced from in-memory tensors; shuffled per epoch with a seeded generator."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, shuffle: bool, seed: int):
        self.tensors, self.batch_size, self.shuffle, self.seed, self.epoch = tensors, batch_size, shuffle, seed, 0

    def __len__(self) -> int:
        return math.ceil(len(self.tensors[0]) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(self.tensors[0])
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            self.epoch += 1
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for idx in order.split(self.batch_size):
            yield tuple(t[idx] for t in self.tensors)


def to_tensors(prep: Preprocessing, df: pl.DataFrame, with_target: bool = True) -> tuple[torch.Tensor, ...]:
    x_num = torch.as_tensor(np.array(prep.numeric_matrix(df), copy=True))
    x_cat = torch.as_tensor(np.array(prep.categorical_matrix(df), copy=True))
    if not with_target:
        return x_num, x_cat
    return x_num, x_cat, torch.from_numpy(prep.encode_rows(df))


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


# ---------------------------------------------------------------------------------------------
# The saved bundle: weights (safetensors, no pickle), config and preprocessing, all plain files.

WEIGHTS, CONFIG, PREPROCESSING = "model.safetensors", "model_config.json", "preprocessing.json"


def save_bundle(directory: Path, net: TabularNet, cfg: ModelConfig, prep: Preprocessing) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(cfg.model_dump_json(indent=2))
    (directory / PREPROCESSING).write_text(prep.model_dump_json(indent=2))


class ModelBundle:
    """A trained model ready to score validated rows: features (comps, derive), preprocess, forward, decode.

    A model whose preprocessing uses comparable sales needs the history of validated sales to score
    new rows: ``predict(df, history=...)`` takes it (a frame of validated sales, or a
    ``tasks.features.comps.LakeHistory``); without one it uses ``self.history``, else the validated
    partitions of the settings' lake (re-read only when they change). Only sales dated before each
    row are used.
    """

    def __init__(self, net: TabularNet, cfg: ModelConfig, prep: Preprocessing, history=None):
        self.net, self.cfg, self.prep, self.history = net.eval(), cfg, prep, history

    @classmethod
    def load(cls, directory: str | Path, history=None) -> "ModelBundle":
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg = ModelConfig.model_validate_json((directory / CONFIG).read_text())
        prep = Preprocessing.model_validate_json((directory / PREPROCESSING).read_text())
        net = TabularNet(len(prep.numeric), [len(v.values) for v in prep.categorical], cfg)
        net.load_state_dict(load_file(str(directory / WEIGHTS)))
        return cls(net, cfg, prep, history)

    def history_frame(self, history=None) -> pl.DataFrame | pl.LazyFrame | None:
        """The comps history to use: the argument, ``self.history``, or the settings' lake."""
        if self.prep.comps is None:
            return None
        h = history if history is not None else self.history
        if h is None:
            from tasks.core.settings import get_settings
            from tasks.features.comps import lake_history

            h = lake_history(get_settings().lake_uri, self.prep.comps)
        return h.frame() if hasattr(h, "frame") else h

    def features(self, df: pl.DataFrame, history=None) -> pl.DataFrame:
        """Every input column for validated rows: comparable sales (if the model uses them), then derive."""
        h = self.history_frame(history)
        if h is not None and not isinstance(h, pl.LazyFrame) and h.height == 0:
            h = pl.DataFrame(schema=df.select(self.prep.comps.input_columns(with_target=True)).schema)
        return self.prep.features(df, h).collect()

    def predict_features(self, df: pl.DataFrame) -> np.ndarray:
        """Prices for rows that already carry the derived features."""
        x_num, x_cat = to_tensors(self.prep, df, with_target=False)
        out = []
        with torch.inference_mode():
            for i in range(0, len(x_num), 8192):
                out.append(self.net(x_num[i : i + 8192], x_cat[i : i + 8192]).numpy())
        z = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        return self.prep.decode_rows(z, df)

    def predict(self, df: pl.DataFrame, history=None) -> np.ndarray:
        """Prices for validated rows (the spec's columns, typed); ``history``: see the class doc."""
        return self.predict_features(self.features(df, history))

    def describe(self) -> dict:
        return json.loads(self.cfg.model_dump_json())
