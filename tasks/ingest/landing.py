"""Ingest: read one day's landing files, coerce them to the dataset spec, write the ``raw`` partition.

Landing files are only ever read (``tasks.ingest.read``: a file that cannot be read as a table raises
:class:`BatchError`, naming the file and what was found). Coercion raises BatchError too for a missing or
repeated column, with a hint when one looks renamed. A value that cannot be coerced (text in a number,
NaN or infinity in a float, an unparseable date) does not stop the day: the row is kept in ``raw`` with
the problem in ``_coerce_errors`` and the validate step sends it to quarantine with that reason. See
docs/data-contract.md.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta

import polars as pl

from tasks.core import lake, storage
from tasks.core.faults import fault_point
from tasks.core.handoffs import IngestResult
from tasks.core.params import check_date_range
from tasks.core.settings import Settings
from tasks.core.spec import ColumnSpec, DatasetSpec
from tasks.ingest.read import BatchError, check_landing_file, read_landing_file

log = logging.getLogger(__name__)

# Bookkeeping columns added to every raw row; they travel to validated and quarantine.
SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"
COERCE_ERRORS = "_coerce_errors"
DS = "ds"
# Dropped columns listed per file in a day's report (and its XCom); a file with thousands gets a count.
MAX_REPORTED = 100

POLARS_TYPES: dict[str, pl.DataType] = {
    "string": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "date": pl.Date(),
    "bool": pl.Boolean(),
}


@dataclass
class DayReport:
    day: str
    files: list[str] = field(default_factory=list)
    rows: int = 0
    coerce_errors: int = 0
    dropped_columns: dict[str, list[str]] = field(default_factory=dict)
    raw_uri: str | None = None
    raw_sha256: str | None = None


def days_in_interval(start: date, end: date) -> list[date]:
    """The days of a data interval [start, end); an interval shorter than a day still names its day."""
    n = max((end - start).days, 1)
    return [start + timedelta(days=i) for i in range(n)]


def _text(col: str) -> pl.Expr:
    """The column as stripped text, empty strings as null."""
    s = pl.col(col).cast(pl.String).str.strip_chars()
    return pl.when(s == "").then(None).otherwise(s)


def _finite(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr.is_finite()).then(expr).otherwise(None)


def coerce_expr(col: str, cs: ColumnSpec, dtype: pl.DataType) -> pl.Expr:
    """Expression turning a landing column (text, or already typed Parquet) into the spec's type."""
    target = POLARS_TYPES[cs.type]
    if cs.type == "string":
        return _text(col)  # stripped, an empty value is null (CSV and Parquet alike)
    if cs.type == "date" and dtype == pl.Datetime:
        return pl.col(col).dt.date()
    if dtype == target:
        return _finite(pl.col(col)) if cs.type == "float" else pl.col(col)
    if cs.type in ("int", "float", "bool") and dtype.is_numeric():
        if cs.type == "int":
            f = pl.col(col).cast(pl.Float64)
            return pl.when(f.is_finite() & (f == f.floor())).then(f).otherwise(None).cast(pl.Int64, strict=False)
        if cs.type == "float":
            return _finite(pl.col(col).cast(pl.Float64, strict=False))
        return pl.col(col).cast(target, strict=False)
    text = _text(col)
    if cs.type == "float":
        # NaN and infinity parse as floats but are never a measurement: they fail coercion.
        return _finite(text.cast(pl.Float64, strict=False))
    if cs.type == "int":
        f = text.cast(pl.Float64, strict=False)
        return pl.when(f.is_finite() & (f == f.floor())).then(f).otherwise(None).cast(pl.Int64, strict=False)
    if cs.type == "bool":
        low = text.str.to_lowercase()
        return (
            pl.when(low.is_in(["true", "1", "yes", "t", "y"]))
            .then(True)
            .when(low.is_in(["false", "0", "no", "f", "n"]))
            .then(False)
            .otherwise(None)
        )
    if cs.type == "date":
        iso = text.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
        if cs.format:
            return text.str.to_datetime(cs.format, strict=False).dt.date().fill_null(iso)
        return iso
    raise AssertionError(cs.type)


def _renamed_as(missing: str, extra: list[str]) -> str | None:
    """The extra column that looks like ``missing`` renamed (same words reordered, or a close spelling)."""
    words = sorted(missing.replace("-", "_").split("_"))
    for e in extra:
        if sorted(e.replace("-", "_").replace(" ", "_").split("_")) == words:
            return e
    close = difflib.get_close_matches(missing, extra, n=1, cutoff=0.75)
    return close[0] if close else None


