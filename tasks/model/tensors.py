"""Feature rows as tensors, and whole batches sliced from them: plain torch, no Lightning (scoring uses
:func:`to_tensors` too)."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import polars as pl
import torch

from tasks.features.preprocessing import Preprocessing


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


class FeatureMatrices:
    """``Preprocessing.numeric_matrix`` / ``categorical_matrix`` / ``offset`` compiled once per preprocessing: numpy
    over the frame's columns, no Polars expressions built per call (what scoring a few houses spent most of its
    time on). The same operations in the same order (cast to float64, clip, centre, scale, NaN and null to 0,
    float32; vocabulary look-up with 0 for unseen; offset terms summed left to right with their fills), so the
    same values: ``tests/unit/test_comps_index.py`` compares them."""

    def __init__(self, prep: Preprocessing):
        self.prep = prep
        self.numeric_stats = [(s.name, s.lo, s.hi, s.mean, s.std) for s in prep.numeric]
        self.vocab = [(v.name, {x: i for i, x in enumerate(v.values, start=1)}) for v in prep.categorical]
        self.offset_terms = [(t.name, t.fill) for t in prep.target_offset]

    @staticmethod
    def _floats(df: pl.DataFrame, name: str) -> np.ndarray:
        s = df.get_column(name)
        if not (s.dtype.is_numeric() or s.dtype == pl.Boolean):
            s = s.cast(pl.Float64)
        return np.asarray(s.to_numpy(), dtype=np.float64)

    def numeric(self, df: pl.DataFrame) -> np.ndarray:
        out = np.empty((df.height, len(self.numeric_stats)), dtype=np.float32)
        with np.errstate(invalid="ignore"):
            for j, (name, lo, hi, mean, std) in enumerate(self.numeric_stats):
                x = self._floats(df, name)
                if lo is not None or hi is not None:
                    x = np.clip(x, lo, hi)
                x = (x - mean) / std
                x[np.isnan(x)] = 0.0
                out[:, j] = x
        return out

    def categorical(self, df: pl.DataFrame) -> np.ndarray:
        out = np.zeros((df.height, len(self.vocab)), dtype=np.int64)
        for j, (name, index) in enumerate(self.vocab):
            values = df.get_column(name).cast(pl.String).to_list()
            out[:, j] = [index.get(v, 0) for v in values]
        return out

    def offset(self, df: pl.DataFrame) -> np.ndarray:
        if not self.offset_terms:
            return np.zeros(df.height)
        total = None
        for name, fill in self.offset_terms:
            x = self._floats(df, name).copy()
            x[np.isnan(x)] = fill
            total = x if total is None else total + x
        return total

    def tensors(self, df: pl.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.numeric(df)), torch.from_numpy(self.categorical(df))

    def decode(self, z: np.ndarray, df: pl.DataFrame) -> np.ndarray:
        """``Preprocessing.decode_rows``: prices for the network's outputs on feature rows ``df``."""
        return self.prep.decode_target(z, self.offset(df))
