"""Validate raw partitions with the dataset's Great Expectations suite; split validated / quarantine.

One GX validation covers the run's whole data interval (a daily run: one day; a bulk run: many),
then rows are written back per day. A row fails if its values did not coerce, if it repeats an
earlier (id, event time) in the batch, or if any row-level expectation flags it; it then goes to
``quarantine`` with every reason. A failed batch-level expectation raises :class:`ValidationFailed`
naming the expectation, the column and a sample of the bad values, and writes nothing.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from datetime import date, datetime, time, timedelta
from typing import Any

import polars as pl

from tasks.core import lake, storage
from tasks.core.spec import DatasetSpec
from tasks.ingest.landing import COERCE_ERRORS, DS, SOURCE_FILE, SOURCE_ROW, days_in_interval, raw_schema
from tasks.quality import datadocs

log = logging.getLogger(__name__)

REASONS = "_reasons"
ROW_ID = "_row_id"
BOOKKEEPING = [DS, SOURCE_FILE, SOURCE_ROW, COERCE_ERRORS]


class ValidationFailed(ValueError):
    """A batch-level expectation failed: the day is not written.

    ``details`` (when raised by :func:`validate_interval`) holds what a failure notification quotes:
    ``interval``, ``rows_read``, ``files`` ([file, rows]), ``failed`` (expectation, severity, evidence)
    and ``data_docs`` (the report of the failed validation).
    """

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details: dict = details or {}


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


def _plain(value: Any) -> Any:
    """A GX/pandas/numpy value as the plain Python value a person reads: dates as dates, numpy as Python."""
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if value is None or (not isinstance(value, (str, bytes)) and value != value):
        return None  # None, NaN, NaT: how pandas shows a null
    if type(value).__name__ == "datetime64":  # numpy datetime64 -> pandas Timestamp
        import pandas as pd

        value = pd.Timestamp(value)
    if hasattr(value, "to_pydatetime"):  # pandas Timestamp
        value = value.to_pydatetime()
    elif hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
    if isinstance(value, datetime) and value.time() == time() and value.tzinfo is None:
        return value.date()
    return value


def _fmt(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return "null"  # a NaN value itself never gets past coercion, so NaN here is a null
    return value.isoformat() if isinstance(value, (date, datetime)) else repr(value)


def _describe(cfg) -> str:
    """``expect_x(column, kw=value, ...)`` with runtime parameters already substituted."""
    skip = ("column", "batch_id", "column_list", "column_A", "column_B")
    kw = {k: v for k, v in cfg.kwargs.items() if k not in skip and v is not None}
    col = cfg.kwargs.get("column") or (", ".join(cfg.kwargs["column_list"]) if cfg.kwargs.get("column_list") else "") or (
        f"{cfg.kwargs.get('column_A')} vs {cfg.kwargs.get('column_B')}" if "column_A" in cfg.kwargs else ""
    )
    args = [col] if col else []
    for k, v in kw.items():
        if isinstance(v, (list, tuple)) and len(v) > 8:
            args.append(f"{k}=[{len(v)} values]")
        else:
            args.append(f"{k}={_fmt(v)}")
    return f"{cfg.type}({', '.join(args)})"


def _exception_message(r) -> str | None:
    """The error of an expectation that could not be evaluated (GX nests it per metric), else None."""
    info = r.exception_info or {}
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def reference_window(spec: DatasetSpec, lake_uri: str, start: date, days: int) -> dict | None:
    """Volume and target distribution of the validated partitions of the ``days`` days before ``start``.

    None when fewer than half of those days have a partition (the start of a history, a bulk load).
    """
    if not days:
        return None
    uris = [u for d in days_in_interval(start - timedelta(days=days), start)
            if storage.exists(u := lake.partition_uri(lake_uri, lake.VALIDATED, d))]
    if len(uris) < max(days // 2, 1):
        return None
    ref = pl.scan_parquet(uris).select(
        pl.len().alias("rows"), pl.col(spec.target).median().alias("median"),
        pl.col(spec.target).quantile(0.25).alias("q25"), pl.col(spec.target).quantile(0.75).alias("q75"),
    ).collect().row(0, named=True)
    if not ref["rows"]:
        return None
    return {"days": days, "partitions": len(uris), "rows_per_day": ref["rows"] / days,
            "median": ref["median"], "q25": ref["q25"], "q75": ref["q75"]}


def expectation_parameters(spec: DatasetSpec, start: date, end: date, params: dict | None = None,
                           reference: dict | None = None, batch_rows: int = 0) -> dict:
    """The runtime values of the suite's ``$PARAMETER``s for the interval [start, end).

    Defaults come from ``expectations.common.DEFAULT_PARAMETERS``, then the suite module's ``PARAMETERS``,
    then ``params``. Per-day row-count bounds are scaled by the number of days into the batch's bounds;
    with a ``reference`` window (:func:`reference_window`) the upper volume bound and the target's
    median and quartiles are set relative to it.
    """
    from expectations.common import (
        DEFAULT_PARAMETERS,
        DISTRIBUTION_MIN_ROWS,
        DISTRIBUTION_TOLERANCE,
        INTERVAL_LAST,
        INTERVAL_START,
        MAX_ROWS,
        MAX_ROWS_PER_DAY,
        MAX_ROWS_VS_REFERENCE,
        MIN_ROWS,
        MIN_ROWS_PER_DAY,
        REFERENCE_DAYS,
        TARGET_MEDIAN_MAX,
        TARGET_MEDIAN_MIN,
        TARGET_QUARTILES,
    )

    module = spec.expectations_module_obj()
    merged = {**DEFAULT_PARAMETERS, **(getattr(module, "PARAMETERS", None) or {}), **(params or {})}
    n_days = len(days_in_interval(start, end))
    lo, hi = merged.pop(MIN_ROWS_PER_DAY, None), merged.pop(MAX_ROWS_PER_DAY, None)
    factor, tol = merged.pop(MAX_ROWS_VS_REFERENCE, None), merged.pop(DISTRIBUTION_TOLERANCE, None)
    min_dist_rows = merged.pop(DISTRIBUTION_MIN_ROWS, 0) or 0
    merged.pop(REFERENCE_DAYS, None)
    if hi is None and reference and factor:
        hi = math.ceil(factor * max(reference["rows_per_day"], 1.0))
    merged.setdefault(MIN_ROWS, None if lo is None else lo * n_days)
    merged.setdefault(MAX_ROWS, None if hi is None else hi * n_days)
    judged = reference is not None and tol is not None and batch_rows >= min_dist_rows
    merged.setdefault(TARGET_MEDIAN_MIN, reference["median"] * (1 - tol) if judged else None)
    merged.setdefault(TARGET_MEDIAN_MAX, reference["median"] * (1 + tol) if judged else None)
    merged.setdefault(TARGET_QUARTILES, {
        "quantiles": [0.25, 0.75],
        "value_ranges": [[reference["q25"] * (1 - tol), reference["q25"] * (1 + tol)],
                         [reference["q75"] * (1 - tol), reference["q75"] * (1 + tol)]] if judged else [[None, None]] * 2,
    })
    last = max(start, end - timedelta(days=1))
    merged[INTERVAL_START] = datetime.combine(start, time())
    merged[INTERVAL_LAST] = datetime.combine(last, time())
    return merged


def run_gx(spec: DatasetSpec, df: pl.DataFrame, start: date, end: date, params: dict | None = None,
           reference: dict | None = None) -> Any:
    """Validate ``df`` (with a ``_row_id`` column) against the suite; returns the GX result."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from expectations.common import TARGET_MEDIAN_MIN

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    exp_params = expectation_parameters(spec, start, end, params, reference=reference, batch_rows=df.height)
    suite = build_suite(spec)
    if exp_params.get(TARGET_MEDIAN_MIN) is None:
        # No reference window, or too few rows to judge a distribution: those checks are not run.
        suite.expectations = [e for e in suite.expectations if (e.meta or {}).get("check") != "distribution"]
    suite = ctx.suites.add(suite)
    batch_def = (
        ctx.data_sources.add_pandas("homeworth").add_dataframe_asset(spec.name).add_batch_definition_whole_dataframe("interval")
    )
    pdf = _view(spec, df).drop(ROW_ID).to_pandas()
    batch = batch_def.get_batch(batch_parameters={"dataframe": pdf})
    return batch.validate(suite, expectation_parameters=exp_params,
                          result_format={"result_format": "COMPLETE"})


