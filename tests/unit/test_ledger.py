"""The promotion ledger, rollback (function, CLI, DAG) and the champion/ledger commands."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pendulum
import pytest

from tasks.registry import ledger
from tests.support import private_home

REPO = Path(__file__).resolve().parents[2]


def _event(key: str, to: str, at: str = "2015-05-28T03:00:00Z", frm: str | None = None, **kw):
    return ledger.new_event(key, kind="promotion", at=at, model_name="m", from_version=frm, to_version=to,
                            reason=f"because {to}", actor={"type": "user", "user": "t"}, **kw)


def test_append_is_once_per_key_and_ordered(fresh_settings):
    e1, created = ledger.append(fresh_settings, _event("dag/run1/promote", "1"))
    assert created and e1.seq == 1
    again, created = ledger.append(fresh_settings, _event("dag/run1/promote", "1"))
    assert not created and again.event_id == e1.event_id and again.seq == 1
    e2, _ = ledger.append(fresh_settings, _event("dag/run2/promote", "2", at="2015-05-29T03:00:00Z", frm="1"))
    # Another key at the same time is another event.
    e3, _ = ledger.append(fresh_settings, _event("cli/alice", "1", at="2015-05-29T03:00:00Z", frm="2"))
    events = ledger.read_all(fresh_settings)
    assert [e.event_id for e in events] == [e1.event_id, e2.event_id, e3.event_id]
    assert [e.seq for e in events] == [1, 2, 3]
    assert ledger.latest_for(fresh_settings, "1").event_id == e3.event_id
    root = Path(ledger.ledger_uri(fresh_settings))
    files = sorted(p.name for p in root.iterdir())
    assert files == ["00000001.json", "00000002.json", "00000003.json"], "one file per event by seq, no temp files"
    assert e1.event_id.startswith("20150528T030000000000Z__promotion__")
    assert ledger.get(fresh_settings, e2.event_id) == e2 and ledger.head(fresh_settings) == e3
    # A file of the older shape (<event_id>.json, seq inside) stays readable; the next append follows it.
    old = _event("dag/run3/promote", "2", at="2015-05-30T03:00:00Z", frm="1")
    old.seq = 4
    (root / f"{old.event_id}.json").write_text(old.model_dump_json())
    e5, created = ledger.append(fresh_settings, _event("dag/run4/promote", "1", at="2015-05-31T03:00:00Z", frm="2"),
                                expected="2")
    assert created and e5.seq == 5 and (root / "00000005.json").exists()
    assert [e.seq for e in ledger.read_all(fresh_settings)] == [1, 2, 3, 4, 5]
    # Compare-and-set: a move from a version that is no longer the champion is refused, and nothing is written.
    with pytest.raises(ledger.Superseded, match="expected to replace v2, but the champion is v1"):
        ledger.append(fresh_settings, _event("dag/run5/promote", "3", at="2015-06-01T03:00:00Z", frm="2"),
                      expected="2")
    assert len(ledger.read_all(fresh_settings)) == 5
    with pytest.raises(ValueError):
        ledger.append(fresh_settings, ledger.LedgerEvent(kind="rollback", at=datetime.now(timezone.utc), model_name="m",
                                                         from_version=None, to_version="1", reason="x", actor={}))


@pytest.fixture(scope="module")
def champions(tmp_path_factory):
    """A registry where v1 then v2 were promoted by runs (with ledger events) and v3 was rejected."""
    from tasks.core import tracking
    from tasks.core.settings import get_settings

    home = tmp_path_factory.mktemp("ledger")
    with private_home(home / "state"):
        settings = get_settings()
        c = tracking.client(settings)
        exp = tracking.experiment_id(c, settings)
        tracking.ensure_registered_model(c, settings.model_name)
        for v, mdape in (("1", 0.11), ("2", 0.10), ("3", 0.12)):
            run = c.create_run(exp, tags={"data.window_start": "2014-05-28", "data.window_end": "2015-05-28"})
            for k, val in {"mdape": mdape, "ppe10": 0.5, "rmse_ln": 0.2}.items():
                c.log_metric(run.info.run_id, f"test/{k}", val)
            c.set_terminated(run.info.run_id, "FINISHED")
            c.create_model_version(settings.model_name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                   tags={"data.window_start": "2014-05-28", "data.window_end": "2015-05-28",
                                         "promotion.decision": "promoted" if v != "3" else "rejected"})
        prev = None
        for v in ("1", "2"):
            ledger.append(settings, ledger.new_event(f"price_model_retrain/run{v}/promote", kind="promotion",
                                                     at=f"2015-05-2{v}T03:00:00Z", model_name=settings.model_name,
                                                     from_version=prev, to_version=v, reason=f"clear improvement {v}",
                                                     actor={"type": "dag_run", "dag_id": "price_model_retrain",
                                                            "run_id": f"run{v}"}))
            prev = v
        c.set_registered_model_alias(settings.model_name, tracking.CHAMPION, "2")
        yield settings, c


def _champion(settings, c) -> str:
    from tasks.core import tracking

    return str(tracking.champion_version(c, settings.model_name).version)


def test_rollback_refusals(champions):
    from tasks.registry.rollback import RollbackError, rollback

    settings, c = champions
    args = dict(actor={"type": "user", "user": "t"}, at="2015-06-01T00:00:00Z", key="t")
    for version, reason, match in (("1", " ", "needs a reason"), ("9", "bad", "no version 9"),
                                   ("2", "bad", "already the champion"), ("3", "bad", "never the champion"),
                                   ("x", "bad", "version number")):
        with pytest.raises(RollbackError, match=match):
            rollback(settings, version, reason, **args)
    assert _champion(settings, c) == "2" and len(ledger.read_all(settings)) == 2


def test_cli_rollback_champion_and_ledger(champions, capsys):
    from tasks.cli import main

    settings, c = champions
    assert main(["rollback", "--version", "1", "--reason", "v2 over-values waterfront houses", "--user", "alice"]) == 0
    assert "v2 -> v1" in capsys.readouterr().out
    assert _champion(settings, c) == "1"
    event = ledger.read_all(settings)[-1]
    assert event.kind == "rollback" and event.from_version == "2" and event.to_version == "1"
    assert event.actor["type"] == "user" and event.actor["user"] == "alice"
    assert event.reason == "v2 over-values waterfront houses"
    assert event.metrics["difference"]["mdape"] == pytest.approx(0.10 - 0.11)
    assert event.data_window["start"] == "2014-05-28"
    assert abs((datetime.now(timezone.utc) - event.at).total_seconds()) < 120, "a person's action: wall-clock time"
    assert c.get_model_version(settings.model_name, "1").tags["rollback.ledger_event"] == event.event_id

    assert main(["champion"]) == 0
    out = capsys.readouterr().out
    assert "champion: v1" in out and "rollback by user alice" in out and "waterfront" in out and "mdape 0.1100" in out
    assert main(["champion", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["champion_version"] == "1" and info["from_version"] == "2" and info["ledger_event"] == event.event_id

    assert main(["ledger"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "#1" in lines[0] and "none ->" in lines[0] and "#3" in lines[4] and "rollback" in lines[4]
    assert main(["ledger", "--json", "--limit", "1"]) == 0
    assert [e["kind"] for e in json.loads(capsys.readouterr().out)] == ["rollback"]

    assert main(["rollback", "--version", "3", "--reason", "try the rejected one"]) == 2
    assert "never the champion" in capsys.readouterr().err


@pytest.mark.e2e
def test_rollback_dag(champions, airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    settings, c = champions
    dag = DagBag(dag_folder=str(REPO / "dags" / "champion_rollback.py")).dags["champion_rollback"]
    from airflow.sdk.exceptions import ParamValidationError

    assert dag.schedule is None
    assert {p: dag.params.get_param(p).schema.get("type") for p in ("version", "reason")} == {"version": "integer",
                                                                                              "reason": "string"}
    assert not any(dag.params.get_param(p).has_value for p in ("version", "reason")), "both required: no defaults"
    with pytest.raises(ParamValidationError, match="version"):
        dag.params.validate()
    current = _champion(settings, c)
    target = "2" if current == "1" else "1"
    before = len(ledger.read_all(settings))
    run = dag.test(logical_date=pendulum.datetime(2015, 6, 2, tz="UTC"),
                   run_conf={"version": int(target), "reason": "back to the earlier champion"})
    assert run.state == "success"
    assert _champion(settings, c) == target
    events = ledger.read_all(settings)
    assert len(events) == before + 1
    e = events[-1]
    assert e.kind == "rollback" and e.to_version == target and e.from_version == current
    assert e.actor["type"] == "dag_run" and e.actor["dag_id"] == "champion_rollback" and e.actor["run_id"] == run.run_id
    assert e.at.isoformat() == "2015-06-02T00:00:00+00:00", "the run's logical time"
