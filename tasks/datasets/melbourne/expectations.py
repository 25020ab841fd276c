"""Starter data contract for 'melbourne', written by `homeworth spec infer --suite` from melb_data.csv.gz.

Bounds are the 13580 sample rows' 0.1 % and 99.9 % quantiles, each widened by half their span
(never below 0 for a column never negative); value sets list the codes of categorical columns with
at most 12 values. A row outside them goes to quarantine with the check as its reason. They are a
start, not an agreed contract: tighten or loosen them (see expectations/king_county.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import great_expectations as gx

from expectations.common import ROW, spec_expectations

if TYPE_CHECKING:
    from tasks.core.spec import DatasetSpec

SUITE_NAME = "melbourne_sales"

# Runtime parameters (expectations.common.DEFAULT_PARAMETERS): a day without sales is normal.
PARAMETERS: dict = {"min_rows_per_day": 0, "max_rows_per_day": None}

BOUNDS: dict[str, tuple[float, float]] = {
    "Rooms": (0.0, 10.0),  # observed 1 .. 7 (0.1 % .. 99.9 %)
    "Price": (21000.0, 7695000.0),  # observed 210000 .. 5.2e+06 (0.1 % .. 99.9 %)
    "Distance": (0.12, 67.2),  # observed 1.2 .. 45.2 (0.1 % .. 99.9 %)
    "Bedroom2": (0.0, 11.0),  # observed 0 .. 7 (0.1 % .. 99.9 %)
    "Bathroom": (0.0, 8.0),  # observed 0 .. 5 (0.1 % .. 99.9 %)
    "Car": (0.0, 10.5),  # observed 0 .. 7 (0.1 % .. 99.9 %)
    "Landsize": (0.0, 25800.0),  # observed 0 .. 17200 (0.1 % .. 99.9 %)
    "BuildingArea": (0.0, 1533.0),  # observed 0 .. 1022 (0.1 % .. 99.9 %)
    "YearBuilt": (1756.15, 2117.85),  # observed 1857 .. 2017 (0.1 % .. 99.9 %)
    "Lattitude": (-40.0413, -35.6847),  # observed -38.1632 .. -37.5628 (0.1 % .. 99.9 %)
    "Longtitude": (137.3, 152.638),  # observed 144.569 .. 145.369 (0.1 % .. 99.9 %)
    "Propertycount": (43.0, 32256.0),  # observed 438 .. 21650 (0.1 % .. 99.9 %)
}

VALUE_SETS: dict[str, list[str]] = {
    "Type": ["h", "t", "u"],
    "Method": ["PI", "S", "SA", "SP", "VB"],
    "Regionname": ["Eastern Metropolitan", "Eastern Victoria", "Northern Metropolitan", "Northern Victoria", "South-Eastern Metropolitan", "Southern Metropolitan", "Western Metropolitan", "Western Victoria"],
}


def build_suite(spec: "DatasetSpec", bookkeeping: list[str]) -> gx.ExpectationSuite:
    exps = spec_expectations(spec, bookkeeping)
    exps += [gx.expectations.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi, meta=ROW)
             for c, (lo, hi) in BOUNDS.items() if c in spec.columns]
    exps += [gx.expectations.ExpectColumnValuesToBeInSet(column=c, value_set=v, meta=ROW)
             for c, v in VALUE_SETS.items() if c in spec.columns]
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=exps)
