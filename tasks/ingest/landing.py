"""Ingest: read one day's landing files, coerce them to the dataset spec, write the ``raw`` partition.

Landing files are only ever read. A batch-level problem raises :class:`BatchError` with a message that
starts with the file's URI and names the column and the value: an empty file, a file that is not a
table (an image, JSON, gzip, CSV named .parquet, a truncated Parquet file), bytes that are not UTF-8
(byte, offset, line, row, column), a single-column header (with the separator the file seems to use),
a record with the wrong number of fields, a missing, renamed or repeated column. A value that cannot
be coerced (text in a number, NaN or infinity in a float, an unparseable date) does not stop the day:
the row is kept in ``raw`` with the problem in ``_coerce_errors`` and the validate step sends it to
quarantine with that reason. See docs/data-contract.md.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta

import polars as pl

from tasks.core import lake, storage
from tasks.core.spec import ColumnSpec, DatasetSpec

log = logging.getLogger(__name__)

# Bookkeeping columns added to every raw row; they travel to validated and quarantine.
SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"
COERCE_ERRORS = "_coerce_errors"
DS = "ds"

POLARS_TYPES: dict[str, pl.DataType] = {
    "string": pl.String(),
    "int": pl.Int64(),
    "float": pl.Float64(),
    "date": pl.Date(),
    "bool": pl.Boolean(),
}


class BatchError(ValueError):
    """A problem with a whole file or day: the run must stop and a person must look."""


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


def normalize_header(name: str) -> str:
    """Headers match the spec ignoring case, surrounding spaces and a UTF-8 byte-order mark."""
    return name.replace("\ufeff", "").strip().lower()


# Leading bytes of common files that are not tables; a feed that drops one of these by mistake gets a
# message saying what it is rather than a parser error.
_MAGIC: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (an .xlsx workbook is one)"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"PAR1", "a Parquet file"),
]
# Separators suggested when a CSV header comes out as a single column.
_SEPARATORS = [",", ";", "\t", "|"]


def _sniff_binary(data: bytes) -> str | None:
    """What ``data`` looks like if it is clearly not delimited text, else None."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if b"\x00" in data[:4096]:
        return "binary data (it contains NUL bytes)"
    return None


def _looks_like_json(text: str) -> bool:
    return text.lstrip("\ufeff \t\r\n")[:1] in ("{", "[")


