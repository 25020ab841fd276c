"""``comps``: the entry point of every mode, the full mode in date-ordered chunks and in k-nearest
slices of bounded candidate pairs; ``with_comps``: the comparable-sales stage of the preprocessing."""

from __future__ import annotations

import logging
from datetime import timedelta

import numpy as np
import polars as pl

from tasks.features.comps.area import area_comps, area_tables
from tasks.features.comps.config import CompsConfig, _cells
from tasks.features.comps.full import comps_lazy
from tasks.features.comps.loo import loo_comps

log = logging.getLogger(__name__)


def knn_candidates(history: pl.LazyFrame, ordered: pl.DataFrame, cfg: CompsConfig) -> np.ndarray:
    """Per row of ``ordered``: an upper bound of its k-nearest candidates (the join pairs it makes).

    The history sales in the row's candidate cells (``knn_cell_deg`` grid, +-``knn_radius_cells``)
    dated from ``lookback_days`` before the rows' first date to their last date, counted per cell
    in one aggregation (memory: one row per cell). Zero when the features have no k-nearest.
    """
    if not cfg.knn_k or ordered.height == 0 or ordered[cfg.time].null_count() == ordered.height:
        return np.zeros(ordered.height, dtype=np.int64)
    t, r = cfg.time, cfg.knn_radius_cells
    lo = ordered[t].min() - timedelta(days=cfg.lookback_days())  # the history a pass joins
    counts = (history.select(t, cfg.lat, cfg.long)
              .filter((pl.col(t) >= lo) & (pl.col(t) < ordered[t].max()))
              .select(_cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.knn_cell_deg))
              .drop_nulls().group_by("_ci", "_cj").len("_h").collect())
    cells = ordered.select(_cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.knn_cell_deg)).with_row_index("_r")
    offsets = pl.DataFrame({"_di": [i for i in range(-r, r + 1) for _ in range(-r, r + 1)],
                            "_dj": [j for _ in range(-r, r + 1) for j in range(-r, r + 1)]},
                           schema={"_di": pl.Int32, "_dj": pl.Int32})
    per_cell = (cells.select("_ci", "_cj").drop_nulls().unique().join(offsets, how="cross")
                .with_columns((pl.col("_ci") + pl.col("_di")).alias("_ni"), (pl.col("_cj") + pl.col("_dj")).alias("_nj"))
                .join(counts.rename({"_ci": "_ni", "_cj": "_nj"}), on=["_ni", "_nj"], how="inner")
                .group_by("_ci", "_cj").agg(pl.col("_h").sum()))
    est = cells.join(per_cell, on=["_ci", "_cj"], how="left").sort("_r")["_h"].fill_null(0)
    return est.to_numpy().astype(np.int64)


def slice_bounds(candidates: np.ndarray, max_rows: int, max_pairs: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) slices of at most ``max_rows`` rows and (but for a single row) at
    most ``max_pairs`` summed candidates."""
    n = len(candidates)
    out, start, acc = [], 0, 0
    for i, c in enumerate(candidates.tolist()):
        if i > start and (i - start >= max_rows or acc + c > max_pairs):
            out.append((start, i))
            start, acc = i, 0
        acc += c
    out.append((start, n))
    return out


# Default budget of k-nearest candidate pairs per pass for callers that bound memory (build_features);
# why this value, and the memory it gives: docs/out-of-core.md (k-nearest in slices, memory bound).
MAX_KNN_PAIRS = 8_000_000


def _comps_chunk(history: pl.LazyFrame, chunk: pl.DataFrame, cfg: CompsConfig) -> pl.DataFrame:
    h = history
    if chunk.height and chunk[cfg.time].null_count() < chunk.height:
        lo = chunk[cfg.time].min() - timedelta(days=cfg.lookback_days())
        h = history.filter((pl.col(cfg.time) >= lo) & (pl.col(cfg.time) < chunk[cfg.time].max()))
    return comps_lazy(h, chunk.lazy(), cfg).collect()


def comps(history: pl.LazyFrame | pl.DataFrame, rows: pl.LazyFrame | pl.DataFrame, cfg: CompsConfig,
          max_pairs: int | None = None) -> pl.DataFrame:
    """:func:`comps_lazy`, collected, in date-ordered chunks of ``cfg.chunk_rows`` rows (bounded memory).

    Each chunk reads only the history it can reach: from ``lookback_days`` before its first date up
    to (not including) its last date.

    With ``max_pairs`` (e.g. :data:`MAX_KNN_PAIRS`), a chunk whose rows' k-nearest candidates
    (:func:`knn_candidates`, an upper bound of the rows x candidates join, which dominates memory)
    pass ``max_pairs`` gets its k-nearest columns in date-ordered slices of at most ``max_pairs``
    candidates (comps_lazy with only the k-nearest configured), its other columns in one pass. Same
    definitions, so the same values up to float rounding (a row depends only on the sales before it).
    """
    history = history.lazy()
    if cfg.leave_one_out:  # no event time: the other training rows (tasks.features.comps.loo)
        return loo_comps(history, rows.lazy(), cfg).collect()
    if cfg.aggregated:  # no row depends on another row: no chunks
        return area_comps(rows.lazy(), area_tables(history, rows.lazy(), cfg), cfg).collect()
    rows = rows.lazy().with_row_index("_order")
    ordered = rows.sort(cfg.time, "_order").collect()
    out = []
    for start in range(0, max(ordered.height, 1), cfg.chunk_rows):
        chunk = ordered.slice(start, cfg.chunk_rows)
        if max_pairs is None or not cfg.knn_k:
            out.append(_comps_chunk(history, chunk, cfg))
            continue
        candidates = knn_candidates(history, chunk, cfg)
        bounds = slice_bounds(candidates, cfg.chunk_rows, max_pairs)
        if len(bounds) == 1:
            out.append(_comps_chunk(history, chunk, cfg))
            continue
        log.info("comps: k-nearest of %d rows in %d slices (%d candidate pairs at most)", chunk.height, len(bounds),
                 int(candidates.sum()))
        base = _comps_chunk(history, chunk, cfg.model_copy(update={"knn_k": []}))
        knn_cfg = cfg.model_copy(update={"groups": [], "cell_windows_days": [], "id": None})
        knn_cols = [c for c in knn_cfg.columns() if c.startswith(f"{cfg.prefix}knn")]
        inputs = chunk.select("_order", *dict.fromkeys(knn_cfg.input_columns(with_target=False)))
        knn = pl.concat([_comps_chunk(history, inputs.slice(a, b - a), knn_cfg).select("_order", *knn_cols)
                         for a, b in bounds])
        original = [c for c in chunk.columns if c not in cfg.columns()]
        out.append(base.join(knn, on="_order", how="left", maintain_order="left").select(*original, *cfg.columns()))
    return pl.concat(out).sort("_order").drop("_order")


def with_comps(rows: pl.LazyFrame, history: pl.LazyFrame | pl.DataFrame | None, cfg: CompsConfig | None) -> pl.LazyFrame:
    """The comparable-sales stage: ``rows`` with ``cfg``'s columns computed from ``history`` (none: unchanged)."""
    if cfg is None:
        return rows
    if history is None:
        raise ValueError("these features need the history of validated sales (comparable sales): pass history")
    return comps(history, rows, cfg).lazy()