def coerce(df: pl.DataFrame, spec: DatasetSpec, source: str, day: date) -> tuple[pl.DataFrame, list[str]]:
    """Cast a landing frame to the spec. Returns the typed frame and the extra columns it dropped.

    Raises BatchError when required columns are missing. Values that do not coerce become null and
    are described, with the original value, in ``_coerce_errors``.
    """
    missing = [c for c in spec.required_columns if c not in df.columns]
    extra = [c for c in df.columns if c not in spec.columns]
    if missing:
        hints = [f"{m!r} renamed to {r!r}?" for m in missing if (r := _renamed_as(m, extra))]
        raise BatchError(
            f"{source}: missing required column(s) {missing}"
            + (f"; {'; '.join(hints)}" if hints else "")
            + (f"; columns not in the spec: {_shown(extra)}" if extra else "")
            + f"; the file has {len(df.columns)} columns {_shown(df.columns)}"
        )
    for name in spec.columns:
        if name in df.columns and (df.schema[name].is_nested() or df.schema[name] == pl.Binary):
            raise BatchError(
                f"{source}: column {name!r} has type {df.schema[name]}, which cannot hold a {spec.columns[name].type}"
            )
    df = _na_to_null(df, spec)
    exprs, errors = [], []
    for name, cs in spec.columns.items():
        if name not in df.columns:
            exprs.append(pl.lit(None, dtype=POLARS_TYPES[cs.type]).alias(name))
            continue
        typed = coerce_expr(name, cs, df.schema[name])
        exprs.append(typed.alias(name))
        original = pl.col(name).cast(pl.String).str.strip_chars()
        failed = typed.is_null() & original.is_not_null() & (original != "")
        errors.append(
            pl.when(failed).then(pl.format("{}='{}' is not a valid " + cs.type, pl.lit(name), original.str.slice(0, 60)))
        )
    out = df.with_row_index(SOURCE_ROW, offset=1).select(
        *exprs,
        pl.lit(day, dtype=pl.Date).alias(DS),
        pl.lit(source).alias(SOURCE_FILE),
        pl.col(SOURCE_ROW).cast(pl.Int64),
        pl.concat_str(errors, separator="; ", ignore_nulls=True).alias(COERCE_ERRORS)
        if errors
        else pl.lit(None, dtype=pl.String).alias(COERCE_ERRORS),
    )
    out = out.with_columns(
        pl.when(pl.col(COERCE_ERRORS) == "").then(None).otherwise(pl.col(COERCE_ERRORS)).alias(COERCE_ERRORS)
    )
    return out, extra


def _na_to_null(df: pl.DataFrame, spec: DatasetSpec) -> pl.DataFrame:
    """Text cells spelling a missing value (the spec's ``landing.csv.na_values``, e.g. ``NA``) become null, so a
    nullable column accepts them and a required one fails its not-null check, never a coercion."""
    na = spec.landing.csv.na_values
    cols = [c for c in spec.columns if c in df.columns and df.schema[c] == pl.String]
    if not na or not cols:
        return df
    return df.with_columns(pl.when(pl.col(c).str.strip_chars().is_in(na)).then(None).otherwise(pl.col(c)).alias(c)
                           for c in cols)


def raw_schema(spec: DatasetSpec) -> dict[str, pl.DataType]:
    schema = {name: POLARS_TYPES[cs.type] for name, cs in spec.columns.items()}
    schema.update({DS: pl.Date(), SOURCE_FILE: pl.String(), SOURCE_ROW: pl.Int64(), COERCE_ERRORS: pl.String()})
    return schema


def landing_files(landing_uri: str, day: date, spec: DatasetSpec) -> list[str]:
    """The day's landing files (hidden and ``_`` names left out). A day folder that is a symbolic link
    is refused: the landing zone holds the feed's files, not pointers elsewhere."""
    folder = storage.join(landing_uri, day.isoformat())
    if storage.is_symlink(folder):
        raise BatchError(f"{folder}: is a symbolic link; landing folders must be real folders (links are refused, "
                         "not followed)")
    names = [n for n in storage.list_entries(folder) if not n.startswith((".", "_"))]
    return [storage.join(folder, n) for n in names]


