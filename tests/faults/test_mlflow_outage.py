"""MLflow outage during the champion's moves: a real ``mlflow server`` killed while ``promote`` (and ``rollback``)
run, and Airflow's retry with the server back.

A task-level test (not under the scheduler): the steps run in child processes exactly as the Airflow task
calls them (``promote_step``, ``rollback``), with the ``AIRFLOW_CTX_*`` variables the task runner exports, against
a real ``mlflow server`` (its own sqlite store and proxied artifacts below the test's folder, 127.0.0.1, a free
port). ``HOMEWORTH_FAULT_PAUSE`` holds the step at a named point (``tasks/core/faults.py``); the test kills the
server's process group with SIGKILL there and lets the step go on. Checked each time:

- the step fails cleanly and fast: exit status 1 (an exception, not a hang or a kill) within
  ``FAIL_WITHIN_S`` seconds of the outage (bounded MLflow HTTP retries, ``tracking.fail_fast``), and its error
  (``TrackingUnavailable``) says what the ledger holds;
- the ledger and the alias agree, or the ledger holds the move and ``champion.read`` reports the interrupted
  move (what ``homeworth champion`` prints), which the retry completes;
- the retry (the same task instance, the server restarted on the same store) succeeds with no second event.

The three outages: ``promote`` of v2 over v1 with the server killed at its start (nothing recorded), ``promote``
of v3 over v2 killed after its ledger event and before the alias move (the retry completes the move), and
``rollback`` to v2 killed at the same point, repaired by ``champion.sync`` (``homeworth champion --repair``)
before the retry.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.faults.tally import NOTES, held, injected, survived
from tests.support import free_port

pytestmark = pytest.mark.slow_faults  # about 3 minutes (four server starts): `make faults` only

REPO = Path(__file__).resolve().parents[2]
TARGET = "price"
FAIL_WITHIN_S = 30  # from the server's death to the step's exit (MLflow's defaults take minutes)
WINDOW = ("2014-05-28", "2015-05-28")


class MlflowServer:
    """``mlflow server`` on 127.0.0.1:``port``: sqlite store and proxied artifacts under ``root``; kill and restart
    on the same store."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.proc = root, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 180) -> None:
        exe = str(Path(sys.executable).with_name("mlflow"))
        log = open(self.root / "mlflow-server.log", "ab")
        self.proc = subprocess.Popen(
            [exe, "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--serve-artifacts", "--artifacts-destination", str(self.root / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited {self.proc.returncode}: "
                                     f"{(self.root / 'mlflow-server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.kill()
        raise AssertionError(f"mlflow server not healthy on {self.uri} after {timeout}s")

    def kill(self) -> None:
        """SIGKILL to the server's whole process group (an outage, not a shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def child_main(step: str, payload_file: str) -> None:
    """The child process: the step as the Airflow task calls it; its result as JSON on stdout."""
    from tasks.core.handoffs import Evaluation
    from tasks.core.lineage import Lineage
    from tasks.core.params import RetrainParams
    from tasks.core.settings import get_settings

    p = json.loads(Path(payload_file).read_text())
    settings = get_settings()
    if step == "promote":
        from tasks.registry.promote import promote_step

        out = promote_step(settings, Evaluation.model_validate(p["evaluation"]), RetrainParams(max_mdape=0.5),
                           Lineage(**p["lineage"]), event_time=p["at"], target=TARGET).model_dump(mode="json")
    else:
        from tasks.registry.rollback import rollback

        out = rollback(settings, p["version"], p["reason"], p["actor"], p["at"], p["key"])
    print("RESULT " + json.dumps(out))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tasks.core.settings import Settings

    root = tmp_path_factory.mktemp("outage")
    server = MlflowServer(root, free_port())
    server.start()
    settings = Settings(home=root / "state", mlflow_tracking_uri=server.uri)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOMEWORTH_", "AIRFLOW_CTX_"))}
    env.update({"HOMEWORTH_HOME": str(root / "state"), "HOMEWORTH_MLFLOW_TRACKING_URI": server.uri,
                "HOMEWORTH_FAULT_DIR": str(root / "markers"), "HOMEWORTH_FAULT_PAUSE_S": "120"})
    try:
        yield {"root": root, "server": server, "settings": settings, "env": env}
    finally:
        server.kill()


def _client(settings):
    from tasks.core import tracking

    return tracking.client(settings)


def _new_version(settings) -> tuple[str, str]:
    from tasks.core import tracking

    c = _client(settings)
    exp = tracking.experiment_id(c, settings)
    tracking.ensure_registered_model(c, settings.model_name)
    run = c.create_run(exp, tags={"data.window_start": WINDOW[0], "data.window_end": WINDOW[1]})
    c.set_terminated(run.info.run_id, "FINISHED")
    mv = c.create_model_version(settings.model_name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return str(mv.version), run.info.run_id


def _evaluation(settings, version: str, run_id: str, against: str | None, name: str) -> dict:
    """An evaluation of ``version`` against ``against``, clearly better on 2,000 paired rows."""
    from tasks.core import storage
    from tasks.core.handoffs import Evaluation
    from tasks.core.metrics import price_metrics

    rng = np.random.default_rng(int(version))
    a = np.exp(rng.normal(13.0, 0.5, 2000))
    champ, new = a * np.exp(rng.normal(0, 0.20, a.size)), a * np.exp(rng.normal(0, 0.12, a.size))
    uri = storage.join(settings.lake_uri, "evaluations", name, "predictions.parquet")
    storage.write_parquet_atomic(pl.DataFrame({TARGET: a, "pred_new": new, "pred_champion": champ}), uri)
    metrics = {"new": price_metrics(a, new)}
    if against:
        metrics["champion"] = price_metrics(a, champ)
    return Evaluation(model_version=version, champion_version=against, metrics=metrics, predictions_uri=uri,
                      report_uri=f"{settings.reports_uri}/{name}/report.html", mlflow_run_id=run_id,
                      test_rows=2000).model_dump(mode="json")


def _run_step(world, step: str, payload: dict, run_id: str, pause: str | None = None) -> subprocess.Popen:
    """The step in a child process, as the Airflow task ``step`` of ``run_id`` (held at ``pause`` if given)."""
    payload_file = world["root"] / f"{run_id}-{step}.json"
    payload_file.write_text(json.dumps(payload))
    dag = "price_model_retrain" if step == "promote" else "champion_rollback"
    env = {**world["env"], "AIRFLOW_CTX_DAG_ID": dag, "AIRFLOW_CTX_DAG_RUN_ID": run_id, "AIRFLOW_CTX_TASK_ID": step}
    if pause:
        env["HOMEWORTH_FAULT_PAUSE"] = f"{step}:{pause}"
    code = f"from tests.faults.test_mlflow_outage import child_main; child_main({step!r}, {str(payload_file)!r})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _outage(world, step: str, payload: dict, run_id: str, point: str) -> tuple[subprocess.CompletedProcess, float]:
    """The step held at ``point``, the server killed there, the step let go: its result and the seconds from the
    outage to its exit."""
    from tasks.core.faults import marker_path

    dag = "price_model_retrain" if step == "promote" else "champion_rollback"
    os.environ["HOMEWORTH_FAULT_DIR"] = world["env"]["HOMEWORTH_FAULT_DIR"]
    try:
        base = marker_path(step, point, dag, run_id)
    finally:
        del os.environ["HOMEWORTH_FAULT_DIR"]
    proc = _run_step(world, step, payload, run_id, pause=point)
    deadline = time.monotonic() + 180
    while not os.path.exists(base + ".paused"):
        assert proc.poll() is None, f"{step} ended before pausing at {point}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{step} never reached {point}"
        time.sleep(0.1)
    world["server"].kill()
    injected()
    t0 = time.monotonic()
    Path(base + ".resume").touch()
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - t0


def _retry(world, step: str, payload: dict, run_id: str) -> dict:
    proc = _run_step(world, step, payload, run_id)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"the retry of {step} failed: {err[-3000:]}"
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])


def _state(world):
    from tasks.registry import champion

    return champion.read(_client(world["settings"]), world["settings"])


def _promote_payload(world, version: str, run: str, against: str | None, run_id: str, at: str) -> dict:
    return {"evaluation": _evaluation(world["settings"], version, run, against, run_id), "at": at,
            "lineage": {"dag_id": "price_model_retrain", "run_id": run_id, "run_type": "scheduled",
                        "window_start": WINDOW[0], "window_end": WINDOW[1]}}


def _failed_cleanly(what: str, done: subprocess.CompletedProcess, took: float, says: str) -> None:
    held(f"{what}: the step fails with an error, no hang", done.returncode == 1, (done.returncode, done.stderr[-2000:]))
    held(f"{what}: within {FAIL_WITHIN_S} s of the outage ({took:.1f} s)", took < FAIL_WITHIN_S, took)
    held(f"{what}: the error names the server and the ledger's state",
         "TrackingUnavailable" in done.stderr and "did not answer" in done.stderr and "http://127.0.0.1:" in done.stderr
         and says in done.stderr, done.stderr[-2000:])
    NOTES.append(f"mlflow outage, {what}: failed {took:.1f} s after the server's death")


def test_promote_and_rollback_survive_mlflow_outages(world):
    from tasks.registry import champion, ledger

    settings, server = world["settings"], world["server"]
    v1, r1 = _new_version(settings)
    first = _retry(world, "promote", _promote_payload(world, v1, r1, None, "r1", "2015-04-28T03:00:00Z"), "r1")
    assert first["promoted"] and _state(world).agrees and _state(world).version == v1

    # 1. killed at promote's start: nothing recorded, the champion unchanged; the retry promotes.
    v2, r2 = _new_version(settings)
    p2 = _promote_payload(world, v2, r2, v1, "r2", "2015-05-28T03:00:00Z")
    done, took = _outage(world, "promote", p2, "r2", "start")
    _failed_cleanly("outage at promote's start", done, took, "no ledger event was recorded")
    held("nothing recorded by the failed promote", [e.to_version for e in ledger.read_all(settings)] == [v1])
    server.start()
    held("alias and ledger agree after the failed promote", _state(world).agrees and _state(world).version == v1)
    again = _retry(world, "promote", p2, "r2")
    held("the retry with the server back promotes", again["promoted"] and again["champion_version"] == v2, again)
    survived()

    # 2. killed after the ledger event, before the alias move: the ledger holds v3, the retry moves the alias.
    v3, r3 = _new_version(settings)
    p3 = _promote_payload(world, v3, r3, v2, "r3", "2015-06-28T03:00:00Z")
    done, took = _outage(world, "promote", p3, "r3", "after_commit")
    _failed_cleanly("outage between promote's ledger event and alias", done, took, "is recorded")
    server.start()
    state = _state(world)
    held("the interrupted move is reported (homeworth champion)", not state.agrees and state.alias == v2
         and state.version == v3 and "interrupted move" in (champion.disagreement(state) or ""),
         (state.alias, state.version))
    again = _retry(world, "promote", p3, "r3")
    state = _state(world)
    held("the retry completes the move: alias = ledger = v3, one event", again["promoted"] and state.agrees
         and state.alias == v3 and [e.to_version for e in state.scan.events] == [v1, v2, v3], (again, state.alias))
    held("the retry tagged the version with its ledger event",
         _client(settings).get_model_version(settings.model_name, v3).tags.get("promotion.ledger_event")
         == again["ledger_event"] == state.head.event_id)
    survived()

    # 3. rollback to v2 killed at the same point; `homeworth champion --repair` (champion.sync), then the retry.
    rb = {"version": v2, "reason": "outage test: back to v2", "at": "2015-06-29T00:00:00Z",
          "actor": {"type": "dag_run", "dag_id": "champion_rollback", "run_id": "rb", "task": "rollback"},
          "key": "champion_rollback/rb/rollback"}
    done, took = _outage(world, "rollback", rb, "rb", "after_commit")
    _failed_cleanly("outage between rollback's ledger event and alias", done, took, "is recorded")
    server.start()
    held("repair points the alias at the ledger's rollback", champion.sync(_client(settings), settings).alias == v2)
    again = _retry(world, "rollback", rb, "rb")
    state = _state(world)
    held("the retried rollback finds its event: no second one", again["outcome"] == "rolled_back"
         and state.agrees and [(e.kind, e.to_version) for e in state.scan.events]
         == [("promotion", v1), ("promotion", v2), ("promotion", v3), ("rollback", v2)], again)
    held("ledger sequence numbers unique", len({e.seq for e in state.scan.events}) == len(state.scan.events))
    survived()
