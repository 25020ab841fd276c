"""Multi-device training: the device plan from the settings, and the launcher of the DDP worker processes.

``tasks.model.train.train`` trains in its own process while the plan has one process in all (the
default, ``HOMEWORTH_TRAIN_DEVICES=1``). With more (``HOMEWORTH_TRAIN_DEVICES=2`` or ``auto`` on a
machine with several GPUs, ``HOMEWORTH_TRAIN_NUM_NODES``), :func:`launch` runs the training in
worker processes under DDP and returns rank 0's result (docs/production.md, "Multi-device training").

**Why our own launcher.** Lightning's default DDP launcher (``_SubprocessScriptLauncher``) starts the
other ranks by re-running ``sys.argv``: inside an Airflow task that is the Airflow command line
(``airflow tasks run ...`` or the task runner), which would run the task again, not train.
``ddp_spawn`` forks with ``multiprocessing`` "spawn" and pickles the trainer, the module and the
data module into each child (and the result back); the project has no pickle, and a spawned child
re-imports ``__main__``, again Airflow's. So the task writes a *job folder* (attempt-unique, from
``tempfile.mkdtemp``) holding ``job.json``: the model configuration, the preprocessing, the feature
table's URI and the options, all JSON; it starts ``python -m tasks.model.train --ddp-job DIR`` once per
local rank with the environment torch and Lightning read for an externally launched process
(``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``NODE_RANK``, ``LOCAL_RANK``, ``RANK``: with
``LOCAL_RANK`` set, Lightning's ``LightningEnvironment`` launches nothing itself). Each rank trains
on its shard of every epoch (``tasks.model.data``); rank 0 writes the best (or refitted) weights as
``result.safetensors`` and the figures as ``result.json`` (each to a temporary name, then renamed),
which the task reads back into a ``TrainResult``. The workers' log lines go to the task's own stderr,
so they appear in the Airflow task log. A worker that fails makes the others stop (they are
terminated) and the task fail with the failing rank's exit status.

**Several nodes** (``HOMEWORTH_TRAIN_NUM_NODES`` > 1): the task's machine is node 0 and
``MASTER_ADDR`` (set it in the worker's environment to an address the other nodes reach); the job
folder must then be on a mount every node shares (``TMPDIR`` pointing there); the task logs the
command each other node runs (``python -m tasks.model.train --ddp-job DIR --node-rank K``, started by
the cluster's own scheduler) and waits for them in the rendezvous (torch's default timeout).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

JOB, RESULT_JSON, RESULT_WEIGHTS = "job.json", "result.json", "result.safetensors"
ENV_JOB = "HOMEWORTH_DDP_JOB"  # set in a worker: train() then trains its rank instead of launching


@dataclass(frozen=True)
class Plan:
    """Processes per node (``devices``), nodes, and the Lightning strategy the ranks use."""

    devices: int
    num_nodes: int
    strategy: str

    @property
    def world(self) -> int:
        return self.devices * self.num_nodes


def device_count(devices: str | int, accelerator: str) -> int:
    """Processes per node for Lightning's ``devices`` value: a count, ``auto`` / ``-1`` (every visible
    GPU when the accelerator may be CUDA, else 1: Lightning's CPU ``auto`` is one device) or a comma list."""
    text = str(devices).strip().lower()
    if text in ("auto", "-1"):
        cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        return max(torch.cuda.device_count(), 1) if cuda else 1
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"HOMEWORTH_TRAIN_DEVICES={devices!r}: expected a count, 'auto' or a comma list") from None
    if n < 1:
        raise ValueError(f"HOMEWORTH_TRAIN_DEVICES={devices!r}: at least one device")
    return n


def plan(devices: str | int | None, strategy: str | None, num_nodes: int | None, accelerator: str) -> Plan:
    """The plan for these values; a None takes the settings' (``HOMEWORTH_TRAIN_DEVICES``, ``_STRATEGY``,
    ``_NUM_NODES``). Strategy ``auto`` is ``ddp`` when there is more than one process."""
    if devices is None or strategy is None or num_nodes is None:
        from tasks.core.settings import get_settings

        s = get_settings()
        devices = s.train_devices if devices is None else devices
        strategy = s.train_strategy if strategy is None else strategy
        num_nodes = s.train_num_nodes if num_nodes is None else num_nodes
    if num_nodes < 1:
        raise ValueError(f"HOMEWORTH_TRAIN_NUM_NODES={num_nodes}: at least one node")
    n = device_count(devices, accelerator)
    if strategy == "ddp_spawn" or strategy.startswith("ddp_fork") or strategy == "ddp_notebook":
        raise ValueError(f"HOMEWORTH_TRAIN_STRATEGY={strategy!r}: the workers are launched by "
                         "tasks.model.distributed; use 'ddp' (or 'auto')")
    return Plan(n, num_nodes, "ddp" if strategy == "auto" and n * num_nodes > 1 else strategy)


