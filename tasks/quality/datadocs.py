"""Data Docs: an HTML report and its JSON for every day partition a validation covered.

``tasks.quality.validate.validate_interval`` runs the GX suite once over the run's interval; this module turns
that result into one self-contained page per day (inline CSS, no scripts, no network), written
atomically beside the day's JSON result, plus an index page for the interval::

    <lake>/_validation/ds=<day>/data_docs.html   every expectation: severity, scope, success,
    <lake>/_validation/ds=<day>/result.json      unexpected count and a sample of unexpected values
                                                 (value, file, row); the day's files and row counts
    <lake>/_validation/<start>_<end>.html        the interval: one line per day, linking to its page

GX's own Data Docs renderer was tried and not kept: its pages load Bootstrap, jQuery, Vega and fonts
from CDNs (not offline), it knows nothing of the ``severity`` meta or of day partitions, and it renders
the whole interval's result (its cost and ours: docs/data-contract.md, "Data Docs").

Only the standard library is imported here; the page wrapper is ``tasks.core.html.page``.
"""

from __future__ import annotations

import json
from typing import Any

from tasks.core import lake, storage
from tasks.core.html import esc as _e
from tasks.core.html import page

HTML_NAME = "data_docs.html"
JSON_NAME = "result.json"
# Unexpected values shown per expectation and day.
SAMPLE_SIZE = 5


def day_dir(lake_uri: str, day: str) -> str:
    return lake.data_docs_day_dir(lake_uri, day)


def day_html_uri(lake_uri: str, day: str) -> str:
    return storage.join(day_dir(lake_uri, day), HTML_NAME)


def day_json_uri(lake_uri: str, day: str) -> str:
    return storage.join(day_dir(lake_uri, day), JSON_NAME)


def interval_html_uri(lake_uri: str, start: str, end: str) -> str:
    return storage.join(lake.validation_dir(lake_uri), f"{start}_{end}.html")


def write_docs(lake_uri: str, start: str, end: str, days: dict[str, dict]) -> dict:
    """Write every day's JSON and HTML, then the interval's index. Returns the paths.

    ``data_docs`` is the page to open first: the day's page for a one-day run, the index otherwise.
    """
    for day, doc in days.items():
        storage.write_bytes_atomic(day_json_uri(lake_uri, day),
                                   json.dumps(doc, indent=2, sort_keys=True, default=str).encode())
        storage.write_bytes_atomic(day_html_uri(lake_uri, day), render_day(doc).encode())
    index = interval_html_uri(lake_uri, start, end)
    storage.write_bytes_atomic(index, render_interval(start, end, days).encode())
    entry = day_html_uri(lake_uri, next(iter(days))) if len(days) == 1 else index
    return {"data_docs": entry, "data_docs_index": index, "data_docs_days": len(days)}


def failing(doc: dict) -> list[dict]:
    """The expectations of a day's doc that failed (or could not be evaluated)."""
    return [e for e in doc["expectations"] if not e["success"]]


