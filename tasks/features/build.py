"""Features: validated partitions of a training window -> one feature table + a fitted preprocessing.

``build_features`` scans the window's validated partitions lazily and computes the features in two
stages: the history-aware comparable-sales features (``tasks/features/comps/``; each sale's statistics of
EARLIER sales nearby, read from the validated history up to the window's end, including the
``lookback_days`` before the window's start), then the dataset's row-level ``derive``. It assigns the
train / val / test split and writes the result to
``<lake>/features/window=<start>_<end>/inputs=<key>/part-0.parquet``, keyed by what determines its content
(:func:`inputs_key`): a table, once written, is never replaced, and a second build of the same inputs
reuses it.
The preprocessing (clip bounds, means and standard deviations, categorical vocabularies, target
scaling, and the comps configuration) is fitted on the training split only and saved as a
content-addressed JSON artifact that scoring reuses unchanged: ``Preprocessing.features(rows,
history)`` recomputes the same columns for new rows from the lake's validated history.

The steps live beside it: :mod:`tasks.features.featureset` (the feature set, the split),
:mod:`tasks.features.plan` (partitions, footers, chunks), :mod:`tasks.features.write` (the table's
file and hash) and :mod:`tasks.features.fit` (the preprocessing).
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from typing import Callable

import polars as pl

from tasks.core import lake, storage
from tasks.core.spec import DatasetSpec
from tasks.features.comps import MAX_KNN_PAIRS, CompsConfig, area_comps, area_tables, comps, market_index
from tasks.features.featureset import SPLIT, SPLITS, FeatureSet, assign_split, feature_set
from tasks.features.fit import fit_preprocessing
from tasks.features.plan import WindowPlan, chunk_history, plan_chunks, plan_window, row_days, row_span
from tasks.features.preprocessing import Preprocessing
from tasks.features.write import (
    PLAIN_CHUNK_ROWS,
    prepare_output,
    publish_table,
    split_counts,
    stream_table,
    write_chunks,
)
from tasks.ingest.landing import DS

log = logging.getLogger(__name__)

# Part of every feature table's key: raise it when a change to the build's code changes the bytes it writes
# for the same inputs (tables keyed before it are then rebuilt, never reused).
FEATURES_KEY_VERSION = 2

# The comparable-sales stage of one chunk: (the chunk's partitions, its rows) -> its rows with the comps.
CompsStage = Callable[[list[dict], pl.LazyFrame], pl.LazyFrame]


def _output_columns(spec: DatasetSpec, fset: FeatureSet) -> list[str]:
    """The feature table's columns. All spec columns travel with the features: a champion whose
    feature code differs can re-derive."""
    keep = [*spec.columns, DS]
    return list(dict.fromkeys([*keep, *fset.numeric, *fset.comp_columns(), *fset.categorical, SPLIT]))


def _comps_stage(cfg: CompsConfig | None, window: WindowPlan, max_knn_pairs: int | None,
                 train_rows: Callable[[], pl.LazyFrame] | None = None) -> tuple[CompsStage, bool]:
    """The comparable-sales stage for ``cfg``'s mode, and whether no row depends on another (then one
    streaming plan writes the whole table, else chunks of rows do).

    - none: the rows unchanged;
    - market only: one row per day, not the rows around each row: one aggregation of the history, then
      a join by day inside the streaming plan (a join with the small per-day table streams, where a
      ``replace_strict`` lookup made Polars hold every row: docs/benchmarks.md, run A); order kept as
      in a plain scan;
    - aggregated (``HOMEWORTH_COMPS=area``): dense per-(area, day) arrays from one aggregation of the
      history, looked up per row inside the streaming plan;
    - full: per chunk, ``comps`` over the history files the chunk can reach, its k-nearest in slices
      of at most ``max_knn_pairs`` candidate pairs;
    - leave-one-out (no event time): per chunk, ``comps`` over the window's training rows (``train_rows``),
      never a validation or test target (:mod:`tasks.features.comps.loo`).
    """
    if cfg is None:
        return (lambda chunk, rows: rows), True
    if cfg.leave_one_out:
        if train_rows is None:
            raise ValueError("leave-one-out comparable sales need the window's training rows")
        history = train_rows().collect()
        return (lambda chunk, rows: comps(history, rows, cfg).lazy()), False
    if cfg.is_market_only():
        market = market_index(pl.scan_parquet([p["uri"] for p in window.candidates]), row_days(window.info, cfg.time),
                              cfg)
        return (lambda chunk, rows: cfg.with_time(rows.join(market.lazy(), on=cfg.time, how="left",
                                                            maintain_order="left"))), True
    if cfg.aggregated:
        tables = area_tables(pl.scan_parquet([p["uri"] for p in window.candidates]),
                             pl.scan_parquet([p["uri"] for p in window.info]), cfg, row_span(window.info))
        return (lambda chunk, rows: area_comps(rows, tables, cfg)), True

    def full(chunk: list[dict], rows: pl.LazyFrame) -> pl.LazyFrame:
        history = pl.scan_parquet(chunk_history(chunk, window.candidates, cfg))
        return comps(history, rows, cfg, max_pairs=max_knn_pairs).lazy()

    return full, False


def _chunk_frames(spec: DatasetSpec, fset: FeatureSet, window_end: date,
                  stage: CompsStage) -> Callable[[list[dict]], pl.LazyFrame]:
    """A chunk of partitions -> its feature rows: comps, ``derive``, the split, the column selection."""
    columns = _output_columns(spec, fset)

    def frame(chunk: list[dict]) -> pl.LazyFrame:
        rows = stage(chunk, pl.scan_parquet([p["uri"] for p in chunk]))
        return rows.pipe(fset.derive).pipe(assign_split, spec, window_end).select(columns)

    return frame


def _fitted_on(window_start: date, window_end: date, counts: dict[str, int]) -> dict:
    """What the preprocessing is fitted on; raises when a split has no rows."""
    for split in SPLITS:
        if not counts.get(split):
            raise ValueError(f"window {window_start}..{window_end}: split {split!r} has no rows (counts {counts}); "
                             "widen the window or change the spec's split")
    return {"window_start": window_start.isoformat(), "window_end": window_end.isoformat(),
            "rows": {s: int(counts.get(s, 0)) for s in SPLITS}}


def inputs_key(spec: DatasetSpec, window: WindowPlan, window_start: date, window_end: date, comps_mode: str,
               chunk_rows: int, max_knn_pairs: int | None) -> str:
    """16 hex of the sha256 of what determines a feature table's content: the window, the validated
    partitions it reads (the window's and the comps history's, by day and sha256), the comps mode, the
    spec (its source's sha256), the dataset's feature module, the chunking (a chunk's float sums may round
    differently) and :data:`FEATURES_KEY_VERSION`."""
    doc = {"version": FEATURES_KEY_VERSION, "window": [window_start.isoformat(), window_end.isoformat()],
           "partitions": [[p["day"], p["sha256"]] for p in window.parts],
           "history": [[p["day"], p["sha256"]] for p in window.history_parts], "comps": comps_mode,
           "spec": spec.source_hash, "features_module": spec.features_module, "chunk_rows": chunk_rows,
           "max_knn_pairs": max_knn_pairs}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _reuse(out_uri: str) -> dict | None:
    """The metadata of a finished table at ``out_uri`` (its manifest is written last), or None."""
    m_uri = lake.manifest_uri(out_uri)
    if not (storage.exists(m_uri) and storage.exists(out_uri)):
        return None
    try:
        meta = json.loads(storage.read_bytes(m_uri))["metadata"]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: unreadable manifest; building the table's metadata again", m_uri)
        return None
    log.info("features: %s is already built from the same inputs; reused", out_uri)
    return meta


def _publish(lake_uri: str, out_uri: str, features_sha256: str, prep: Preprocessing, window: WindowPlan,
             fitted_on: dict) -> dict:
    """Write the preprocessing (content-addressed), then the table's manifest (last: it marks the table
    complete, and holds the metadata a later build of the same inputs returns); the build's XCom metadata."""
    prep_sha = prep.sha256()
    prep_uri = lake.preprocessing_uri(lake_uri, prep_sha)
    storage.write_bytes_atomic(prep_uri, prep.model_dump_json(indent=2).encode())
    parts = window.parts
    meta = {
        "features_uri": out_uri,
        "features_sha256": features_sha256,
        "preprocessing_uri": prep_uri,
        "preprocessing_sha256": prep_sha,
        "window_start": fitted_on["window_start"],
        "window_end": fitted_on["window_end"],
        "rows": fitted_on["rows"],
        "partitions": len(parts),
        "partitions_sha256": hashlib.sha256(json.dumps([(p["day"], p["sha256"]) for p in parts]).encode()).hexdigest(),
        "history_partitions": len(window.history_parts),
    }
    manifest = {"features_uri": out_uri, "preprocessing_uri": prep_uri,
                "partitions": [{k: p[k] for k in ("day", "uri", "sha256")} for p in parts],
                "history_partitions": window.history_parts, **fitted_on, "metadata": meta}
    storage.write_json_atomic(lake.manifest_uri(out_uri), manifest)
    return meta