def _read_raw(spec: DatasetSpec, lake_uri: str, days: list[date]) -> pl.DataFrame:
    schema = raw_schema(spec)
    frames = []
    for day in days:
        uri = lake.partition_uri(lake_uri, lake.RAW, day)
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
        pl.format(f"expect_compound_columns_to_be_unique({', '.join(keys)}): duplicate ({{}}) of {{}} row {{}}",
                  pl.concat_str([pl.col(k).cast(pl.String) for k in keys], separator=", "),
                  pl.col("_first_file"), pl.col("_first_row")).alias("reason"),
    )


def _batch_evidence(result: dict, checked: pl.DataFrame) -> str:
    """The observed value of a failed batch-level expectation, with the files and rows of a sample."""
    if result.get("unexpected_index_list"):
        rows = checked[result["unexpected_index_list"][:5]]
        values = [_fmt(v) for v in (result.get("unexpected_list") or [])[:5]]
        where = [f"{f} row {r}" for f, r in rows.select(SOURCE_FILE, SOURCE_ROW).iter_rows()]
        return f"{result.get('unexpected_count')} unexpected, e.g. " + "; ".join(
            f"got {v} in {w}" for v, w in zip(values, where))
    if "observed_value" in result:
        return f"observed {_fmt(result['observed_value'])}"
    sample = result.get("partial_unexpected_list")
    return f"sample {_fmt(sample)}" if sample else f"result {result!r}"[:300]


