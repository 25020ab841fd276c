"""The suite's row-level checks compiled once into Polars expressions, so that Great Expectations judges
only the rows that might fail them (``tasks.quality.validate.gx_validate_compiled``).

GX still decides every result. :func:`plan_suite` sorts a suite's expectations into two GX calls:

- ``compact``: the row-level checks compiled here (a row's verdict depends on that row alone, or, for
  the duplicate key, on the rows sharing its nulls) and the table's column checks (rows do not matter
  to them): GX runs them on the *candidate* rows only, with every column;
- ``narrow``: everything else (row counts, medians and quantiles, checks with ``mostly`` or options not
  compiled here): GX runs them on every row, with only the columns they name.

A compiled expression says "this row surely passes"; it may call a passing row unsure (GX then passes
it) but never a failing row sure. The candidates are the rows some compiled expression is unsure of,
plus the first null of each column that has nulls, so that pandas gives every column of the compact
frame the dtype it gives on the whole batch (an integer column with a null becomes float: ``3.0``).
Anything this module cannot bound goes to ``narrow``; a suite with a check it cannot place returns None
(GX then validates the whole batch, as before).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

# Expectations whose verdict does not depend on the rows: they run on the compact frame.
TABLE_SHAPE = {"expect_table_columns_to_match_set", "expect_table_columns_to_match_ordered_list",
               "expect_table_column_count_to_equal", "expect_table_column_count_to_be_between",
               "expect_column_to_exist"}
# Expectations on the row count alone: they run on the narrow frame.
ROW_COUNT = {"expect_table_row_count_to_be_between", "expect_table_row_count_to_equal"}
# Regexes whose matches every engine agrees on (ASCII literals, classes, ranges, anchors, quantifiers):
# a Polars (Rust) match is then a pandas (RE2 or Python re) match; Python's ``$`` also matches before a
# final newline, which only makes Polars the stricter.
SAFE_REGEX = re.compile(r"[\^$\[\]\-0-9A-Za-z{},+*?_]*")
COMPILED_KWARGS = {
    "expect_column_values_to_not_be_null": {"column"},
    "expect_column_values_to_be_between": {"column", "min_value", "max_value", "strict_min", "strict_max"},
    "expect_column_values_to_be_in_set": {"column", "value_set"},
    "expect_column_values_to_match_regex": {"column", "regex"},
    "expect_column_pair_values_a_to_be_greater_than_b": {"column_A", "column_B", "or_equal"},
    "expect_compound_columns_to_be_unique": {"column_list"},
}


@dataclass
class Plan:
    """Positions in the suite of the ``compact`` and ``narrow`` expectations, the ``columns`` the narrow
    frame keeps and ``sure``: one "surely passes" expression per compiled expectation."""

    compact: list[int] = field(default_factory=list)
    narrow: list[int] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    sure: list[pl.Expr] = field(default_factory=list)

    def candidates(self, with_nulls: list[str]) -> pl.Expr:
        """Rows GX must see in the compact call: unsure of by some compiled check, or the first null of
        each column in ``with_nulls`` (the columns of the batch that have nulls)."""
        unsure = pl.any_horizontal([~e.fill_null(False) for e in self.sure]) if self.sure else pl.lit(False)
        firsts = [pl.col(c).is_null() & (pl.col(c).is_null().cum_sum() == 1) for c in with_nulls]
        return unsure | pl.any_horizontal(firsts) if firsts else unsure


def _resolve(value: Any, params: dict) -> tuple[bool, Any]:
    """(found, value) of a kwarg that may be a ``{"$PARAMETER": name}``."""
    if isinstance(value, dict) and set(value) == {"$PARAMETER"}:
        return (value["$PARAMETER"] in params, params.get(value["$PARAMETER"]))
    return True, value


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _present(col: str, dtype: pl.DataType) -> pl.Expr:
    """Not null as pandas reads it (a float NaN is null to pandas)."""
    e = pl.col(col).is_not_null()
    return e & pl.col(col).is_not_nan() if dtype.is_float() else e


def _numeric(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() and dtype != pl.Boolean


def _between(col: str, dtype: pl.DataType, kw: dict) -> pl.Expr | None:
    lo, hi = kw.get("min_value"), kw.get("max_value")
    bounds = [b for b in (lo, hi) if b is not None]
    if not bounds or (lo is not None and hi is not None and lo > hi):
        return None  # GX raises: it says so on every row
    if _numeric(dtype) and all(_number(b) for b in bounds):
        c = pl.col(col)
    elif dtype in (pl.Date, pl.Datetime("us"), pl.Datetime("ms"), pl.Datetime("ns")) and all(
            isinstance(b, datetime) and b.tzinfo is None for b in bounds):
        c = pl.col(col).cast(pl.Datetime("us"))
    else:
        return None
    e = _present(col, dtype)
    if lo is not None:
        e = e & (c > lo if kw.get("strict_min") else c >= lo)
    if hi is not None:
        e = e & (c < hi if kw.get("strict_max") else c <= hi)
    return e


def _in_set(col: str, dtype: pl.DataType, kw: dict) -> pl.Expr | None:
    values = kw.get("value_set")
    if not isinstance(values, (list, tuple, set)) or not values:
        return None
    if dtype == pl.String and all(isinstance(v, str) for v in values):
        return pl.col(col).is_not_null() & pl.col(col).is_in(list(values))
    if _numeric(dtype) and all(_number(v) for v in values):
        return _present(col, dtype) & pl.col(col).is_in(list(values))
    return None


def _safe_regex(rx: str) -> bool:
    """``rx`` uses only what every engine reads alike, each brace a ``{m}``, ``{m,}`` or ``{m,n}``, and compiles
    in Python and in Polars."""
    if not SAFE_REGEX.fullmatch(rx) or re.search(r"\{(?!\d+(,\d*)?\})", rx) or rx.count("{") != rx.count("}"):
        return False
    try:
        re.compile(rx)
        pl.Series([""]).str.contains(rx)
    except Exception:  # noqa: BLE001  (any engine's refusal: GX must see the rows)
        return False
    return True


def _regex(col: str, dtype: pl.DataType, kw: dict) -> pl.Expr | None:
    rx = kw.get("regex")
    if dtype != pl.String or not isinstance(rx, str) or not _safe_regex(rx):
        return None
    return pl.col(col).is_not_null() & pl.col(col).str.contains(rx)


def _greater(schema: pl.Schema, kw: dict) -> pl.Expr | None:
    a, b = kw.get("column_A"), kw.get("column_B")
    if a not in schema or b not in schema or not (_numeric(schema[a]) and _numeric(schema[b])):
        return None
    cmp = pl.col(a) >= pl.col(b) if kw.get("or_equal") else pl.col(a) > pl.col(b)
    return _present(a, schema[a]) & _present(b, schema[b]) & cmp


def compile_row_check(kind: str, kw: dict, schema: pl.Schema, unique_key: list[str]) -> pl.Expr | None:
    """"This row surely passes" for one expectation (``kw`` with parameters substituted), or None.

    ``unique_key``: the key whose repeats were set aside before GX (``validate.precheck``): among rows with
    no null in it no two are equal, so only rows with a null in it can repeat one another.
    """
    if set(kw) - COMPILED_KWARGS.get(kind, set()):
        return None
    if kind == "expect_compound_columns_to_be_unique":
        cols = list(kw.get("column_list") or [])
        if not cols or cols != unique_key or any(c not in schema for c in cols):
            return None
        return pl.all_horizontal([pl.col(c).is_not_null() for c in cols])
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        return _greater(schema, kw)
    col = kw.get("column")
    if col not in schema:
        return None
    dtype = schema[col]
    if kind == "expect_column_values_to_not_be_null":
        return _present(col, dtype)
    build = {"expect_column_values_to_be_between": _between, "expect_column_values_to_be_in_set": _in_set,
             "expect_column_values_to_match_regex": _regex}[kind]
    return build(col, dtype, kw)


def _columns(kw: dict) -> list[str]:
    cols = [kw[k] for k in ("column", "column_A", "column_B") if isinstance(kw.get(k), str)]
    return cols + [c for c in (kw.get("column_list") or []) if isinstance(c, str)]


def plan_suite(expectations: list, params: dict, schema: pl.Schema, unique_key: list[str]) -> Plan | None:
    """Sort ``expectations`` (a suite's, in order) into the compact and the narrow GX call (see the module).

    None when an expectation can be placed in neither (a table-level check this module does not know,
    a row condition, a column the batch lacks): GX must then see the whole batch.
    """
    plan = Plan()
    for i, exp in enumerate(expectations):
        cfg = exp.configuration
        kind, raw = cfg.type, dict(cfg.kwargs)
        if raw.get("row_condition") or raw.get("condition_parser"):
            return None
        kw = {}
        for k, v in raw.items():
            found, kw[k] = _resolve(v, params)
            if not found:
                return None
        if kind in TABLE_SHAPE:
            plan.compact.append(i)
            continue
        sure = compile_row_check(kind, kw, schema, unique_key) if kind in COMPILED_KWARGS else None
        if sure is not None:
            plan.compact.append(i)
            plan.sure.append(sure)
            continue
        cols = _columns(kw)
        if (not cols and kind not in ROW_COUNT) or any(c not in schema for c in cols):
            return None  # GX says what is wrong with it, on the whole batch
        plan.narrow.append(i)
        plan.columns += [c for c in cols if c not in plan.columns]
    if plan.narrow and not plan.columns:  # a row count alone: any one column carries the rows
        plan.columns = [next((c for c, t in schema.items() if _numeric(t)), next(iter(schema)))]
    return plan

