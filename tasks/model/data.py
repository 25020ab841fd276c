"""Out-of-core training input: the feature table streamed from Parquet, one row group at a time.

``tasks.model.train.train`` holds the whole window in memory (``load_splits`` + ``to_tensors``) while the
training split has at most ``in_memory_max_rows`` rows; above that it uses :class:`StreamingDataModule`:

- :class:`ParquetBatches` (a ``torch.utils.data.IterableDataset``) reads the feature Parquet file
  row group by row group with pyarrow (only the model's columns and the split column; row groups
  whose statistics exclude the split are skipped), keeps the split's rows, converts them with the
  :class:`~tasks.features.preprocessing.Preprocessing` (``numeric_matrix``, ``categorical_matrix``,
  ``encode_rows``) and yields mini-batches of tensors;
- shuffled (training): the row groups are read in an order permuted per epoch, and rows pass through
  a shuffle buffer of ``buffer_rows`` rows (default 262,144) that is permuted before its batches are
  cut; the generator is seeded with ``seed + epoch``, so an epoch's order is a function of the seed
  and the epoch number alone, and every row of the split is yielded exactly once per epoch;
- unshuffled (validation, test): file order, batches of 8,192 rows.

Sharding (multi-device training, docs/production.md "Multi-device training"): the training batches are
cut as if for one process (global batches of ``batch_size`` rows from the same seeded order on every
rank) and each of the ``world`` ranks keeps its own ``batch_size // world`` rows of each global batch
(:func:`shard`, :class:`ShardedIndexBatches`; the rank and world size are those of
``torch.distributed``). The ranks' shares of an epoch are disjoint, every rank yields the same number of
batches (DDP needs that), and the gradients DDP averages are those of the one-process global batch; an
epoch's last, short global batch is cut into equal shares, its few leftover rows (fewer than ``world``)
skipped that epoch. With DataLoader workers, worker ``w`` of ``W`` yields the global batches ``j`` with
``j % W == w``. Validation and test are not sharded: every rank scores the whole split, so the
monitored metric, early stopping and the best epoch are the same on every rank.

The feature table may be a local file or an object (``s3://``, :mod:`tasks.core.objectstore`): it is
opened through ``tasks.core.storage.resolve`` (pyarrow's ``S3FileSystem``: each row group is a ranged
read, the footer one more; nothing is copied to a local file) and counted or sampled by Polars with the
lake's ``storage_options``.

Memory: one row group plus the buffer (rows x (4 bytes x numeric + 8 bytes x categorical + 4)),
whatever the table's size. ``__len__`` is the number of batches (``ceil(rows / batch_size)``; the
rows are counted once from the Parquet file), so Lightning sees finite epochs and validates and
early-stops at each epoch's end as with the in-memory DataModule.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytorch_lightning as L
import torch

from tasks.core import objectstore, storage
from tasks.features.featureset import SPLIT, SPLITS, bounded_sample
from tasks.features.preprocessing import Preprocessing
from tasks.model.tensors import IndexBatches, to_tensors

BUFFER_ROWS = 262_144
EVAL_BATCH_ROWS = 8192
# A validation split larger than this is validated on every k-th of its rows, held in memory: a check
# then costs the same on any history, so it can run several times an epoch (tasks.model.train.VAL_EVERY_SAMPLES).
VAL_MAX_ROWS = 500_000


def shard() -> tuple[int, int]:
    """(rank, world size) of this process in ``torch.distributed``; (0, 1) when not distributed."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _worker() -> tuple[int, int]:
    """(worker id, workers) of the DataLoader worker this runs in; (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def share(rows: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s part of a global batch of ``rows`` rows: ``rows // world`` consecutive rows."""
    part = rows // world
    return slice(rank * part, (rank + 1) * part)


