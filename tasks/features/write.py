"""Writing a feature table to a temporary name unique to the attempt before it is published: one
streaming plan hashed as it grows (:func:`stream_table`), or chunks appended to one Parquet file
(:func:`write_chunks`); then :func:`publish_table` (never over a finished table).

The lake may be a local folder or an object store (``s3://``, :mod:`tasks.core.objectstore`). On an object
store the table is streamed to a hidden, attempt-unique temporary key beside the target (Polars'
``sink_parquet`` with the lake's ``storage_options``, or pyarrow's ``ParquetWriter`` on an S3 output
stream: multipart uploads, memory bounded by their part buffers, no local file), then published by a
server-side copy to the target key if none is there, the temporary key deleted
(``storage.publish_once_uri``): readers see no table or the whole one. A failed write deletes its
temporary key (a killed one's is swept by age, ``storage.sweep_stale_temp``)."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import polars as pl

from tasks.core import objectstore, storage
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
    """The feature table's target and a temporary name beside it unique to this attempt
    (``storage.temp_path``: hidden, never another build's). Local: paths, the folder created; object
    store: the ``s3://`` URIs themselves (keys need no folder)."""
    local = storage.local_path(out_uri)
    if local is None:
        return out_uri, storage.temp_path(out_uri)
    os.makedirs(local.rsplit("/", 1)[0], exist_ok=True)
    return local, storage.temp_path(local)


def split_counts(path: str) -> dict[str, int]:
    """Rows per split of a written feature table (its ``split`` column; a local path or an ``s3://`` URI)."""
    lf = pl.scan_parquet(path, storage_options=objectstore.storage_options(path))
    return {k: int(n) for k, n in lf.group_by(SPLIT).len().collect().iter_rows()}


def _discard(tmp: str) -> None:
    """Delete an object-store temporary key of a failed write (a local one is removed by the caller)."""
    if objectstore.is_s3(tmp):
        storage.remove(tmp)


def publish_table(tmp: str, local: str, counts: dict[str, int],
                  sha256: Callable[[], str | None] | None) -> tuple[dict[str, int], Callable[[], str | None] | None]:
    """Publish the table written at ``tmp`` as ``local`` unless a finished one is there (``storage.publish_once``).

    A table's path is keyed by its inputs, so one already there (a concurrent or an earlier attempt's) holds
    the same rows: it is kept, never replaced under a task reading it, and its counts are read back (its hash
    is then computed from it: None)."""
    if storage.publish_once_uri(tmp, local):
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
    if objectstore.is_s3(tmp):
        return _stream_to_store(frame, tmp, pool)
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


def _stream_to_store(frame: pl.LazyFrame, tmp: str, pool: ThreadPoolExecutor) -> tuple[dict[str, int], Callable[[], str | None]]:
    """:func:`stream_table` to an object-store key: Polars' multipart upload, then the counts and the hash
    read back together (a stream of the object: the hash is needed before the key is published, and an
    object cannot be hashed as it grows)."""
    try:
        frame.sink_parquet(tmp, compression=FEATURES_COMPRESSION, row_group_size=ROW_GROUP_ROWS,
                           storage_options=objectstore.storage_options(tmp))
        hashing = pool.submit(storage.file_sha256, tmp)
        counts = split_counts(tmp)
        sha = hashing.result()
    except BaseException:
        _discard(tmp)
        raise
    return counts, lambda: sha


def write_chunks(chunks: list[list[dict]], chunk_frame: Callable[[list[dict]], pl.LazyFrame], tmp: str) -> dict[str, int]:
    """Collect each chunk's features and append them to one Parquet file at ``tmp``; rows per split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts: dict[str, int] = {}
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    fs, path = storage.resolve(tmp)
    try:
        for i, chunk in enumerate(chunks):
            df = chunk_frame(chunk).collect()
            for split, n in df.group_by(SPLIT).len().iter_rows():
                counts[split] = counts.get(split, 0) + int(n)
            table = df.to_arrow()
            del df
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(path, schema, compression=FEATURES_COMPRESSION, filesystem=fs)
            elif table.schema != schema:
                table = table.cast(schema)
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            log.info("features: chunk %d/%d, %d rows, %d partitions", i + 1, len(chunks), table.num_rows, len(chunk))
            del table
    except BaseException:
        if writer is not None:
            writer.close()
        _discard(tmp)
        raise
    if writer is not None:
        writer.close()
    else:  # no rows at all: an empty table with the columns (the caller's split check raises)
        chunk_frame(chunks[0]).limit(0).collect().write_parquet(tmp, storage_options=objectstore.storage_options(tmp))
    return counts
