"""Expectations every dataset gets from its spec, and the severity convention.

Each expectation carries ``meta={"severity": ...}``:
- ``"row"``: failing rows go to quarantine with the expectation as their reason; the run goes on.
- ``"batch"``: the whole batch is wrong (schema, volume); the task fails with the evidence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import great_expectations as gx

if TYPE_CHECKING:
    from tasks.core.spec import DatasetSpec

ROW = {"severity": "row"}
BATCH = {"severity": "batch"}
# Batch-level checks against the reference window; tasks.quality.validate leaves them out when there is none.
DISTRIBUTION = {"severity": "batch", "check": "distribution"}

# Runtime parameters every suite may use through {"$PARAMETER": name}; set by tasks.quality.validate.
INTERVAL_START = "interval_start"  # first day of the run's data interval (datetime)
INTERVAL_LAST = "interval_last"  # last day inside the interval (datetime)
MIN_ROWS = "min_rows"  # bounds on the batch's row count (None: unbounded); by default the per-day
MAX_ROWS = "max_rows"  # bounds below times the number of days in the interval
# Per-day row-count bounds (None: unbounded). A suite module may override them in its PARAMETERS
# dict, a caller through validate_interval(..., params={...}).
MIN_ROWS_PER_DAY = "min_rows_per_day"
MAX_ROWS_PER_DAY = "max_rows_per_day"
# Checks against a reference window: the validated partitions of the REFERENCE_DAYS days before the
# interval (tasks.quality.validate.reference_window). None/absent reference: the checks are unbounded.
REFERENCE_DAYS = "reference_days"
# Upper volume bound: this many times the reference's average rows per day (a duplicated or runaway feed).
MAX_ROWS_VS_REFERENCE = "max_rows_vs_reference"
# Distribution of the target: median and quartiles within (1 -/+ tolerance) of the reference's, checked
# when the batch has at least DISTRIBUTION_MIN_ROWS rows (a day of five sales says little about a market).
DISTRIBUTION_TOLERANCE = "distribution_tolerance"
DISTRIBUTION_MIN_ROWS = "distribution_min_rows"
TARGET_MEDIAN_MIN, TARGET_MEDIAN_MAX, TARGET_QUARTILES = "target_median_min", "target_median_max", "target_quartiles"
# Permissive on volume (a day without sales, a holiday, is normal); the reference bounds measured on the
# King County data: daily volume at most 2.3x the trailing 28-day average, daily median and quartiles
# of price within 0.76..1.39 of the trailing ones on days with >= 30 sales.
DEFAULT_PARAMETERS: dict = {MIN_ROWS_PER_DAY: 0, MAX_ROWS_PER_DAY: None, REFERENCE_DAYS: 28,
                            MAX_ROWS_VS_REFERENCE: 5.0, DISTRIBUTION_TOLERANCE: 0.5, DISTRIBUTION_MIN_ROWS: 30}


def distribution_expectations(target: str) -> list:
    """Batch-level: the target's median and quartiles against the reference window (see parameters)."""
    return [
        gx.expectations.ExpectColumnMedianToBeBetween(
            column=target, min_value={"$PARAMETER": TARGET_MEDIAN_MIN}, max_value={"$PARAMETER": TARGET_MEDIAN_MAX},
            meta=DISTRIBUTION),
        gx.expectations.ExpectColumnQuantileValuesToBeBetween(
            column=target, quantile_ranges={"$PARAMETER": TARGET_QUARTILES}, meta=DISTRIBUTION),
    ]


def row_count_bounds() -> gx.expectations.Expectation:
    """Batch-level volume check: the rows of the batch (duplicates set aside) within [min_rows, max_rows]."""
    return gx.expectations.ExpectTableRowCountToBeBetween(
        min_value={"$PARAMETER": MIN_ROWS}, max_value={"$PARAMETER": MAX_ROWS}, meta=BATCH
    )


def spec_expectations(spec: "DatasetSpec", bookkeeping: list[str]) -> list:
    """Schema, volume, completeness (the columns that are not nullable), the event-time window and key
    uniqueness, derived from the spec alone."""
    columns = list(spec.columns) + bookkeeping
    out: list = [
        gx.expectations.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True, meta=BATCH),
        row_count_bounds(),
        *distribution_expectations(spec.target),
    ]
    for name in spec.not_null_columns:  # nullable columns accept empty values
        out.append(gx.expectations.ExpectColumnValuesToNotBeNull(column=name, meta=ROW))
    if spec.event_time:
        out.append(
            gx.expectations.ExpectColumnValuesToBeBetween(
                column=spec.event_time,
                min_value={"$PARAMETER": INTERVAL_START},
                max_value={"$PARAMETER": INTERVAL_LAST},
                meta=ROW,
            )
        )
    keys, whole_row = spec.duplicate_key()
    if len(keys) >= 2 and not whole_row:  # whole-row duplicates are set aside before GX (tasks.quality.validate)
        out.append(gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=keys, meta=ROW))
    return out
