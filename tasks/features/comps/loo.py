"""Leave-one-out comparable sales, for a spec without an event time (a cross-sectional file).

Without dates there is no "earlier": the comparables of a row are the *training* rows other than
itself. ``build_features`` passes the window's training rows as the history (so a validation or test
row's target is never anyone's comparable) and every row of the window as the rows; a training row is
in the history, and it is left out of its own statistics. At scoring the history is the lake's validated
sales and a new house is not among them.

A row "is" a history sale when they agree on every column both carry among the comps' inputs and the
target (:func:`_row_key`, a hash): the feature build's rows and history are the same validated rows; a
house scored without its price never matches. Columns (``<p>`` the prefix; values are ln(price / size),
or ln(price) without a size):

- ``<p><group>_mean``, ``<p><group>_n`` per ``comps: location`` column: the mean value and count of the
  group's training sales *out of the row's fold*: a history sale's fold is a hash of its columns but the
  target, modulo :data:`FOLDS`, and it sees only the other folds' sales (a row not in the history sees them all). A pure
  leave-one-out mean would leak: with the group known (a categorical input), (group sum - own value) /
  (n - 1) determines the row's own price, which trees and networks learn (CatBoost's "target leakage");
  a fold's sum mixes hundreds of prices;
- ``<p>knn<k>_med``, ``_est`` (med + the row's ln size), ``_dist_km``, ``_size`` (mean ln size):
  the k nearest other sales by latitude / longitude (candidates within +-``knn_radius_cells`` cells of
  ``knn_cell_deg``), ``<p>knn_n`` how many were found.

This retrieval over the training rows is what TabR-style models use; it is linear in rows x candidates
per neighbourhood, like the dated k nearest (:mod:`.full`).
"""

from __future__ import annotations

import polars as pl

from tasks.features.comps.config import KM_PER_DEGREE, CompsConfig, Q, _cells

_KEY = "_rkey"
FOLDS = 5  # the group means' folds (a training row's group mean leaves its whole fold out)


def _row_key(frame: pl.LazyFrame, columns: list[str]) -> pl.Expr:
    """A hash of ``columns`` (the identity of a sale, see the module's doc)."""
    return pl.struct([pl.col(c).cast(pl.String) for c in columns]).hash(seed=7).alias(_KEY)


def _values(history: pl.LazyFrame, cfg: CompsConfig, key_cols: list[str]) -> pl.LazyFrame:
    price = pl.col(cfg.target).cast(pl.Float64)
    size = pl.col(cfg.size).cast(pl.Float64) if cfg.size else pl.lit(1.0)
    known = (price > 0) & (size > 0)
    if cfg.lat is not None and cfg.long is not None:
        known = known & pl.col(cfg.lat).is_not_null() & pl.col(cfg.long).is_not_null()
    return (history.filter(known)
            .with_columns((price / size).log().alias("_v"), size.log().alias("_lns"), _row_key(history, key_cols)))


def _group_mean(rows: pl.LazyFrame, hist: pl.LazyFrame, g: str, cfg: CompsConfig) -> pl.LazyFrame:
    """Per row: the mean value and count of the history sales of its group ``g``, its own fold left out."""
    p = cfg.prefix
    # Exact sums (128-bit decimals, to 1e-15): the total minus a fold is then exactly the other folds'
    # sum, whatever the order of the additions (a float difference kept traces of the fold's values).
    v = pl.col("_v").cast(pl.Decimal(38, 15))
    total = hist.group_by(g).agg(v.sum().alias("_s"), pl.len().alias("_n"))
    fold = hist.group_by(g, "_fold").agg(v.sum().alias("_sf"), pl.len().alias("_nf"))
    joined = (rows.join(total, on=g, how="left", maintain_order="left")
              .join(fold, on=[g, "_fold"], how="left", maintain_order="left"))
    s = (pl.col("_s").fill_null(0) - pl.col("_sf").fill_null(0)).cast(pl.Float64)
    n = pl.col("_n").fill_null(0) - pl.col("_nf").fill_null(0)
    return joined.select(Q, pl.when(n > 0).then(s / n).alias(f"{p}{g}_mean"), n.cast(pl.Int32).alias(f"{p}{g}_n"))


