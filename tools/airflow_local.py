"""Run the embedded Airflow (api-server, scheduler, dag-processor) and talk to its REST API.

Used by the demo and by the integration tests. Every component is started in its own process group
and stopped by group (SIGTERM, then SIGKILL), and ``stop`` checks that nothing is left: Airflow's
LocalExecutor workers outlive a plain SIGTERM of their parent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

AIRFLOW = [sys.executable, "-m", "airflow"]  # the venv's Airflow, whatever PATH says
COMPONENTS = (("api-server", [*AIRFLOW, "api-server"]), ("scheduler", [*AIRFLOW, "scheduler"]),
              ("dag-processor", [*AIRFLOW, "dag-processor"]))
CELERY_WORKER = ("celery-worker", [*AIRFLOW, "celery", "worker", "--concurrency", "2"])
TERMINAL = {"success", "failed"}


class AirflowError(RuntimeError):
    pass


def migrate(env: dict) -> None:
    subprocess.run([*AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, text=True)


def set_password(airflow_home: Path, user: str, password: str) -> None:
    """SimpleAuthManager keeps passwords in this file; writing it first gives a known local login."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    (airflow_home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({user: password}))


# The embedded servers listen on the loopback only unless the environment names another address: the
# demo's login is admin/admin (docs/security.md). Airflow's own defaults are every interface.
LOOPBACK_DEFAULTS = {
    "AIRFLOW__API__HOST": "127.0.0.1",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
}


def loopback_env(env: dict) -> dict:
    """``env`` with the servers' listen addresses defaulting to 127.0.0.1 (values already set are kept)."""
    return {**LOOPBACK_DEFAULTS, **env}


class LocalAirflow:
    def __init__(self, env: dict, log_dir: Path, base_url: str, user: str = "admin", password: str = "admin",
                 components: tuple = COMPONENTS):
        self.env, self.log_dir, self.base_url = loopback_env(env), log_dir, base_url.rstrip("/")
        self.components = components
        self.user, self.password = user, password
        self.procs: dict[str, subprocess.Popen] = {}
        self.token: str | None = None

    # -- processes --------------------------------------------------------------------------
    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name, cmd in self.components:
            log = open(self.log_dir / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise AirflowError(f"airflow {name} exited with {p.returncode}; end of its log:\n{tail}")

    def stop(self, timeout: float = 20) -> list[int]:
        """Stop every process group; returns pids still alive afterwards (empty when all is well)."""
        groups = {p.pid for p in self.procs.values()}
        for pgid in groups:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
            time.sleep(0.5)
        for pgid in groups:
            _signal_group(pgid, signal.SIGKILL)
        for p in self.procs.values():
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.5)
        return [pid for g in groups for pid in _group_members(g)]

    # -- REST API ---------------------------------------------------------------------------
    def request(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", f"Bearer {self._token()}")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise AirflowError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:1000]}") from exc
        return json.loads(raw) if raw else {}

    def _token(self) -> str:
        if self.token is None:
            out = self.request("POST", "/auth/token", {"username": self.user, "password": self.password}, auth=False)
            self.token = out["access_token"]
        return self.token

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self.request("GET", "/api/v2/monitor/health", auth=False)
                return
            except (AirflowError, urllib.error.URLError, ConnectionError, OSError):
                time.sleep(2)
        raise AirflowError(f"api-server not healthy at {self.base_url} after {timeout}s")

    def wait_dag(self, dag_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                return self.request("GET", f"/api/v2/dags/{dag_id}")
            except AirflowError as exc:
                last = exc
                time.sleep(3)
        errors = self.request("GET", "/api/v2/importErrors")
        raise AirflowError(f"DAG {dag_id} not parsed after {timeout}s ({last}); import errors: {errors}")

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": True})

    def trigger(self, dag_id: str, logical_date: str | None = None, conf: dict | None = None,
                interval: tuple[str, str] | None = None, run_id: str | None = None) -> str:
        body: dict = {"logical_date": logical_date, "conf": conf or {}}
        if interval:
            body["data_interval_start"], body["data_interval_end"] = interval
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def backfill(self, dag_id: str, from_date: str, to_date: str, max_active_runs: int = 2) -> int:
        body = {"dag_id": dag_id, "from_date": from_date, "to_date": to_date, "reprocess_behavior": "completed",
                "max_active_runs": max_active_runs}
        # The DAG is paused while the backfill is created: on SQLite a creation can fail with 503 (the
        # scheduler holds the write lock) after some of its runs were committed, and Airflow then deletes
        # them again; a scheduler that had picked one up crashed (ObjectDeletedError). The scheduler
        # examines only runs of unpaused DAGs, so it never sees a half-made backfill.
        self.pause(dag_id)
        try:
            for attempt in range(30):
                try:
                    return self.request("POST", "/api/v2/backfills", body)["id"]
                except AirflowError as exc:
                    # SQLite: creation fails with 503 while the scheduler holds the write lock; it is brief.
                    if "HTTP 503" not in str(exc) or attempt == 29:
                        raise
                    time.sleep(1 + attempt % 3)
            raise AssertionError("unreachable")
        finally:
            self.unpause(dag_id)

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            state = self.run_state(dag_id, run_id)
            if state in TERMINAL:
                return state
            time.sleep(3)
        raise AirflowError(f"{dag_id} {run_id} not finished after {timeout}s")

    def wait_backfill(self, backfill_id: int, dag_id: str, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.request("GET", f"/api/v2/backfills/{backfill_id}").get("completed_at"):
                break
            time.sleep(3)
        else:
            raise AirflowError(f"backfill {backfill_id} of {dag_id} not finished after {timeout}s")
        runs = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?run_type=backfill&limit=1000")["dag_runs"]
        return runs

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> object:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value?deserialize=true"
        value = self.request("GET", path)["value"]
        return json.loads(value) if isinstance(value, str) else value

    def failed_tasks(self, dag_id: str, run_id: str) -> list[str]:
        tis = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return [t["task_id"] for t in tis if t["state"] not in ("success", "skipped")]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry))
    return out


def _group_alive(pgid: int) -> bool:
    return bool(_group_members(pgid))
