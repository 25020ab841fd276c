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
