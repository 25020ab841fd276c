"""The request model of ``POST /predict``, generated from the dataset spec and its expectation suite.

Every spec column but the target, with the spec's types and required flags, and the single-column
row-level expectations of the Great Expectations suite (bounds, value sets, patterns) as field
validators, so a bad house gets a 422 that names the field (:func:`validation_detail`).
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from typing import Annotated, Any, Callable

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model

from tasks.core.spec import DatasetSpec

PY_TYPES: dict[str, type] = {"string": str, "int": int, "float": float, "date": date, "bool": bool}


def field_constraints(spec: DatasetSpec) -> tuple[dict[str, list[Callable]], list[str]]:
    """Per-column checks derived from the suite's single-column row-level expectations.

    Returns ({column: [validator, ...]}, [descriptions of expectations the endpoint cannot check
    per house: cross-column, runtime-parameterised or batch ones]).
    """
    from tasks.serving.score import listings_suite

    checks: dict[str, list[Callable]] = {}
    skipped = []
    for exp in listings_suite(spec).expectations:
        kind = exp.expectation_type
        col = getattr(exp, "column", None)
        row_level = (exp.meta or {}).get("severity") == "row"
        if col not in spec.columns or not row_level:
            skipped.append(f"{kind}({col or ''})")
            continue
        if kind == "expect_column_values_to_be_between":
            lo, hi = exp.min_value, exp.max_value
            if isinstance(lo, dict) or isinstance(hi, dict):
                skipped.append(f"{kind}({col}, runtime bounds)")
                continue
            checks.setdefault(col, []).append(_between(col, lo, hi))
        elif kind == "expect_column_values_to_be_in_set":
            checks.setdefault(col, []).append(_in_set(col, list(exp.value_set)))
        elif kind == "expect_column_values_to_match_regex":
            checks.setdefault(col, []).append(_regex(col, exp.regex))
        elif kind != "expect_column_values_to_not_be_null":  # required-ness comes from the spec
            skipped.append(f"{kind}({col})")
    return checks, skipped


def _between(col: str, lo: Any, hi: Any) -> Callable:
    def check(v):
        if v is not None and ((lo is not None and v < lo) or (hi is not None and v > hi)):
            raise ValueError(f"{col} must be between {_num(lo, '-inf')} and {_num(hi, 'inf')} (the data contract); "
                             f"got {v}")
        return v
    return check


def _num(x: Any, none: str) -> str:
    return none if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def _in_set(col: str, values: list) -> Callable:
    allowed = set(values)
    shown = ", ".join(map(str, sorted(values)[:12])) + (", ..." if len(values) > 12 else "")
    def check(v):
        if v is not None and v not in allowed:
            raise ValueError(f"{col} must be one of {len(values)} values ({shown}); got {v!r}")
        return v
    return check


def _regex(col: str, pattern: str) -> Callable:
    rx = re.compile(pattern)
    def check(v):
        if v is not None and not rx.search(str(v)):
            raise ValueError(f"{col} must match {pattern!r}; got {v!r}")
        return v
    return check


def _parse_date(fmt: str | None) -> Callable:
    def parse(v):
        if isinstance(v, str) and fmt:
            try:
                return datetime.strptime(v.strip(), fmt).date()
            except ValueError:
                pass
        if isinstance(v, str) and len(v.strip()) > 10 and v.strip()[10] in "T ":
            return v.strip()[:10]  # an ISO datetime: its day, as ingest does
        return v
    return parse


def _number_as_text(v):
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def house_model(spec: DatasetSpec) -> type[BaseModel]:
    """A pydantic model of one house: every spec column but the target, typed and checked."""
    checks, _ = field_constraints(spec)
    fields: dict[str, Any] = {}
    for name, cs in spec.columns.items():
        if name == spec.target:
            continue
        meta: list[Any] = []
        if cs.type == "date":
            meta.append(BeforeValidator(_parse_date(cs.format)))
        if cs.type == "string":
            meta.append(BeforeValidator(_number_as_text))
        meta += [AfterValidator(c) for c in checks.get(name, [])]
        base = PY_TYPES[cs.type]
        kwargs = {"allow_inf_nan": False} if cs.type == "float" else {}
        if cs.type == "string":
            kwargs["min_length"] = 1 if cs.required else 0
        ann = Annotated[base, Field(description=f"{cs.type}, role {cs.role}", **kwargs), *meta]
        fields[name] = (ann, ...) if cs.required else (ann | None, None)
    return create_model(f"{spec.name.title().replace('_', '')}House", __config__=ConfigDict(extra="forbid"), **fields)


def request_models(spec: DatasetSpec, max_batch: int) -> tuple[type[BaseModel], type[BaseModel]]:
    house = house_model(spec)
    request = create_model("PredictRequest", __config__=ConfigDict(extra="forbid"),
                           houses=(Annotated[list[house], Field(min_length=1, max_length=max_batch)], ...))
    return house, request


def json_safe(value: Any) -> Any:
    """``value`` as JSON can carry it: non-finite floats and other objects as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def validation_detail(errors: list[dict]) -> list[dict]:
    """A 422's ``detail``: each bad field; inputs that JSON cannot carry (inf, NaN) are quoted, not a 500."""
    return [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg"),
             "input": json_safe(e.get("input"))} for e in errors]