def _evaluation(r, checked: pl.DataFrame) -> dict:
    """One GX expectation result as Data Docs shows it (``idx``/``values``: its unexpected rows, if row-wise)."""
    cfg = r.expectation_config
    error = _exception_message(r)
    idx = r.result.get("unexpected_index_list") if error is None else None
    observed = None
    if idx is None and error is None:
        if not r.success:
            observed = _batch_evidence(r.result, checked)
        elif "observed_value" in r.result:
            observed = f"observed {_fmt(r.result['observed_value'])}"
    return {"expectation": _describe(cfg), "type": cfg.type, "severity": (cfg.meta or {}).get("severity", "batch"),
            "success": bool(r.success) and error is None, "unexpected_count": int(r.result.get("unexpected_count") or 0),
            "error": error, "observed": observed, "idx": idx, "values": r.result.get("unexpected_list") or []}


def _per_day(rows: pl.DataFrame, value_of) -> dict[str, tuple[int, list[dict]]]:
    """{day: (count, sample)} of flagged rows (columns ds, _source_file, _source_row, _k: index for value_of)."""
    if rows.height == 0:
        return {}
    counts = {d.isoformat(): n for d, n in rows.group_by(DS).len().iter_rows()}
    samples: dict[str, list[dict]] = defaultdict(list)
    for d, file, row, k in rows.group_by(DS, maintain_order=True).head(datadocs.SAMPLE_SIZE).select(
            DS, SOURCE_FILE, SOURCE_ROW, "_k").iter_rows():
        samples[d.isoformat()].append({"value": value_of(k), "file": file, "row": row})
    return {d: (n, samples[d]) for d, n in counts.items()}


