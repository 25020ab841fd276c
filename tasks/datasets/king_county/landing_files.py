"""Landing files as ``tasks/datasets/king_county/synth.py`` writes them: Parquet with the spec's types, or
CSV in the public file's conventions; each written under a hidden temporary name, then published atomically
without ever replacing a file that is already there."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import polars as pl

FORMATS = ("parquet", "csv")
FILE_PREFIX = "synth-"


def csv_text(df: pl.DataFrame) -> pl.DataFrame:
    """One column of CSV records in the public file's conventions: id, date, floors and zipcode quoted,
    the date as "20141013T000000", numbers unquoted and without a trailing ".0" (2 rather than 2.0)."""

    def number(c: str) -> pl.Expr:
        return pl.col(c).cast(pl.String).str.strip_suffix(".0")

    def quoted(e: pl.Expr) -> pl.Expr:
        return pl.concat_str(pl.lit('"'), e, pl.lit('"'))

    fields = {c: number(c) for c in df.columns}
    fields.update({
        "id": quoted(pl.col("id")),
        "date": quoted(pl.col("date").dt.strftime("%Y%m%dT000000")),
        "floors": quoted(number("floors")),
        "zipcode": quoted(pl.col("zipcode")),
    })  # fmt: skip
    return df.select(pl.concat_str([fields[c] for c in df.columns], separator=",").alias("record"))


def file_name(part: int, fmt: str) -> str:
    return f"{FILE_PREFIX}{part}.{fmt}"


def _publish(tmp: Path, path: Path) -> bool:
    """Give the finished ``tmp`` its landing name unless that name exists. True if it landed.

    A hard link is atomic and never replaces an existing file, even one that a concurrent writer landed
    after our existence check; where hard links are not supported, ``os.replace`` after a fresh check.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:
        if path.exists():
            return False
        os.replace(tmp, path)
    return True


def write_atomic(df: pl.DataFrame, path: Path, fmt: str) -> bool:
    """Write ``df`` to a hidden temporary file beside ``path``, then publish it. True if it landed."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        if fmt == "parquet":
            df.write_parquet(tmp, compression="zstd", compression_level=1, statistics=True)
        else:
            with open(tmp, "wb") as f:
                f.write((",".join(df.columns) + "\n").encode())  # the public file's header is not quoted
                csv_text(df).write_csv(f, include_header=False, quote_style="never")
        return _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
