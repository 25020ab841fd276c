"""The request model of ``POST /predict``, generated from the dataset spec and its expectation suite.

Every spec column but the target, with the spec's types and required flags, and the single-column
row-level expectations of the Great Expectations suite (bounds, value sets, patterns) as field
validators, so a bad house gets a 422 that names the field (:func:`validation_detail`).

Hostile input: integers are bounded to the int64 the frame holds (a larger one is a 422, not an overflow),
floats must be finite, the batch size is checked before any house is validated, and an error quotes at
most a short snippet of what it was sent (:func:`snippet`).
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime
from typing import Annotated, Any, Callable

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator

from tasks.core.spec import DatasetSpec

PY_TYPES: dict[str, type] = {"string": str, "int": int, "float": float, "date": date, "bool": bool}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STRING = 256  # characters of a string field
SNIPPET = 40  # characters of the input an error quotes


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
        kwargs: dict[str, Any] = {"allow_inf_nan": False} if cs.type == "float" else {}
        if cs.type == "int":
            kwargs.update(ge=INT64_MIN, le=INT64_MAX)
        if cs.type == "string":
            kwargs.update(min_length=1 if cs.required else 0, max_length=MAX_STRING)
        ann = Annotated[base, Field(description=f"{cs.type}, role {cs.role}", **kwargs), *meta]
        fields[name] = (ann, ...) if cs.required else (ann | None, None)
    return create_model(f"{spec.name.title().replace('_', '')}House", __config__=ConfigDict(extra="forbid"), **fields)


def request_models(spec: DatasetSpec, max_batch: int) -> tuple[type[BaseModel], type[BaseModel]]:
    house = house_model(spec)

    def batch_first(data: Any) -> Any:
        """The batch cap, checked before any house is validated."""
        houses = data.get("houses") if isinstance(data, dict) else None
        if isinstance(houses, list) and len(houses) > max_batch:
            raise ValueError(f"houses: at most {max_batch} per request (HOMEWORTH_SERVING_MAX_BATCH); got {len(houses)}")
        return data

    request = create_model("PredictRequest", __config__=ConfigDict(extra="forbid"),
                           __validators__={"batch_first": model_validator(mode="before")(batch_first)},
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


def snippet(value: Any) -> Any:
    """At most a short snippet of an input, JSON-safe: text and numbers cut to ``SNIPPET`` characters,
    objects and arrays only described (never echoed)."""
    if isinstance(value, dict):
        return f"<object with {len(value)} keys>"
    if isinstance(value, (list, tuple)):
        return f"<array of {len(value)} items>"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if value is None or isinstance(value, bool) or (isinstance(value, float) and math.isfinite(value)):
        return value
    text = value if isinstance(value, str) else str(json_safe(value)) if isinstance(value, float) else repr(value)
    if isinstance(value, int) and len(text) <= SNIPPET:
        return value
    return text if len(text) <= SNIPPET else f"{text[:SNIPPET]}... ({len(text)} characters)"


def _short(text: Any, limit: int) -> str:
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def validation_detail(errors: list[dict], max_errors: int = 50) -> list[dict]:
    """A 422's ``detail``: each bad field (at most ``max_errors``), quoting at most a snippet of its input;
    inputs that JSON cannot carry (inf, NaN) are quoted, not a 500."""
    out = [{"type": e.get("type"), "loc": [x if isinstance(x, int) else _short(x, SNIPPET) for x in e.get("loc", ())],
            "msg": _short(e.get("msg"), 300), "input": snippet(e.get("input"))} for e in errors[:max_errors]]
    if len(errors) > max_errors:
        out.append({"type": "too_many_errors", "loc": [], "msg": f"{len(errors) - max_errors} more errors not shown",
                    "input": None})
    return out
