"""The data contract for King County sales (tasks/datasets/king_county/spec.yaml).

Row-level bounds are wide enough for every plausible sale and tight enough to catch typing errors
(a 33-bedroom house of 1,620 sq ft, a price of 0, a point outside the county). Known quirks of the
public data are accepted on purpose: houses sold before completion (``yr_built`` one year after the
sale year: 12 sales) and ``yr_renovated = 0`` meaning never renovated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import great_expectations as gx
import polars as pl

from expectations.common import ROW, spec_expectations

if TYPE_CHECKING:
    from tasks.core.spec import DatasetSpec

SUITE_NAME = "king_county_sales"

# The 70 zip codes of King County that appear in the public sales (98001 .. 98199).
ZIPCODES = [
    "98001", "98002", "98003", "98004", "98005", "98006", "98007", "98008", "98010", "98011",
    "98014", "98019", "98022", "98023", "98024", "98027", "98028", "98029", "98030", "98031",
    "98032", "98033", "98034", "98038", "98039", "98040", "98042", "98045", "98052", "98053",
    "98055", "98056", "98058", "98059", "98065", "98070", "98072", "98074", "98075", "98077",
    "98092", "98102", "98103", "98105", "98106", "98107", "98108", "98109", "98112", "98115",
    "98116", "98117", "98118", "98119", "98122", "98125", "98126", "98133", "98136", "98144",
    "98146", "98148", "98155", "98166", "98168", "98177", "98178", "98188", "98198", "98199",
]  # fmt: skip

# Runtime parameters of this suite (see expectations.common.DEFAULT_PARAMETERS); the public data has
# 0 to 142 sales a day, so the defaults stay permissive and a deployment tightens them per run.
PARAMETERS: dict = {"min_rows_per_day": 0, "max_rows_per_day": None}

# Helper columns computed for validation only (never written to the lake).
VIEW_COLUMNS = ["_sale_year_plus_1"]


def validation_view(df: pl.DataFrame) -> pl.DataFrame:
    """Columns the cross-column checks compare against."""
    return df.with_columns((pl.col("date").dt.year() + 1).alias("_sale_year_plus_1"))


def _between(column: str, lo: float | None, hi: float | None, **kw) -> gx.expectations.Expectation:
    return gx.expectations.ExpectColumnValuesToBeBetween(column=column, min_value=lo, max_value=hi, meta=ROW, **kw)


def build_suite(spec: "DatasetSpec", bookkeeping: list[str]) -> gx.ExpectationSuite:
    exps = spec_expectations(spec, bookkeeping + VIEW_COLUMNS)
    exps += [
        _between("price", 1_000, 100_000_000),
        _between("bedrooms", 0, 15),
        _between("bathrooms", 0, 10),
        _between("sqft_living", 200, 30_000),
        _between("sqft_lot", 100, 5_000_000),
        _between("sqft_above", 200, 30_000),
        _between("sqft_basement", 0, 10_000),
        _between("sqft_living15", 200, 30_000),
        _between("sqft_lot15", 100, 5_000_000),
        _between("floors", 1, 4),
        _between("yr_built", 1850, None),
        _between("lat", 47.0, 47.9),
        _between("long", -122.6, -121.0),
        gx.expectations.ExpectColumnValuesToBeInSet(column="waterfront", value_set=[0, 1], meta=ROW),
        gx.expectations.ExpectColumnValuesToBeInSet(column="view", value_set=[0, 1, 2, 3, 4], meta=ROW),
        gx.expectations.ExpectColumnValuesToBeInSet(column="condition", value_set=[1, 2, 3, 4, 5], meta=ROW),
        gx.expectations.ExpectColumnValuesToBeInSet(column="grade", value_set=list(range(1, 14)), meta=ROW),
        gx.expectations.ExpectColumnValuesToBeInSet(column="zipcode", value_set=ZIPCODES, meta=ROW),
        # Parcel numbers are digits (10 in the public data); catches stray quotes, spaces or newlines.
        gx.expectations.ExpectColumnValuesToMatchRegex(column="id", regex=r"^[0-9]{1,10}$", meta=ROW),
        # Not built (or renovated) after the sale; one year later is a sale before completion.
        gx.expectations.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="_sale_year_plus_1", column_B="yr_built", or_equal=True, meta=ROW
        ),
        gx.expectations.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="_sale_year_plus_1", column_B="yr_renovated", or_equal=True, meta=ROW
        ),
    ]
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=exps)
