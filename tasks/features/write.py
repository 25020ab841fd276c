"""Writing a feature table to ``<final>.tmp`` before it is renamed: one streaming plan hashed as it
grows (:func:`stream_table`), or chunks appended to one Parquet file (:func:`write_chunks`)."""

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


def prepare_output(out_uri: str):
    """The feature table's filesystem, local path and temporary path (``<local>.tmp``, a crashed run's
    removed: the table's hash reads whatever file is there); its folder is created."""
    local = storage.local_path(out_uri)
    if local is None:
        raise NotImplementedError(f"{out_uri}: features are streamed to a local path; set HOMEWORTH_LAKE_URI to one")
    tmp = local + ".tmp"
    fs, _ = storage.resolve(out_uri)
    fs.create_dir(local.rsplit("/", 1)[0], recursive=True)
    if os.path.exists(tmp):  # a crashed run's (the table's hash reads whatever file is at tmp)
        os.remove(tmp)
    return fs, local, tmp


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
    counts = {k: int(n) for k, n in pl.scan_parquet(tmp).group_by(SPLIT).len().collect().iter_rows()}

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
