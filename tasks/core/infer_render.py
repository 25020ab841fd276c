"""Writing an inferred spec (``tasks.core.infer``) as commented YAML, and a starter expectations module."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tasks.core.infer import Column, Inferred, as_date, yaml_key

# Categorical columns with at most this many distinct values in the sample get a value-set check.
MAX_SET = 12
# Sample rows under which no value-set check is written (a small sample misses rare codes).
MIN_ROWS_FOR_SETS = 1_000


def _column_line(c: Column) -> str:
    fields = [f"type: {c.type}", f"role: {c.role}", "required: true", f"nullable: {'true' if c.nullable else 'false'}"]
    if c.format:
        fields.append(f"format: {json.dumps(c.format)}")
    if c.comps:
        fields.append(f"comps: {c.comps}")
    return f"  {yaml_key(c.name)}: {{{', '.join(fields)}}}"


def _split_lines(inf: Inferred) -> list[str]:
    s = inf.split
    lines = ["# The split, anchored at the end of the training window (the day after the last sale).",
             "split:", f"  method: {s['method']}       # time | random | column"]
    if s["method"] == "time" and "test_days" in s:
        lines += [f"  test_days: {s['test_days']}    # in the sample: test = sales on or after {as_date(s['test_from'])} "
                  "(the newest ~25 %)",
                  f"  val_days: {s['val_days']}     # validation = sales from {as_date(s['val_from'])} (~15 %)"]
    lines += ["  seed: 42           # used by method: random",
              f"  column: {json.dumps(s.get('column'))}       # used by method: column (values train/val/test)"]
    return lines


def render_spec(inf: Inferred, source: str, suite_module: str | None = None) -> str:
    """The spec YAML, every guess with a comment (see ``tasks/datasets/king_county/spec.yaml`` for the fields)."""
    f = inf.file
    target = next(c for c in inf.columns if c.role == "target")
    skew = target.stats.get("skew", 0.0)
    lines = [
        f"# Dataset spec {inf.name!r}, inferred by `homeworth spec infer` from {source} ({inf.sample_rows} sample rows).",
        "# Every guess carries a comment: review them. Column names are as the file spells them; the ingest",
        "# matches them to file headers ignoring case, a byte-order mark and surrounding spaces.",
        f"name: {inf.name}",
        f"description: {json.dumps(f'Sales inferred from {source}')}",
        f"bundled_file: {json.dumps(Path(source).name)}  # relative to this spec's folder (replay, the demo)",
        "features_module: null  # none: the inputs are the numeric and categorical columns below",
        f"expectations_module: {json.dumps(suite_module)}"
        + ("  # the starter suite written by --suite" if suite_module else "  # none: the checks the spec implies"),
        f"# {'ln' if inf.target_transform == 'log' else 'no transform'}: the target {target.name!r} is "
        + (f"positive and right-skewed (skew {skew:.2f})" if inf.target_transform == "log" else
           f"not both positive and right-skewed (min {target.stats.get('min')}, skew {skew:.2f})"),
        f"target_transform: {inf.target_transform}",
        *[f"# {n}" for n in inf.notes],
        "",
        "landing:",
        "  formats: [csv, parquet]",
        "  csv:",
        f"    separator: {json.dumps(f.get('separator', ','))}",
        f"    encoding: {f.get('encoding', 'utf8')}"
        + ("  # the sample had bytes that are not UTF-8" if f.get("encoding") == "utf8-lossy" else ""),
    ]
    tokens = sorted({t for c in inf.columns for t in c.stats.get("na_tokens", [])})
    if tokens:
        lines.append(f"    na_values: {json.dumps(tokens)}  # written for a missing value in the sample")
    if f.get("bom"):
        lines.append("# The file starts with a byte-order mark; headers are matched without it.")
    lines += ["", "# required: the file must have the column; nullable: an empty value is accepted (else quarantined).",
              "columns:"]
    for c in inf.columns:
        if c.notes:
            lines.append(f"  # {c.name}: " + "; ".join(c.notes))
        lines.append(_column_line(c))
    missing = {"latitude", "longitude", "living_area", "location"} - {c.comps for c in inf.columns}
    if missing:
        lines.append(f"  # comparable sales: no column found for {', '.join(sorted(missing))}")
    lines += ["", *_split_lines(inf), "",
              "# Promotion bars of this dataset (null: none). Relative bars always apply: an improvement on the",
              "# champion, and a test mdape at most (1 + max_mdape_vs_boosting) x that of the run's boosting.",
              "promotion:", "  max_mdape: null", "  min_ppe10: null", "  max_mdape_vs_boosting: 0.0", ""]
    return "\n".join(lines)


def widened(c: Column) -> tuple[float, float] | None:
    """Row-level bounds: the sample's 0.1 % and 99.9 % quantiles, each moved out by half their span (not
    below 0 for a column never negative, nor below a tenth of a positive lower quantile)."""
    lo, hi = c.stats.get("q001"), c.stats.get("q999")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    span = max(hi - lo, abs(hi) * 0.1, 1e-9)
    new_lo, new_hi = lo - span / 2, hi + span / 2
    if c.stats["min"] >= 0:
        new_lo = max(new_lo, lo / 10 if lo > 0 else 0.0)
    if c.type == "int":
        return float(math.floor(new_lo)), float(math.ceil(new_hi))
    return float(f"{new_lo:.6g}"), float(f"{new_hi:.6g}")


def render_suite(inf: Inferred, source: str) -> str:
    """A starter expectations module: the spec's checks, row-level bounds on every number and value sets
    of the categorical columns with few values (see ``expectations/common.py``)."""
    bounds, sets = [], []
    for c in inf.columns:
        if c.role in ("numeric", "target") and c.type in ("int", "float") and (b := widened(c)):
            bounds.append(f"    {json.dumps(c.name)}: ({b[0]!r}, {b[1]!r}),  # observed "
                          f"{c.stats['q001']:.6g} .. {c.stats['q999']:.6g} (0.1 % .. 99.9 %)")
        if (c.role == "categorical" and c.type == "string" and c.stats["distinct"] <= MAX_SET
                and inf.sample_rows >= MIN_ROWS_FOR_SETS):
            sets.append(f"    {json.dumps(c.name)}: {json.dumps(sorted(c.stats['top']))},")
    return "\n".join([
        f'"""Starter data contract for {inf.name!r}, written by `homeworth spec infer --suite` from {source}.',
        "",
        f"Bounds are the {inf.sample_rows} sample rows' 0.1 % and 99.9 % quantiles, each widened by half their span",
        "(never below 0 for a column never negative); value sets list the codes of categorical columns with",
        f"at most {MAX_SET} values. A row outside them goes to quarantine with the check as its reason. They are a",
        "start, not an agreed contract: tighten or loosen them (see expectations/king_county.py).",
        '"""', "", "from __future__ import annotations", "", "from typing import TYPE_CHECKING", "",
        "import great_expectations as gx", "", "from expectations.common import ROW, spec_expectations", "",
        "if TYPE_CHECKING:", "    from tasks.core.spec import DatasetSpec", "",
        f"SUITE_NAME = {json.dumps(inf.name + '_sales')}", "",
        "# Runtime parameters (expectations.common.DEFAULT_PARAMETERS): a day without sales is normal.",
        'PARAMETERS: dict = {"min_rows_per_day": 0, "max_rows_per_day": None}', "",
        "BOUNDS: dict[str, tuple[float, float]] = {", *bounds, "}", "",
        "VALUE_SETS: dict[str, list[str]] = {", *sets, "}", "", "",
        'def build_suite(spec: "DatasetSpec", bookkeeping: list[str]) -> gx.ExpectationSuite:',
        "    exps = spec_expectations(spec, bookkeeping)",
        "    exps += [gx.expectations.ExpectColumnValuesToBeBetween(column=c, min_value=lo, max_value=hi, meta=ROW)",
        "             for c, (lo, hi) in BOUNDS.items() if c in spec.columns]",
        "    exps += [gx.expectations.ExpectColumnValuesToBeInSet(column=c, value_set=v, meta=ROW)",
        "             for c, v in VALUE_SETS.items() if c in spec.columns]",
        "    return gx.ExpectationSuite(name=SUITE_NAME, expectations=exps)", "",
    ])


def module_name(path: Path, root: Path) -> str:
    """The importable name of a module file under ``root`` (``expectations/x.py`` -> ``expectations.x``)."""
    rel = path.resolve().relative_to(root.resolve()).with_suffix("")
    return ".".join(rel.parts)
