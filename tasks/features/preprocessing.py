"""The fitted preprocessing: the artifact that training and serving share.

Everything scoring needs to turn a validated row into the network's inputs and its output back into a
price: clip bounds and scaling of the numeric features, the categorical vocabularies, the target's
transform, offset and scaling, and the comparable-sales configuration. It is JSON (never code): the
feature module it names is imported by name from the deployed package, and its sha256 keys the file.

An artifact is data, never code: the feature module it names must be the deployed spec's
``features_module`` or one listed in ``HOMEWORTH_PREPROCESSING_ALLOWLIST``; any other name is refused
(:class:`ArtifactRefused`) when the artifact is parsed, before anything is imported.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import re
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, field_validator, model_validator

from tasks.core import storage
from tasks.features.comps import CompsConfig, with_comps

# At most this many knots per column in a quantile transform (tasks.features.fit.rank_knots fits fewer).
MAX_RANK_KNOTS = 4096
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class ArtifactRefused(ValueError):
    """A model artifact names code that this deployment does not run."""


def allowed_features_modules() -> set[str]:
    """The feature modules a preprocessing artifact may name: the deployed spec's, and the allowlist setting's."""
    from tasks.core.settings import get_settings
    from tasks.core.spec import get_spec

    settings = get_settings()
    allowed = {m.strip() for m in settings.preprocessing_allowlist.split(",") if m.strip()}
    deployed = get_spec(settings.dataset_spec).features_module
    return allowed | ({deployed} if deployed else set())


def check_features_module(name: str | None) -> str | None:
    """``name`` if a preprocessing artifact may name it (None: no feature module); else :class:`ArtifactRefused`.

    Nothing is imported here: the check is on the name alone.
    """
    if name is None:
        return None
    allowed = allowed_features_modules()
    if not isinstance(name, str) or not _DOTTED.fullmatch(name) or name not in allowed:
        shown = repr(name[:80]) if isinstance(name, str) else type(name).__name__
        raise ArtifactRefused(
            f"preprocessing.json: features_module {shown} is neither the deployed spec's feature module nor in "
            f"HOMEWORTH_PREPROCESSING_ALLOWLIST (allowed: {sorted(allowed)}); the artifact is refused and the "
            "module is not imported")
    return name


class NumericStat(BaseModel):
    name: str
    lo: float | None  # None: not clipped (features that must extrapolate, such as market time)
    hi: float | None
    mean: float
    std: float
    # The column's training distribution for a quantile (rank-Gauss) transform, which the network applies
    # to the standardized value (tasks.model.networks.RankGauss): ``rank_knots`` are standardized values,
    # strictly increasing, ``rank_levels`` the share of training rows below each (mid-rank, in (0, 1)).
    # None (artifacts fitted before it, unclipped columns): the standardized value as it is.
    rank_knots: list[float] | None = None
    rank_levels: list[float] | None = None

    @model_validator(mode="after")
    def _ranks_consistent(self) -> "NumericStat":
        k, q = self.rank_knots, self.rank_levels
        if (k is None) != (q is None):
            raise ValueError(f"{self.name}: rank_knots and rank_levels go together")
        if k is not None:
            if not (2 <= len(k) == len(q) <= MAX_RANK_KNOTS):
                raise ValueError(f"{self.name}: 2 to {MAX_RANK_KNOTS} rank knots, as many levels")
            if any(b <= a for a, b in zip(k, k[1:])) or any(b < a for a, b in zip(q, q[1:])):
                raise ValueError(f"{self.name}: rank knots must increase strictly, levels must not decrease")
            if not all(0 < x < 1 for x in q) or not all(math.isfinite(x) for x in k):
                raise ValueError(f"{self.name}: rank levels must lie in (0, 1), knots be finite")
        return self


# A nullable numeric input's missing-value indicator (a categorical input): "<column>__isnull", "missing" where
# the column is null or NaN, else "present". The network sees a null numeric input as its training mean; the
# indicator tells it the value was not there (trees see the gap itself). From the spec's ``nullable``.
NULL_SUFFIX = "__isnull"


def null_indicator_columns(columns: list[str] | tuple[str, ...]) -> list[str]:
    return [f"{c}{NULL_SUFFIX}" for c in columns]


def with_null_indicators(lf: pl.LazyFrame, columns: list[str] | tuple[str, ...]) -> pl.LazyFrame:
    """``lf`` with the missing-value indicator of each of ``columns`` (:data:`NULL_SUFFIX`); unchanged without any."""
    if not columns:
        return lf
    return lf.with_columns(
        pl.when(pl.col(c).cast(pl.Float64).fill_nan(None).is_null()).then(pl.lit("missing")).otherwise(pl.lit("present"))
        .alias(name) for c, name in zip(columns, null_indicator_columns(columns)))


class OffsetTerm(BaseModel):
    name: str
    fill: float  # used where the column is null or NaN (its training mean)


class Vocabulary(BaseModel):
    name: str
    values: list[str]  # index 0 is reserved for values never seen in training


class Preprocessing(BaseModel):
    """Everything scoring needs to turn a validated row into the network's inputs, and back to a price."""

    dataset: str
    spec_sha256: str
    features_module: str | None
    numeric: list[NumericStat]
    categorical: list[Vocabulary]
    target: str
    target_transform: Literal["log", "identity"]
    target_mean: float
    target_std: float
    fitted_on: dict  # window and row counts, for lineage
    # The comparable-sales stage these features were built with (None: row-level features only).
    comps: CompsConfig | None = None
    # The target's baseline: the model predicts (transformed target - sum of these columns), scaled by
    # target_mean / target_std; empty: the transformed target itself.
    target_offset: list[OffsetTerm] = []
    # Numeric columns with a missing-value indicator among the categorical inputs (a spec without a feature
    # module: its nullable numeric inputs); ``derive`` adds the indicators.
    null_indicators: list[str] = []

    @field_validator("features_module", mode="before")
    @classmethod
    def _allowed_module(cls, v: object) -> object:
        return check_features_module(v)  # before any import: artifacts are data, never code

    def sha256(self) -> str:
        # Without comps / an offset the JSON (and so the hash) is what it was before they existed.
        exclude: dict = {k: True for k, empty in (("comps", self.comps is None), ("target_offset", not self.target_offset),
                                                  ("null_indicators", not self.null_indicators)) if empty}
        if not self.has_ranks():  # nor without the quantile transform's knots
            exclude["numeric"] = {"__all__": {"rank_knots", "rank_levels"}}
        return hashlib.sha256(self.model_dump_json(exclude=exclude or None).encode()).hexdigest()

    def has_ranks(self) -> bool:
        """Whether some numeric column carries a quantile transform (``NumericStat.rank_knots``)."""
        return any(s.rank_knots is not None for s in self.numeric)

    def derive(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        if self.features_module is None:
            return with_null_indicators(lf, self.null_indicators)
        # Checked again here (settings may have changed since parsing, or a model was built unvalidated).
        return importlib.import_module(check_features_module(self.features_module)).derive(lf)

    def features(self, rows: pl.LazyFrame | pl.DataFrame, history: pl.LazyFrame | pl.DataFrame | None = None) -> pl.LazyFrame:
        """Every input column for validated ``rows``: comparable sales from ``history`` (if used), then ``derive``.

        ``history`` is validated sales (the spec's columns); only those dated before each row count.
        """
        return self.derive(with_comps(rows.lazy(), history, self.comps))

    def numeric_matrix(self, df: pl.DataFrame) -> np.ndarray:
        exprs = [
            ((pl.col(s.name).cast(pl.Float64).clip(s.lo, s.hi) - s.mean) / s.std).fill_nan(0.0).fill_null(0.0).alias(s.name)
            for s in self.numeric
        ]
        return df.select(exprs).to_numpy().astype(np.float32, copy=False).reshape(df.height, len(self.numeric))

    def categorical_matrix(self, df: pl.DataFrame) -> np.ndarray:
        exprs = []
        for v in self.categorical:
            mapping = pl.DataFrame({"_v": v.values, "_i": np.arange(1, len(v.values) + 1)})
            exprs.append(
                pl.col(v.name).cast(pl.String).replace_strict(mapping["_v"], mapping["_i"], default=0, return_dtype=pl.Int64)
            )
        if not exprs:
            return np.zeros((df.height, 0), dtype=np.int64)
        return df.select(exprs).to_numpy().astype(np.int64, copy=False)

    def offset(self, df: pl.DataFrame) -> np.ndarray:
        """The target's baseline of each row (in transformed units; zeros without an offset)."""
        if not self.target_offset:
            return np.zeros(df.height)
        expr = pl.sum_horizontal([pl.col(t.name).cast(pl.Float64).fill_nan(None).fill_null(t.fill) for t in self.target_offset])
        return df.select(expr.alias("_offset")).to_series().to_numpy().astype(np.float64)

    def encode_target(self, price: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
        """The network's target for prices (``offset``: :meth:`offset` of their rows; required with an offset)."""
        y = np.log(price) if self.target_transform == "log" else np.asarray(price, dtype=np.float64)
        if self.target_offset:
            if offset is None:
                raise ValueError("this preprocessing has a target offset: pass offset=prep.offset(rows)")
            y = y - offset
        return ((y - self.target_mean) / self.target_std).astype(np.float32)

    def decode_target(self, z: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
        """Prices from the network's outputs (``offset`` as in :meth:`encode_target`)."""
        y = np.asarray(z, dtype=np.float64) * self.target_std + self.target_mean
        if self.target_offset:
            if offset is None:
                raise ValueError("this preprocessing has a target offset: pass offset=prep.offset(rows)")
            y = y + offset
        return np.exp(y) if self.target_transform == "log" else y

    def encode_rows(self, df: pl.DataFrame) -> np.ndarray:
        """The network's target for feature rows that carry the target column."""
        return self.encode_target(df[self.target].to_numpy(), self.offset(df))

    def decode_rows(self, z: np.ndarray, df: pl.DataFrame) -> np.ndarray:
        """Prices for the network's outputs ``z`` on feature rows ``df``."""
        return self.decode_target(z, self.offset(df))


def load_preprocessing(uri: str) -> Preprocessing:
    return Preprocessing.model_validate_json(storage.read_bytes(uri))
