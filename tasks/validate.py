"""Validate raw partitions with the dataset's Great Expectations suite; split validated / quarantine.

One GX validation covers the run's whole data interval (a daily run: one day; a bulk run: many),
then rows are written back per day. A row fails if its values did not coerce, if it repeats an
earlier (id, event time) in the batch, or if any row-level expectation flags it; it then goes to
``quarantine`` with every reason. A failed batch-level expectation raises :class:`ValidationFailed`
naming the expectation, the column and a sample of the bad values, and writes nothing.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from datetime import date, datetime, time, timedelta
from typing import Any

import polars as pl

from tasks import storage
from tasks.ingest import COERCE_ERRORS, DS, SOURCE_FILE, SOURCE_ROW, days_in_interval, raw_schema
from tasks.spec import DatasetSpec

log = logging.getLogger(__name__)

REASONS = "_reasons"
ROW_ID = "_row_id"
BOOKKEEPING = [DS, SOURCE_FILE, SOURCE_ROW, COERCE_ERRORS]


class ValidationFailed(ValueError):
    """A batch-level expectation failed: the day is not written."""


def build_suite(spec: DatasetSpec):
    """The dataset's suite from ``expectations/``, or the spec-derived one if it names none."""
    import great_expectations as gx

    from expectations.common import spec_expectations

    module = spec.expectations_module_obj()
    if module is not None:
        return module.build_suite(spec, BOOKKEEPING)
    return gx.ExpectationSuite(name=f"{spec.name}_spec", expectations=spec_expectations(spec, BOOKKEEPING))


def _view(spec: DatasetSpec, df: pl.DataFrame) -> pl.DataFrame:
    module = spec.expectations_module_obj()
    return module.validation_view(df) if module is not None and hasattr(module, "validation_view") else df


def _describe(cfg) -> str:
    kw = {k: v for k, v in cfg.kwargs.items() if k not in ("column", "batch_id") and v is not None}
    col = cfg.kwargs.get("column") or cfg.kwargs.get("column_list") or (
        f"{cfg.kwargs.get('column_A')} vs {cfg.kwargs.get('column_B')}" if "column_A" in cfg.kwargs else ""
    )
    return f"{cfg.type}({col}{', ' if kw and col else ''}{', '.join(f'{k}={v}' for k, v in kw.items() if k not in ('column_list', 'column_A', 'column_B'))})"


