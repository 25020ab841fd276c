"""One truth about the champion: compare-and-set moves, a ledger safe for concurrent writers, recovery.

Against a real MLflow registry (sqlite, in a private home per test): a re-run of an older run's promote
or rollback leaves the newer champion; concurrent appends get unique sequence numbers; a move interrupted
between its ledger event and the alias is completed by the next promote, rollback or
``homeworth champion --repair``; a rollback goes only to a version the ledger made champion; an
unreadable ledger file is reported and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tasks.core.handoffs import Evaluation
from tasks.core.lineage import Lineage
from tasks.core.params import RetrainParams
from tasks.registry import ledger

REPO = Path(__file__).resolve().parents[2]
BARS = RetrainParams(max_mdape=0.5, min_ppe10=0.0)
TARGET = "price"


@pytest.fixture
def registry(fresh_settings):
    """(settings, client, new_version): an empty registered model in a private home."""
    from tasks.core import tracking

    settings = fresh_settings
    c = tracking.client(settings)
    exp = tracking.experiment_id(c, settings)
    tracking.ensure_registered_model(c, settings.model_name)

    def new_version(**tags) -> tuple[str, str]:
        run = c.create_run(exp, tags={"data.window_start": "2014-05-28", "data.window_end": "2015-05-28"})
        c.log_metric(run.info.run_id, "test/mdape", 0.1)
        c.set_terminated(run.info.run_id, "FINISHED")
        mv = c.create_model_version(settings.model_name, source=f"{run.info.artifact_uri}/model",
                                    run_id=run.info.run_id, tags=tags)
        return str(mv.version), run.info.run_id

    return settings, c, new_version


def _alias(settings, c) -> str | None:
    from tasks.core import tracking

    mv = tracking.champion_version(c, settings.model_name)
    return str(mv.version) if mv is not None else None


def _evaluation(settings, version: str, run_id: str, against: str | None, name: str) -> Evaluation:
    """An evaluation of ``version`` against ``against``: clearly better than it on 2,000 paired rows."""
    from tasks.core import storage
    from tasks.core.metrics import price_metrics

    rng = np.random.default_rng(11)
    a = np.exp(rng.normal(13.0, 0.5, 2000))
    champ, new = a * np.exp(rng.normal(0, 0.20, a.size)), a * np.exp(rng.normal(0, 0.12, a.size))
    uri = storage.join(settings.lake_uri, "evaluations", name, "predictions.parquet")
    df = pl.DataFrame({TARGET: a, "pred_new": new, "pred_champion": champ})
    storage.write_parquet_atomic(df if against else df.drop("pred_champion"), uri)
    metrics = {"new": price_metrics(a, new)}
    if against:
        metrics["champion"] = price_metrics(a, champ)
    return Evaluation(model_version=version, champion_version=against, metrics=metrics, predictions_uri=uri,
                      report_uri=f"{settings.reports_uri}/{name}/report.html", mlflow_run_id=run_id, test_rows=2000)


def _promote(settings, evaluation: Evaluation, run_id: str, at: str, run_type: str = "scheduled",
             params: RetrainParams = BARS):
    from tasks.registry.promote import promote_step

    lineage = Lineage(dag_id="price_model_retrain", run_id=run_id, run_type=run_type, window_start="2014-05-28",
                      window_end="2015-05-28")
    return promote_step(settings, evaluation, params, lineage, event_time=at, target=TARGET)


def _recorded_move(settings, frm: str | None, to: str, key: str, at: str, kind: str = "promotion"):
    """A move appended to the ledger whose alias never followed: a crash between the two writes."""
    event = ledger.new_event(key, kind=kind, at=at, model_name=settings.model_name, from_version=frm, to_version=to,
                             reason=f"crashed move to v{to}", actor={"type": "user", "user": "crash"})
    return ledger.append(settings, event, expected=frm)[0]


def _two_champions(registry):
    """v1 promoted by the 2015-04-28 run, then v2 over it by the 2015-05-28 run (the demo's history)."""
    settings, c, new_version = registry
    v1, r1 = new_version()
    ev1 = _evaluation(settings, v1, r1, None, "a")
    first = _promote(settings, ev1, "scheduled__2015-04-28", "2015-04-28T03:00:00Z")
    v2, r2 = new_version()
    second = _promote(settings, _evaluation(settings, v2, r2, v1, "b"), "scheduled__2015-05-28",
                      "2015-05-28T03:00:00Z")
    assert first.promoted and second.promoted and _alias(settings, c) == v2
    return v1, v2, ev1


def test_rerun_of_an_older_promote_keeps_the_newer_champion(registry):
    settings, c, new_version = registry
    v1, v2, ev1 = _two_champions(registry)
    before = ledger.read_all(settings)

    again = _promote(settings, ev1, "scheduled__2015-04-28", "2015-04-28T03:00:00Z")  # "Clear" on the old promote
    assert again.outcome == "superseded" and not again.promoted
    assert again.champion_version == v2 and f"v{v2} has been the champion since ledger event #2" in again.reason
    assert _alias(settings, c) == v2, "the champion stays the newer model"
    assert ledger.read_all(settings) == before, "nothing recorded that moves the champion"
    tags = c.get_model_version(settings.model_name, v1).tags
    assert tags["promotion.rerun.outcome"] == "superseded" and tags["promotion.decision"] == "promoted"

    # A model evaluated against v1 while v1 was champion, promoted only now: superseded too, forced or not.
    v3, r3 = new_version()
    late = _promote(settings, _evaluation(settings, v3, r3, v1, "c"), "manual__late", "2015-05-29T03:00:00Z")
    assert late.outcome == "superseded" and not late.promoted and late.champion_version == v2
    assert c.get_model_version(settings.model_name, v3).tags["promotion.decision"] == "superseded"
    forced = _promote(settings, _evaluation(settings, v3, r3, v1, "c"), "manual__forced", "2015-05-29T04:00:00Z",
                      params=RetrainParams(max_mdape=0.5, min_ppe10=0.0, force_promotion=True))
    assert forced.outcome == "superseded" and not forced.promoted
    assert _alias(settings, c) == v2 and len(ledger.read_all(settings)) == 2


def test_a_compare_and_set_lost_to_a_concurrent_move_is_superseded(registry, monkeypatch):
    """Another writer appends between this promote's read of the champion and its own append."""
    from tasks.registry import champion

    settings, c, new_version = registry
    v1, v2, _ = _two_champions(registry)
    v3, r3 = new_version()
    real_sync = champion.sync

    def sync_then_race(c_, settings_, own=None):
        state = real_sync(c_, settings_, own)
        if own is None:  # right after the promote's first read: a rollback lands meanwhile
            _recorded_move(settings_, v2, v1, "racer", "2015-05-29T01:00:00Z", kind="rollback")
        return state

    monkeypatch.setattr(champion, "sync", sync_then_race)
    out = _promote(settings, _evaluation(settings, v3, r3, v2, "d"), "manual__race", "2015-05-29T03:00:00Z")
    monkeypatch.setattr(champion, "sync", real_sync)
    assert out.outcome == "superseded" and not out.promoted and out.champion_version == v1
    assert f"expected to replace v{v2}, but the champion is v{v1}" in out.reason
    assert [e.to_version for e in ledger.read_all(settings)] == [v1, v2, v1], "the loser appended nothing"
    assert c.get_model_version(settings.model_name, v3).tags["promotion.decision"] == "superseded"


def test_rerun_of_an_older_promote_or_rollback_after_a_rollback(registry):
    from tasks.registry.rollback import rollback

    settings, c, new_version = registry
    v1, v2, _ = _two_champions(registry)
    actor = {"type": "dag_run", "dag_id": "champion_rollback", "run_id": "manual__r1"}
    back = rollback(settings, v1, "v2 over-values waterfront houses", actor, "2015-05-30T00:00:00Z", key="r1")
    assert back["outcome"] == "rolled_back" and _alias(settings, c) == v1

    # The 2015-05-28 promote (v1 -> v2) cleared after the rollback: v1 stays.
    ev2 = _evaluation(settings, v2, c.get_model_version(settings.model_name, v2).run_id, v1, "b")
    rerun = _promote(settings, ev2, "scheduled__2015-05-28", "2015-05-28T03:00:00Z")
    assert rerun.outcome == "superseded" and rerun.champion_version == v1 and _alias(settings, c) == v1

    # A newer promotion, then the rollback task cleared: it does not move the champion back to v1.
    v3, r3 = new_version()
    assert _promote(settings, _evaluation(settings, v3, r3, v1, "e"), "scheduled__2015-05-31",
                    "2015-05-31T03:00:00Z").promoted
    again = rollback(settings, v1, "v2 over-values waterfront houses", actor, "2015-05-30T00:00:00Z", key="r1")
    assert again["outcome"] == "superseded" and again["champion_version"] == v3 and not again["created"]
    assert _alias(settings, c) == v3 and len(ledger.read_all(settings)) == 4


_WRITER = """
import json, os, sys, time, types
from tasks.registry import ledger
lake, writer, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
settings = types.SimpleNamespace(lake_uri=lake)
def event(key, frm, to):
    return ledger.new_event(key, kind="promotion", at="2015-05-28T03:00:00Z", model_name="m", from_version=frm,
                            to_version=to, reason="concurrency", actor={"type": "user", "user": writer})
open(f"{go}.{writer}", "w").close()  # ready
while not os.path.exists(go):
    time.sleep(0.005)
try:  # every writer races to be the first champion: exactly one may win
    ledger.append(settings, event(f"{writer}/first", None, writer), expected=None)
    won = True
except ledger.Superseded:
    won = False
seqs = [ledger.append(settings, event(f"{writer}/{i}", None, writer))[0].seq for i in range(n)]
print(json.dumps({"won": won, "seqs": seqs}))
"""


def test_concurrent_appends_get_unique_sequence_numbers(tmp_path):
    lake, go = tmp_path / "lake", tmp_path / "go"
    writers, n = 4, 15
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(lake), f"w{w}", str(n), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for w in range(writers)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"go.w{w}").exists() for w in range(writers)) and time.monotonic() < deadline:
        time.sleep(0.05)  # every writer imported and waits at the line
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.splitlines()[-1]))
    assert sum(r["won"] for r in results) == 1, "compare-and-set on an empty ledger: one first champion"
    seqs = [s for r in results for s in r["seqs"]]
    assert len(seqs) == writers * n and len(set(seqs)) == writers * n, sorted(seqs)
    events = ledger.read_all(types.SimpleNamespace(lake_uri=str(lake)))
    assert [e.seq for e in events] == list(range(1, writers * n + 2))
    assert len({e.event_id for e in events}) == len(events)
    names = sorted(os.listdir(lake / "ledger"))
    assert names == [f"{s:08d}.json" for s in range(1, writers * n + 2)], "no temporary file left behind"


