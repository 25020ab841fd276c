"""Latency and throughput of the predict endpoint on loopback; writes docs/serving.md.

    python -m benchmarks.serving                       # the champion of HOMEWORTH_HOME, or a stand-in
    python -m benchmarks.serving --requests 300 --out docs/serving.md

Starts ``python -m tasks.serving.api`` (uvicorn, one worker) on 127.0.0.1 at a free port, sends a
bounded number of ``POST /predict`` requests with batches of 1 and of 100 houses from the bundled
data over one keep-alive connection (and then from several client threads), reports p50 / p99
latency and throughput, writes the Markdown table and stops the server.

When the settings' registry has no champion, the benchmark registers a stand-in in a private
temporary ``HOMEWORTH_HOME``: the default architecture with its preprocessing fitted on a sample of
the bundled sales and untrained weights. Latency does not depend on the weights' values. The same
helper (:func:`register_version`) gives the tests a model without training one.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# A model without training (benchmark stand-in and test fixture)


def sample_csv(spec, dst: Path, every: int = 20, offset: int = 0, limit: int | None = None) -> Path:
    """Every ``every``-th line of the bundled data (from ``offset``) as a CSV with the original text."""
    lines = gzip.decompress(spec.bundled_path().read_bytes()).decode().splitlines(keepends=True)
    body = lines[1 + offset::every][:limit]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(lines[0] + "".join(body))
    return dst


def typed_rows(spec, csv_path: Path, day: date = date(2015, 1, 1)) -> pl.DataFrame:
    """A CSV read and coerced exactly as ingest does."""
    from tasks.ingest.landing import coerce
    from tasks.ingest.read import read_landing_file

    typed, _ = coerce(read_landing_file(str(csv_path), spec), spec, str(csv_path), day)
    return typed


def houses_json(spec, rows: pl.DataFrame) -> list[dict]:
    """Rows as the JSON an endpoint client sends: every column but the target, dates ISO."""
    cols = [c for c in spec.columns if c != spec.target]
    out = []
    for r in rows.select(cols).iter_rows(named=True):
        out.append({k: (v.isoformat() if isinstance(v, date) else v) for k, v in r.items()})
    return out


def register_version(settings, spec, rows: pl.DataFrame, seed: int = 0, champion: bool = True,
                     tags: dict | None = None) -> str:
    """Register a model version whose bundle has preprocessing fitted on ``rows`` and untrained weights.

    Its MLflow run carries test metrics on ``rows`` and lineage-like tags; with ``champion`` the
    alias points at it (as a promotion would, without a ledger event). Returns the version.
    """
    import torch

    from tasks.core import tracking
    from tasks.core.metrics import price_metrics
    from tasks.features.featureset import SPLIT, feature_set
    from tasks.features.fit import fit_preprocessing
    from tasks.model.bundle import ModelBundle, save_bundle
    from tasks.model.config import ModelConfig
    from tasks.model.networks import TabularNet

    fset = feature_set(spec)
    c = tracking.client(settings)
    exp = tracking.experiment_id(c, settings)
    with tempfile.TemporaryDirectory() as tmp:
        feats = rows.lazy().pipe(fset.derive).with_columns(pl.lit("train").alias(SPLIT)).collect()
        feats.write_parquet(f"{tmp}/features.parquet")
        start, end = rows[spec.event_time].min(), rows[spec.event_time].max()
        prep = fit_preprocessing(f"{tmp}/features.parquet", spec, fset,
                                 {"window_start": str(start), "window_end": str(end), "rows": {"train": rows.height}})
        cfg = ModelConfig(seed=seed)
        torch.manual_seed(seed)
        net = TabularNet(len(prep.numeric), [len(v.values) for v in prep.categorical], cfg)
        save_bundle(Path(tmp) / "model", net, cfg, prep)
        pred = ModelBundle.load(Path(tmp) / "model", lake_uri=settings.lake_uri).predict(rows)
        all_tags = {"data.window_start": str(start), "data.window_end": str(end), "preprocessing.sha256": prep.sha256(),
                    "dataset": spec.name, "stand_in": "untrained weights", **(tags or {})}
        run = c.create_run(exp, run_name=f"stand-in seed {seed}", tags=all_tags)
        for k, v in price_metrics(rows[spec.target].to_numpy(), pred).items():
            c.log_metric(run.info.run_id, f"test/{k}", v)
        c.log_artifacts(run.info.run_id, str(Path(tmp) / "model"), "model")
    tracking.ensure_registered_model(c, settings.model_name)
    mv = c.create_model_version(settings.model_name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                tags=all_tags)
    c.set_tag(run.info.run_id, "model_version", mv.version)
    c.set_terminated(run.info.run_id, "FINISHED")
    if champion:
        c.set_model_version_tag(settings.model_name, mv.version, "promotion.decision", "promoted")
        c.set_model_version_tag(settings.model_name, mv.version, "promotion.reason", "stand-in registered by a test")
        c.set_registered_model_alias(settings.model_name, tracking.CHAMPION, mv.version)
    return str(mv.version)


# ---------------------------------------------------------------------------------------------
# The benchmark


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict, port: int, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tasks.serving.api", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    log.close()
    return proc


def auth_headers() -> dict[str, str]:
    """The bearer token the endpoint wants when ``HOMEWORTH_API_TOKENS`` is set (docs/serving.md#security)."""
    tokens = [t.strip() for t in os.environ.get("HOMEWORTH_API_TOKENS", "").split(",") if t.strip()]
    return {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}


def wait_ready(base: str, proc: subprocess.Popen, log_path: Path, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/model", timeout=30, headers=auth_headers()).status_code == 200:  # /model loads the champion
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not ready after {timeout}s")


def stop_server(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def measure(base: str, houses: list[dict], batch: int, requests: int, max_seconds: float, clients: int = 1) -> dict:
    """``requests`` POSTs (or fewer when ``max_seconds`` runs out) of ``batch`` houses, over ``clients`` threads."""
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds
    per_client = max(1, requests // clients)

    def worker(k: int) -> None:
        with httpx.Client(base_url=base, timeout=60, headers=auth_headers()) as http:
            for i in range(per_client):
                if time.monotonic() > deadline:
                    return
                start = (k * per_client + i) * batch % max(1, len(houses) - batch)
                body = {"houses": houses[start:start + batch]}
                t0 = time.perf_counter()
                r = http.post("/predict", json=body)
                dt = time.perf_counter() - t0
                r.raise_for_status()
                assert len(r.json()["predictions"]) == batch
                with lock:
                    latencies.append(dt)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
    return {"batch": batch, "clients": clients, "requests": len(lat), "seconds": round(wall, 2),
            "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2),
            "requests_per_s": round(len(lat) / wall, 1), "houses_per_s": round(len(lat) * batch / wall, 1)}


def markdown(results: list[dict], meta: dict) -> str:
    rows = "\n".join(f"| {r['batch']} | {r['clients']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r['requests_per_s']} | {r['houses_per_s']} |" for r in results)
    by = {(r["batch"], r["clients"]): r for r in results}
    parts = []
    for batch in sorted({r["batch"] for r in results}):
        one = by.get((batch, 1))
        many = [r for r in results if r["batch"] == batch and r["clients"] > 1]
        if one and many:
            m = many[0]
            parts.append(f"batch {batch}: {m['clients']} client threads give {m['houses_per_s'] / one['houses_per_s']:.1f}x "
                         f"the houses/s of one, at {m['p50_ms'] / one['p50_ms']:.1f}x the p50 latency")
    gain = ("One uvicorn process serves requests concurrently (FastAPI runs the handler in a thread pool; "
            "torch releases the GIL): " + "; ".join(parts) + ". Scale out with more API-server or uvicorn "
            "workers.") if parts else "Scale out with more API-server or uvicorn workers."
    return f"""# Serving benchmark

`POST /predict` of the FastAPI app in `tasks/serving/api.py`, served by uvicorn (one process) on
127.0.0.1, measured by `benchmarks/serving.py` with keep-alive `httpx` clients. Latency is the
client-side wall time of one request (JSON encoding, HTTP, pydantic validation of every house,
the Polars feature derivation, the network's forward pass and the JSON answer).

Command: `{meta['command']}`

| batch (houses per request) | client threads | requests | p50 latency (ms) | p99 latency (ms) | requests/s | houses/s |
|---:|---:|---:|---:|---:|---:|---:|
{rows}

Measured {meta['when']} on {meta['machine']} ({meta['cpus']} CPUs), Python {meta['python']}, torch
{meta['torch']} with {meta['torch_threads']} intra-op threads; model: {meta['model']}.

Notes:
- The client threads run on the same machine as the server and share its CPUs with it, so these
  numbers are a lower bound of what the server alone does.
- {gain}
- The champion is looked up by alias at most every `HOMEWORTH_SERVING_ALIAS_TTL_S` seconds (default
  10), so a new champion is served without a restart; the bundle is loaded once per version.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=1000, help="requests per batch size (upper bound)")
    p.add_argument("--max-seconds", type=float, default=60, help="time limit of each measurement")
    p.add_argument("--clients", type=int, default=4, help="client threads of the throughput pass")
    p.add_argument("--stand-in", action="store_true", help="always use a stand-in model in a temporary home")
    p.add_argument("--out", default=str(ROOT / "docs" / "serving.md"), help="Markdown file to write ('' for none)")
    args = p.parse_args(argv)

    from tasks.core import tracking
    from tasks.core.settings import Settings
    from tasks.core.spec import get_spec

    env = dict(os.environ, HOMEWORTH_SERVING_ALIAS_TTL_S="10")
    spec = get_spec()
    tmp = Path(tempfile.mkdtemp(prefix="homeworth-bench-"))
    settings = Settings()
    uri = settings.mlflow_tracking_uri
    store_exists = not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()
    has_champion = (not args.stand_in and store_exists
                    and tracking.champion_version(tracking.client(settings), settings.model_name))
    if not has_champion:
        env["HOMEWORTH_HOME"] = str(tmp / "state")
        for k in [k for k in env if k.startswith("HOMEWORTH_") and k not in ("HOMEWORTH_HOME",
                                                                            "HOMEWORTH_SERVING_ALIAS_TTL_S")]:
            del env[k]
        settings = Settings(home=tmp / "state")
        fit = typed_rows(spec, sample_csv(spec, tmp / "fit.csv", every=10))
        version = register_version(settings, spec, fit)
        model = (f"stand-in v{version} (default architecture, untrained weights; preprocessing fitted on "
                 f"{fit.height:,} sales)")
    else:
        model = f"{settings.model_name} champion v{has_champion.version}"
    houses = houses_json(spec, typed_rows(spec, sample_csv(spec, tmp / "houses.csv", every=7, offset=3, limit=2000)))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(env, port, tmp / "server.log")
    try:
        wait_ready(base, proc, tmp / "server.log")
        measure(base, houses, 1, 20, 30)  # warm-up
        results = []
        for batch in (1, 100):
            n = args.requests if batch == 1 else max(args.requests // 3, 20)
            results.append(measure(base, houses, batch, n, args.max_seconds))
            results.append(measure(base, houses, batch, n, args.max_seconds, clients=args.clients))
        import httpx

        info = httpx.get(f"{base}/model", timeout=30, headers=auth_headers()).json()
    finally:
        stop_server(proc)
    import torch

    shown = sys.argv[1:] if argv is None else argv
    meta = {"command": " ".join(["python -m benchmarks.serving", *shown]),
            "when": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "model": f"{model}; {info['model_config'].get('family')} hidden {info['model_config'].get('hidden')}"}
    print(json.dumps({"results": results, **meta}, indent=2))
    if args.out:
        Path(args.out).write_text(markdown(results, meta))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