def _write_table(out_uri: str, window: WindowPlan, frame: Callable[[list[dict]], pl.LazyFrame], streaming: bool,
                 chunk_rows: int, pool: ThreadPoolExecutor,
                 rebuild: bool = False) -> tuple[dict[str, int], Callable[[], str | None] | None]:
    """Write the table to a temporary name unique to the attempt and publish it at ``out_uri`` unless a
    table is there (an earlier attempt's that died before its manifest, or a concurrent one's: the same
    inputs, so the same rows; kept, never replaced). Returns its rows per split and a function returning its
    sha256 (None: hash the published file). ``rebuild``: write it even when a table is there (and keep that one)."""
    local, tmp = prepare_output(out_uri)
    try:
        if storage.exists(local) and not rebuild:
            log.info("features: %s is written but has no manifest yet; completing it", out_uri)
            return split_counts(local), None
        if streaming:
            return publish_table(tmp, local, *stream_table(frame(window.info), tmp, pool))
        return publish_table(tmp, local, write_chunks(plan_chunks(window.info, chunk_rows), frame, tmp), None)
    finally:
        storage.remove(tmp)  # a failed write's (local path or object-store key)


def build_features(spec: DatasetSpec, lake_uri: str, window_start: date, window_end: date,
                   chunk_rows: int | None = None, max_knn_pairs: int | None = MAX_KNN_PAIRS,
                   comps_mode: str = "full", rebuild: bool = False) -> dict:
    """Features and preprocessing for the window [window_start, window_end). Returns XCom metadata.

    ``comps_mode`` is the comparable-sales mode (``full``, ``market``, ``area`` or ``off``; callers pass
    ``Settings.comps``, i.e. ``HOMEWORTH_COMPS``). Comparable-sales features read the validated history
    from ``lookback_days`` before the window's start to its end; each row sees only the sales dated
    before it.

    **Out of core.** The window's partitions are processed in day order, in chunks of consecutive
    partitions of at most ``chunk_rows`` rows (default: ``CompsConfig.chunk_rows``; row counts and
    date ranges come from the Parquet footers). Each chunk reads its rows and only the history files
    it can reach, runs comps (its k-nearest in slices of at most ``max_knn_pairs`` candidate pairs,
    see ``tasks.features.comps.comps``), ``derive``, the split and the column selection, and is appended
    to one Parquet file (``ParquetWriter``, ``FEATURES_COMPRESSION``, row groups of 65,536 rows) written
    to a temporary name unique to the attempt, then published. Rows keep the order of a single scan of
    the window (partition order, then file order), and every row's values are those of a single-chunk
    run: a row's comps depend only on the sales dated before it (``tests/unit/test_outofcore.py``). Peak
    memory ~ one chunk plus the history it reaches, whatever the window's size (docs/out-of-core.md).

    Without row-by-row comps (``area``, ``market`` or ``off``) no row depends on another: one streaming
    plan writes the whole table, hashed as it grows. :func:`fit_preprocessing` then reads only the
    columns it needs, and above 250k training rows takes its statistics from a sample; a chunked
    table is hashed in a thread meanwhile (hashlib and Polars both release the GIL). The input
    partitions' hashes (lineage) come from the sidecars validation wrote (``storage.cached_file_sha256``).
    Sums are exact, so a rerun gives the same bytes and hashes.

    **Immutable.** The table's folder is keyed by its inputs (:func:`inputs_key`). When that folder has its
    manifest (written last) the table is reused: its metadata is returned without a rebuild. Otherwise the
    table is written to an attempt-unique temporary name and published only if no table is there yet
    (``storage.publish_once``), so concurrent builds of one window never touch each other's file, and a
    table a running ``train`` or ``evaluate`` reads is never replaced. Temporary files of killed builds
    are swept from the window's folder after ``storage.STALE_TEMP_S``. ``rebuild`` builds the table even
    when it is there (benchmarks time the build); the finished table is still kept, not replaced.
    """
    fset = feature_set(spec, comps_mode)
    window = plan_window(lake_uri, window_start, window_end, fset.comps)
    if chunk_rows is None:
        chunk_rows = fset.comps.chunk_rows if fset.comps is not None else PLAIN_CHUNK_ROWS
    key = inputs_key(spec, window, window_start, window_end, comps_mode, chunk_rows, max_knn_pairs)
    out_uri = lake.features_uri(lake_uri, window_start, window_end, key)
    storage.sweep_stale_temp(lake.features_dir(lake_uri, window_start, window_end))
    if not rebuild and (meta := _reuse(out_uri)) is not None:
        return meta
    def train_rows() -> pl.LazyFrame:
        rows = assign_split(pl.scan_parquet([p["uri"] for p in window.info]), spec, window_end)
        return rows.filter(pl.col(SPLIT) == "train").drop(SPLIT)

    stage, streaming = _comps_stage(fset.comps, window, max_knn_pairs, train_rows)
    frame = _chunk_frames(spec, fset, window_end, stage)
    local = storage.local_path(out_uri) or out_uri
    with ThreadPoolExecutor(max_workers=1) as pool:
        counts, table_sha256 = _write_table(out_uri, window, frame, streaming, chunk_rows, pool, rebuild)
        fitted_on = _fitted_on(window_start, window_end, counts)
        if table_sha256 is None:  # read in a thread while the statistics are fitted
            table_sha256 = pool.submit(storage.file_sha256, out_uri).result
        prep = fit_preprocessing(local, spec, fset, fitted_on)
        features_sha256 = table_sha256()
    if features_sha256 is None:  # the writer did not only append: hash the file as it is
        log.warning("%s: not hashed as it was written; hashing it again", out_uri)
        features_sha256 = storage.file_sha256(out_uri)
    return _publish(lake_uri, out_uri, features_sha256, prep, window, fitted_on)