def test_an_interrupted_move_is_completed_by_the_next_call(registry, capsys):
    from tasks.cli import main
    from tasks.registry.rollback import rollback

    settings, c, new_version = registry
    v1, v2, _ = _two_champions(registry)

    # 1. Crash after the ledger event v2 -> v1: `champion` reports it loudly, --repair completes it.
    _recorded_move(settings, v2, v1, "crash1", "2015-05-29T00:00:00Z", kind="rollback")
    assert _alias(settings, c) == v2
    assert main(["champion"]) == 3
    captured = capsys.readouterr()
    assert f"champion: v{v1}" in captured.out, "the ledger's champion"
    assert "CHAMPION DISAGREEMENT" in captured.err and "homeworth champion --repair" in captured.err
    assert "interrupted move" in captured.err and _alias(settings, c) == v2, "reporting moves nothing"
    info = json.loads((main(["champion", "--json"]), capsys.readouterr().out)[1])
    assert info["alias_version"] == v2 and info["ledger_version"] == v1 and info["disagreement"]
    assert main(["champion", "--repair"]) == 0
    assert f"from v{v2} to v{v1}" in capsys.readouterr().err and _alias(settings, c) == v1
    assert main(["champion"]) == 0 and _alias(settings, c) == v1

    # 2. Crash after v1 -> v2: the next promote (a backfill run, which never promotes) completes it first.
    _recorded_move(settings, v1, v2, "crash2", "2015-05-30T00:00:00Z", kind="rollback")
    v3, r3 = new_version()
    out = _promote(settings, _evaluation(settings, v3, r3, v2, "f"), "backfill__x", "2015-05-30T03:00:00Z",
                   run_type="backfill")
    assert not out.promoted and out.champion_version == v2 and _alias(settings, c) == v2

    # 3. Crash after v2 -> v1: the next rollback completes it, then moves on from there (v1 -> v2).
    _recorded_move(settings, v2, v1, "crash3", "2015-05-31T00:00:00Z", kind="rollback")
    done = rollback(settings, v2, "back again", {"type": "user", "user": "t"}, "2015-06-01T00:00:00Z", key="t")
    assert done["outcome"] == "rolled_back" and done["previous_champion"] == v1 and _alias(settings, c) == v2
    assert [e.to_version for e in ledger.read_all(settings)] == [v1, v2, v1, v2, v1, v2]

    # 4. An alias moved by hand, outside the ledger: reported, and --repair puts it back.
    c.set_registered_model_alias(settings.model_name, "champion", v3)
    assert main(["champion"]) == 3 and "moved outside the ledger" in capsys.readouterr().err
    assert main(["champion", "--repair"]) == 0 and _alias(settings, c) == v2


