"""Reading one landing file: CSV or Parquet bytes to a frame of columns with normalised headers.

A problem with the file raises :class:`BatchError` with a message that starts with the file's URI and
says what was found: an empty file, a file that is not a table (an image, JSON, gzip, CSV named
.parquet, a truncated Parquet file), bytes that are not UTF-8 (byte, offset, line, row, column), a
single-column header (with the separator the file seems to use), a record with the wrong number of
fields, a repeated column. Coercion to the spec's types is ``tasks.ingest.landing.coerce``. See
docs/data-contract.md.
"""

from __future__ import annotations

import csv
import io

import polars as pl

from tasks.core import storage
from tasks.core.spec import DatasetSpec


class BatchError(ValueError):
    """A problem with a whole file or day: the run must stop and a person must look."""


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


def _csv_frame(uri: str, data: bytes, spec: DatasetSpec) -> pl.DataFrame:
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
    return _parse_csv(uri, text, spec)


def _parquet_frame(uri: str, data: bytes) -> pl.DataFrame:
    if not data.startswith(b"PAR1"):
        kind = _sniff_binary(data) or ("text (a CSV or JSON file?)" if data[:1].isascii() else "something else")
        raise BatchError(f"{uri}: not a Parquet file: it looks like {kind} (starts with {data[:8]!r}, "
                         "a Parquet file starts with b'PAR1')")
    if len(data) < 12 or not data.endswith(b"PAR1"):
        raise BatchError(f"{uri}: truncated or corrupt Parquet file: {len(data)} bytes, ends with "
                         f"{data[-4:]!r} instead of the footer magic b'PAR1' (an incomplete upload?)")
    try:
        return pl.read_parquet(io.BytesIO(data))
    except Exception as exc:
        raise BatchError(f"{uri}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc


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
        df = _csv_frame(uri, data, spec)
    elif suffix == "parquet" and "parquet" in spec.landing.formats:
        df = _parquet_frame(uri, data)
    else:
        hint = " (compressed landing files are not supported; land the .csv itself)" if suffix in ("gz", "zip", "bz2", "zst") else ""
        raise BatchError(f"{uri}: unsupported landing format {suffix!r}; the spec allows {spec.landing.formats}{hint}")
    _check_duplicate_headers(uri, df.columns)
    return df.rename({c: normalize_header(c) for c in df.columns})
