"""Local servers of the production shape, for the integration tests and the benchmarks: moto's standalone S3
server (through ``tools/moto_ranged.py``: a ranged GET reads only its range) and a real ``mlflow server`` whose
artifacts go to S3 on it.

Each server runs in its own process group and is stopped with it (SIGTERM, then SIGKILL), so nothing is left
running. ``s3_and_mlflow`` yields the environment that points homeworth, MLflow and every AWS client at them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKETS = ("landing", "lake", "mlflow")
# moto's server with ranged GETs that read only their range (run as a script: tools/ is not an installed package)
MOTO_RANGED = Path(__file__).with_name("moto_ranged.py")


def free_port() -> int:
    """A free TCP port on the loopback address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(argv: list[str], log: Path, env: dict[str, str], health: str, timeout: float = 180) -> subprocess.Popen:
    """A server in its own process group (working folder: ``log``'s), returned once ``health`` answers 200."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=log.parent, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[:3]} exited {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(health, timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"{argv[:3]} not up on {health} after {timeout}s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server's whole process group: SIGTERM, then SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def clean_env(prefixes: tuple[str, ...] = ("AWS_", "MLFLOW_")) -> dict[str, str]:
    """This process's environment without the variables that would point a server elsewhere."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=CREDS["AWS_DEFAULT_REGION"],
                        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"])


def mlflow_server(root: Path, port: int, env: dict[str, str], artifacts: str) -> subprocess.Popen:
    """``mlflow server`` with a SQLite store in ``root`` and its artifacts proxied to ``artifacts``."""
    return serve([str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                  f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts", "--artifacts-destination", artifacts,
                  "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                 root / "mlflow.log", env, f"http://127.0.0.1:{port}/health")


@contextmanager
def s3_and_mlflow(root: Path, buckets: tuple[str, ...] = BUCKETS, mlflow_env: dict[str, str] | None = None
                  ) -> Iterator[dict]:
    """moto's S3 server with ``buckets`` and an ``mlflow server`` (artifacts in ``s3://mlflow/artifacts``), logs
    and store in ``root``. Yields ``{"env", "endpoint", "mlflow_uri", "s3", "procs"}``: ``env`` holds the AWS
    variables and ``HOMEWORTH_MLFLOW_TRACKING_URI``; both servers are stopped on exit."""
    root.mkdir(parents=True, exist_ok=True)
    base = clean_env()
    s3_port, mlflow_port = free_port(), free_port()
    endpoint, mlflow_uri = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{mlflow_port}"
    procs = [serve([sys.executable, str(MOTO_RANGED), "-H", "127.0.0.1", "-p", str(s3_port)],
                   root / "moto.log", base, f"{endpoint}/moto-api/")]
    try:
        s3 = s3_client(endpoint)
        for bucket in buckets:
            s3.create_bucket(Bucket=bucket)
        aws = {**CREDS, "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}
        procs.append(mlflow_server(root, mlflow_port, {**base, **aws, **(mlflow_env or {})}, "s3://mlflow/artifacts"))
        yield {"env": {**aws, "HOMEWORTH_MLFLOW_TRACKING_URI": mlflow_uri}, "endpoint": endpoint,
               "mlflow_uri": mlflow_uri, "s3": s3, "procs": procs}
    finally:
        for p in reversed(procs):
            stop(p)


def keys(s3, bucket: str, prefix: str = "") -> list[str]:
    """Every key of ``bucket`` under ``prefix``."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]
