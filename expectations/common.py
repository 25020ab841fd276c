"""Expectations every dataset gets from its spec, and the severity convention.

Each expectation carries ``meta={"severity": ...}``:
- ``"row"``: failing rows go to quarantine with the expectation as their reason; the run goes on.
- ``"batch"``: the whole batch is wrong (schema, volume); the task fails with the evidence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import great_expectations as gx

if TYPE_CHECKING:
    from tasks.spec import DatasetSpec

ROW = {"severity": "row"}
BATCH = {"severity": "batch"}

# Runtime parameters every suite may use through {"$PARAMETER": name}; set by tasks.validate.
INTERVAL_START = "interval_start"  # first day of the run's data interval (datetime)
INTERVAL_LAST = "interval_last"  # last day inside the interval (datetime)


def spec_expectations(spec: "DatasetSpec", bookkeeping: list[str]) -> list:
    """Schema, completeness and the event-time window, derived from the spec alone."""
    columns = list(spec.columns) + bookkeeping
    out: list = [
        gx.expectations.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True, meta=BATCH),
    ]
    for name in spec.required_columns:
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
    keys = spec.id_columns + ([spec.event_time] if spec.event_time else [])
    if len(keys) >= 2:
        out.append(gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=keys, meta=ROW))
    return out
