"""The model's configuration: :class:`ModelConfig` (architecture and optimisation) and each family's defaults.

Plain pydantic, no torch: the tuning space and the retrain's choice of configuration use it without
loading a network. Every size is bounded (a ``model_config.json`` is an artifact, read from the
registry: data that must not make the loader allocate something absurd); ``tasks.model.networks``
also caps the parameter count of the network a configuration and a preprocessing would build.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

# Upper bounds of the sizes in a configuration (far above anything tuned: docs/model.md).
MAX_WIDTH, MAX_DEPTH, MAX_EMBEDDING, MAX_FREQUENCIES, MAX_K = 4096, 8, 256, 256, 64
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]


class ModelConfig(BaseModel):
    """Architecture and optimisation settings; logged as MLflow params and saved with the weights."""

    model_config = ConfigDict(allow_inf_nan=False)

    # mlp: plain MLP; mlp_plr: periodic embeddings of numeric features; tabm: mlp_plr's embeddings and a
    # parameter-efficient ensemble of ``k`` members sharing the MLP's weights (rank-1 adapters per member).
    family: Literal["mlp", "mlp_plr", "tabm"] = "mlp_plr"
    hidden: list[Width] = Field(default=[256, 256], max_length=MAX_DEPTH)  # widths of the hidden layers
    dropout: float = Field(default=0.1, ge=0, lt=1)
    cat_embedding_dim: int = Field(default=16, ge=1, le=MAX_EMBEDDING)  # embedding width of each categorical feature
    n_frequencies: int = Field(default=16, ge=1, le=MAX_FREQUENCIES)  # periodic embeddings: frequencies per feature
    frequency_scale: float = Field(default=0.1, gt=0, le=100)  # periodic embeddings: std of the initial frequencies
    num_embedding_dim: int = Field(default=16, ge=1, le=MAX_EMBEDDING)  # periodic embeddings: output width per feature
    lr: float = Field(default=1e-3, gt=0, le=10)
    weight_decay: float = Field(default=1e-4, ge=0, le=10)
    batch_size: int = Field(default=256, ge=1, le=1_048_576)
    max_epochs: int = Field(default=60, ge=1, le=100_000)
    patience: int = Field(default=8, ge=0, le=100_000)  # early stopping on val/rmse_ln
    seed: int = Field(default=42, ge=0, lt=2**63)
    k: int = Field(default=16, ge=1, le=MAX_K)  # tabm: ensemble members (BatchEnsemble adapters per member)
    # Training loss on standardized ln(price): mse, or huber (quadratic within huber_delta standard
    # deviations, linear beyond: a few wild sales weigh less). Validation always reports rmse_ln.
    loss: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(default=0.5, gt=0, le=1000)
    # Wall-clock cap on training (the best epoch so far is kept), and on a refit separately (tasks.model.train);
    # None: epochs and early stopping only.
    # Runs that hit it are no longer deterministic under the seed (how far they got depends on the machine).
    max_time_s: int | None = Field(default=None, ge=1, le=30 * 86400)
    # A refit on train + val (tasks.model.train) returns the average of the weights at the end of its last
    # this many epochs (1: its last epoch's weights). It has no validation rows to select an epoch on,
    # and its last epoch varied with the seed; the average of the last few varied less, and scored
    # better, in the backtests (docs/model.md).
    refit_average_epochs: int = Field(default=4, ge=1, le=100_000)
    # Clamp every numeric input to the range it had in training (learned at fit time, saved with the
    # weights), as trees do and as quantile-normalised inputs are: periodic embeddings map an
    # out-of-range value (market time after the training window) to an arbitrary point.
    clamp_inputs: bool = False
    # Quantile-transform (rank-Gauss) the numeric inputs whose preprocessing carries knots
    # (NumericStat.rank_knots: the clipped ones, in artifacts fitted since it exists) before the network
    # (tasks.model.networks.RankGauss); heavy tails (a land size) then spread over the embeddings' range.
    quantile_inputs: bool = True


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
