"""The networks: plain ``nn.Module`` s, no training logic (that is :mod:`tasks.model.module`).

``TabularNet`` embeds the inputs (an embedding per categorical feature; the numeric features as they
are, or through :class:`PeriodicEmbedding`), then runs an MLP (``mlp``, ``mlp_plr``) or a TabM
ensemble (``tabm``: :class:`BatchEnsembleLinear` layers and a :class:`LinearEnsemble` head).

:func:`network_size` counts what a configuration and a preprocessing would build, and ``TabularNet``
refuses one over :data:`MAX_PARAMETERS` parameters or :data:`MAX_ROW_ACTIVATIONS` activations per row
before allocating anything (both artifacts come from the registry: data, bounded like any input).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from tasks.model.config import ModelConfig

if TYPE_CHECKING:
    from tasks.features.preprocessing import Preprocessing


# Far above the tuned networks (about 10^5 to 10^6 parameters, 10^4 activations per row).
MAX_PARAMETERS = 50_000_000
MAX_ROW_ACTIVATIONS = 131_072


def network_size(n_numeric: int, cardinalities: list[int], cfg: ModelConfig) -> tuple[int, int]:
    """(parameters, widest activation per row in floats) of ``TabularNet(n_numeric, cardinalities, cfg)``."""
    params = sum((c + 1) * cfg.cat_embedding_dim for c in cardinalities)
    widest = n_numeric
    if cfg.family in ("mlp_plr", "tabm"):
        f, d_out = cfg.n_frequencies, cfg.num_embedding_dim
        params += n_numeric * (f + 2 * f * d_out + d_out)
        widest = max(widest, n_numeric * max(2 * f, d_out))
        d = n_numeric * d_out
    else:
        d = n_numeric
    d += len(cardinalities) * cfg.cat_embedding_dim
    k = cfg.k if cfg.family == "tabm" else 1
    widest = max(widest, d * k)
    for width in cfg.hidden:
        params += d * width + (k * (d + 2 * width) if cfg.family == "tabm" else width)
        widest = max(widest, width * k)
        d = width
    return params + k * (d + 1), widest


def check_size(n_numeric: int, cardinalities: list[int], cfg: ModelConfig) -> None:
    """Refuse (ValueError) a network over the parameter or per-row activation budget, before allocating it."""
    params, widest = network_size(n_numeric, cardinalities, cfg)
    if params > MAX_PARAMETERS or widest > MAX_ROW_ACTIVATIONS:
        raise ValueError(
            f"model_config.json / preprocessing.json: a {cfg.family} network over {n_numeric} numeric and "
            f"{len(cardinalities)} categorical inputs would have {params:,} parameters (at most {MAX_PARAMETERS:,}) "
            f"and {widest:,} activations per row (at most {MAX_ROW_ACTIVATIONS:,}); refused before allocating it")


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


class RankGauss(nn.Module):
    """The quantile (rank-Gauss) transform of the standardized numeric inputs that carry knots
    (``NumericStat.rank_knots`` / ``rank_levels``, fitted on the training rows by
    ``tasks.features.fit.rank_knots``): x -> Phi^-1(F(x)), F interpolated linearly between the knots and
    constant beyond them; the other columns pass unchanged. The knots are buffers that are not saved with
    the weights: they come from the preprocessing artifact, whenever a network is built for it."""

    def __init__(self, stats: list) -> None:
        super().__init__()
        cols = [j for j, s in enumerate(stats) if s.rank_knots is not None]
        width = max((len(stats[j].rank_knots) for j in cols), default=2)

        def padded(values: list[float]) -> list[float]:  # the last knot repeated: an interval of length 0
            return list(values) + [values[-1]] * (width - len(values))

        self.register_buffer("cols", torch.tensor(cols, dtype=torch.long), persistent=False)
        self.register_buffer("knots", torch.tensor([padded(stats[j].rank_knots) for j in cols], dtype=torch.float64)
                             .reshape(len(cols), width), persistent=False)
        self.register_buffer("levels", torch.tensor([padded(stats[j].rank_levels) for j in cols], dtype=torch.float64)
                             .reshape(len(cols), width), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, n)
        if not len(self.cols):
            return x
        v = x[:, self.cols].double().T.contiguous()  # (n_q, B), in float64 as the knots
        k, q = self.knots, self.levels
        v = torch.minimum(torch.maximum(v, k[:, :1]), k[:, -1:])
        hi = torch.searchsorted(k, v, right=True).clamp(1, k.shape[1] - 1)
        k0, k1, q0, q1 = k.gather(1, hi - 1), k.gather(1, hi), q.gather(1, hi - 1), q.gather(1, hi)
        span = k1 - k0
        t = torch.where(span > 0, (v - k0) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(v))
        p = q0 + t * (q1 - q0)
        out = x.clone()
        out[:, self.cols] = (math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)).T.to(x.dtype)
        return out


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

    def __init__(self, n_numeric: int, cardinalities: list[int], cfg: ModelConfig, numeric_stats: list | None = None):
        """``numeric_stats``: the preprocessing's ``NumericStat`` s; those with rank knots are
        quantile-transformed (:class:`RankGauss`) when ``cfg.quantile_inputs``."""
        super().__init__()
        check_size(n_numeric, cardinalities, cfg)
        self.family = cfg.family
        if cfg.quantile_inputs and numeric_stats and any(s.rank_knots is not None for s in numeric_stats):
            if len(numeric_stats) != n_numeric:
                raise ValueError(f"{len(numeric_stats)} numeric statistics for {n_numeric} numeric inputs")
            self.ranks = RankGauss(numeric_stats)
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
        if hasattr(self, "ranks"):
            x_num = self.ranks(x_num)
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


def build_net(prep: "Preprocessing", cfg: ModelConfig) -> TabularNet:
    """A fresh network for ``prep``'s inputs (its numeric columns and categorical vocabularies)."""
    return TabularNet(len(prep.numeric), [len(v.values) for v in prep.categorical], cfg, prep.numeric)