def _has_undecodable(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _locate_undecodable(text: str, sep: str) -> str | None:
    """Where the first undecodable byte of ``text`` (decoded with surrogateescape) sits: row, column, value."""
    try:
        records = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
        header = next(records, [])
        for i, value in enumerate(header):
            if _has_undecodable(value):
                return f"the header, column #{i + 1}, value {value.encode('utf-8', 'surrogateescape')!r}"
        names = [normalize_header(h) for h in header]
        row = 0
        for rec in records:
            if not rec:
                continue
            row += 1
            for i, value in enumerate(rec):
                if _has_undecodable(value):
                    col = names[i] if i < len(names) else f"#{i + 1} (beyond the header)"
                    return f"row {row}, column {col!r}, value {value.encode('utf-8', 'surrogateescape')!r}"
    except csv.Error:
        pass
    return None


def _decode(uri: str, data: bytes, spec: DatasetSpec) -> str:
    """The file's text in the spec's encoding. Strict UTF-8 fails naming the byte, line, row and column."""
    if spec.landing.csv.encoding == "utf8-lossy":
        return data.decode("utf-8", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = exc.start
        line = data[:offset].count(b"\n") + 1
        where = _locate_undecodable(data.decode("utf-8", errors="surrogateescape"), spec.landing.csv.separator)
        raise BatchError(
            f"{uri}: not valid UTF-8 (the spec's landing.csv.encoding is 'utf8'): byte 0x{data[offset]:02x} at "
            f"offset {offset}, line {line}{', ' + where if where else ''}; re-export the file as UTF-8 "
            "(or set the spec's encoding to 'utf8-lossy' to replace such bytes)"
        ) from exc


def _guess_separator(header_line: str, expected: str) -> str | None:
    counts = {sep: header_line.count(sep) for sep in _SEPARATORS if sep != expected}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] > 0 else None


def _parse_csv(uri: str, text: str, spec: DatasetSpec) -> pl.DataFrame:
    """Parse CSV text into a frame of text columns, checking its structure record by record.

    Python's csv module does the parsing so that every problem can name its row and line: a record with
    fewer or more fields than the header fails the file (a truncated upload, an unquoted separator),
    blank lines are skipped, and quoted fields may hold separators and newlines.
    """
    sep = spec.landing.csv.separator
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    line = 0  # the last physical line of the previous record
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise BatchError(f"{uri}: the first line is blank; expected the header row {list(spec.columns)}")
        if len(header) == 1 and len(spec.columns) > 1:
            guess = _guess_separator(header[0], sep)
            hint = (f"the file looks {guess!r}-separated but the spec's landing.csv.separator is {sep!r}"
                    if guess else f"expected {len(spec.columns)} columns separated by {sep!r}")
            raise BatchError(f"{uri}: the header has a single column {header[0][:120]!r}: {hint}")
        names = [normalize_header(h) for h in header]
        rows: list[list[str]] = []
        line = reader.line_num
        for rec in reader:
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                line = reader.line_num
                continue  # a blank line is not a record
            if len(rec) != len(header):
                row = len(rows) + 1
                shown = "\n".join(text.split("\n")[line : reader.line_num]).rstrip("\r\n")[:200]
                if len(rec) < len(header):
                    problem = f"column {names[len(rec)]!r} and after are missing (truncated file?)"
                else:
                    problem = f"extra value {rec[len(header)]!r} after column {names[-1]!r} (an unquoted {sep!r} in a value?)"
                raise BatchError(
                    f"{uri}: row {row} (line {line + 1}) has {len(rec)} fields but the header has {len(header)}: "
                    f"{problem}; got {shown!r}"
                )
            rows.append(rec)
            line = reader.line_num
    except csv.Error as exc:
        shown = "\n".join(text.split("\n")[line : line + 3]).rstrip("\r\n")[:200]
        raise BatchError(f"{uri}: malformed CSV in the record starting at line {line + 1} (read up to line "
                         f"{reader.line_num}): {exc}; got {shown!r}") from exc
    _check_duplicate_headers(uri, header)
    columns = list(zip(*rows)) if rows else [() for _ in header]
    return pl.DataFrame([pl.Series(h, list(values), dtype=pl.String) for h, values in zip(header, columns)])


def _check_duplicate_headers(uri: str, header: list[str]) -> None:
    names = [normalize_header(h) for h in header]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        originals = [h for h, n in zip(header, names) if n in dupes]
        raise BatchError(f"{uri}: columns {dupes} appear more than once (headers {originals} compared ignoring case)")


def read_landing_file(uri: str, spec: DatasetSpec) -> pl.DataFrame:
    """One landing file as text columns with normalised headers. Raises BatchError if unreadable.

    Every message starts with the file's URI and says what was found: the byte and column of an invalid
    UTF-8 sequence, the separator a single-column header suggests, the record with the wrong number of
    fields, or what a file that is not a table looks like.
    """
    suffix = uri.rsplit("/", 1)[-1].rsplit(".", 1)[-1].lower() if "." in uri.rsplit("/", 1)[-1] else ""
    try:
        data = storage.read_bytes(uri)
    except OSError as exc:
        raise BatchError(f"{uri}: cannot read file: {exc}") from exc
    if suffix == "csv" and "csv" in spec.landing.formats:
        if not data.strip():
            raise BatchError(f"{uri}: file is empty ({len(data)} bytes, no header row); "
                             "a day without sales is a file with just the header")
        kind = _sniff_binary(data)
        if kind:
            raise BatchError(f"{uri}: not a CSV file: it looks like {kind} (starts with {data[:8]!r})")
        text = _decode(uri, data, spec)
        if _looks_like_json(text):
            raise BatchError(f"{uri}: not a CSV file: it looks like JSON (starts with {text.lstrip()[:40]!r}); "
                             f"expected the header row {','.join(list(spec.columns)[:3])},...")
        df = _parse_csv(uri, text, spec)
    elif suffix == "parquet" and "parquet" in spec.landing.formats:
        if not data.startswith(b"PAR1"):
            kind = _sniff_binary(data) or ("text (a CSV or JSON file?)" if data[:1].isascii() else "something else")
            raise BatchError(f"{uri}: not a Parquet file: it looks like {kind} (starts with {data[:8]!r}, "
                             "a Parquet file starts with b'PAR1')")
        if len(data) < 12 or not data.endswith(b"PAR1"):
            raise BatchError(f"{uri}: truncated or corrupt Parquet file: {len(data)} bytes, ends with "
                             f"{data[-4:]!r} instead of the footer magic b'PAR1' (an incomplete upload?)")
        try:
            df = pl.read_parquet(io.BytesIO(data))
        except Exception as exc:
            raise BatchError(f"{uri}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    else:
        hint = " (compressed landing files are not supported; land the .csv itself)" if suffix in ("gz", "zip", "bz2", "zst") else ""
        raise BatchError(f"{uri}: unsupported landing format {suffix!r}; the spec allows {spec.landing.formats}{hint}")
    _check_duplicate_headers(uri, df.columns)
    return df.rename({c: normalize_header(c) for c in df.columns})


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
            + (f"; columns not in the spec: {extra}" if extra else "")
            + f"; the file has {len(df.columns)} columns {df.columns}"
        )
    for name in spec.columns:
        if name in df.columns and (df.schema[name].is_nested() or df.schema[name] == pl.Binary):
            raise BatchError(
                f"{source}: column {name!r} has type {df.schema[name]}, which cannot hold a {spec.columns[name].type}"
            )
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


def raw_schema(spec: DatasetSpec) -> dict[str, pl.DataType]:
    schema = {name: POLARS_TYPES[cs.type] for name, cs in spec.columns.items()}
    schema.update({DS: pl.Date(), SOURCE_FILE: pl.String(), SOURCE_ROW: pl.Int64(), COERCE_ERRORS: pl.String()})
    return schema


def landing_files(landing_uri: str, day: date, spec: DatasetSpec) -> list[str]:
    folder = storage.join(landing_uri, day.isoformat())
    names = [n for n in storage.list_dir(folder) if not n.startswith((".", "_"))]
    return [storage.join(folder, n) for n in names]


def ingest_day(spec: DatasetSpec, landing_uri: str, lake_uri: str, day: date) -> DayReport:
    """Read every landing file of ``day``, coerce, and (re)write the day's raw partition.

    A day with no landing folder is a day with no sales: its raw partition is written empty, so a
    re-run after files were withdrawn also replaces the day exactly.
    """
    report = DayReport(day=day.isoformat())
    frames = []
    for uri in landing_files(landing_uri, day, spec):
        df = read_landing_file(uri, spec)
        typed, extra = coerce(df, spec, uri, day)
        if extra:
            log.warning("%s: ignoring columns not in spec %r: %s", uri, spec.name, extra)
            report.dropped_columns[uri] = extra
        frames.append(typed)
        report.files.append(uri)
    schema = raw_schema(spec)
    raw = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=schema)
    raw = raw.select([pl.col(c).cast(t) for c, t in schema.items()])
    report.rows = raw.height
    report.coerce_errors = raw[COERCE_ERRORS].is_not_null().sum()
    report.raw_uri = lake.partition_uri(lake_uri, lake.RAW, day)
    report.raw_sha256 = storage.write_parquet_atomic(raw, report.raw_uri)
    if not frames:
        log.warning("no landing files for %s under %s: wrote an empty raw partition", day, landing_uri)
    return report


def ingest_interval(spec: DatasetSpec, landing_uri: str, lake_uri: str, start: date, end: date) -> dict:
    """Ingest every day of [start, end). Returns small metadata for XCom."""
    reports = [ingest_day(spec, landing_uri, lake_uri, d) for d in days_in_interval(start, end)]
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