def in_worker() -> bool:
    """Whether this process is a rank that :func:`launch` started (it trains, never launches)."""
    return ENV_JOB in os.environ


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(job_dir: Path, p: Plan, node_rank: int, local_rank: int, addr: str, port: int,
               threads: int = 0) -> dict[str, str]:
    """The environment of one worker process (torch.distributed's and Lightning's variables)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the repository: `python -m tasks.model.train` imports
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.update({ENV_JOB: str(job_dir), "MASTER_ADDR": addr, "MASTER_PORT": str(port), "WORLD_SIZE": str(p.world),
                "NODE_RANK": str(node_rank), "LOCAL_RANK": str(local_rank),
                "RANK": str(node_rank * p.devices + local_rank)})
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def write_json(path: Path, data: dict) -> None:
    """``data`` as JSON at ``path``, written to an attempt-unique temporary name and renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def write_result(job_dir: Path, state: dict[str, torch.Tensor], result: dict) -> None:
    """Rank 0's result: the network's weights (safetensors) and the figures (JSON), each renamed into place."""
    from safetensors.torch import save_file

    tmp = job_dir / f".{RESULT_WEIGHTS}.{os.getpid()}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, job_dir / RESULT_WEIGHTS)
    write_json(job_dir / RESULT_JSON, result)


def read_result(job_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    weights, figures = job_dir / RESULT_WEIGHTS, job_dir / RESULT_JSON
    if not figures.exists() or not weights.exists():
        raise RuntimeError(f"{job_dir}: the DDP workers exited without rank 0's result ({RESULT_JSON})")
    return load_file(str(weights)), json.loads(figures.read_text())


def _wait(procs: list[subprocess.Popen], job_dir: Path) -> None:
    """Waits for every worker; when one fails, terminates the others and raises with its rank and status."""
    while True:
        codes = [p.poll() for p in procs]
        failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            rank, code = failed[0]
            raise RuntimeError(f"DDP worker of local rank {rank} exited with status {code} (job {job_dir}); "
                               "its log lines are above")
        if all(code == 0 for code in codes):
            return
        time.sleep(0.2)


def launch(p: Plan, job: dict, threads: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """Runs ``job`` (see the module doc) on ``p.devices`` local worker processes (node 0) and returns rank
    0's (weights, figures). The job folder is removed afterwards unless the run failed."""
    job_dir = Path(tempfile.mkdtemp(prefix="homeworth-ddp-"))
    write_json(job_dir / JOB, {**job, "plan": asdict(p)})
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1") if p.num_nodes > 1 else "127.0.0.1"
    port = free_port()
    log.info("DDP: %d process(es) per node x %d node(s), strategy %s, master %s:%d, job %s", p.devices, p.num_nodes,
             p.strategy, addr, port, job_dir)
    for k in range(1, p.num_nodes):
        log.info("DDP node %d runs: MASTER_ADDR=%s MASTER_PORT=%d python -m tasks.model.train --ddp-job %s "
                 "--node-rank %d", k, addr, port, job_dir, k)
    procs = [subprocess.Popen([sys.executable, "-m", "tasks.model.train", "--ddp-job", str(job_dir)],
                              env=worker_env(job_dir, p, 0, r, addr, port, threads)) for r in range(p.devices)]
    try:
        _wait(procs, job_dir)
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        raise
    out = read_result(job_dir)
    for f in job_dir.iterdir():
        f.unlink()
    job_dir.rmdir()
    return out


def run_node(job_dir: Path, node_rank: int) -> None:
    """Starts this node's workers of a multi-node job (the command :func:`launch` logs for node ``node_rank``)
    and waits for them; ``MASTER_ADDR`` / ``MASTER_PORT`` come from the environment."""
    job = json.loads((job_dir / JOB).read_text())
    p = Plan(**job["plan"])
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    procs = [subprocess.Popen([sys.executable, "-m", "tasks.model.train", "--ddp-job", str(job_dir)],
                              env=worker_env(job_dir, p, node_rank, r, addr, port, job.get("threads", 0)))
             for r in range(p.devices)]
    _wait(procs, job_dir)