def _knn(hist: pl.LazyFrame, rows: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    """The k nearest history sales of each row by distance, the row itself left out."""
    p, r, kmax = cfg.prefix, cfg.knn_radius_cells, max(cfg.knn_k)
    offsets = pl.LazyFrame({"_di": [i for i in range(-r, r + 1) for _ in range(-r, r + 1)],
                            "_dj": [j for _ in range(-r, r + 1) for j in range(-r, r + 1)]},
                           schema={"_di": pl.Int32, "_dj": pl.Int32})
    q = (rows.select(Q, pl.col(_KEY).alias("_kq"), pl.col(cfg.lat).alias("_latq"), pl.col(cfg.long).alias("_lonq"),
                     *_cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.knn_cell_deg))
         .join(offsets, how="cross")
         .with_columns(pl.col("_ci") + pl.col("_di"), pl.col("_cj") + pl.col("_dj")).drop("_di", "_dj"))
    h = hist.select(_KEY, cfg.lat, cfg.long, "_v", "_lns", *_cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.knn_cell_deg))
    dy = pl.col(cfg.lat) - pl.col("_latq")
    dx = (pl.col(cfg.long) - pl.col("_lonq")) * (pl.col("_latq") * (3.141592653589793 / 180)).cos()
    cand = (q.join(h, on=["_ci", "_cj"], how="inner")
            .filter(pl.col(_KEY) != pl.col("_kq"))  # never the row itself
            .with_columns((KM_PER_DEGREE * (dx * dx + dy * dy).sqrt()).alias("_dist"))
            .select(Q, "_dist", "_v", "_lns")
            .sort([Q, "_dist", "_v", "_lns"])  # ties broken by value: never by row order
            .with_columns(pl.int_range(pl.len()).over(Q).alias("_rank"))
            .filter(pl.col("_rank") < kmax))
    aggs = []
    for k in cfg.knn_k:
        top = pl.col("_rank") < k
        aggs += [pl.col("_v").filter(top).median().alias(f"{p}knn{k}_med"),
                 pl.col("_dist").filter(top).mean().alias(f"{p}knn{k}_dist_km"),
                 pl.col("_lns").filter(top).mean().alias(f"{p}knn{k}_size")]
    return cand.group_by(Q).agg(*aggs, pl.len().alias(f"{p}knn_n"))


def loo_comps(history: pl.LazyFrame, rows: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    """``rows`` with the leave-one-out columns of ``cfg`` (:meth:`CompsConfig.columns`), row order kept."""
    p = cfg.prefix
    names = rows.collect_schema().names()
    hist_names = history.collect_schema().names()
    key_cols = [c for c in cfg.input_columns(with_target=True) if c in names and c in hist_names]
    # The fold of a sale: a hash of its columns but the target, so that its own price never moves it.
    fold_key = [c for c in key_cols if c != cfg.target]
    fold = (pl.struct([pl.col(c).cast(pl.String) for c in fold_key]).hash(seed=11) % FOLDS) if fold_key else pl.lit(0)
    hist = _values(history, cfg, key_cols).with_columns(fold.alias("_fold"))
    keyed = rows.with_row_index(Q).with_columns(_row_key(rows, key_cols), fold.alias("_rfold"))
    # A history sale's fold (the feature build's training rows); -1 for a row that is not one.
    in_hist = hist.select(_KEY).unique().with_columns(pl.lit(True).alias("_in"))
    base = (keyed.select(Q, _KEY, "_rfold", *[c for c in cfg.input_columns(with_target=False) if c in names])
            .join(in_hist, on=_KEY, how="left", maintain_order="left")
            .with_columns(pl.when(pl.col("_in")).then(pl.col("_rfold")).otherwise(-1).alias("_fold")))
    out = keyed
    pieces = [_group_mean(base, hist, g, cfg) for g in cfg.groups]
    if cfg.knn_k:
        pieces.append(_knn(hist, base, cfg))
    for piece in pieces:
        out = out.join(piece, on=Q, how="left", maintain_order="left")
    lns = pl.col(cfg.size).cast(pl.Float64).log() if cfg.size else pl.lit(0.0)
    derived = [(pl.col(f"{p}knn{k}_med") + lns).alias(f"{p}knn{k}_est") for k in cfg.knn_k]
    if cfg.knn_k:
        derived.append(pl.col(f"{p}knn_n").fill_null(0))
    if cfg.size:
        derived.append(pl.when(pl.col(cfg.size).cast(pl.Float64) > 0).then(lns).alias(f"{p}ln_size"))
    out = out.with_columns(derived).sort(Q)
    original = [c for c in names if c not in cfg.columns()]
    return out.select(*original, *cfg.columns())
