"""The full mode (``HOMEWORTH_COMPS=full``): row-to-row statistics of earlier sales, as one lazy plan.

Per row: the market index, rolling medians and counts per group and grid cell, days since the
group's last sale, the k nearest earlier sales (an equi-join on neighbouring grid cells, filtered by
date and ranked by distance) and the item's previous sale (a ``join_asof``). :func:`comps_lazy` joins
the pieces; :func:`tasks.features.comps.chunks.comps` runs it in bounded chunks.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from tasks.features.comps.config import KM_PER_DEGREE, CompsConfig, Q, _cells
from tasks.features.comps.market import _history_values, _market


def _windows(hist: pl.LazyFrame, rows: pl.LazyFrame, keys: list[str], windows: list[int], name: str,
             cfg: CompsConfig) -> pl.LazyFrame:
    """Per group: rolling median and count of market-adjusted values of earlier days' sales."""
    t, p = cfg.time, cfg.prefix
    q = rows.select(Q, t, *keys).with_columns(pl.lit(None, pl.Float64).alias("_adj"))
    # Only the groups the rows are in (scoring a few houses reads a few groups' history).
    h = (hist.select(pl.lit(None, pl.UInt32).alias(Q), t, *keys, "_adj")
         .join(q.select(keys).unique(), on=keys, how="semi"))
    u = pl.concat([h, q], how="vertical_relaxed").sort([*keys, t])
    aggs = []
    for w in windows:
        aggs.append(pl.col("_adj").rolling_median_by(t, window_size=f"{w}d", closed="left").over(keys)
                    .alias(f"{p}{name}_{w}d_med"))
        aggs.append(pl.col("_adj").is_not_null().cast(pl.Int32).rolling_sum_by(t, window_size=f"{w}d", closed="left")
                    .over(keys).fill_null(0).alias(f"{p}{name}_{w}d_n"))
    return u.with_columns(aggs).filter(pl.col(Q).is_not_null()).drop(t, *keys, "_adj")


def _days_since(hist: pl.LazyFrame, rows: pl.LazyFrame, key: str, cfg: CompsConfig) -> pl.LazyFrame:
    t = cfg.time
    q = rows.select(Q, key, t).sort(t)
    last = hist.join(q.select(key).unique(), on=key, how="semi").select(key, pl.col(t).alias("_tl")).unique().sort("_tl")
    return (q.join_asof(last, left_on=t, right_on="_tl", by=key, strategy="backward", allow_exact_matches=False, check_sortedness=False)
            .select(Q, (pl.col(t) - pl.col("_tl")).dt.total_days().cast(pl.Float64).alias(f"{cfg.prefix}{key}_days_since")))



def _knn(hist: pl.LazyFrame, rows: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    """The k nearest sales of earlier days (within the neighbouring grid cells and the maximum age)."""
    t, p, r, kmax = cfg.time, cfg.prefix, cfg.knn_radius_cells, max(cfg.knn_k)
    offsets = pl.LazyFrame({"_di": [i for i in range(-r, r + 1) for _ in range(-r, r + 1)],
                            "_dj": [j for _ in range(-r, r + 1) for j in range(-r, r + 1)]},
                           schema={"_di": pl.Int32, "_dj": pl.Int32})
    q = (rows.select(Q, pl.col(t).alias("_tq"), pl.col(cfg.lat).alias("_latq"), pl.col(cfg.long).alias("_lonq"),
                     *_cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.knn_cell_deg))
         .join(offsets, how="cross")
         .with_columns(pl.col("_ci") + pl.col("_di"), pl.col("_cj") + pl.col("_dj")).drop("_di", "_dj"))
    h = hist.select(t, cfg.lat, cfg.long, "_adj", "_lns", *_cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.knn_cell_deg))
    dy = pl.col(cfg.lat) - pl.col("_latq")
    dx = (pl.col(cfg.long) - pl.col("_lonq")) * (pl.col("_latq") * (3.141592653589793 / 180)).cos()
    cand = (
        q.join(h, on=["_ci", "_cj"], how="inner")
        .filter((pl.col(t) < pl.col("_tq")) & (pl.col(t) >= pl.col("_tq") - timedelta(days=cfg.knn_max_age_days)))
        .with_columns((KM_PER_DEGREE * (dx * dx + dy * dy).sqrt()).alias("_dist"),
                      (pl.col("_tq") - pl.col(t)).dt.total_days().cast(pl.Float64).alias("_age"))
        .select(Q, "_dist", "_age", "_adj", "_lns")
        # ties in distance are broken by recency, then by value: the choice never depends on row order
        .sort([Q, "_dist", "_age", "_adj", "_lns"])
        .with_columns(pl.int_range(pl.len()).over(Q).alias("_rank"))
        .filter(pl.col("_rank") < kmax)
    )
    aggs = []
    for k in cfg.knn_k:
        top = pl.col("_rank") < k
        aggs += [pl.col("_adj").filter(top).median().alias(f"{p}knn{k}_med"),
                 pl.col("_dist").filter(top).mean().alias(f"{p}knn{k}_dist_km"),
                 pl.col("_age").filter(top).mean().alias(f"{p}knn{k}_age_days"),
                 pl.col("_lns").filter(top).mean().alias(f"{p}knn{k}_size")]
    return cand.group_by(Q).agg(*aggs, pl.len().alias(f"{p}knn_n"))


