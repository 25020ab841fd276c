"""Reading one landing file: CSV or Parquet to a frame of columns named as the spec names them.

A problem with the file raises :class:`BatchError` with a message that starts with the file's URI and
says what was found: a symbolic link or something that is not a plain file (refused, never followed,
and never echoed), a file over the size cap (``HOMEWORTH_MAX_LANDING_FILE_MB``) or a Parquet file that
would decompress beyond ten times it, an empty file, a file that is not a table (an image, JSON, gzip,
CSV named .parquet, a truncated Parquet file), bytes that are not UTF-8 (byte, offset, line, row,
column), a single-column header (with the separator the file seems to use), a record with the wrong
number of fields, a repeated column. A CSV file is read as a stream, in batches of rows that become
frame chunks: memory is the frame it becomes (Polars keeps 16 bytes a text value) plus one batch, never
the file as Python lists (a 12 MB file: 49 MB at peak, against 245 MB when it was read whole). Headers match the spec's names through
:func:`tasks.core.spec.normalise_header` (case, a byte-order mark, surrounding spaces), so a spec may
spell them either way. Coercion to the spec's types is ``tasks.ingest.landing.coerce``. See
docs/data-contract.md and docs/security.md.
"""

from __future__ import annotations

import csv
import io
from typing import Iterator

import polars as pl

from tasks.core import storage
from tasks.core.spec import DatasetSpec, normalise_header

MIB = 2**20
# A Parquet file may decompress to at most this many times the landing file cap (metadata, before reading).
PARQUET_EXPANSION = 10
# Bytes each decoded cell takes at least once read (8-byte numbers; string views take 16).
CELL_BYTES = 8
# Rows parsed into Python lists at a time before they become a frame.
CSV_BATCH_ROWS = 10_000
HEAD_BYTES = 64 * 1024


class BatchError(ValueError):
    """A problem with a whole file or day: the run must stop and a person must look."""


def normalize_header(name: str) -> str:
    """Headers match the spec ignoring case, surrounding spaces and a UTF-8 byte-order mark
    (:func:`tasks.core.spec.normalise_header`, the one normalisation used everywhere)."""
    return normalise_header(name)


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


class _Lines:
    """The physical lines of a text stream for ``csv.reader``, keeping those of the current record (the
    reader pulls a line only when it needs one) so that an error can show the record as it was written."""

    def __init__(self, stream: Iterator[str]):
        self._it = iter(stream)
        self.record: list[str] = []

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        line = next(self._it)
        self.record.append(line)
        return line

    def take(self) -> str:
        """The current record's lines as written; the next record starts empty."""
        text, self.record = "".join(self.record), []
        return text

    def more(self, n: int) -> str:
        """Up to ``n`` further lines (for a message; a line that cannot be decoded ends it)."""
        out = []
        try:
            for _ in range(n):
                out.append(next(self._it))
        except (StopIteration, UnicodeDecodeError):
            pass
        return "".join(out)


def _batch_frame(batch: list[list[str]], width: int) -> pl.DataFrame:
    """Rows of text as a frame of String columns named by position (headers may repeat until checked)."""
    columns = list(zip(*batch)) if batch else [() for _ in range(width)]
    return pl.DataFrame([pl.Series(f"c{i}", list(values), dtype=pl.String) for i, values in enumerate(columns)])


def _read_header(uri: str, reader, spec: DatasetSpec) -> list[str]:
    sep = spec.landing.csv.separator
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise BatchError(f"{uri}: the first line is blank; expected the header row {list(spec.columns)[:50]}")
    if len(header) == 1 and len(spec.columns) > 1:
        guess = _guess_separator(header[0], sep)
        hint = (f"the file looks {guess!r}-separated but the spec's landing.csv.separator is {sep!r}"
                if guess else f"expected {len(spec.columns)} columns separated by {sep!r}")
        raise BatchError(f"{uri}: the header has a single column {header[0][:120]!r}: {hint}")
    return header


def _wrong_width(uri: str, rec: list[str], header: list[str], row: int, line: int, shown: str, sep: str) -> BatchError:
    if len(rec) < len(header):
        problem = f"column {normalize_header(header[len(rec)])!r} and after are missing (truncated file?)"
    else:
        problem = (f"extra value {rec[len(header)][:120]!r} after column {normalize_header(header[-1])!r} "
                   f"(an unquoted {sep!r} in a value?)")
    return BatchError(f"{uri}: row {row} (line {line + 1}) has {len(rec)} fields but the header has {len(header)}: "
                      f"{problem}; got {shown[:200]!r}")


