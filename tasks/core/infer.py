"""Inferring a dataset spec from a sample of a sales file (``homeworth spec infer``).

The file is read as the ingest reads it (CSV, CSV.gz or Parquet; text values stripped, an empty cell
is no value) and each column gets a type, a role, ``required`` / ``nullable`` and, where its name and
values say so, its meaning to the comparable-sales stage (latitude, longitude, living area, location).
The result is YAML text with a comment on every guess, ready to commit and edit
(:func:`render_spec`); :func:`render_suite` writes a starter expectations module with bounds from the
observed quantiles, widened. Column names stay as the file spells them: the ingest matches spec names
and file headers through :func:`tasks.core.spec.normalise_header`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from tasks.core.spec import normalise_header

SAMPLE_ROWS = 50_000
# Cells read as "no value" besides the empty one (a nullable column accepts them).
NA_TOKENS = ("NA", "N/A", "NaN", "nan", "null", "NULL", "None", "#N/A")
BOOL_TRUE, BOOL_FALSE = {"true", "yes", "t", "y"}, {"false", "no", "f", "n"}
# strptime formats tried on text dates, most specific first; both day-first and month-first are tried and
# the one every value parses with wins (day-first when both do: the comment says so).
DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y%m%dT%H%M%S", "%Y/%m/%d",
                "%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%m-%d-%Y", "%d.%m.%Y", "%d/%m/%y", "%m/%d/%y", "%Y%m%d")
# A string column with at most this many distinct values (and repeats) is categorical.
MAX_CATEGORIES = 2_000
# Share of distinct values above which a string column is an identifier or free text.
UNIQUE_SHARE = 0.5
SEPARATORS = (",", ";", "\t", "|")
# Names (normalised, without separators) that say what a column means to the comparable sales.
_LAT = re.compile(r"^(lat|latt?itude|lat_?deg|y_?coord)$")
_LONG = re.compile(r"^(lon|long|lng|longt?itude|lon_?deg|x_?coord)$")
_AREA = re.compile(r"(sqft_?living|living_?(area|space|sqft|m2)|building_?area|floor_?area|gross_?area|"
                   r"liv_?area|gr_?liv_?area|total_?living)")
_LOCATION = ("zipcode", "zip_code", "zip", "postcode", "postal_code", "postalcode", "suburb", "neighbourhood",
             "neighborhood", "district", "borough", "municipality", "town", "city")
_DATE_NAME = re.compile(r"(date|sold|time|day)")


@dataclass
class Column:
    """One column's inference: ``type``, ``role``, ``nullable``, optional ``format`` / ``comps``, and why."""

    name: str
    type: str
    role: str = "numeric"
    nullable: bool = False
    format: str | None = None
    comps: str | None = None
    notes: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Reading a sample


def sniff_separator(header: str) -> str:
    counts = {sep: header.count(sep) for sep in SEPARATORS}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] else ","


