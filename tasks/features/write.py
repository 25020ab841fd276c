"""Writing a feature table to a temporary name unique to the attempt before it is published: one
streaming plan hashed as it grows (:func:`stream_table`), or chunks appended to one Parquet file
(:func:`write_chunks`); then :func:`publish_table` (never over a finished table)."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import polars as pl

from tasks.core import storage
from tasks.features.featureset import SPLIT

log = logging.getLogger(__name__)

# Rows per Parquet row group of the feature table (the streaming loader reads one at a time).
ROW_GROUP_ROWS = 65_536
# The feature table's codec. lz4, not zstd: the table is rebuilt each retrain and read back by the
# fit, training (each epoch when streamed), evaluation and drift, and zstd's compression was half
# of writing it (docs/out-of-core.md, "Codec").
FEATURES_COMPRESSION = "lz4"
# Rows featurised per chunk when the features have no comparable-sales stage.
PLAIN_CHUNK_ROWS = 500_000


def prepare_output(out_uri: str) -> tuple[str, str]:
    """The feature table's local path and a temporary path beside it unique to this attempt
    (``storage.temp_path``: hidden, never another build's); its folder is created."""
    local = storage.local_path(out_uri)
    if local is None:
        raise NotImplementedError(f"{out_uri}: features are streamed to a local path; set HOMEWORTH_LAKE_URI to one")
    os.makedirs(local.rsplit("/", 1)[0], exist_ok=True)
    return local, storage.temp_path(local)


def split_counts(path: str) -> dict[str, int]:
    """Rows per split of a written feature table (its ``split`` column)."""
    return {k: int(n) for k, n in pl.scan_parquet(path).group_by(SPLIT).len().collect().iter_rows()}


def publish_table(tmp: str, local: str, counts: dict[str, int],
                  sha256: Callable[[], str | None] | None) -> tuple[dict[str, int], Callable[[], str | None] | None]:
    """Publish the table written at ``tmp`` as ``local`` unless a finished one is there (``storage.publish_once``).

    A table's path is keyed by its inputs, so one already there (a concurrent or an earlier attempt's) holds
    the same rows: it is kept, never replaced under a task reading it, and its counts are read back (its hash
    is then computed from it: None)."""
    if storage.publish_once(tmp, local):
        return counts, sha256
    log.info("%s: another attempt published this table first; using it", local)
    return split_counts(local), None


def stream_table(frame: pl.LazyFrame, tmp: str,
                 pool: ThreadPoolExecutor) -> tuple[dict[str, int], Callable[[], str | None]]:
    """Sink ``frame`` (row-level features, no row depending on another) to ``tmp`` in one streaming plan
    (Polars' engine, its multi-threaded writer; memory bounded by the engine's morsels), and return its
    rows per split and a function that returns its sha256 (None when the writer did not only append).

    One consumer only: a ``collect_all`` that also aggregated the rows it wrote buffered rows for the
    writer (docs/out-of-core.md, "One consumer per pass"). The table's hash (lineage) is computed in a
    thread of ``pool`` as the file grows: the writer leaves some CPU idle, and the hash is otherwise a
    read of the whole table.
    """
    growing = storage.GrowingFileHash(tmp)
    hashing = pool.submit(growing.run)
    try:
        frame.sink_parquet(tmp, compression=FEATURES_COMPRESSION, row_group_size=ROW_GROUP_ROWS)
    finally:
        growing.finish()
    counts = split_counts(tmp)

    def sha256() -> str | None:
        hashing.result()
        return growing.result()

    return counts, sha256


def write_chunks(chunks: list[list[dict]], chunk_frame: Callable[[list[dict]], pl.LazyFrame], tmp: str) -> dict[str, int]:
    """Collect each chunk's features and append them to one Parquet file at ``tmp``; rows per split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts: dict[str, int] = {}
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    try:
        for i, chunk in enumerate(chunks):
            df = chunk_frame(chunk).collect()
            for split, n in df.group_by(SPLIT).len().iter_rows():
                counts[split] = counts.get(split, 0) + int(n)
            table = df.to_arrow()
            del df
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(tmp, schema, compression=FEATURES_COMPRESSION)
            elif table.schema != schema:
                table = table.cast(schema)
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            log.info("features: chunk %d/%d, %d rows, %d partitions", i + 1, len(chunks), table.num_rows, len(chunk))
            del table
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no rows at all: an empty table with the columns (the caller's split check raises)
        chunk_frame(chunks[0]).limit(0).collect().write_parquet(tmp)
    return counts
