"""Reading a Great Expectations result: values as people read them, expectations as calls, the evidence
of a failure, and the reasons each result gives rows (the checks of ``validate`` and of listings scoring).

A GX result points at rows by their position in the validated frame, which carries ``_row_id``
(``ROW_ID``), the row's index in the batch read; ``REASONS`` is the list column of a quarantined row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

import polars as pl

from tasks.ingest.landing import SOURCE_FILE, SOURCE_ROW

REASONS = "_reasons"
ROW_ID = "_row_id"


def plain(value: Any) -> Any:
    """A GX/pandas/numpy value as the plain Python value a person reads: dates as dates, numpy as Python."""
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
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


def fmt(value: Any) -> str:
    value = plain(value)
    if value is None:
        return "null"  # a NaN value itself never gets past coercion, so NaN here is a null
    return value.isoformat() if isinstance(value, (date, datetime)) else repr(value)


def describe(cfg) -> str:
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
            args.append(f"{k}={fmt(v)}")
    return f"{cfg.type}({', '.join(args)})"


def exception_message(r) -> str | None:
    """The error of an expectation that could not be evaluated (GX nests it per metric), else None."""
    info = r.exception_info or {}
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def batch_evidence(result: dict, checked: pl.DataFrame) -> str:
    """The observed value of a failed batch-level expectation, with the files and rows of a sample."""
    if result.get("unexpected_index_list"):
        rows = checked[result["unexpected_index_list"][:5]]
        values = [fmt(v) for v in (result.get("unexpected_list") or [])[:5]]
        where = [f"{f} row {r}" for f, r in rows.select(SOURCE_FILE, SOURCE_ROW).iter_rows()]
        return f"{result.get('unexpected_count')} unexpected, e.g. " + "; ".join(
            f"got {v} in {w}" for v, w in zip(values, where))
    if "observed_value" in result:
        return f"observed {fmt(result['observed_value'])}"
    sample = result.get("partial_unexpected_list")
    return f"sample {fmt(sample)}" if sample else f"result {result!r}"[:300]


def evaluation(r, checked: pl.DataFrame) -> dict:
    """One GX expectation result as Data Docs shows it (``idx``/``values``: its unexpected rows, if row-wise)."""
    cfg = r.expectation_config
    error = exception_message(r)
    idx = r.result.get("unexpected_index_list") if error is None else None
    observed = None
    if idx is None and error is None:
        if not r.success:
            observed = batch_evidence(r.result, checked)
        elif "observed_value" in r.result:
            observed = f"observed {fmt(r.result['observed_value'])}"
    return {"expectation": describe(cfg), "type": cfg.type, "severity": (cfg.meta or {}).get("severity", "batch"),
            "success": bool(r.success) and error is None, "unexpected_count": int(r.result.get("unexpected_count") or 0),
            "error": error, "observed": observed, "idx": idx, "values": r.result.get("unexpected_list") or []}


@dataclass
class Judgement:
    """What an interval's GX result says: ``evals`` (:func:`evaluation` of each result), ``summary`` (one
    line per expectation), ``row_reasons`` ([(row id, reason)] of failed row-level expectations, in result
    order), ``failures`` (the batch-level failures, as messages) and ``failed`` (the same, for notifications)."""

    evals: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    row_reasons: list[tuple[int, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)


def judge(results: list, checked: pl.DataFrame) -> Judgement:
    """Sort each expectation result of a validation of ``checked``: passed, rows to quarantine, or a batch failure.

    An expectation that could not be evaluated fails the batch; a failed ``row`` expectation that lists its
    unexpected rows quarantines them; any other failure fails the batch, with its evidence.
    """
    out = Judgement()
    row_ids = checked[ROW_ID].to_list()
    for r in results:
        e = evaluation(r, checked)
        out.evals.append(e)
        name, severity, error = e["expectation"], e["severity"], e["error"]
        out.summary.append({"expectation": name, "severity": severity, "success": bool(r.success),
                            "unexpected_count": e["unexpected_count"]})
        if error is not None:
            out.failures.append(f"{name} could not be evaluated: {error}")
            out.failed.append({"expectation": name, "severity": severity, "evidence": f"could not be evaluated: {error}"})
        elif r.success:
            continue
        elif severity == "row" and r.result.get("unexpected_index_list") is not None:
            out.row_reasons += row_reasons(name, r.result, row_ids)
        else:
            evidence = batch_evidence(r.result, checked)
            out.failures.append(f"{name} failed: {evidence}")
            out.failed.append({"expectation": name, "severity": severity, "evidence": evidence})
    return out


def row_reasons(name: str, result: dict, row_ids: list[int]) -> list[tuple[int, str]]:
    """(row id, reason) of each unexpected row of a row-level expectation ``name``."""
    values = result.get("unexpected_list") or []
    return [(row_ids[idx], f"{name}: got {fmt(values[i] if i < len(values) else None)}")
            for i, idx in enumerate(result["unexpected_index_list"])]


def gx_order(expectations: list) -> list[int]:
    """The positions of a suite's ``expectations`` in the order GX reports their results: grouped by
    their ``column``, in order of first appearance, those without one first seen as one group (GX's
    ``Validator.process_expectations_for_validation``)."""
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(expectations):
        column = e.configuration.kwargs.get("column")
        groups.setdefault(column if isinstance(column, str) else "_nocolumn", []).append(i)
    return [i for group in groups.values() for i in group]


def merge_results(suite_name: str, results: list, meta: dict | None = None) -> Any:
    """One suite result from expectation results gathered over several GX validations (each in suite
    order): the statistics and success GX computes for a suite, row positions as Python ints."""
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.validator.validator import calc_validation_statistics

    for r in results:
        if r.result.get("unexpected_index_list") is not None:
            r.result["unexpected_index_list"] = [int(i) for i in r.result["unexpected_index_list"]]
    stats = calc_validation_statistics(results)
    return ExpectationSuiteValidationResult(
        results=results, success=stats.success, suite_name=suite_name, meta=meta or {},
        statistics={"evaluated_expectations": stats.evaluated_expectations,
                    "successful_expectations": stats.successful_expectations,
                    "unsuccessful_expectations": stats.unsuccessful_expectations,
                    "success_percent": stats.success_percent})
