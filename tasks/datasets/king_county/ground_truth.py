"""The synthetic market's price function (``tasks/datasets/king_county/synth.py``), known exactly.

``ln(price) = f(row) + eps`` with ``eps ~ Normal(0, sigma^2)`` independent of every column (synth's
``--sigma``, default 0.15), so no model can do better than an RMSE of sigma on ln(price):

    f = 12.5 + L[zipcode]
        + 0.42 ln(sqft_living / 2000) + 0.08 ln(sqft_lot / 7500) + 0.15 ln(sqft_living15 / 2000)
        + 0.09 (grade - 7) + 0.06 (condition - 3) + 0.06 view + 0.45 waterfront
        + 0.03 (bathrooms - 2) - 0.01 (bedrooms - 3) - 0.04 (floors - 1)
        - 0.17 sqft_basement / sqft_living
        - 0.43 a + 0.40 a^2                  where a = max(year(date) - yr_built, 0) / 100
        + 0.08 [yr_renovated > 0]
        + ln(1.06) t                         market trend, +6 % a year: t = days since 2014-01-01 / 365.25
        + 0.03 cos(2 pi (doy - 105) / 365.25)  season, peak in mid April: doy = day of the year (1..366)

    price = round(exp(f + eps)) dollars, clipped to [1000, 1e8]

``L[zipcode]`` is the ``level`` column of ``ZIP_TABLE`` in ``zipcodes.py`` (0.03 .. 1.37; the
coefficients and levels were fitted to the public 2014-15 sales and rounded). The rounding to whole
dollars moves ln(price) by at most 0.5 / price (1e-5 at $50,000); the clip only binds in far corners
(sigma well above 1, or sale dates decades away from 2014) and synth's summary counts the rows it
touched in the chunks it generated (``prices_clipped``). ``ground_truth_log_price(df)`` computes f for a
frame of these columns. See docs/synthetic.md.
"""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import polars as pl

from tasks.datasets.king_county import zipcodes as zc

BASE = 12.5
EPOCH = date(2014, 1, 1)
TREND = math.log(1.06)  # per year
SEASON_AMPLITUDE = 0.03
SEASON_PEAK_DOY = 105
COEF = {
    "ln_living": 0.42, "ln_lot": 0.08, "ln_living15": 0.15, "grade": 0.09, "condition": 0.06, "view": 0.06,
    "waterfront": 0.45, "bathrooms": 0.03, "bedrooms": -0.01, "floors": -0.04, "basement_share": -0.17,
    "age": -0.43, "age2": 0.40, "renovated": 0.08,
}  # fmt: skip
PRICE_MIN, PRICE_MAX = 1_000.0, 100_000_000.0


def year_doy(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Calendar year and day of year (1..366) of days since 1970-01-01."""
    d = days.astype("datetime64[D]")
    y = d.astype("datetime64[Y]")
    return y.astype(np.int64) + 1970, (d - y).astype(np.int64) + 1


def time_effect(days: np.ndarray) -> np.ndarray:
    """Market trend plus season of sale days (days since 1970-01-01)."""
    _, doy = year_doy(days)
    t = (days.astype(np.float64) - (EPOCH - date(1970, 1, 1)).days) / 365.25
    return TREND * t + SEASON_AMPLITUDE * np.cos(2 * np.pi * (doy - SEASON_PEAK_DOY) / 365.25)


def log_price(zip_idx, living, lot, living15, grade, condition, view, waterfront, bathrooms, bedrooms, floors,
              basement, yr_built, yr_renovated, sale_year, time_effect) -> np.ndarray:  # fmt: skip
    """f of the module docstring, from column arrays (``zip_idx`` indexes ``zipcodes.ZIPCODES``)."""
    c = COEF
    a = np.maximum(sale_year - yr_built, 0) / 100.0
    return (
        BASE + zc.LEVEL[zip_idx]
        + c["ln_living"] * np.log(living / 2000.0)
        + c["ln_lot"] * np.log(lot / 7500.0)
        + c["ln_living15"] * np.log(living15 / 2000.0)
        + c["grade"] * (grade - 7)
        + c["condition"] * (condition - 3)
        + c["view"] * view
        + c["waterfront"] * waterfront
        + c["bathrooms"] * (bathrooms - 2)
        + c["bedrooms"] * (bedrooms - 3)
        + c["floors"] * (floors - 1)
        + c["basement_share"] * (basement / living)
        + c["age"] * a + c["age2"] * a * a
        + c["renovated"] * (yr_renovated > 0)
        + time_effect
    )  # fmt: skip


def _date_expr(dt: pl.DataType) -> pl.Expr:
    """The ``date`` column as a Date, whether it is a Date, a Datetime or text (ISO or 20141013T000000)."""
    if dt == pl.Date:
        return pl.col("date")
    if isinstance(dt, pl.Datetime):
        return pl.col("date").dt.date()
    text = pl.col("date").cast(pl.String).str.strip_chars()
    return text.str.to_datetime("%Y%m%dT%H%M%S", strict=False).dt.date().fill_null(
        text.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False))


def ground_truth_log_price(df) -> np.ndarray:
    """f(row) of the module docstring (ln(price) without the noise) for a frame of the spec's columns.

    ``df`` is a polars DataFrame (anything ``pl.DataFrame(df)`` accepts will do) with the spec's column
    names; ``date`` may be a Date, a Datetime or text (ISO or ``20141013T000000``). Raises ValueError on a
    zip code outside the 70.
    """
    if not isinstance(df, pl.DataFrame):
        df = pl.DataFrame(df)
    zips = pl.col("zipcode").cast(pl.String).str.strip_chars()
    cols = df.select(
        zips.replace_strict(zc.ZIPCODES, list(range(len(zc.ZIPCODES))), default=None, return_dtype=pl.Int64)
        .alias("zi"),
        zips.alias("zipcode"),
        _date_expr(df.schema["date"]).cast(pl.Int32).alias("days"),
        *[pl.col(c).cast(pl.Float64) for c in (
            "sqft_living", "sqft_lot", "sqft_living15", "grade", "condition", "view", "waterfront", "bathrooms",
            "bedrooms", "floors", "sqft_basement", "yr_built", "yr_renovated")],
    )  # fmt: skip
    bad = cols.filter(pl.col("zi").is_null())
    if bad.height:
        raise ValueError(f"zip code(s) outside King County's 70: {bad['zipcode'].unique().to_list()[:10]}")
    if cols["days"].null_count():
        raise ValueError("column 'date' has values that are not dates")
    unique_days, inverse = np.unique(cols["days"].to_numpy().astype(np.int64), return_inverse=True)
    year = year_doy(unique_days)[0][inverse]
    effect = time_effect(unique_days)[inverse]
    g = {c: cols[c].to_numpy() for c in cols.columns}
    return log_price(g["zi"].astype(np.int64), g["sqft_living"], g["sqft_lot"], g["sqft_living15"], g["grade"],
                     g["condition"], g["view"], g["waterfront"], g["bathrooms"], g["bedrooms"], g["floors"],
                     g["sqft_basement"], g["yr_built"], g["yr_renovated"], year, effect)  # fmt: skip
