"""The market index: per day, trailing means of ln(price / size) over the sales of EARLIER days.

Every mode shares it: the full mode joins it to the history and the rows (:func:`_market`), the
market-only build joins :func:`market_index` by day, and the area mode computes it from the same
exact per-day sums as its area arrays (:func:`_market_from_sums`).
"""

from __future__ import annotations

import polars as pl

from tasks.features.comps.config import CompsConfig


def _history_values(history: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    price = pl.col(cfg.target).cast(pl.Float64)
    size = pl.col(cfg.size).cast(pl.Float64) if cfg.size else pl.lit(1.0)  # no size: ln(price) per sale
    known = (price > 0) & (size > 0) & pl.col(cfg.time).is_not_null()
    if cfg.lat is not None and cfg.long is not None:
        known = known & pl.col(cfg.lat).is_not_null() & pl.col(cfg.long).is_not_null()
    return (
        history.select(*dict.fromkeys(cfg.input_columns(with_target=True)))
        .filter(known)
        .with_columns((price / size).log().alias("_lnppsf"), price.log().alias("_lnp"), size.log().alias("_lns"))
    )


def _location_keys(cfg: CompsConfig) -> list[str]:
    """The keys, beside the day, of the sums the market table is computed from."""
    return [cfg.market_location] if cfg.market_location else []


def _market(hist: pl.LazyFrame, days: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    """One row per day: trailing means of ln(price / size) over sales of EARLIER days (and, with
    ``market_location``, of the location-adjusted values), :func:`_market_from_sums`."""
    return _market_from_sums(_sums(hist, _location_keys(cfg), cfg), days, cfg)


def _market_from_sums(sums: pl.LazyFrame, days: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    """The market table (``_mkt<w>``, and with ``market_location`` the location-adjusted index
    ``_loc<w>``) for every day of ``days``, from the exact sums and counts of ln(price / size) per
    day, or per (``market_location``, day) (:func:`_sums`).

    The sums are 128-bit decimals (to 1e-15), exact, rounded to a float once per day: a float sum
    depends on the order in which the streaming engine's threads add a day's rows, so a rerun could
    change the market index (and every feature built on it) in its last digits.

    A location's effect on day d is the mean of its sales' market-adjusted values (ln(price / size)
    minus the ``adjust_window_days`` index of their day) over days in [d - location_window_days, d);
    a day's location-adjusted sum is, over its locations with an effect, sum - count x effect (one
    effect per location and day), rounded to 1e-15 and added exactly, so it does not depend on order.
    """
    t, g, w = cfg.time, cfg.market_location, cfg.location_window_days
    daily = sums.group_by(t).agg(pl.col("_s").sum().cast(pl.Float64), pl.col("_n").sum().cast(pl.Float64))
    market = _market_from_daily(daily, days, cfg)
    if not g:
        return market
    adj = market.select(t, pl.col(f"_mkt{cfg.adjust_window_days}").alias("_mkt_adj"))
    known = pl.col("_mkt_adj").is_not_null()
    per_day = (sums.join(adj, on=t, how="left")
               .with_columns(pl.col("_s").cast(pl.Float64).alias("_sf"),
                             pl.when(known).then(pl.col("_s").cast(pl.Float64) - pl.col("_n") * pl.col("_mkt_adj"))
                             .otherwise(0.0).alias("_a"),
                             pl.when(known).then(pl.col("_n")).otherwise(0).alias("_na"))
               .sort(g, t))
    a = pl.col("_a").rolling_sum_by(t, window_size=f"{w}d", closed="left").over(g)
    n = pl.col("_na").rolling_sum_by(t, window_size=f"{w}d", closed="left").over(g)
    effect = pl.when(n > 0).then(a / n).otherwise(None)
    loc_daily = (per_day.with_columns(effect.alias("_z")).filter(pl.col("_z").is_not_null())
                 .group_by(t).agg((pl.col("_sf") - pl.col("_n") * pl.col("_z")).cast(pl.Decimal(38, 15)).sum()
                                  .cast(pl.Float64).alias("_s"), pl.col("_n").sum().cast(pl.Float64)))
    loc = (_market_from_daily(loc_daily, days, cfg)
           .select(t, *[pl.col(f"_mkt{w}").alias(f"_loc{w}") for w in cfg.market_windows_days]))
    return market.join(loc, on=t, how="left")


def _market_from_daily(daily: pl.LazyFrame, days: pl.LazyFrame, cfg: CompsConfig) -> pl.LazyFrame:
    t = cfg.time
    grid = days.unique().join(daily, on=t, how="left").with_columns(pl.col("_s", "_n").fill_null(0.0)).sort(t)
    out = []
    for w in sorted({*cfg.market_windows_days, cfg.adjust_window_days}):
        s = pl.col("_s").rolling_sum_by(t, window_size=f"{w}d", closed="left")
        n = pl.col("_n").rolling_sum_by(t, window_size=f"{w}d", closed="left")
        out.append(pl.when(n > 0).then(s / n).otherwise(None).alias(f"_mkt{w}"))
    return grid.with_columns(out).drop("_s", "_n")


def _sums(hist: pl.LazyFrame, keys: list[str], cfg: CompsConfig) -> pl.LazyFrame:
    """Exact sum (128-bit decimal) and count of ln(price / size) per ``keys`` and day."""
    return hist.group_by(*keys, cfg.time).agg(pl.col("_lnppsf").cast(pl.Decimal(38, 15)).sum().alias("_s"),
                                              pl.len().cast(pl.Int64).alias("_n"))


def market_index(history: pl.LazyFrame, days: pl.LazyFrame, cfg: CompsConfig) -> pl.DataFrame:
    """The market index columns ``<p>mkt_<w>`` per day, for every day of ``days[cfg.time]`` and of the history.

    The same values as :func:`comps` gives a row of that day (sales of earlier days only), from one
    streaming aggregation of the history by day: memory is one row per day whatever the history's
    size, so ``build_features`` joins it to any number of rows in a single streaming pass (the
    features of a market-only configuration, :meth:`CompsConfig.market_only`).
    """
    t = cfg.time
    # Two streaming aggregations, each one row per day (per location and day with
    # ``market_location``; the history is never held whole); then the trailing windows over those rows.
    sums = _sums(_history_values(history, cfg), _location_keys(cfg), cfg).collect(engine="streaming")
    row_days = days.select(t).unique().collect(engine="streaming")
    grid = pl.concat([sums.select(t).unique(), row_days]).lazy()
    market = _market_from_sums(sums.lazy(), grid, cfg)
    return market.select(t, *cfg.market_columns()).collect().sort(t)