def _parse_csv(uri: str, stream: Iterator[str], spec: DatasetSpec) -> pl.DataFrame:
    """Parse CSV text into a frame of text columns, checking its structure record by record.

    Python's csv module does the parsing so that every problem can name its row and line: a record with
    fewer or more fields than the header fails the file (a truncated upload, an unquoted separator),
    blank lines are skipped, and quoted fields may hold separators and newlines. Records become a frame
    every :data:`CSV_BATCH_ROWS` rows, so the Python lists never hold more than one batch.
    """
    sep = spec.landing.csv.separator
    lines = _Lines(stream)
    reader = csv.reader(lines, delimiter=sep, strict=True)
    line = 0  # the last physical line of the previous record
    frames: list[pl.DataFrame] = []
    batch: list[list[str]] = []
    rows = 0
    try:
        header = _read_header(uri, reader, spec)
        width = len(header)
        lines.take()
        line = reader.line_num
        for rec in reader:
            written = lines.take()
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                line = reader.line_num
                continue  # a blank line is not a record
            if len(rec) != width:
                raise _wrong_width(uri, rec, header, rows + len(batch) + 1, line, written.rstrip("\r\n"), sep)
            batch.append(rec)
            line = reader.line_num
            if len(batch) >= CSV_BATCH_ROWS:
                frames.append(_batch_frame(batch, width))
                rows, batch = rows + len(batch), []
    except csv.Error as exc:
        shown = "\n".join((lines.take() + lines.more(3)).split("\n")[:3]).rstrip("\r\n")[:200]
        raise BatchError(f"{uri}: malformed CSV in the record starting at line {line + 1} (read up to line "
                         f"{reader.line_num}): {exc}; got {shown!r}") from exc
    _check_duplicate_headers(uri, header)
    if batch or not frames:
        frames.append(_batch_frame(batch, width))
    df = pl.concat(frames, how="vertical", rechunk=False) if len(frames) > 1 else frames[0]
    return df.rename(dict(zip(df.columns, header)))


def _check_duplicate_headers(uri: str, header: list[str]) -> None:
    """Fail on two headers equal under :func:`normalize_header`; one pass, a dict of counts (linear)."""
    counts: dict[str, int] = {}
    names = [normalize_header(h) for h in header]
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    dupes = sorted(n for n, k in counts.items() if k > 1)
    if dupes:
        originals = [h for h, n in zip(header, names) if counts[n] > 1]
        more = f" and {len(dupes) - 20} more" if len(dupes) > 20 else ""
        raise BatchError(f"{uri}: columns {dupes[:20]}{more} appear more than once (headers {originals[:40]} "
                         "compared ignoring case)")


def _csv_frame(uri: str, spec: DatasetSpec, size: int) -> pl.DataFrame:
    with storage.open_input(uri) as f:
        head = f.read(HEAD_BYTES)
    if not head.strip() and size <= len(head):
        raise BatchError(f"{uri}: file is empty ({size} bytes, no header row); "
                         "a day without sales is a file with just the header")
    kind = _sniff_binary(head)
    if kind:
        raise BatchError(f"{uri}: not a CSV file: it looks like {kind} (starts with {head[:8]!r})")
    lossy = spec.landing.csv.encoding == "utf8-lossy"
    start = head.decode("utf-8", errors="replace")
    if _looks_like_json(start):
        raise BatchError(f"{uri}: not a CSV file: it looks like JSON (starts with {start.lstrip()[:40]!r}); "
                         f"expected the header row {','.join(list(spec.columns)[:3])},...")
    try:
        with storage.open_input(uri) as f:
            text = io.TextIOWrapper(f, encoding="utf-8", errors="replace" if lossy else "strict", newline="")
            return _parse_csv(uri, text, spec)
    except UnicodeDecodeError:
        # Strict UTF-8 failed somewhere in the stream: find and name the byte, its line, row and column.
        _decode(uri, storage.read_bytes(uri), spec)
        raise