def sharded_batches(global_batches: int, rows_last: int, world: int) -> int:
    """Batches each rank yields in an epoch of ``global_batches`` (the last one of ``rows_last`` rows)."""
    return global_batches - (1 if global_batches and rows_last // world == 0 else 0)


class ShardedIndexBatches(IndexBatches):
    """:class:`~tasks.model.tensors.IndexBatches` (shuffled per epoch, seeded) sharded by rank and
    DataLoader worker (see the module doc); with one process and no workers, the same batches."""

    def _global(self) -> int:
        return math.ceil(len(self.tensors[0]) / self.batch_size)

    def __len__(self) -> int:
        n = len(self.tensors[0])
        rank, world = shard()
        return sharded_batches(self._global(), n - (self._global() - 1) * self.batch_size if n else 0, world)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        rank, world = shard()
        worker, workers = _worker()
        n = len(self.tensors[0])
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            self.epoch += 1
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for j, idx in enumerate(order.split(self.batch_size)):
            part = idx[share(len(idx), rank, world)]
            if j % workers == worker and len(part):
                yield tuple(t[part] for t in self.tensors)


def split_counts(features_uri: str) -> dict[str, int]:
    """Rows per split of a feature table, by a streaming count (nothing but the split column is read)."""
    counts = dict(_scan(features_uri).group_by(SPLIT).len().collect(engine="streaming").iter_rows())
    return {s: int(counts.get(s, 0)) for s in SPLITS}


def _scan(features_uri: str) -> pl.LazyFrame:
    """A Polars scan of the table: a local path, or the object with the lake's ``storage_options``."""
    local = storage.local_path(features_uri)
    if local is not None:
        return pl.scan_parquet(local)
    return pl.scan_parquet(features_uri, storage_options=objectstore.storage_options(features_uri))


def parquet_file(features_uri: str) -> pq.ParquetFile:
    """The table's Parquet file for reading row groups one at a time: a local path, or a random-access
    file of the object store (ranged reads; the footer is read once, when it is opened)."""
    local = storage.local_path(features_uri)
    if local is not None:
        return pq.ParquetFile(local)
    fs, path = storage.resolve(features_uri)
    return pq.ParquetFile(fs.open_input_file(path))


def _row_groups_with(pf: pq.ParquetFile, split: str) -> list[int]:
    """Row groups that may hold rows of ``split`` (by the split column's min / max statistics)."""
    md = pf.metadata
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    j = names.index(SPLIT)
    out = []
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        if rg.num_rows == 0:
            continue
        st = rg.column(j).statistics
        if st is not None and st.has_min_max:
            lo, hi = st.min, st.max
            lo = lo.decode() if isinstance(lo, bytes) else lo
            hi = hi.decode() if isinstance(hi, bytes) else hi
            if not (lo <= split <= hi):
                continue
        out.append(g)
    return out


def iter_split(features_uri: str, split: str, batch_rows: int = 500_000,
               columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
    """The rows of one split of a feature Parquet file, in file order, as frames of about ``batch_rows``
    rows: row groups are read one at a time (those whose statistics say they may hold the split), so
    memory stays near one batch whatever the table's size. Nothing is yielded for an empty split."""
    pf = parquet_file(features_uri)
    read = None if columns is None else list(dict.fromkeys([*columns, SPLIT]))
    pending: list[pl.DataFrame] = []
    n = 0
    for g in _row_groups_with(pf, split):
        df = pl.from_arrow(pf.read_row_group(g, columns=read)).filter(pl.col(SPLIT) == split)
        if columns is not None and SPLIT not in columns:
            df = df.drop(SPLIT)
        if df.height:
            pending.append(df)
            n += df.height
        if n >= batch_rows:
            yield pl.concat(pending)
            pending, n = [], 0
    if pending:
        yield pl.concat(pending)


def sample_split(features_uri: str, split: str, max_rows: int, columns: list[str] | None = None) -> pl.DataFrame:
    """One split of a feature table, whole when it has at most ``max_rows`` rows, else every k-th row
    (k = ceil(rows / max_rows), file order: deterministic), read by a streaming scan."""
    lf = _scan(features_uri).filter(pl.col(SPLIT) == split)
    if columns is not None:
        lf = lf.select(columns)
    return bounded_sample(lf, max_rows, rows=split_counts(features_uri)[split])


class ParquetBatches(torch.utils.data.IterableDataset):
    """Mini-batches ``(x_num, x_cat, y)`` of one split of a feature Parquet file, streamed (see the module doc);
    shuffled (training) batches are sharded by rank and DataLoader worker, unshuffled ones by worker only."""

    def __init__(self, features_uri: str, prep: Preprocessing, split: str, batch_size: int, shuffle: bool,
                 seed: int = 0, buffer_rows: int = BUFFER_ROWS, rows: int | None = None):
        self.uri, self.prep, self.split = features_uri, prep, split
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.buffer_rows = max(buffer_rows, batch_size)
        # the model's inputs, the target and its offset terms (Preprocessing.encode_rows), the split
        self.columns = list(dict.fromkeys([*(s.name for s in prep.numeric), *(v.name for v in prep.categorical),
                                           *(t.name for t in prep.target_offset), prep.target, SPLIT]))
        self.rows = rows if rows is not None else split_counts(features_uri)[split]
        self.epoch = 0  # advanced by each shuffled pass (as tasks.model.tensors.IndexBatches)

    def __len__(self) -> int:
        """Batches this rank yields an epoch: ``ceil(rows / batch_size)`` with one process."""
        batches = math.ceil(self.rows / self.batch_size)
        world = shard()[1] if self.shuffle else 1
        return sharded_batches(batches, self.rows - (batches - 1) * self.batch_size if self.rows else 0, world)

    def _groups(self, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The split's rows, converted, one row group at a time (in a seeded order when shuffling)."""
        pf = parquet_file(self.uri)
        groups = _row_groups_with(pf, self.split)
        if self.shuffle:
            rng = np.random.default_rng(self.seed + epoch)
            groups = [groups[i] for i in rng.permutation(len(groups))]
        for g in groups:
            df = pl.from_arrow(pf.read_row_group(g, columns=self.columns)).filter(pl.col(SPLIT) == self.split)
            if df.height:
                yield (np.ascontiguousarray(self.prep.numeric_matrix(df), dtype=np.float32),
                       np.ascontiguousarray(self.prep.categorical_matrix(df), dtype=np.int64),
                       self.prep.encode_rows(df))

    def _batches(self, arrays: tuple[np.ndarray, ...], upto: int, counter: list[int]) -> Iterator[tuple[torch.Tensor, ...]]:
        """The global batches of ``arrays[:upto]``, each cut to this rank's share, those of this DataLoader
        worker only (``counter``: the epoch's global batch count so far, advanced here)."""
        rank, world = shard()
        worker, workers = _worker()
        if not self.shuffle:  # validation and test: the whole split on every rank (module doc)
            rank, world = 0, 1
        for i in range(0, upto, self.batch_size):
            j = counter[0]
            counter[0] += 1
            rows = min(self.batch_size, upto - i)
            part = share(rows, rank, world)
            if j % workers == worker and part.stop > part.start:
                yield tuple(torch.from_numpy(a[i + part.start:i + part.stop].copy()) for a in arrays)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        # Rows gather in a buffer until it holds ``buffer_rows`` (shuffled) or one batch (not shuffled);
        # then its full batches are cut (after a seeded permutation when shuffling) and the rest is kept,
        # so every batch but an epoch's last has ``batch_size`` rows (__len__ batches per epoch).
        epoch = self.epoch
        if self.shuffle:
            self.epoch += 1
        rng = np.random.default_rng([self.seed + epoch, 1])  # the buffer's permutations
        fill = self.buffer_rows if self.shuffle else self.batch_size
        pending: list[tuple[np.ndarray, ...]] = []
        held = 0
        counter = [0]  # global batches cut so far this epoch (sharding, tasks.model.data.shard)

        def cut(last: bool) -> Iterator[tuple[torch.Tensor, ...]]:
            nonlocal pending, held
            buf = tuple(np.concatenate(parts) for parts in zip(*pending))
            if self.shuffle:
                order = rng.permutation(held)
                buf = tuple(a[order] for a in buf)
            full = held if last else held - held % self.batch_size
            yield from self._batches(buf, full, counter)
            pending = [tuple(a[full:] for a in buf)] if full < held else []
            held -= full

        for arrays in self._groups(epoch):
            pending.append(arrays)
            held += len(arrays[0])
            if held >= fill:
                yield from cut(last=False)
        if held:
            yield from cut(last=True)


def numeric_range(features_uri: str, prep: Preprocessing, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Column-wise min and max of the preprocessed numeric inputs of ``split``, in one streaming pass
    (what ``clamp_inputs`` learns; the in-memory path takes them from the whole matrix)."""
    lo = torch.full((len(prep.numeric),), torch.inf)
    hi = torch.full((len(prep.numeric),), -torch.inf)
    for x, _, _ in ParquetBatches(features_uri, prep, split, 1, shuffle=False, rows=0)._groups():
        if len(x):
            t = torch.from_numpy(x)
            lo, hi = torch.minimum(lo, t.min(dim=0).values), torch.maximum(hi, t.max(dim=0).values)
    return lo, hi


class StreamingDataModule(L.LightningDataModule):
    """train (shuffled, seeded per epoch), val and test (file order) streamed from the feature Parquet file.

    A val split of more than ``val_max_rows`` rows is replaced by every k-th of its rows, in memory
    (:func:`sample_split`): bounded memory and a fixed cost per validation check.
    """

    def __init__(self, features_uri: str, prep: Preprocessing, batch_size: int, seed: int,
                 buffer_rows: int = BUFFER_ROWS, counts: dict[str, int] | None = None,
                 val_max_rows: int | None = None):
        super().__init__()
        self.features_uri, self.prep, self.batch_size, self.seed = features_uri, prep, batch_size, seed
        self.buffer_rows = buffer_rows
        self.val_max_rows = val_max_rows if val_max_rows is not None else VAL_MAX_ROWS
        self.counts = counts if counts is not None else split_counts(features_uri)
        self.datasets: dict[str, torch.utils.data.IterableDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self.datasets = {
                "train": ParquetBatches(self.features_uri, self.prep, "train", self.batch_size, True, self.seed,
                                        self.buffer_rows, rows=self.counts["train"]),
                **{s: ParquetBatches(self.features_uri, self.prep, s, EVAL_BATCH_ROWS, False, rows=self.counts[s])
                   for s in ("val", "test")},
            }
            if self.counts["val"] > self.val_max_rows:
                val = sample_split(self.features_uri, "val", self.val_max_rows)
                self.datasets["val"] = IndexBatches(to_tensors(self.prep, val), EVAL_BATCH_ROWS, False, self.seed)

    def _loader(self, split: str):
        return torch.utils.data.DataLoader(self.datasets[split], batch_size=None)

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")
