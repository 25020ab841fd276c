"""Features of a King County sale: its own row (``derive``) and comparable earlier sales (``COMPS``).

``derive`` sees one row at a time (point in time by construction); ``COMPS`` configures the
history-aware stage (``tasks/features/comps/``): statistics of the sales dated before this one in the same
zipcode, the same 0.01-degree cell and among the nearest by latitude and longitude, a county-wide
market index, and the same house's previous sale.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from tasks.features.comps import CompsConfig

# Day zero of the "market time" feature; the model extrapolates a trend from it.
EPOCH = date(2014, 1, 1)

NUMERIC = [
    "bedrooms", "bathrooms", "log_sqft_living", "log_sqft_lot", "floors", "waterfront", "view",
    "condition", "grade", "log_sqft_above", "basement_share", "age", "renovated", "years_since_renovation",
    "lat", "long", "log_sqft_living15", "log_sqft_lot15", "living_vs_neighbours",
]  # fmt: skip
# ``derive`` also computes market time (``sale_day``) and the month (``month_sin``, ``month_cos``), kept in
# the feature table but not model inputs: a time split's test months lie outside the training range, where
# a network extrapolates them arbitrarily; the market level enters through the target offset instead.
CATEGORICAL = ["zipcode"]
UNCLIPPED: list[str] = []
TARGET_TRANSFORM = "log"
# The model fits ln(price) - (county market index nowcast to the sale day + ln(living area)): the value
# of a house relative to the market of its sale date, so a market that moves past the training window
# moves the predictions with it (docs/model.md). Both columns are point in time (comps, the row itself).
# comp_mktloc_now is the location-adjusted index (each sale's ln price per sqft minus its zipcode's
# effect over the trailing year: the mix of zipcodes that sell changes with the season) nowcast to
# the sale day: its trailing 30-day mean carried forward by its 15.5-day lag along the 30-vs-90-day
# slope (CompsConfig.market_location, market_nowcast). Chosen over the plain index on the backtests.
TARGET_OFFSET = ["comp_mktloc_now", "log_sqft_living"]
# Comparable sales: price per square foot of living space, by zipcode, 0.01-degree cell and the k
# nearest by latitude and longitude (candidates within +-2 cells, sold within the last 365 days).
COMPS = CompsConfig(time="date", target="price", size="sqft_living", lat="lat", long="long", groups=["zipcode"],
                    id="id", market_nowcast=True, market_location="zipcode")


def derive(lf: pl.LazyFrame) -> pl.LazyFrame:
    year = pl.col("date").dt.year()
    renovated = pl.col("yr_renovated") > 0
    month = pl.col("date").dt.month().cast(pl.Float64)
    return lf.with_columns(
        pl.col("sqft_living").log().alias("log_sqft_living"),
        pl.col("sqft_lot").log().alias("log_sqft_lot"),
        pl.col("sqft_above").log().alias("log_sqft_above"),
        (pl.col("sqft_basement") / pl.col("sqft_living")).alias("basement_share"),
        (year - pl.col("yr_built")).clip(lower_bound=0).alias("age"),
        renovated.cast(pl.Float64).alias("renovated"),
        pl.when(renovated).then(year - pl.col("yr_renovated")).otherwise(year - pl.col("yr_built"))
        .clip(lower_bound=0).alias("years_since_renovation"),
        pl.col("sqft_living15").log().alias("log_sqft_living15"),
        pl.col("sqft_lot15").log().alias("log_sqft_lot15"),
        (pl.col("sqft_living") / pl.col("sqft_living15")).log().alias("living_vs_neighbours"),
        (pl.col("date") - pl.lit(EPOCH)).dt.total_days().cast(pl.Float64).alias("sale_day"),
        (month * (2 * 3.141592653589793 / 12)).sin().alias("month_sin"),
        (month * (2 * 3.141592653589793 / 12)).cos().alias("month_cos"),
    )