def _day_docs(spec: DatasetSpec, raw: pl.DataFrame, checked: pl.DataFrame, dups: pl.DataFrame, evals: list[dict],
              result: Any, days: list[date], start: date, end: date, *, partitions: dict | None,
              failures: list[str], run_id: str | None) -> dict[str, dict]:
    """The Data Docs of each day of the interval (see tasks/quality/datadocs.py), from one interval-wide GX result."""
    import great_expectations as gx

    keys = spec.id_columns + ([spec.event_time] if spec.event_time else [])
    coerce = raw.filter(pl.col(COERCE_ERRORS).is_not_null()).with_columns(pl.col(COERCE_ERRORS).alias("_k"))
    dup = dups.join(raw.select(ROW_ID, DS, SOURCE_FILE, SOURCE_ROW), on=ROW_ID).rename({"reason": "_k"})
    entries = [  # checks made before GX, shown as row-level expectations
        ({"expectation": "coercion (ingest): every value converts to its column's type", "type": "coercion",
          "severity": "row"}, _per_day(coerce, lambda k: k)),
        ({"expectation": f"expect_compound_columns_to_be_unique({', '.join(keys)}): repeats set aside before GX, "
                         "the first occurrence kept", "type": "duplicate", "severity": "row"}, _per_day(dup, lambda k: k)),
    ]
    located = checked.select(DS, SOURCE_FILE, SOURCE_ROW)
    for e in evals:
        info = {k: e[k] for k in ("expectation", "type", "severity")}
        if e["idx"] is None:
            entries.append(({**info, "success": e["success"], "unexpected_count": e["unexpected_count"],
                             "error": e["error"], "observed": e["observed"]}, None))
        else:
            values = e["values"]
            rows = located[e["idx"]].with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_k"))
            entries.append((info, _per_day(rows, lambda k, v=values: _fmt(v[k]) if k < len(v) else "null")))
    read = {d.isoformat(): n for d, n in raw.group_by(DS).len().iter_rows()}
    files: dict[str, list[dict]] = defaultdict(list)
    for d, f, n in raw.group_by(DS, SOURCE_FILE).len().sort(DS, SOURCE_FILE).iter_rows():
        files[d.isoformat()].append({"file": f, "rows": n})
    last = max(start, end - timedelta(days=1))
    gx_info = {"version": gx.__version__, "success": bool(result.success),
               "statistics": {k: v for k, v in (result.statistics or {}).items()}}
    docs = {}
    for day in days:
        d = day.isoformat()
        exps = []
        for info, by_day in entries:
            if by_day is None:
                exps.append({**info, "scope": "interval", "sample": []})
            else:
                n, sample = by_day.get(d, (0, []))
                exps.append({**info, "scope": "day", "success": n == 0, "unexpected_count": n, "sample": sample,
                             "error": None, "observed": None})
        part = (partitions or {}).get(d)
        status = "failed" if failures else ("quarantined" if part and part["quarantined"] else "passed")
        docs[d] = {
            "dataset": spec.name, "suite": getattr(result, "suite_name", None) or spec.name, "day": d,
            "status": status, "run_id": run_id,
            "interval": {"start": start.isoformat(), "end": end.isoformat(), "last": last.isoformat(), "days": len(days)},
            "rows": {"read": read.get(d, 0), "accepted": part["accepted"] if part else None,
                     "quarantined": part["quarantined"] if part else None},
            "files": files.get(d, []), "expectations": exps, "failures": failures, "gx": gx_info,
            "partitions": {"validated": part["validated_uri"], "quarantine": part["quarantine_uri"]} if part else {},
        }
    return docs