def read_sample(path: str | Path, rows: int = SAMPLE_ROWS) -> tuple[pl.DataFrame, dict]:
    """The first ``rows`` rows of a CSV(.gz) or Parquet file, and facts about the file (``format``,
    ``separator``, ``encoding``, ``bom``). CSV values are text; headers lose a byte-order mark and
    surrounding spaces but keep their case and spelling."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".parquet"):
        df = pl.read_parquet(path, n_rows=rows)
        return df.rename({c: c.replace("\ufeff", "").strip() for c in df.columns}), {"format": "parquet"}
    if not name.endswith((".csv", ".csv.gz", ".txt", ".tsv")):
        raise ValueError(f"{path}: expected a .csv, .csv.gz or .parquet file")
    data = gzip.open(path, "rb").read() if name.endswith(".gz") else path.read_bytes()
    try:
        text, encoding = data.decode("utf-8"), "utf8"
    except UnicodeDecodeError:
        text, encoding = data.decode("utf-8", errors="replace"), "utf8-lossy"
    bom = text.startswith("\ufeff")
    text = text.lstrip("\ufeff")
    sep = sniff_separator(text.split("\n", 1)[0])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    header = [h.strip() for h in next(reader, [])]
    if not header or not any(header):
        raise ValueError(f"{path}: no header row")
    records = []
    for rec in reader:
        if not rec or (len(rec) == 1 and not rec[0].strip()):
            continue
        if len(rec) != len(header):
            raise ValueError(f"{path}: row {len(records) + 1} has {len(rec)} fields, the header {len(header)}")
        records.append(rec)
        if len(records) >= rows:
            break
    cols = list(zip(*records)) if records else [() for _ in header]
    df = pl.DataFrame([pl.Series(h, list(v), dtype=pl.String) for h, v in zip(header, cols)])
    return df, {"format": "csv", "separator": sep, "encoding": encoding, "bom": bom}


# ---------------------------------------------------------------------------------------------
# Types


def _text_values(s: pl.Series) -> tuple[pl.Series, int, list[str]]:
    """(the non-empty values, stripped; the count of empty / NA cells; the NA tokens seen)."""
    t = s.cast(pl.String).str.strip_chars()
    na = t.is_null() | (t == "") | t.is_in(list(NA_TOKENS))
    tokens = sorted(set(t.filter(t.is_in(list(NA_TOKENS))).to_list()))
    return t.filter(~na), int(na.sum()), tokens


def _date_format(values: pl.Series, name: str) -> tuple[str | None, bool]:
    """(the strptime format every value parses with, whether another format parsed them all too)."""
    if values.len() == 0:
        return None, False
    if values.str.contains(r"^\d+$").all() and not (_DATE_NAME.search(name) and values.str.len_chars().eq(8).all()):
        return None, False  # plain numbers are numbers, unless an 8-digit "date" column
    fits = [f for f in DATE_FORMATS if values.str.to_datetime(f, strict=False).null_count() == 0]
    if not fits:
        return None, False
    ambiguous = len([f for f in fits if f in ("%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%m-%d-%Y")]) > 1
    return fits[0], ambiguous


def infer_text_type(name: str, values: pl.Series) -> tuple[str, str | None, list[str]]:
    """(type, date format, notes) of a column of text values (the empty and NA cells left out)."""
    if values.len() == 0:
        return "string", None, ["no values in the sample"]
    low = values.str.to_lowercase()
    if low.is_in(list(BOOL_TRUE | BOOL_FALSE)).all() and not low.is_in(["t", "f", "y", "n"]).all():
        return "bool", None, []
    numbers = values.cast(pl.Float64, strict=False)
    if numbers.null_count() == 0 and numbers.is_finite().all():
        leading_zero = values.str.contains(r"^0\d").any()
        if leading_zero:
            return "string", None, ["digits with leading zeros: kept as text (a code, not a quantity)"]
        if (numbers == numbers.floor()).all() and numbers.abs().max() < 2**53:
            written = " (written with decimals, e.g. " + repr(values[0]) + ")" if values.str.contains(r"\.").any() else ""
            return "int", None, [f"whole numbers{written}"] if written else []
        return "float", None, []
    fmt, ambiguous = _date_format(values, normalise_header(name))
    if fmt is not None:
        notes = [f"dates like {values[0]!r}"]
        if ambiguous:
            notes.append("day and month both fit every value; day-first assumed, check it")
        return "date", fmt, notes
    return "string", None, []


def infer_column(name: str, s: pl.Series) -> Column:
    """Type, nullability and value statistics of one column of the sample."""
    n = s.len()
    if s.dtype == pl.String:
        values, empty, tokens = _text_values(s)
        typ, fmt, notes = infer_text_type(name, values)
    else:
        values, empty, tokens = s.drop_nulls(), s.null_count(), []
        fmt, notes = None, []
        if values.dtype == pl.Boolean:
            typ = "bool"
        elif values.dtype.is_integer():
            typ = "int"
        elif values.dtype.is_float():
            typ = "float"
            values = values.filter(values.is_finite())
        elif values.dtype in (pl.Date, pl.Datetime):
            typ = "date"
        else:
            typ, values = "string", values.cast(pl.String)
    if typ == "int" and empty:  # MLflow model signatures (and pandas) hold no missing value in an int column
        typ, notes = "float", [*notes, "whole numbers with empty cells: float, so a missing value stays representable"]
    col = Column(name, typ, nullable=empty > 0, format=fmt, notes=notes)
    col.stats = {"rows": n, "empty": empty, "na_tokens": tokens, "distinct": values.n_unique()}
    if typ in ("int", "float"):
        num = values.cast(pl.Float64, strict=False).drop_nulls() if values.dtype == pl.String else values.cast(pl.Float64)
        col.stats.update(_quantiles(num))
    elif typ == "date":
        days = values.str.to_datetime(fmt, strict=False).dt.date() if values.dtype == pl.String else values.cast(pl.Date)
        col.stats.update({"min": days.min(), "max": days.max(), "dates": days})
    elif typ == "string":
        col.stats["words"] = float(values.str.split(" ").list.len().mean() or 0) if values.len() else 0.0
        col.stats["top"] = values.value_counts(sort=True).head(12)[values.name].to_list() if values.len() else []
    if empty:
        col.notes.append(f"{empty} of {n} empty in the sample" + (f" (written {', '.join(tokens)})" if tokens else ""))
    return col


def _quantiles(num: pl.Series) -> dict:
    if num.len() == 0:
        return {}
    q = {k: num.quantile(p, interpolation="nearest") for k, p in (("q001", 0.001), ("q50", 0.5), ("q999", 0.999))}
    return {**q, "min": num.min(), "max": num.max(), "skew": float(num.skew() or 0.0), "values": num}


# ---------------------------------------------------------------------------------------------
# Roles


def assign_role(col: Column, target: str, id_col: str | None, time_col: str | None, split_col: str | None) -> None:
    """The column's role: the named ones, then by type and cardinality (with the reason in ``notes``)."""
    st, key = col.stats, normalise_header(col.name)
    named = {target: "target", id_col: "id", time_col: "event_time", split_col: "split"}
    if col.name in named:
        col.role = named[col.name]
        if col.role == "id" and col.type != "string":
            col.type, col.notes = "string", [*col.notes, "an identifier: kept as text"]
        return
    distinct, present = st["distinct"], st["rows"] - st["empty"]
    if present == 0 or distinct <= 1:
        col.role = "ignore"
        col.notes.append("ignored: " + ("no values in the sample" if present == 0 else "a single value in the sample"))
    elif col.type == "date":
        col.role = "ignore"
        col.notes.append("ignored: a second date (the event time is another column); derive a feature from it by hand")
    elif col.type == "string":
        _string_role(col, distinct, present)
    elif col.type == "int" and key.replace(" ", "_") in _LOCATION:
        col.role = "categorical"
        col.notes.append(f"categorical: a location code ({distinct} distinct)")
    else:
        col.role = "numeric"


