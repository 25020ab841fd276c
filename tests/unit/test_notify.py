"""Failure notifications (tasks/core/notify.py): the summary text, the log callback, the optional e-mail notifier."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from tasks.core.notify import ERROR_LINES, email_notifier, failure_callbacks, failure_summary, log_failure_summary
from tasks.ingest.read import BatchError
from tasks.quality.validate import ValidationFailed

REPO = Path(__file__).resolve().parents[2]
UTC = timezone.utc


def context(exc: BaseException | None, **extra) -> dict:
    ti = SimpleNamespace(dag_id="sales_ingest", task_id="validate", run_id="scheduled__2015-05-27T00:00:00+00:00",
                         try_number=3, max_tries=2, log_url="http://airflow/dags/sales_ingest/runs/x/tasks/validate")
    return {"ti": ti, "exception": exc, "params": {"from_date": None, "to_date": None},
            "data_interval_start": datetime(2015, 5, 27, tzinfo=UTC), "data_interval_end": datetime(2015, 5, 28, tzinfo=UTC),
            **extra}


def validation_failure() -> ValidationFailed:
    msg = ("batch 2015-05-27..2015-05-27 (12 rows from files: /landing/2015-05-27/sales.csv (12 rows)) failed 2 "
           "batch-level expectation(s):\n  - expect_table_row_count_to_be_between(min_value=0, max_value=10) failed: "
           "observed 12\n  - expect_table_columns_to_match_set(column_set=[26 values]) failed: observed [...]"
           "\nData Docs: /lake/_validation/ds=2015-05-27/data_docs.html")
    return ValidationFailed(msg, details={
        "interval": ["2015-05-27", "2015-05-27"], "rows_read": 12, "files": [["/landing/2015-05-27/sales.csv", 12]],
        "failed": [{"expectation": "expect_table_row_count_to_be_between(min_value=0, max_value=10)",
                    "severity": "batch", "evidence": "observed 12"},
                   {"expectation": "expect_table_columns_to_match_set(column_set=[26 values])",
                    "severity": "batch", "evidence": "observed [...]"}],
        "data_docs": "/lake/_validation/ds=2015-05-27/data_docs.html"})


def test_summary_of_a_validation_failure():
    text = failure_summary(context(validation_failure()))
    lines = text.splitlines()
    assert lines[0] == ("homeworth: sales_ingest.validate failed (try 3 of 3), "
                        "run scheduled__2015-05-27T00:00:00+00:00")
    assert lines[1] == "days: 2015-05-27 .. 2015-05-27"
    assert lines[2].startswith("error: ValidationFailed: batch 2015-05-27..2015-05-27 (12 rows from files:")
    assert "failed expectations (2):" in lines
    assert "  - expect_table_row_count_to_be_between(min_value=0, max_value=10) [batch]: observed 12" in lines
    assert "rows: 12 read from 1 file(s): /landing/2015-05-27/sales.csv (12)" in lines
    assert "data docs: /lake/_validation/ds=2015-05-27/data_docs.html" in lines
    assert lines[-1] == "log: http://airflow/dags/sales_ingest/runs/x/tasks/validate"


def test_summary_of_an_ingest_error_and_of_a_long_message():
    err = BatchError("/landing/2015-05-27/sales.csv: file is empty (0 bytes, no header row)")
    text = failure_summary(context(err, ti=SimpleNamespace(dag_id="sales_ingest", task_id="ingest", try_number=1,
                                                            max_tries=2)))
    assert "sales_ingest.ingest failed (try 1 of 3)" in text
    assert "days: 2015-05-27 .. 2015-05-27 (data interval 2015-05-27 00:00:00+00:00 .. 2015-05-28 00:00:00+00:00)" in text
    assert "error: BatchError: /landing/2015-05-27/sales.csv: file is empty" in text
    assert "the landing file was rejected before validation" in text
    long = RuntimeError("\n".join(f"line {i}" for i in range(30)))
    text = failure_summary(context(long))
    assert "  line 5" in text and "line 6" not in text and f"({30 - ERROR_LINES} more line(s))" in text
    assert "not a data-contract failure" in text


def test_summary_of_a_bulk_run_and_without_exception():
    ctx = context(None, params={"from_date": "2014-05-02", "to_date": "2015-05-26"})
    text = failure_summary(ctx)
    assert "days: 2014-05-02 .. 2015-05-26 (bulk load, from the run's Params)" in text
    assert "error: none recorded" in text


def test_log_callback_writes_the_summary_to_the_task_log(caplog):
    with caplog.at_level(logging.ERROR, logger="homeworth.notify"):
        returned = log_failure_summary(context(validation_failure()))
    assert "FAILURE SUMMARY" in caplog.text and "expect_table_row_count_to_be_between" in caplog.text
    assert returned in caplog.text
    # A broken context never raises from the callback.

    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("no such thing")

    assert "could not be built (RuntimeError: no such thing)" in log_failure_summary({"ti": Broken()})


def test_email_notifier_sends_the_summary(monkeypatch):
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    sent = []
    monkeypatch.setattr(SmtpNotifier, "notify", lambda self, ctx: sent.append((self.to, self.subject, self.html_content)))
    notifier = email_notifier("ops@example.com, data@example.com")
    assert isinstance(notifier, SmtpNotifier)
    notifier.notify(context(validation_failure()))
    (to, subject, body), = sent
    assert to == ["ops@example.com", "data@example.com"]
    assert subject.startswith("homeworth: sales_ingest.validate failed")
    assert body.startswith("<pre>") and "expect_table_row_count_to_be_between" in body and "&lt;" not in subject


def test_callbacks_follow_the_setting(fresh_settings, monkeypatch):
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from tasks.core.settings import get_settings

    assert failure_callbacks(fresh_settings) == [log_failure_summary]
    monkeypatch.setenv("HOMEWORTH_NOTIFY_EMAIL", "ops@example.com")
    get_settings.cache_clear()
    callbacks = failure_callbacks()
    assert callbacks[0] is log_failure_summary and isinstance(callbacks[1], SmtpNotifier)


def _parse_sales_ingest():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / "sales_ingest.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["sales_ingest"]


@pytest.mark.parametrize("email", [None, "ops@example.com"])
def test_dag_adds_the_notifier_only_when_configured(email, monkeypatch):
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from tasks.core.settings import get_settings

    if email:
        monkeypatch.setenv("HOMEWORTH_NOTIFY_EMAIL", email)
    else:
        monkeypatch.delenv("HOMEWORTH_NOTIFY_EMAIL", raising=False)
    get_settings.cache_clear()
    try:
        dag = _parse_sales_ingest()
    finally:
        get_settings.cache_clear()
    for callbacks in [dag.default_args["on_failure_callback"]] + [t.on_failure_callback for t in dag.tasks]:
        assert callbacks[0] is log_failure_summary or callbacks[0].__name__ == "log_failure_summary"
        notifiers = [c for c in callbacks if isinstance(c, SmtpNotifier)]
        assert len(notifiers) == (1 if email else 0)
        if email:
            assert notifiers[0].to == [email]