def _previous(hist: pl.LazyFrame, rows: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    t, p = cfg.time, cfg.prefix
    q = rows.select(Q, cfg.id, t).sort(t)
    h = (hist.join(q.select(cfg.id).unique(), on=cfg.id, how="semi")
         .select(cfg.id, pl.col(t).alias("_tp"), (pl.col("_lnp") - pl.col("_mkt_adj")).alias(f"{p}prev_adj"))
         .sort("_tp"))
    return (q.join_asof(h, left_on=t, right_on="_tp", by=cfg.id, strategy="backward", allow_exact_matches=False, check_sortedness=False)
            .select(Q, f"{p}prev_adj", (pl.col(t) - pl.col("_tp")).dt.total_days().cast(pl.Float64).alias(f"{p}prev_days")))



def comps_lazy(history: pl.LazyFrame, rows: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    """``rows`` (any columns, at least :meth:`CompsConfig.input_columns`) with the comp columns added.

    Row order is kept. A row's features use only the history sales dated strictly before it.
    """
    t, p = cfg.time, cfg.prefix
    rows = rows.with_row_index(Q)
    keys = rows.select(Q, *dict.fromkeys(cfg.input_columns(with_target=False)))
    raw = _history_values(history, cfg)
    market = _market(raw, pl.concat([raw.select(t), keys.select(t)]), cfg)
    adj = f"_mkt{cfg.adjust_window_days}"
    # Each past sale with its market index of that day; sales before any index exists have no _adj.
    raw = (raw.join(market.select(t, pl.col(adj).alias("_mkt_adj")), on=t, how="left")
           .with_columns((pl.col("_lnppsf") - pl.col("_mkt_adj")).alias("_adj")))
    hist = raw.filter(pl.col("_adj").is_not_null())
    out = rows.join(market.select(t, *cfg.market_columns(), pl.col(adj).alias("_mkt_row")), on=t, how="left",
                    maintain_order="left")
    pieces: list[pl.LazyFrame] = []
    for g in cfg.groups:
        pieces.append(_windows(hist, keys, [g], cfg.group_windows_days, g, cfg))
        pieces.append(_days_since(raw, keys, g, cfg))
    if cfg.cell_windows_days:
        cell = _cells(pl.col(cfg.lat), pl.col(cfg.long), cfg.cell_deg)
        pieces.append(_windows(hist.with_columns(cell), keys.with_columns(cell), ["_ci", "_cj"],
                               cfg.cell_windows_days, "cell", cfg))
    if cfg.knn_k:
        pieces.append(_knn(hist, keys, cfg))
    if cfg.id:
        pieces.append(_previous(raw, keys, cfg))
    for piece in pieces:
        out = out.join(piece, on=Q, how="left", maintain_order="left")
    lns = pl.col(cfg.size).cast(pl.Float64).log() if cfg.size else pl.lit(0.0)
    derived = [(pl.col(f"{p}knn{k}_med") + pl.col("_mkt_row") + lns).alias(f"{p}knn{k}_est") for k in cfg.knn_k]
    derived += cfg.time_exprs()
    if cfg.knn_k:
        derived.append(pl.col(f"{p}knn_n").fill_null(0))
    if cfg.id:
        derived.append((pl.col(f"{p}prev_adj") + pl.col("_mkt_row")).alias(f"{p}prev_est"))
    out = out.with_columns(derived).sort(Q)
    original = [c for c in rows.collect_schema().names() if c != Q and c not in cfg.columns()]
    return out.select(*original, *cfg.columns())