def test_rollback_goes_only_to_a_version_the_ledger_made_champion(registry, capsys):
    from tasks.cli import main
    from tasks.registry.rollback import RollbackError, rollback

    settings, c, new_version = registry
    v1, v2, _ = _two_champions(registry)
    # Tagged "promoted" (a move whose tags were written but never committed, or a tag set by hand): not enough.
    v3, _ = new_version(**{"promotion.decision": "promoted"})
    with pytest.raises(RollbackError, match="never the champion"):
        rollback(settings, v3, "try it", {"type": "user", "user": "t"}, "2015-06-01T00:00:00Z", key="t")
    assert _alias(settings, c) == v2 and len(ledger.read_all(settings)) == 2

    # The person expected to replace v1, but v2 is the champion: nothing moves.
    assert main(["rollback", "--version", v1, "--reason", "stale view", "--expect", v1]) == 4
    assert f"expected to replace v{v1}, but the champion is v{v2}" in capsys.readouterr().err
    assert _alias(settings, c) == v2 and len(ledger.read_all(settings)) == 2
    assert main(["rollback", "--version", v1, "--reason", "current view", "--expect", v2]) == 0
    assert _alias(settings, c) == v1


def test_an_unreadable_ledger_file_is_reported_and_skipped(registry, capsys, caplog):
    from tasks.cli import main
    from tasks.serving.pages import ledger_page

    settings, c, _ = registry
    v1, v2, _ = _two_champions(registry)
    root = Path(ledger.ledger_uri(settings))
    (root / "00000003.json").write_text('{"kind": "promotion", "to_versi')  # a torn or foreign file
    (root / f".00000004.json.tmp-1-{'0' * 32}").write_text("half")  # a killed writer's temporary file: invisible
    with caplog.at_level(logging.WARNING, logger="tasks.registry.ledger"):
        found = ledger.scan(settings)
    assert [e.to_version for e in found.events] == [v1, v2]
    assert [name for name, _ in found.problems] == ["00000003.json"]
    assert "00000003.json" in caplog.text and "unreadable" in caplog.text

    assert main(["ledger"]) == 0
    out = capsys.readouterr()
    assert "00000003.json is unreadable" in out.err and "#2" in out.out
    assert main(["champion"]) == 0
    assert f"champion: v{v2}" in capsys.readouterr().out
    assert f"v{v2}" in ledger_page(settings), "the ledger page still renders"

    # Its sequence number stays taken; the champion still moves.
    moved = _recorded_move(settings, v2, v1, "after", "2015-06-01T00:00:00Z", kind="rollback")
    assert moved.seq == 4 and (root / "00000004.json").exists()
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads any file
        (root / "00000004.json").chmod(0)
        try:
            assert [name for name, _ in ledger.scan(settings).problems] == ["00000003.json", "00000004.json"]
        finally:
            (root / "00000004.json").chmod(0o644)