def run_gx(spec: DatasetSpec, df: pl.DataFrame, start: date, end: date) -> Any:
    """Validate ``df`` (with a ``_row_id`` column) against the suite; returns the GX result."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from expectations.common import INTERVAL_LAST, INTERVAL_START

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    suite = ctx.suites.add(build_suite(spec))
    batch_def = (
        ctx.data_sources.add_pandas("homeworth").add_dataframe_asset(spec.name).add_batch_definition_whole_dataframe("interval")
    )
    pdf = _view(spec, df).drop(ROW_ID).to_pandas()
    batch = batch_def.get_batch(batch_parameters={"dataframe": pdf})
    last = max(start, end - timedelta(days=1))
    params = {INTERVAL_START: datetime.combine(start, time()), INTERVAL_LAST: datetime.combine(last, time())}
    return batch.validate(suite, expectation_parameters=params, result_format={"result_format": "COMPLETE"})


def _read_raw(spec: DatasetSpec, lake_uri: str, days: list[date]) -> pl.DataFrame:
    schema = raw_schema(spec)
    frames = []
    for day in days:
        uri = storage.partition_uri(lake_uri, "raw", day)
        if not storage.exists(uri):
            raise ValidationFailed(f"{uri}: raw partition missing; run the ingest step for {day} first")
        frames.append(pl.read_parquet(storage.read_bytes(uri)))
    if not frames:
        return pl.DataFrame(schema=schema)
    return pl.concat(frames, how="vertical")


def _duplicate_reasons(spec: DatasetSpec, df: pl.DataFrame) -> pl.DataFrame:
    """Rows repeating an earlier (id, event time) of the batch, with the row they repeat."""
    keys = spec.id_columns + ([spec.event_time] if spec.event_time else [])
    if not keys:
        return pl.DataFrame(schema={ROW_ID: pl.UInt32, "reason": pl.String})
    first = df.group_by(keys, maintain_order=True).agg(
        pl.col(SOURCE_FILE).first().alias("_first_file"), pl.col(SOURCE_ROW).first().alias("_first_row"),
        pl.col(ROW_ID).first().alias("_first_id"),
    )
    dup = df.join(first, on=keys, how="inner", nulls_equal=False).filter(pl.col(ROW_ID) != pl.col("_first_id"))
    return dup.select(
        ROW_ID,
        pl.format("duplicate ({}) of {} row {}", pl.concat_str([pl.col(k).cast(pl.String) for k in keys], separator=", "),
                  pl.col("_first_file"), pl.col("_first_row")).alias("reason"),
    )


def validate_interval(spec: DatasetSpec, lake_uri: str, start: date, end: date) -> dict:
    """Validate the raw partitions of [start, end) and (re)write validated and quarantine per day."""
    days = days_in_interval(start, end)
    raw = _read_raw(spec, lake_uri, days).with_row_index(ROW_ID)
    reasons: dict[int, list[str]] = defaultdict(list)
    for rid, err in raw.filter(pl.col(COERCE_ERRORS).is_not_null()).select(ROW_ID, COERCE_ERRORS).iter_rows():
        reasons[rid].append(f"coercion: {err}")
    dups = _duplicate_reasons(spec, raw)
    for rid, reason in dups.iter_rows():
        reasons[rid].append(reason)

    # Duplicates are already explained; GX sees each (id, time) once.
    checked = raw.filter(~pl.col(ROW_ID).is_in(dups[ROW_ID].implode()))
    row_ids = checked[ROW_ID].to_list()
    result = run_gx(spec, checked, start, end) if checked.height else None
    batch_failures, summary = [], []
    for r in result.results if result is not None else []:
        cfg = r.expectation_config
        severity = (cfg.meta or {}).get("severity", "batch")
        unexpected = r.result.get("unexpected_count") or 0
        summary.append({"expectation": _describe(cfg), "severity": severity, "success": bool(r.success),
                        "unexpected_count": int(unexpected)})
        if r.exception_info and r.exception_info.get("raised_exception"):
            batch_failures.append(f"{_describe(cfg)} raised: {r.exception_info.get('exception_message')}")
            continue
        if r.success:
            continue
        if severity == "row" and r.result.get("unexpected_index_list") is not None:
            values = r.result.get("unexpected_list") or []
            for i, idx in enumerate(r.result["unexpected_index_list"]):
                value = values[i] if i < len(values) else None
                reasons[row_ids[idx]].append(f"{_describe(cfg)}: got {value!r}")
        else:
            sample = r.result.get("partial_unexpected_list") or r.result.get("observed_value")
            batch_failures.append(f"{_describe(cfg)} failed; observed/sample: {sample!r}")
    if batch_failures:
        files = sorted(set(raw[SOURCE_FILE].to_list()))
        raise ValidationFailed(
            f"batch {start}..{end - timedelta(days=1)} (files {files[:5]}{' ...' if len(files) > 5 else ''}) failed "
            + f"{len(batch_failures)} batch-level expectation(s):\n  - " + "\n  - ".join(batch_failures)
        )

    reason_df = pl.DataFrame(
        {ROW_ID: list(reasons.keys()), REASONS: list(reasons.values())},
        schema={ROW_ID: pl.UInt32, REASONS: pl.List(pl.String)},
    )
    tagged = raw.join(reason_df, on=ROW_ID, how="left")
    validated = tagged.filter(pl.col(REASONS).is_null()).drop(ROW_ID, REASONS, COERCE_ERRORS)
    quarantine = tagged.filter(pl.col(REASONS).is_not_null()).drop(ROW_ID)
    out = {"start": start.isoformat(), "end": end.isoformat(), "rows_read": raw.height,
           "rows_accepted": validated.height, "rows_quarantined": quarantine.height,
           "expectations": summary, "partitions": {}}
    for day in days:
        v = validated.filter(pl.col(DS) == day)
        q = quarantine.filter(pl.col(DS) == day)
        v_uri = storage.partition_uri(lake_uri, "validated", day)
        q_uri = storage.partition_uri(lake_uri, "quarantine", day)
        out["partitions"][day.isoformat()] = {
            "validated": storage.write_parquet_atomic(v, v_uri), "accepted": v.height,
            "quarantine": storage.write_parquet_atomic(q, q_uri), "quarantined": q.height,
        }
    failing = [s for s in summary if not s["success"]]
    if failing or quarantine.height:
        log.warning("%d of %d rows quarantined; failing expectations: %s", quarantine.height, raw.height,
                    [f"{s['expectation']} x{s['unexpected_count']}" for s in failing])
    storage.write_json_atomic(
        storage.join(lake_uri, "_validation", f"{start.isoformat()}_{end.isoformat()}.json"),
        {k: out[k] for k in ("start", "end", "rows_read", "rows_accepted", "rows_quarantined", "expectations")},
    )
    return out