def validate_interval(spec: DatasetSpec, lake_uri: str, start: date, end: date, params: dict | None = None, *,
                      run_id: str | None = None) -> dict:
    """Validate the raw partitions of [start, end) and (re)write validated and quarantine per day.

    ``params`` overrides the suite's runtime parameters (see :func:`expectation_parameters`), e.g.
    ``{"max_rows_per_day": 500}``. A failed batch-level expectation raises ValidationFailed and writes nothing
    but the Data Docs of the failed validation. Every validation writes Data Docs per day
    (``<lake>/_validation/ds=<day>/data_docs.html`` and ``result.json``, see tasks/quality/datadocs.py); the
    result's ``data_docs`` is the page to open (the day's page for one day, the interval's index otherwise).
    ``run_id`` (the Airflow run) is shown in the Data Docs.
    """
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
    # GX runs on an empty batch too, so that a lower bound on the row count can fail it.
    from expectations.common import DEFAULT_PARAMETERS, REFERENCE_DAYS

    ref_days = {**DEFAULT_PARAMETERS, **(getattr(spec.expectations_module_obj(), "PARAMETERS", None) or {}),
                **(params or {})}.get(REFERENCE_DAYS)
    reference = reference_window(spec, lake_uri, start, ref_days or 0)
    result = run_gx(spec, checked, start, end, params, reference=reference)
    batch_failures, failed, summary, evals = [], [], [], []
    for r in result.results:
        e = _evaluation(r, checked)
        evals.append(e)
        cfg = r.expectation_config
        severity = e["severity"]
        summary.append({"expectation": e["expectation"], "severity": severity, "success": bool(r.success),
                        "unexpected_count": e["unexpected_count"]})
        error = e["error"]
        if error is not None:
            batch_failures.append(f"{_describe(cfg)} could not be evaluated: {error}")
            failed.append({"expectation": e["expectation"], "severity": severity, "evidence": f"could not be evaluated: {error}"})
            continue
        if r.success:
            continue
        if severity == "row" and r.result.get("unexpected_index_list") is not None:
            values = r.result.get("unexpected_list") or []
            for i, idx in enumerate(r.result["unexpected_index_list"]):
                value = values[i] if i < len(values) else None
                reasons[row_ids[idx]].append(f"{_describe(cfg)}: got {_fmt(value)}")
        else:
            evidence = _batch_evidence(r.result, checked)
            batch_failures.append(f"{_describe(cfg)} failed: {evidence}")
            failed.append({"expectation": e["expectation"], "severity": severity, "evidence": evidence})
    if batch_failures:
        per_file = raw.group_by(SOURCE_FILE, maintain_order=True).len().sort(SOURCE_FILE).rows()
        files = ", ".join(f"{f} ({n} rows)" for f, n in per_file[:5]) + (" ..." if len(per_file) > 5 else "")
        message = (
            f"batch {start}..{max(start, end - timedelta(days=1))} ({raw.height} rows from files: {files or 'none'}) "
            + f"failed {len(batch_failures)} batch-level expectation(s):\n  - " + "\n  - ".join(batch_failures)
        )
        docs = datadocs.write_docs(lake_uri, start.isoformat(), end.isoformat(), _day_docs(
            spec, raw, checked, dups, evals, result, days, start, end, partitions=None,
            failures=batch_failures, run_id=run_id))
        log.error("Data Docs of the failed validation: %s", docs["data_docs"])
        raise ValidationFailed(message + f"\nData Docs: {docs['data_docs']}", details={
            "interval": [start.isoformat(), max(start, end - timedelta(days=1)).isoformat()],
            "rows_read": raw.height, "files": [[f, n] for f, n in per_file], "failed": failed,
            "data_docs": docs["data_docs"]})

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
    written = {}
    for day in days:
        v = validated.filter(pl.col(DS) == day)
        q = quarantine.filter(pl.col(DS) == day)
        v_uri = lake.partition_uri(lake_uri, lake.VALIDATED, day)
        q_uri = lake.partition_uri(lake_uri, lake.QUARANTINE, day)
        out["partitions"][day.isoformat()] = {
            "validated": storage.write_parquet_atomic(v, v_uri, record_sha256=True), "accepted": v.height,
            "quarantine": storage.write_parquet_atomic(q, q_uri), "quarantined": q.height,
        }
        written[day.isoformat()] = {**out["partitions"][day.isoformat()], "validated_uri": v_uri, "quarantine_uri": q_uri}
    failing = [s for s in summary if not s["success"]]
    if failing or quarantine.height:
        log.warning("%d of %d rows quarantined; failing expectations: %s", quarantine.height, raw.height,
                    [f"{s['expectation']} x{s['unexpected_count']}" for s in failing])
    out.update(datadocs.write_docs(lake_uri, start.isoformat(), end.isoformat(), _day_docs(
        spec, raw, checked, dups, evals, result, days, start, end, partitions=written, failures=[], run_id=run_id)))
    log.info("Data Docs: %s", out["data_docs"])
    storage.write_json_atomic(
        lake.validation_summary_uri(lake_uri, start, end),
        {k: out[k] for k in ("start", "end", "rows_read", "rows_accepted", "rows_quarantined", "expectations",
                             "data_docs", "data_docs_index")},
    )
    return out