# ------------------------------------------------------------------------------------------ HTML
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2430}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px} .sub{color:#5b6473}
table{border-collapse:collapse;width:100%;margin:4px 0 12px} th,td{border:1px solid #d8dde6;padding:4px 8px;
text-align:left;vertical-align:top} th{background:#f2f4f8} td.n{text-align:right;font-variant-numeric:tabular-nums}
td.s{white-space:nowrap}
tr.fail td{background:#fdecec} tr.err td{background:#fff4e0} code{font:12px ui-monospace,Menlo,Consolas,monospace}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;color:#fff;font-weight:600;font-size:12px}
.passed{background:#2e7d32} .quarantined{background:#b26a00} .failed{background:#c62828}
.ok{color:#2e7d32;font-weight:600} .ko{color:#c62828;font-weight:600} ul{margin:4px 0}
"""


def _kv(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _sample(e: dict) -> str:
    items = []
    for s in e.get("sample") or []:
        where = f" <span class=\"sub\">{_e(s.get('file'))} row {_e(s.get('row'))}</span>" if s.get("file") else ""
        items.append(f"<li><code>{_e(s.get('value'))}</code>{where}</li>")
    if e.get("error"):
        items.append(f"<li class=\"ko\">could not be evaluated: {_e(e['error'])}</li>")
    elif e.get("observed") is not None:
        items.append(f"<li>{_e(e['observed'])}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else ""


def render_day(doc: dict) -> str:
    day, status, rows = doc["day"], doc["status"], doc["rows"]
    iv = doc["interval"]
    fails = failing(doc)
    title = f"Data Docs {doc['dataset']} ds={day}"
    parts = [f"<h1>{_e(title)} <span class=\"badge {_e(status)}\">{_e(status)}</span></h1>",
             f"<div class=\"sub\">suite <code>{_e(doc['suite'])}</code>, validated as part of the interval "
             f"{_e(iv['start'])} .. {_e(iv['last'])} ({iv['days']} day(s)); "
             f"Great Expectations {_e(doc['gx'].get('version'))}</div>"]
    if status == "failed":
        parts.append("<h2 class=\"ko\">Batch-level failure: nothing was written</h2><p>The validated and quarantine "
                     "partitions of this interval were not (re)written; they hold the previous run's output, if any."
                     "</p><ul>" + "".join(f"<li><code>{_e(f)}</code></li>" for f in doc.get("failures", [])) + "</ul>")
    summary = [
        ("day", _e(day)),
        ("rows", f"{rows['read']} read, {_e(rows['accepted'] if rows['accepted'] is not None else '-')} accepted, "
                 f"{_e(rows['quarantined'] if rows['quarantined'] is not None else '-')} quarantined"),
        ("expectations", f"{len(doc['expectations']) - len(fails)} of {len(doc['expectations'])} passed "
                         "for this day" + (f", <span class=\"ko\">{len(fails)} failed</span>" if fails else "")),
        ("run", _e(doc.get("run_id") or "-")),
    ]
    for name, uri in (doc.get("partitions") or {}).items():
        summary.append((f"{name} partition", f"<code>{_e(uri)}</code>"))
    parts.append(_kv(summary))
    if fails:
        parts.append("<h2>Failing expectations</h2><ul>" + "".join(
            f"<li><code>{_e(e['expectation'])}</code> ({_e(e['severity'])}): " + (
                f"could not be evaluated: {_e(e['error'])}" if e.get("error") else
                f"{e['unexpected_count']} unexpected row(s) this day" if e["scope"] == "day" else
                f"{_e(e.get('observed') or 'failed')} (over the interval)") + "</li>" for e in fails) + "</ul>")
    files = doc.get("files") or []
    parts.append(f"<h2>Batch: {len(files)} file(s), {rows['read']} row(s)</h2>")
    parts.append("<table><tr><th>file</th><th>rows</th></tr>" + "".join(
        f"<tr><td><code>{_e(f['file'])}</code></td><td class=\"n\">{f['rows']}</td></tr>" for f in files)
        + ("" if files else "<tr><td colspan=\"2\">no landing file for this day</td></tr>") + "</table>")
    parts.append("<h2>Expectations</h2><table><tr><th>#</th><th>expectation</th><th>severity</th><th>scope</th>"
                 "<th>success</th><th>unexpected</th><th>unexpected values (sample) / observed</th></tr>")
    for i, e in enumerate(doc["expectations"], 1):
        cls = "err" if e.get("error") else ("fail" if not e["success"] else "")
        ok = "<span class=\"ok\">&#10004; passed</span>" if e["success"] else "<span class=\"ko\">&#10008; failed</span>"
        parts.append(
            f"<tr class=\"{cls}\"><td class=\"n\">{i}</td><td><code>{_e(e['expectation'])}</code></td>"
            f"<td>{_e(e['severity'])}</td><td>{_e(e['scope'])}</td><td class=\"s\">{ok}</td>"
            f"<td class=\"n\">{e['unexpected_count']}</td><td>{_sample(e)}</td></tr>")
    parts.append("</table><p class=\"sub\">severity <b>row</b>: failing rows go to quarantine with the expectation "
                 "as a reason; <b>batch</b>: the whole interval fails and nothing is written. Scope <b>day</b>: counted "
                 "on this day's rows; <b>interval</b>: evaluated once over the run's interval.</p>")
    return page(title, "\n".join(parts), css=_CSS)


def render_interval(start: str, end: str, days: dict[str, dict]) -> str:
    docs = list(days.values())
    status = "failed" if any(d["status"] == "failed" for d in docs) else (
        "quarantined" if any(d["status"] == "quarantined" for d in docs) else "passed")
    dataset = docs[0]["dataset"] if docs else ""
    last = docs[0]["interval"]["last"] if docs else end
    title = f"Data Docs {dataset} {start} .. {last}"
    parts = [f"<h1>{_e(title)} <span class=\"badge {status}\">{status}</span></h1>",
             f"<div class=\"sub\">{len(docs)} day partition(s); each line links to the day's page</div>"]
    if docs and docs[0].get("failures"):
        parts.append("<h2 class=\"ko\">Batch-level failure: nothing was written</h2><ul>" + "".join(
            f"<li><code>{_e(f)}</code></li>" for f in docs[0]["failures"]) + "</ul>")
    parts.append("<table><tr><th>day</th><th>status</th><th>files</th><th>read</th><th>accepted</th>"
                 "<th>quarantined</th><th>failing expectations (unexpected rows)</th></tr>")
    for day, d in days.items():
        r = d["rows"]
        fails = ", ".join(f"{e['expectation']} ({e['unexpected_count']})" for e in failing(d)
                          if e["scope"] == "day" or e.get("error"))
        parts.append(
            f"<tr class=\"{'fail' if d['status'] != 'passed' else ''}\"><td class=\"s\"><a href=\"ds={_e(day)}/{HTML_NAME}\">"
            f"{_e(day)}</a></td><td>{_e(d['status'])}</td><td class=\"n\">{len(d.get('files') or [])}</td>"
            f"<td class=\"n\">{r['read']}</td><td class=\"n\">{_e(r['accepted'] if r['accepted'] is not None else '-')}"
            f"</td><td class=\"n\">{_e(r['quarantined'] if r['quarantined'] is not None else '-')}</td>"
            f"<td><code>{_e(fails)}</code></td></tr>")
    parts.append("</table>")
    return page(title, "\n".join(parts), css=_CSS)