def _string_role(col: Column, distinct: int, present: int) -> None:
    if distinct >= 0.95 * present:
        col.role = "ignore"
        col.notes.append(f"ignored: per-row unique ({distinct} distinct in {present} rows), an identifier or an "
                         "address, nothing a model can learn from")
    elif distinct > UNIQUE_SHARE * present and col.stats.get("words", 0) >= 2:
        col.role = "ignore"
        col.notes.append(f"ignored: free text ({distinct} distinct in {present} rows, "
                         f"{col.stats['words']:.1f} words on average)")
    elif distinct > MAX_CATEGORIES:
        col.role = "ignore"
        col.notes.append(f"ignored: {distinct} distinct values, too many categories (more than {MAX_CATEGORIES})")
    else:
        col.role = "categorical"
        col.notes.append(f"categorical: {distinct} distinct")


def guess_time(cols: list[Column], target: str) -> str | None:
    """The event time when not given: the only date column, or the date column named like one."""
    dates = [c for c in cols if c.type == "date" and c.name != target]
    if len(dates) == 1:
        return dates[0].name
    named = [c for c in dates if _DATE_NAME.search(normalise_header(c.name))]
    return named[0].name if named else None


def assign_comps(cols: list[Column]) -> None:
    """Latitude, longitude, living area and location guessed from names and values (each noted as guessed)."""
    by_key = {re.sub(r"[^a-z0-9]+", "_", normalise_header(c.name)).strip("_"): c for c in cols if c.role != "ignore"}

    def first(pred) -> Column | None:
        return next((c for k, c in by_key.items() if pred(k, c)), None)

    def within(c: Column, bound: float) -> bool:
        return c.type == "float" and bool(c.stats.get("values") is not None and (c.stats["values"].abs() <= bound).all())

    picks = {
        "latitude": first(lambda k, c: bool(_LAT.match(k)) and within(c, 90)),
        "longitude": first(lambda k, c: bool(_LONG.match(k)) and within(c, 180)),
        "living_area": first(lambda k, c: bool(_AREA.search(k)) and c.type in ("int", "float")
                             and (c.stats.get("min") or 0) >= 0 and not k.endswith("15")),
    }
    loc = [c for key in _LOCATION for k, c in by_key.items() if k == key and c.role == "categorical"]
    picks["location"] = loc[0] if loc else None
    for meaning, c in picks.items():
        if c is not None:
            c.comps = meaning
            c.notes.append(f"comps {meaning}: guessed from its name and values")