def _parquet_frame(uri: str, size: int, max_decoded: int) -> pl.DataFrame:
    with storage.open_input(uri) as f:
        data = f.read()
    if not data.startswith(b"PAR1"):
        kind = _sniff_binary(data) or ("text (a CSV or JSON file?)" if data[:1].isascii() else "something else")
        raise BatchError(f"{uri}: not a Parquet file: it looks like {kind} (starts with {data[:8]!r}, "
                         "a Parquet file starts with b'PAR1')")
    if len(data) < 12 or not data.endswith(b"PAR1"):
        raise BatchError(f"{uri}: truncated or corrupt Parquet file: {len(data)} bytes, ends with "
                         f"{data[-4:]!r} instead of the footer magic b'PAR1' (an incomplete upload?)")
    try:
        import pyarrow.parquet as pq

        meta = pq.read_metadata(io.BytesIO(data))
    except Exception as exc:
        raise BatchError(f"{uri}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    check_parquet_size(uri, meta, max_decoded)
    try:
        return pl.read_parquet(io.BytesIO(data))
    except Exception as exc:
        raise BatchError(f"{uri}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc


def parquet_decoded_bytes(meta) -> tuple[int, int]:
    """(uncompressed bytes of every column chunk, the least bytes its cells take once decoded), from the
    file's metadata alone. Dictionary and run-length encodings keep the first small; the second is not."""
    uncompressed = sum(meta.row_group(g).column(c).total_uncompressed_size
                       for g in range(meta.num_row_groups) for c in range(meta.num_columns))
    return uncompressed, meta.num_rows * meta.num_columns * CELL_BYTES


def check_parquet_size(uri: str, meta, max_decoded: int) -> None:
    """Refuse a Parquet file whose metadata says it decompresses beyond ``max_decoded`` bytes (a bomb)."""
    uncompressed, cells = parquet_decoded_bytes(meta)
    if max(uncompressed, cells) > max_decoded:
        raise BatchError(
            f"{uri}: Parquet file declares {meta.num_rows:,} rows x {meta.num_columns} columns, {uncompressed:,} bytes "
            f"uncompressed and at least {cells:,} bytes decoded, over the decompressed cap of "
            f"{max_decoded / MIB:g} MiB ({PARQUET_EXPANSION} x HOMEWORTH_MAX_LANDING_FILE_MB); it was not read")


def check_landing_file(uri: str, max_mb: float) -> int:
    """The file's size, after refusing a symbolic link, anything but a plain file and a file over the cap.

    A link is refused by what it is, never by what it points to: the message names the landing file only."""
    try:
        size = storage.regular_file_size(uri)
    except storage.UnsafePath as exc:
        raise BatchError(str(exc)) from None
    except OSError as exc:
        raise BatchError(f"{uri}: cannot read file: {exc}") from exc
    cap = int(max_mb * MIB)
    if size > cap:
        raise BatchError(f"{uri}: file is {size:,} bytes ({size / MIB:.1f} MiB), over the landing file cap of "
                         f"{max_mb:g} MiB (HOMEWORTH_MAX_LANDING_FILE_MB); nothing was written: split the file "
                         "or raise the cap")
    return size


def spec_names(columns: list[str], spec: DatasetSpec) -> dict[str, str]:
    """``{file header: name in the frame}``: the spec's own spelling for a header that matches a spec column
    under :func:`normalize_header`, the normalised header otherwise (a column the spec does not have)."""
    by_norm: dict[str, str] = {}
    for name in spec.columns:
        by_norm.setdefault(normalize_header(name), name)
    return {c: by_norm.get(normalize_header(c), normalize_header(c)) for c in columns}


def read_landing_file(uri: str, spec: DatasetSpec, max_mb: float | None = None) -> pl.DataFrame:
    """One landing file as columns named as the spec names them. Raises BatchError if unreadable.

    ``max_mb``: the size cap (default: the settings' ``max_landing_file_mb``). Every message starts with
    the file's URI and says what was found: a link or a file over the cap, the byte and column of an
    invalid UTF-8 sequence, the separator a single-column header suggests, the record with the wrong
    number of fields, or what a file that is not a table looks like.
    """
    if max_mb is None:
        from tasks.core.settings import get_settings

        max_mb = get_settings().max_landing_file_mb
    base = uri.rsplit("/", 1)[-1]
    suffix = base.rsplit(".", 1)[-1].lower() if "." in base else ""
    size = check_landing_file(uri, max_mb)
    if suffix == "csv" and "csv" in spec.landing.formats:
        df = _csv_frame(uri, spec, size)
    elif suffix == "parquet" and "parquet" in spec.landing.formats:
        df = _parquet_frame(uri, size, int(max_mb * MIB) * PARQUET_EXPANSION)
    else:
        hint = " (compressed landing files are not supported; land the .csv itself)" if suffix in ("gz", "zip", "bz2", "zst") else ""
        raise BatchError(f"{uri}: unsupported landing format {suffix!r}; the spec allows {spec.landing.formats}{hint}")
    _check_duplicate_headers(uri, df.columns)
    return df.rename(spec_names(df.columns, spec))