def preflight(spec: DatasetSpec, landing_uri: str, days: list[date], max_mb: float) -> int:
    """Check every landing file of ``days`` before anything is written: no links, nothing but plain files,
    none over the size cap. Returns the number of files. A multi-day run that would fail on a later
    day's file thus fails before writing the first day's partition."""
    n = 0
    for day in days:
        for uri in landing_files(landing_uri, day, spec):
            check_landing_file(uri, max_mb)
            n += 1
    return n


def _shown(names: list[str], limit: int = 30) -> str:
    """A list of column names for a message, at most ``limit`` of them (a file may have thousands)."""
    return f"{names[:limit]}" + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def ingest_day(spec: DatasetSpec, landing_uri: str, lake_uri: str, day: date, max_mb: float | None = None) -> DayReport:
    """Read every landing file of ``day``, coerce, and (re)write the day's raw partition.

    A day with no landing folder is a day with no sales: its raw partition is written empty, so a
    re-run after files were withdrawn also replaces the day exactly. ``max_mb``: the landing file size
    cap (default: the settings').
    """
    report = DayReport(day=day.isoformat())
    frames = []
    for uri in landing_files(landing_uri, day, spec):
        df = read_landing_file(uri, spec, max_mb)
        typed, extra = coerce(df, spec, uri, day)
        if extra:
            log.warning("%s: ignoring columns not in spec %r: %s", uri, spec.name, _shown(extra))
            report.dropped_columns[uri] = extra if len(extra) <= MAX_REPORTED else \
                [*extra[:MAX_REPORTED], f"... and {len(extra) - MAX_REPORTED} more"]
        frames.append(typed)
        report.files.append(uri)
    schema = raw_schema(spec)
    raw = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=schema)
    raw = raw.select([pl.col(c).cast(t) for c, t in schema.items()])
    report.rows = raw.height
    report.coerce_errors = raw[COERCE_ERRORS].is_not_null().sum()
    report.raw_uri = lake.partition_uri(lake_uri, lake.RAW, day)
    storage.sweep_stale_temp(lake.partition_dir(lake_uri, lake.RAW, day))  # killed writers' temporary files
    report.raw_sha256 = storage.write_parquet_atomic(raw, report.raw_uri)
    if not frames:
        log.warning("no landing files for %s under %s: wrote an empty raw partition", day, landing_uri)
    return report


def ingest_interval(spec: DatasetSpec, landing_uri: str, lake_uri: str, start: date, end: date,
                    max_mb: float | None = None, max_days: int | None = None) -> dict:
    """Ingest every day of [start, end). Returns small metadata for XCom.

    Before anything is written: the range is checked (:func:`tasks.core.params.check_date_range`, at most
    ``max_days`` days, default the settings' ``max_bulk_days``) and so is every landing file
    (:func:`preflight`: links, non-files, files over ``max_mb``, default ``max_landing_file_mb``)."""
    if max_mb is None or max_days is None:
        from tasks.core.settings import get_settings

        settings = get_settings()
        max_mb = settings.max_landing_file_mb if max_mb is None else max_mb
        max_days = settings.max_bulk_days if max_days is None else max_days
    check_date_range(start, end, max_days)
    days = days_in_interval(start, end)
    preflight(spec, landing_uri, days, max_mb)
    reports = [ingest_day(spec, landing_uri, lake_uri, d, max_mb) for d in days]
    return {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "days": len(reports),
        "files": sum(len(r.files) for r in reports),
        "rows_landed": sum(r.rows for r in reports),
        "coerce_errors": sum(r.coerce_errors for r in reports),
        "dropped_columns": {k: v for r in reports for k, v in r.dropped_columns.items()},
        "partitions": {r.day: r.raw_sha256 for r in reports},
    }


def report_dict(report: DayReport) -> dict:
    return asdict(report)


def ingest_step(spec: DatasetSpec, settings: Settings, start: date, end: date) -> IngestResult:
    """The ``ingest`` task: every day of [start, end) from the settings' landing zone into its lake's ``raw``."""
    check_date_range(start, end, settings.max_bulk_days)  # first: a range out of bounds writes nothing
    fault_point("ingest", "start")
    result = ingest_interval(spec, settings.landing_uri, settings.lake_uri, start, end,
                             settings.max_landing_file_mb, settings.max_bulk_days)
    fault_point("ingest", "after_effect")
    return IngestResult.model_validate({k: v for k, v in result.items() if k != "partitions"})