# ---------------------------------------------------------------------------------------------
# The whole spec


@dataclass
class Inferred:
    name: str
    columns: list[Column]
    file: dict
    split: dict
    target_transform: str
    notes: list[str]
    sample_rows: int


def infer(path: str | Path, name: str, target: str, id_col: str | None = None, time_col: str | None = None,
          split: str | None = None, split_column: str | None = None, rows: int = SAMPLE_ROWS) -> Inferred:
    """Infer a spec from a sample of ``path`` (see the module doc). Named columns may use any spelling
    that normalises like the file's header."""
    df, facts = read_sample(path, rows)
    headers = {normalise_header(c): c for c in df.columns}

    def resolve(col: str | None, flag: str) -> str | None:
        if col is None:
            return None
        if normalise_header(col) not in headers:
            raise ValueError(f"{path}: {flag} {col!r} is not a column; the file has {df.columns}")
        return headers[normalise_header(col)]

    target, id_col, time_col = resolve(target, "--target"), resolve(id_col, "--id"), resolve(time_col, "--time")
    split_column = resolve(split_column, "--split-column")
    cols = [infer_column(c, df[c]) for c in df.columns]
    by_name = {c.name: c for c in cols}
    notes = []
    if by_name[target].type not in ("int", "float"):
        raise ValueError(f"{path}: target column {target!r} is {by_name[target].type}, not a number "
                         f"(values like {df[target].drop_nulls().head(3).to_list()})")
    by_name[target].type = "float"
    if time_col is None and (time_col := guess_time(cols, target)) is not None:
        notes.append(f"event time {time_col!r} guessed: the date column (pass --time to choose another)")
    if time_col is not None and by_name[time_col].type != "date":
        raise ValueError(f"{path}: --time {time_col!r} does not hold dates (values like {df[time_col].head(3).to_list()})")
    for c in cols:
        assign_role(c, target, id_col, time_col, split_column)
    assign_comps(cols)
    method = split or ("column" if split_column else "time" if time_col else "random")
    if method == "time" and time_col is None:
        raise ValueError(f"{path}: --split time needs an event time: no date column found (pass --time)")
    if method == "column" and split_column is None:
        raise ValueError(f"{path}: --split column needs --split-column")
    split_spec = split_settings(method, by_name[time_col].stats["dates"] if time_col else None, split_column)
    transform = target_transform(by_name[target].stats)
    return Inferred(name, cols, facts, split_spec, transform, notes, df.height)


def split_settings(method: str, dates: pl.Series | None, column: str | None) -> dict:
    """The split: for a time split, the newest ~25 % of the sample's sales are test and the ~15 % before
    them validation (days counted back from the day after the last sale)."""
    out: dict = {"method": method}
    if method == "time" and dates is not None and dates.len():
        end = dates.max() + timedelta(days=1)
        ordered = dates.drop_nulls().sort()
        test_start = ordered[int(0.75 * (ordered.len() - 1))]
        val_start = ordered[int(0.60 * (ordered.len() - 1))]
        out["test_days"] = max((end - test_start).days, 1)
        out["val_days"] = max((test_start - val_start).days, 1)
        out["test_from"] = test_start
        out["val_from"] = val_start
    if method == "column":
        out["column"] = column
    return out


def target_transform(stats: dict) -> str:
    """``log`` for a positive, right-skewed target (prices), else ``identity``."""
    return "log" if (stats.get("min") or 0) > 0 and stats.get("skew", 0) > 0.5 else "identity"


def default_promotion(_: Inferred) -> dict:
    return {"max_mdape": None, "min_ppe10": None, "max_mdape_vs_boosting": 0.0}


def as_date(value) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def yaml_key(name: str) -> str:
    """A column name as a YAML key: bare when plain, else quoted."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else json.dumps(name)
