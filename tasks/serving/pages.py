"""The serving pages: the promotion ledger and the evaluation reports, as HTML strings.

The routes of ``tasks.serving.api`` (``/ui/ledger``, ``/ui/reports``, ``/ui/report``) wrap them in
responses; the page itself is ``tasks.core.html.page``.
"""

from __future__ import annotations

import html

from tasks.core import lake, storage, tracking
from tasks.core.html import page
from tasks.core.settings import Settings
from tasks.registry import ledger

STYLE = ("body{font-family:sans-serif;margin:1.5em;max-width:80em}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f4f4f4}"
         ".live{background:#eaf6ee}small{color:#555}")


def serving_page(title: str, body: str) -> str:
    """A serving page: ``title`` as its heading, the serving style."""
    return page(title, body, css=STYLE, heading=True)


def report_names(settings: Settings) -> list[str]:
    return [n for n in storage.list_dir(settings.reports_uri)
            if not n.startswith(".") and storage.exists(storage.join(settings.reports_uri, n, lake.REPORT_FILE))]


def report_name_for(settings: Settings, report_uri: str | None) -> str | None:
    if not report_uri:
        return None
    name = report_uri.rstrip("/").rsplit("/", 2)[-2]
    return name if name in report_names(settings) else None


def ledger_page(settings: Settings) -> str:
    """The promotion ledger, newest first, the live version's row marked."""
    c = tracking.client(settings)
    mv = tracking.champion_version(c, settings.model_name)
    live = str(mv.version) if mv is not None else None
    events = list(reversed(ledger.read_all(settings)))
    live_event = next((x for x in events if x.to_version == live), None)
    rows = [ledger_row(e, report_name_for(settings, (e.evaluation or {}).get("report_uri")), e is live_event)
            for e in events]
    head = (f"<p>Live: <b>{html.escape(settings.model_name)} v{live}</b></p>" if live else "<p>No champion yet.</p>")
    table = ("<table><tr><th>#</th><th>when</th><th>kind</th><th>move</th><th>by</th><th>why</th>"
             "<th>mdape gain</th><th>data window</th><th>validation</th><th></th></tr>" + "".join(rows) + "</table>"
             if rows else "<p>The ledger is empty: the champion has never moved.</p>")
    return serving_page("Promotion ledger", head + table + "<p><a href='reports'>Evaluation reports</a></p>")


def ledger_row(e: ledger.LedgerEvent, report: str | None, live: bool) -> str:
    """One ledger event as a table row; ``report``: the name of its evaluation report, if there is one."""
    diff = (e.metrics or {}).get("difference") or {}
    ci = ((e.ci or {}).get("metrics") or {}).get("mdape")
    gain = f"{-diff['mdape']:+.4f}" if "mdape" in diff else "-"
    if ci:
        gain += f"<br><small>CI of improvement [{ci['ci_low']:+.4f}, {ci['ci_high']:+.4f}]</small>"
    window = e.data_window or {}
    val = e.validation or {}
    link = f"<a href='reports/{html.escape(report)}'>report</a>" if report else ""
    cls = " class='live'" if live else ""
    return (f"<tr{cls}><td>{e.seq}</td><td>{e.at:%Y-%m-%d %H:%M}Z</td><td>{e.kind}</td>"
            f"<td>{'v' + e.from_version if e.from_version else 'none'} &rarr; v{html.escape(e.to_version)}</td>"
            f"<td>{html.escape(e.who())}</td><td>{html.escape(e.reason)}</td><td>{gain}</td>"
            f"<td>{html.escape(str(window.get('start')))} .. {html.escape(str(window.get('end')))}</td>"
            f"<td>{val.get('rows_accepted', '-')} accepted, {val.get('rows_quarantined', '-')} quarantined</td>"
            f"<td>{link}</td></tr>")


def reports_page(settings: Settings) -> str:
    """The evaluation reports, newest first."""
    names = sorted(report_names(settings), reverse=True)
    items = "".join(f"<li><a href='reports/{html.escape(n)}'>{html.escape(n)}</a></li>" for n in names)
    return serving_page("Evaluation reports", f"<ul>{items}</ul>" if items else "<p>No evaluation reports yet.</p>")


def report_for_run(settings: Settings, dag_id: str, run_id: str) -> str | None:
    """The report folder of a ``price_model_retrain`` run, found through its MLflow training run."""
    c = tracking.client(settings)
    exp = c.get_experiment_by_name(settings.experiment_name)
    if exp is None:
        return None
    run = tracking.find_run(c, exp.experiment_id, dag_id, run_id, "train")
    if run is None or not run.data.tags.get("model_version"):
        return None
    t = run.data.tags
    name = lake.report_name(lake.evaluation_key(t.get("data.window_start"), t.get("data.window_end"), t["model_version"]))
    return name if name in report_names(settings) else None


def no_report_page(dag_id: str, run_id: str) -> str:
    return serving_page("Evaluation report", f"<p>No evaluation report for {html.escape(dag_id)} run "
                        f"{html.escape(run_id)} (only finished <code>price_model_retrain</code> runs have one).</p>"
                        "<p><a href='reports'>All reports</a> &middot; <a href='ledger'>Promotion ledger</a></p>")
