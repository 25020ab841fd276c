"""The fault hook itself, in child processes (seconds; part of `make test`).

A child that reaches a named point dies by SIGKILL once; run again (Airflow's retry), it survives; a point
not named, or named for another run, changes nothing. A write killed between its temporary file and the
rename leaves no file a reader lists, and the retry's write is complete.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.faults.tally import held, injected, survived

REPO = Path(__file__).resolve().parents[2]


def _child(code: str, tmp: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HOMEWORTH_FAULT", "AIRFLOW_CTX_"))}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**base, "HOMEWORTH_FAULT_DIR": str(tmp / "markers"), **env})


HOOK = "from tasks.core.faults import fault_point; fault_point('demo', 'start'); print('survived')"


def test_a_named_point_kills_once_and_the_retry_survives(tmp_path):
    ctx = {"AIRFLOW_CTX_DAG_ID": "d", "AIRFLOW_CTX_DAG_RUN_ID": "r1", "HOMEWORTH_FAULT": "other:start,demo:start"}
    first = _child(HOOK, tmp_path, **ctx)
    injected()
    assert first.returncode == -signal.SIGKILL, first
    assert "fault injected: SIGKILL at demo:start" in first.stderr
    retry = _child(HOOK, tmp_path, **ctx)
    held("the retry of a killed try survives the same point", retry.returncode == 0 and "survived" in retry.stdout,
         retry)
    survived()
    # Another run of the same task is killed once too: the marker is per (dag, run, task, point).
    assert _child(HOOK, tmp_path, **{**ctx, "AIRFLOW_CTX_DAG_RUN_ID": "r2"}).returncode == -signal.SIGKILL
    injected()
    held("the other run's retry survives", _child(HOOK, tmp_path, **{**ctx, "AIRFLOW_CTX_DAG_RUN_ID": "r2"}).returncode == 0)
    survived()


def test_no_effect_when_unset_or_not_named(tmp_path):
    for env in ({}, {"HOMEWORTH_FAULT": ""}, {"HOMEWORTH_FAULT": "demo:mid_write"},
                {"HOMEWORTH_FAULT": "demo:start@another_run", "AIRFLOW_CTX_DAG_RUN_ID": "this_run"}):
        out = _child(HOOK, tmp_path, **env)
        assert out.returncode == 0 and "survived" in out.stdout, (env, out)
    assert not (tmp_path / "markers").exists() or not any((tmp_path / "markers").iterdir())


WRITE = """
import sys
from tasks.core import storage
storage.write_bytes_atomic(sys.argv[1], b"complete" * 1000)
print('written')
"""


def test_a_write_killed_before_its_rename_is_invisible_and_the_retry_completes_it(tmp_path):
    target = tmp_path / "lake" / "raw" / "ds=2015-05-27" / "part-0.parquet"
    ctx = {"AIRFLOW_CTX_TASK_ID": "ingest", "AIRFLOW_CTX_DAG_RUN_ID": "r", "HOMEWORTH_FAULT": "ingest:mid_write"}
    code = WRITE.replace("sys.argv[1]", repr(str(target)))
    first = _child(code, tmp_path, **ctx)
    injected()
    assert first.returncode == -signal.SIGKILL, first
    from tasks.core import storage

    folder = str(target.parent)
    assert not target.exists()
    assert [n for n in os.listdir(folder) if storage.is_temp_name(n)], "the killed writer left its temporary file"
    held("a killed writer's temporary file is not listed", storage.list_dir(folder) == [], storage.list_dir(folder))
    retry = _child(code, tmp_path, **ctx)
    held("the retried write is complete", retry.returncode == 0 and target.read_bytes() == b"complete" * 1000, retry)
    survived()
    held("readers list only the target", storage.list_dir(folder) == ["part-0.parquet"], storage.list_dir(folder))
