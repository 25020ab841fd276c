"""Validate raw partitions with the dataset's Great Expectations suite; split validated / quarantine.

One GX validation covers the run's whole data interval (a daily run: one day; a bulk run: many),
then rows are written back per day. A row fails if its values did not coerce, if it repeats an
earlier row of the batch (same id and event time; without an id column, every column equal), or if any row-level expectation flags it; it then goes to
``quarantine`` with every reason. A failed batch-level expectation raises :class:`ValidationFailed`
naming the expectation, the column and a sample of the bad values, and writes nothing.

GX is fed by the compiled engine by default (:func:`gx_validate_compiled`): the suite's row-level checks,
compiled once into Polars expressions (``expectations/compiled.py``), pick the few rows GX must judge;
the result is the one GX gives on the whole batch (``engine="gx"``, tests/unit/test_validate_fast.py).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import partial
from typing import Any, Callable

import polars as pl

from tasks.core import lake, storage
from tasks.core.faults import fault_point
from tasks.core.handoffs import ValidationSummary
from tasks.core.spec import DatasetSpec
from tasks.ingest.landing import COERCE_ERRORS, DS, SOURCE_FILE, SOURCE_ROW, days_in_interval, raw_schema
from tasks.quality import datadocs
from tasks.quality.daydocs import day_docs
from tasks.quality.results import REASONS, ROW_ID, Judgement, exception_message, gx_order, judge, merge_results

log = logging.getLogger(__name__)

BOOKKEEPING = [DS, SOURCE_FILE, SOURCE_ROW, COERCE_ERRORS]
# A day's validated or quarantine file named by its content (``lake.addressed_part_uri``).
ADDRESSED = re.compile(r"^part-[0-9a-f]{16}\.parquet$")
# How GX is fed: "compiled" (the suite's row-level checks in Polars pick the rows GX judges) or "gx" (GX
# judges every row; the reference the compiled engine is tested against, tests/unit/test_validate_fast.py).
ENGINES = ("compiled", "gx")
WRITERS = 4  # threads reading and writing a validation's day files


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


def reference_window(spec: DatasetSpec, lake_uri: str, start: date, days: int) -> dict | None:
    """Volume and target distribution of the validated partitions of the ``days`` days before ``start``.

    ``rows_per_sale_day`` is the average over the days that had a sale: a market whose sales fall on one day a
    week (Melbourne's auction Saturdays) has most calendar days empty, and its sale days are as busy as the
    average of those, not of the calendar. None when fewer than half of those days have a partition (the start
    of a history, a bulk load).
    """
    if not days:
        return None
    uris = [u for d in days_in_interval(start - timedelta(days=days), start)
            if (u := lake.day_file(lake_uri, lake.VALIDATED, d))]
    if len(uris) < max(days // 2, 1):
        return None
    ref = pl.scan_parquet(uris, include_file_paths="_file").select(
        pl.len().alias("rows"), pl.col("_file").n_unique().alias("sale_days"), pl.col(spec.target).median().alias("median"),
        pl.col(spec.target).quantile(0.25).alias("q25"), pl.col(spec.target).quantile(0.75).alias("q75"),
    ).collect().row(0, named=True)
    if not ref["rows"]:
        return None
    return {"days": days, "partitions": len(uris), "rows_per_day": ref["rows"] / days, "sale_days": ref["sale_days"],
            "rows_per_sale_day": ref["rows"] / ref["sale_days"],
            "median": ref["median"], "q25": ref["q25"], "q75": ref["q75"]}


def expectation_parameters(spec: DatasetSpec, start: date, end: date, params: dict | None = None,
                           reference: dict | None = None, batch_rows: int = 0) -> dict:
    """The runtime values of the suite's ``$PARAMETER``s for the interval [start, end).

    Defaults come from ``expectations.common.DEFAULT_PARAMETERS``, then the suite module's ``PARAMETERS``,
    then ``params``. Per-day row-count bounds are scaled by the number of days into the batch's bounds;
    with a ``reference`` window (:func:`reference_window`) the upper volume bound (per day: ``max_rows_vs_reference``
    times the reference's rows per sale day) and the target's median and quartiles are set relative to it.
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
        hi = math.ceil(factor * max(reference["rows_per_sale_day"], 1.0))
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


def reference_days(spec: DatasetSpec, params: dict | None) -> int:
    """The days of the reference window: ``reference_days`` of the defaults, the suite module or ``params``."""
    from expectations.common import DEFAULT_PARAMETERS, REFERENCE_DAYS

    return {**DEFAULT_PARAMETERS, **(getattr(spec.expectations_module_obj(), "PARAMETERS", None) or {}),
            **(params or {})}.get(REFERENCE_DAYS) or 0


def _gx_context():
    """An ephemeral GX context without progress bars."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    return ctx


def gx_validate(spec: DatasetSpec, df: pl.DataFrame, make_suite: Callable[[], Any], exp_params: dict, *,
                asset: str, batch: str) -> Any:
    """Validate ``df`` (with a ``_row_id`` column, left out) against ``make_suite()`` in an ephemeral GX context."""
    ctx = _gx_context()
    suite = ctx.suites.add(make_suite())
    batch_def = ctx.data_sources.add_pandas("homeworth").add_dataframe_asset(asset).add_batch_definition_whole_dataframe(batch)
    pdf = _view(spec, df).drop(ROW_ID).to_pandas()
    return batch_def.get_batch(batch_parameters={"dataframe": pdf}).validate(
        suite, expectation_parameters=exp_params, result_format={"result_format": "COMPLETE"})


def gx_validate_compiled(spec: DatasetSpec, df: pl.DataFrame, make_suite: Callable[[], Any], exp_params: dict, *,
                         asset: str, batch: str) -> Any:
    """What :func:`gx_validate` returns, with GX fed fewer rows and columns (``expectations/compiled.py``).

    GX runs the compiled row-level checks on the rows they cannot clear (a pandas index keeps each row's
    position in ``df``, which GX reports), the rest of the suite on every row of the columns it names;
    the results are put back in the suite's order. A suite it cannot split, or an expectation that could
    not be evaluated, is validated again the old way, so that the error reads the same.
    """
    import great_expectations as gx
    import pandas as pd

    from expectations.compiled import plan_suite

    suite = make_suite()
    view = _view(spec, df)
    schema = view.drop(ROW_ID).schema
    keys, whole_row = spec.duplicate_key()
    plan = plan_suite(suite.expectations, exp_params, schema, [] if whole_row else list(keys))
    if plan is None:
        log.info("%s: a check the compiled engine cannot place; GX validates the whole batch", asset)
        return gx_validate(spec, df, make_suite, exp_params, asset=asset, batch=batch)
    frames = []
    if plan.compact:
        with_nulls = [c for c, n in zip(view.columns, view.null_count().row(0)) if n and c != ROW_ID]
        mask = view.select(plan.candidates(with_nulls).alias("m"))["m"]
        pdf = view.filter(mask).drop(ROW_ID).to_pandas()
        pdf.index = pd.Index(mask.arg_true().to_numpy().astype("int64"))
        frames.append((plan.compact, pdf))
    if plan.narrow:
        frames.append((plan.narrow, view.select(plan.columns).to_pandas()))
    ctx, by_position, meta = _gx_context(), {}, {}
    source = ctx.data_sources.add_pandas("homeworth")
    for n, (idx, pdf) in enumerate(frames):
        exps = [suite.expectations[i] for i in idx]
        sub = ctx.suites.add(gx.ExpectationSuite(name=f"{suite.name}.{n}", expectations=exps))
        batch_def = source.add_dataframe_asset(f"{asset}.{n}").add_batch_definition_whole_dataframe(batch)
        res = batch_def.get_batch(batch_parameters={"dataframe": pdf}).validate(
            sub, expectation_parameters=exp_params, result_format={"result_format": "COMPLETE"})
        meta = meta or res.meta
        by_position.update({idx[k]: r for k, r in zip(gx_order(exps), res.results, strict=True)})
    results = [by_position[i] for i in gx_order(suite.expectations)]
    if any(exception_message(r) is not None for r in results) or [r.expectation_config.type for r in results] != [
            suite.expectations[i].expectation_type for i in gx_order(suite.expectations)]:
        log.info("%s: an expectation could not be evaluated; GX validates the whole batch", asset)
        return gx_validate(spec, df, make_suite, exp_params, asset=asset, batch=batch)
    return merge_results(suite.name, results, meta)


def run_gx(spec: DatasetSpec, df: pl.DataFrame, start: date, end: date, params: dict | None = None,
           reference: dict | None = None, engine: str = "compiled") -> Any:
    """Validate ``df`` (with a ``_row_id`` column) against the suite; returns the GX result.

    ``engine``: ``"compiled"`` (:func:`gx_validate_compiled`) or ``"gx"`` (the whole batch through GX).
    """
    if engine not in ENGINES:
        raise ValueError(f"validation engine {engine!r}: expected one of {ENGINES}")
    exp_params = expectation_parameters(spec, start, end, params, reference=reference, batch_rows=df.height)
    validate = gx_validate_compiled if engine == "compiled" else gx_validate
    return validate(spec, df, partial(_suite_for, spec, exp_params), exp_params, asset=spec.name, batch="interval")


def _suite_for(spec: DatasetSpec, exp_params: dict):
    from expectations.common import TARGET_MEDIAN_MIN

    suite = build_suite(spec)
    if exp_params.get(TARGET_MEDIAN_MIN) is None:
        # No reference window, or too few rows to judge a distribution: those checks are not run.
        suite.expectations = [e for e in suite.expectations if (e.meta or {}).get("check") != "distribution"]
    return suite


def _read_raw(spec: DatasetSpec, lake_uri: str, days: list[date], raw_files: dict | None = None) -> pl.DataFrame:
    """The raw partitions of ``days`` in one frame (read by a few threads); ``raw_files`` gets {day: {uri, sha256}}
    of the bytes read."""
    schema = raw_schema(spec)
    uris = [lake.partition_uri(lake_uri, lake.RAW, day) for day in days]
    for day, uri in zip(days, uris):
        if not storage.exists(uri):
            raise ValidationFailed(f"{uri}: raw partition missing; run the ingest step for {day} first")

    def read(uri: str) -> tuple[str, pl.DataFrame]:
        data = storage.read_bytes(uri)
        return hashlib.sha256(data).hexdigest(), pl.read_parquet(data)

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        got = list(pool.map(read, uris))
    if raw_files is not None:
        raw_files.update({day.isoformat(): {"uri": uri, "sha256": sha} for day, uri, (sha, _) in zip(days, uris, got)})
    if not got:
        return pl.DataFrame(schema=schema)
    return pl.concat([frame for _, frame in got], how="vertical")


def duplicate_reasons(spec: DatasetSpec, df: pl.DataFrame) -> pl.DataFrame:
    """Rows repeating an earlier row of the batch on the spec's duplicate key (``DatasetSpec.duplicate_key``: the
    id and event time, or every spec column when the spec has no id), with the row they repeat."""
    keys, whole_row = spec.duplicate_key()
    if not keys:
        return pl.DataFrame(schema={ROW_ID: pl.UInt32, "reason": pl.String})
    # Only rows whose key occurs more than once can repeat one (nulls count as equal here: more rows, not fewer).
    df = df.filter(pl.struct(keys).is_duplicated())
    first = df.group_by(keys, maintain_order=True).agg(
        pl.col(SOURCE_FILE).first().alias("_first_file"), pl.col(SOURCE_ROW).first().alias("_first_row"),
        pl.col(ROW_ID).first().alias("_first_id"),
    )
    dup = df.join(first, on=keys, how="inner", nulls_equal=whole_row, maintain_order="left").filter(
        pl.col(ROW_ID) != pl.col("_first_id"))
    if whole_row:
        return dup.select(ROW_ID, pl.format(
            "duplicate row: every spec column equal to {} row {} (the spec has no id column)",
            pl.col("_first_file"), pl.col("_first_row")).alias("reason"))
    return dup.select(
        ROW_ID,
        pl.format(f"expect_compound_columns_to_be_unique({', '.join(keys)}): duplicate ({{}}) of {{}} row {{}}",
                  pl.concat_str([pl.col(k).cast(pl.String) for k in keys], separator=", "),
                  pl.col("_first_file"), pl.col("_first_row")).alias("reason"),
    )


@dataclass
class Prechecked:
    """A batch before GX: ``raw`` (with ``_row_id``), the coercion and duplicate ``reasons`` of its rows
    ({row id: [reason]}), the ``dups`` (row id, reason) and the ``checked`` rows GX sees (each duplicate key once)."""

    raw: pl.DataFrame
    reasons: dict[int, list[str]]
    dups: pl.DataFrame
    checked: pl.DataFrame


def precheck(spec: DatasetSpec, raw: pl.DataFrame) -> Prechecked:
    """Rows that did not coerce or repeat an earlier (id, event time): their reasons, and the rows left for GX."""
    reasons: dict[int, list[str]] = defaultdict(list)
    for rid, err in raw.filter(pl.col(COERCE_ERRORS).is_not_null()).select(ROW_ID, COERCE_ERRORS).iter_rows():
        reasons[rid].append(f"coercion: {err}")
    dups = duplicate_reasons(spec, raw)
    for rid, reason in dups.iter_rows():
        reasons[rid].append(reason)
    # Duplicates are already explained; GX sees each key once.
    checked = raw.filter(~pl.col(ROW_ID).is_in(dups[ROW_ID].implode()))
    return Prechecked(raw, reasons, dups, checked)


def tag_reasons(raw: pl.DataFrame, reasons: dict[int, list[str]], row_reasons: list[tuple[int, str]]) -> pl.DataFrame:
    """``raw`` with ``_reasons``: the prechecks' reasons, then the expectations' (null for a good row)."""
    merged = {rid: list(rs) for rid, rs in reasons.items()}
    for rid, reason in row_reasons:
        merged.setdefault(rid, []).append(reason)
    reason_df = pl.DataFrame(
        {ROW_ID: list(merged.keys()), REASONS: list(merged.values())},
        schema={ROW_ID: pl.UInt32, REASONS: pl.List(pl.String)},
    )
    return raw.join(reason_df, on=ROW_ID, how="left")


def batch_failure(start: date, end: date, raw: pl.DataFrame, judged: Judgement) -> tuple[str, dict]:
    """(message, details) of a batch that failed batch-level expectations (details: see ValidationFailed)."""
    last = max(start, end - timedelta(days=1))
    per_file = raw.group_by(SOURCE_FILE, maintain_order=True).len().sort(SOURCE_FILE).rows()
    files = ", ".join(f"{f} ({n} rows)" for f, n in per_file[:5]) + (" ..." if len(per_file) > 5 else "")
    message = (
        f"batch {start}..{last} ({raw.height} rows from files: {files or 'none'}) "
        + f"failed {len(judged.failures)} batch-level expectation(s):\n  - " + "\n  - ".join(judged.failures)
    )
    details = {"interval": [start.isoformat(), last.isoformat()], "rows_read": raw.height,
               "files": [[f, n] for f, n in per_file], "failed": judged.failed}
    return message, details


def write_partitions(lake_uri: str, days: list[date], tagged: pl.DataFrame) -> tuple[dict, dict]:
    """Write each day's validated and quarantine files of ``tagged`` (see :func:`tag_reasons`), each named
    by its content (``lake.addressed_part_uri``): nothing a reader reads changes until :func:`publish_days`.
    The days are split in one pass and written by a few threads (encoding, hashing and writing release the GIL).

    Returns ({day: sha256s and counts}, {day: the same with the files' URIs}).
    """
    bad = pl.col(REASONS).is_not_null()
    validated = _by_day(tagged.filter(~bad).drop(ROW_ID, REASONS, COERCE_ERRORS))
    quarantine = _by_day(tagged.filter(bad).drop(ROW_ID))
    empty = (tagged.drop(ROW_ID, REASONS, COERCE_ERRORS).clear(), tagged.drop(ROW_ID).clear())

    def write(day: date) -> tuple[str, dict]:
        v, q = validated.get(day, empty[0]), quarantine.get(day, empty[1])
        v_uri, v_sha = storage.write_addressed(storage.parquet_bytes(v), partial(
            lake.addressed_part_uri, lake_uri, lake.VALIDATED, day), record_sha256=True)
        q_uri, q_sha = storage.write_addressed(storage.parquet_bytes(q), partial(
            lake.addressed_part_uri, lake_uri, lake.QUARANTINE, day))
        return day.isoformat(), {"validated": v_sha, "accepted": v.height, "quarantine": q_sha,
                                 "quarantined": q.height, "validated_uri": v_uri, "quarantine_uri": q_uri}

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        written = dict(pool.map(write, days))
    partitions = {d: {k: w[k] for k in ("validated", "accepted", "quarantine", "quarantined")} for d, w in written.items()}
    return partitions, written


def _by_day(frame: pl.DataFrame) -> dict[date, pl.DataFrame]:
    return {key[0]: part for key, part in frame.partition_by(DS, as_dict=True, maintain_order=True).items()}


def publish_days(lake_uri: str, written: dict, raw_files: dict, run_id: str | None, data_docs: dict) -> None:
    """Publish each day's result as one unit: its manifest (``lake.day_manifest_uri``), written last, names
    the validated and quarantine files of this validation and the raw file they came from. Then
    ``part-0.parquet`` of each table is linked to the published files, for readers of the older layout."""
    for day, w in written.items():
        storage.write_json_atomic(lake.day_manifest_uri(lake_uri, day), {
            "day": day, "run_id": run_id, "raw": raw_files.get(day),
            "validated": {"uri": w["validated_uri"], "sha256": w["validated"], "rows": w["accepted"]},
            "quarantine": {"uri": w["quarantine_uri"], "sha256": w["quarantine"], "rows": w["quarantined"]},
            "data_docs": data_docs.get(day)})
        _link_legacy(lake_uri, day)


def _link_legacy(lake_uri: str, day: str, tries: int = 5) -> None:
    """Point each table's ``part-0.parquet`` of ``day`` at the files its manifest names now; again if the
    manifest changed meanwhile (an overlapping validation of the day): the last to link saw the last manifest."""
    for _ in range(tries):
        published = lake.published_day(lake_uri, day)
        for table in (lake.VALIDATED, lake.QUARANTINE):
            storage.link_atomic(published[table]["uri"], lake.partition_uri(lake_uri, table, date.fromisoformat(day)),
                                sha256=published[table]["sha256"] if table == lake.VALIDATED else None)
        if lake.published_day(lake_uri, day) == published:
            return
    log.warning("%s: the day's manifest kept changing; its part-0.parquet links may be behind it", day)


def _unpublished(keep: set[str], name: str) -> bool:
    return bool(ADDRESSED.match(name)) and name not in keep


def sweep_days(lake_uri: str, days: list[date]) -> None:
    """Remove the temporary files of killed writers (``storage.sweep_stale_temp``) from the folders a
    validation of ``days`` writes (validated, quarantine and Data Docs), and the validated / quarantine
    files that the day's manifest no longer names, once as old (a feature build still reading one, planned
    before a re-validation, has had that long)."""
    for day in days:
        for folder in (lake.partition_dir(lake_uri, lake.VALIDATED, day),
                       lake.partition_dir(lake_uri, lake.QUARANTINE, day), lake.data_docs_day_dir(lake_uri, day)):
            storage.sweep_stale_temp(folder)
        published = lake.published_day(lake_uri, day)
        keep = {published[t]["uri"].rsplit("/", 1)[1] for t in (lake.VALIDATED, lake.QUARANTINE)} if published else set()
        for table in (lake.VALIDATED, lake.QUARANTINE):  # files of earlier validations, no longer published
            storage.sweep_stale_temp(lake.partition_dir(lake_uri, table, day), garbage=partial(_unpublished, keep))


def validate_interval(spec: DatasetSpec, lake_uri: str, start: date, end: date, params: dict | None = None, *,
                      run_id: str | None = None, engine: str = "compiled") -> dict:
    """Validate the raw partitions of [start, end) and (re)write validated and quarantine per day.

    ``params`` overrides the suite's runtime parameters (see :func:`expectation_parameters`), e.g.
    ``{"max_rows_per_day": 500}``. A failed batch-level expectation raises ValidationFailed and writes nothing
    but the Data Docs of the failed validation. Every validation writes Data Docs per day
    (``<lake>/_validation/ds=<day>/data_docs.html`` and ``result.json``, see tasks/quality/datadocs.py); the
    result's ``data_docs`` is the page to open (the day's page for one day, the interval's index otherwise).
    ``run_id`` (the Airflow run) is shown in the Data Docs. ``engine``: how GX is fed (see :data:`ENGINES`);
    both give the same result.
    """
    fault_point("validate", "start")
    days = days_in_interval(start, end)
    sweep_days(lake_uri, days)
    raw_files: dict = {}
    pre = precheck(spec, _read_raw(spec, lake_uri, days, raw_files).with_row_index(ROW_ID))
    # GX runs on an empty batch too, so that a lower bound on the row count can fail it.
    reference = reference_window(spec, lake_uri, start, reference_days(spec, params))
    result = run_gx(spec, pre.checked, start, end, params, reference=reference, engine=engine)
    judged = judge(result.results, pre.checked)
    write_docs = partial(_write_docs, spec, lake_uri, pre, judged, result, days, start, end, run_id)
    if judged.failures:
        message, details = batch_failure(start, end, pre.raw, judged)
        docs = write_docs(partitions=None, failures=judged.failures)
        log.error("Data Docs of the failed validation: %s", docs["data_docs"])
        raise ValidationFailed(message + f"\nData Docs: {docs['data_docs']}",
                               details={**details, "data_docs": docs["data_docs"]})
    tagged = tag_reasons(pre.raw, pre.reasons, judged.row_reasons)
    partitions, written = write_partitions(lake_uri, days, tagged)
    quarantined = int(tagged[REASONS].is_not_null().sum())
    out = {"start": start.isoformat(), "end": end.isoformat(), "rows_read": pre.raw.height,
           "rows_accepted": tagged.height - quarantined, "rows_quarantined": quarantined,
           "expectations": judged.summary, "partitions": partitions}
    _log_failing(judged.summary, out["rows_quarantined"], pre.raw.height)
    out.update(write_docs(partitions=written, failures=[]))
    log.info("Data Docs: %s", out["data_docs"])
    publish_days(lake_uri, written, raw_files, run_id, {d: datadocs.day_html_uri(lake_uri, d) for d in written})
    fault_point("validate", "after_effect")
    storage.write_json_atomic(
        lake.validation_summary_uri(lake_uri, start, end),
        {k: out[k] for k in ("start", "end", "rows_read", "rows_accepted", "rows_quarantined", "expectations",
                             "data_docs", "data_docs_index")},
    )
    return out


def _write_docs(spec: DatasetSpec, lake_uri: str, pre: Prechecked, judged: Judgement, result: Any, days: list[date],
                start: date, end: date, run_id: str | None, *, partitions: dict | None, failures: list[str]) -> dict:
    docs = day_docs(spec, pre.raw, pre.checked, pre.dups, judged.evals, result, days, start, end,
                    partitions=partitions, failures=failures, run_id=run_id)
    return datadocs.write_docs(lake_uri, start.isoformat(), end.isoformat(), docs)


def _log_failing(summary: list[dict], quarantined: int, read: int) -> None:
    failing = [s for s in summary if not s["success"]]
    if failing or quarantined:
        log.warning("%d of %d rows quarantined; failing expectations: %s", quarantined, read,
                    [f"{s['expectation']} x{s['unexpected_count']}" for s in failing])


def summarize(result: dict) -> ValidationSummary:
    """The ``validate`` task's XCom: row counts, the expectations that flagged rows, the Data Docs page."""
    return ValidationSummary(
        start=result["start"], end=result["end"], rows_read=result["rows_read"], rows_accepted=result["rows_accepted"],
        rows_quarantined=result["rows_quarantined"], data_docs=result["data_docs"],
        failing_expectations={e["expectation"]: e["unexpected_count"] for e in result["expectations"] if not e["success"]})
