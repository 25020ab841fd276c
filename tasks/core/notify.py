"""Failure notifications: a concise summary of a failed task in its log, and optionally by e-mail.

``failure_callbacks()`` is what every DAG in dags/ puts in ``default_args["on_failure_callback"]`` (Airflow
calls it once the task has failed for good, after its retries; tests/dag/test_dags.py checks every task):

- always ``log_failure_summary``: writes :func:`failure_summary` to the task log: which DAG, task,
  try and data interval (or the bulk range of the run's Params), the error's type and first lines,
  and for a ``ValidationFailed`` which expectations failed, on how many rows from which files, and the
  Data Docs page of the failed validation;
- with the ``notify_email`` setting (``HOMEWORTH_NOTIFY_EMAIL``, one address or a comma-separated
  list): an ``SmtpNotifier`` (apache-airflow-providers-smtp) that mails the same summary through the
  Airflow connection ``smtp_default`` (its ``from_email`` extra, or ``[email] from_email``). Off by default.

No Slack provider is installed; ``SlackNotifier`` (apache-airflow-providers-slack) would plug in the same way.
Light on purpose (standard library only at import): DAG files import it when they are parsed.
"""

from __future__ import annotations

import html
import logging
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from tasks.core.settings import Settings

log = logging.getLogger("homeworth.notify")

# Lines of the error message quoted in the summary.
ERROR_LINES = 6


def _day(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)[:10]


def _interval(context: Mapping[str, Any], details: dict) -> str:
    """The days the failed run covered: the validation's interval, a bulk load's Params, or the data interval."""
    if details.get("interval"):
        first, last = details["interval"]
        return f"{first} .. {last}"
    params = context.get("params") or {}
    if params.get("from_date") or params.get("to_date"):
        return f"{_day(params.get('from_date'))} .. {_day(params.get('to_date'))} (bulk load, from the run's Params)"
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is None and context.get("dag_run") is not None:
        start = getattr(context["dag_run"], "data_interval_start", None)
        end = getattr(context["dag_run"], "data_interval_end", None)
    if start is None:
        return f"no data interval (logical date {context.get('logical_date') or context.get('ds') or '-'})"
    last = end - timedelta(days=1) if end is not None and end - start >= timedelta(days=1) else start
    return f"{_day(start)} .. {_day(last)} (data interval {start} .. {end})"


def failure_summary(context: Mapping[str, Any]) -> str:
    """A few lines a person can act on: what failed, for which days, why, on which rows, where to look."""
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", None) or getattr(context.get("task"), "task_id", "?")
    run_id = context.get("run_id") or getattr(context.get("dag_run"), "run_id", None) or getattr(ti, "run_id", "?")
    try_number, max_tries = getattr(ti, "try_number", None), getattr(ti, "max_tries", None)
    tries = ""
    if try_number:
        tries = f" (try {try_number}" + (f" of {max_tries + 1}" if isinstance(max_tries, int) else "") + ")"
    exc = context.get("exception")
    details = getattr(exc, "details", None) or {}
    lines = [f"homeworth: {dag_id}.{task_id} failed{tries}, run {run_id}",
             f"days: {_interval(context, details)}"]
    if exc is None:
        lines.append("error: none recorded (the task failed without an exception: killed, timed out or marked failed)")
    else:
        text = str(exc).strip().splitlines() or [""]
        lines.append(f"error: {type(exc).__name__}: {text[0]}")
        lines += [f"  {ln}" for ln in text[1:ERROR_LINES]]
        if len(text) > ERROR_LINES:
            lines.append(f"  ... ({len(text) - ERROR_LINES} more line(s))")
    failed = details.get("failed") or []
    if failed:
        lines.append(f"failed expectations ({len(failed)}):")
        lines += [f"  - {f['expectation']} [{f.get('severity', '?')}]: {f.get('evidence', '')}" for f in failed]
    elif exc is not None:
        lines.append("failed expectations: none (not a data-contract failure)"
                     if type(exc).__name__ != "BatchError" else
                     "failed expectations: none evaluated (the landing file was rejected before validation)")
    if "rows_read" in details:
        files = details.get("files") or []
        shown = ", ".join(f"{f} ({n})" for f, n in files[:5]) + (f", ... ({len(files) - 5} more)" if len(files) > 5 else "")
        lines.append(f"rows: {details['rows_read']} read from {len(files)} file(s)" + (f": {shown}" if shown else ""))
    if details.get("data_docs"):
        lines.append(f"data docs: {details['data_docs']}")
    log_url = getattr(ti, "log_url", None)
    if log_url:
        lines.append(f"log: {log_url}")
    return "\n".join(lines)


def log_failure_summary(context: Mapping[str, Any]) -> str:
    """``on_failure_callback``: the summary in the task log (returned for tests)."""
    try:
        summary = failure_summary(context)
    except Exception as exc:  # a callback must never hide the task's own failure
        summary = f"homeworth: task failed; the failure summary could not be built ({type(exc).__name__}: {exc})"
    log.error("FAILURE SUMMARY\n%s", summary)
    return summary


def email_notifier(to: str | list[str]):
    """An ``SmtpNotifier`` whose subject is the summary's first line and whose body is the summary."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    class FailureSummaryEmail(SmtpNotifier):
        def notify(self, context):
            summary = failure_summary(context)
            self.subject = summary.splitlines()[0]
            self.html_content = f"<pre>{html.escape(summary)}</pre>"
            super().notify(context)

    addresses = [a.strip() for a in to.split(",") if a.strip()] if isinstance(to, str) else list(to)
    return FailureSummaryEmail(to=addresses)


def failure_callbacks(settings: "Settings | None" = None) -> list:
    """The ``on_failure_callback`` list of a DAG's ``default_args``: the log summary, plus e-mail if configured."""
    if settings is None:
        from tasks.core.settings import get_settings

        settings = get_settings()
    callbacks: list = [log_failure_summary]
    if settings.notify_email and settings.notify_email.strip():
        callbacks.append(email_notifier(settings.notify_email))
    return callbacks
