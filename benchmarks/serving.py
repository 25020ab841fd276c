"""Latency and throughput of the predict endpoint serving a real champion, and of batch scoring; updates docs/serving.md.

    python -m benchmarks.serving                       # HOMEWORTH_HOME's champion (after `make demo`)
    python -m benchmarks.serving --train               # train a real champion in a private home first
    python -m benchmarks.serving --repeats 5 --batch-rows 1000000 --out docs/serving.md

It measures what users run: a champion trained on the dataset's lake with its comparable sales (King
County by default). The home's champion is used when it is one; a stand-in (untrained weights,
``register_version``) or a model without the dataset's comparable sales is refused with the reason.
``--train`` replays, ingests and validates the bundled sales into a private temporary home and trains
one with the retrain's own steps (``--max-epochs`` bounds it: latency does not depend on the weights).

Starts ``python -m tasks.serving.api`` (uvicorn, one worker) on 127.0.0.1 at a free port and sends
``POST /predict`` with 1 house from 1 client, 1 house from ``--clients`` client threads, and 100
houses from 1 client (keep-alive ``httpx``); each row is ``--repeats`` runs, reported as the median
and spread of p50, p99 and houses/s. With ``--train`` (a home it may change) it also measures a run
during which a new day of validated sales lands in the lake and a new champion version takes the alias.
Then it prices ``--batch-rows`` listings in process with batch scoring's call
(``tasks.serving.score.predict``) and reports houses/s beside the endpoint's one-house rate. Every
figure names the model and its data, and the load average around the run. The Markdown block between
``<!-- serving:begin -->`` and ``<!-- serving:end -->`` of ``--out`` is replaced; the rest is kept.

:func:`register_version` (a stand-in without training) is kept for the tests.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from tools.servers import free_port, stop

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
    from tasks.model.networks import build_net

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
        net = build_net(prep, cfg)
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
    return summarise(latencies, wall, batch, clients)


def summarise(latencies: list[float], wall: float, batch: int, clients: int) -> dict:
    lat = sorted(latencies)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
    return {"batch": batch, "clients": clients, "requests": len(lat), "seconds": round(wall, 2),
            "p50_ms": round(q[49] * 1000, 2), "p99_ms": round(q[98] * 1000, 2), "max_ms": round(lat[-1] * 1000, 2),
            "requests_per_s": round(len(lat) / wall, 1), "houses_per_s": round(len(lat) * batch / wall, 1)}


def repeated(base: str, houses: list[dict], batch: int, clients: int, repeats: int, requests: int,
             max_seconds: float) -> dict:
    """``repeats`` runs of :func:`measure`: the median of each figure and its spread (min-max) over the runs."""
    runs = [measure(base, houses, batch, requests, max_seconds, clients) for _ in range(repeats)]
    out = {"batch": batch, "clients": clients, "repeats": repeats, "requests": sum(r["requests"] for r in runs)}
    for k in ("p50_ms", "p99_ms", "max_ms", "requests_per_s", "houses_per_s"):
        vals = [r[k] for r in runs]
        out[k], out[f"{k}_spread"] = round(statistics.median(vals), 2), [min(vals), max(vals)]
    return out


# ---------------------------------------------------------------------------------------------
# A real champion: trained on the dataset's lake with its comparable sales, or the home's own


def train_champion(settings, spec, max_epochs: int) -> str:
    """Replay, ingest and validate the bundled sales into ``settings``' (empty) lake, then the retrain's own steps
    (``features_step`` with the dataset's comps, ``train_step``): a real champion, ``max_epochs`` bounding the
    training. Returns its version."""
    from benchmarks.model_quality import ensure_lake, lake_end
    from tasks.core import tracking
    from tasks.core.lineage import Lineage, training_window
    from tasks.core.params import RetrainParams
    from tasks.model.retrain import features_step, train_step

    ensure_lake(spec, settings)
    as_of = lake_end(settings, spec)
    params = RetrainParams(max_epochs=max_epochs, refit_on_val=False)
    start, end = training_window(as_of, params.window_days)
    lineage = Lineage(dag_id="benchmark_serving", run_id=f"train_{int(time.time())}", window_start=start.isoformat(),
                      window_end=end.isoformat())
    trained = train_step(settings, features_step(spec, settings, as_of, params), params, lineage)
    c = tracking.client(settings)
    c.set_model_version_tag(settings.model_name, trained.model_version, "promotion.reason",
                            f"trained by benchmarks.serving ({max_epochs} epochs at most)")
    c.set_registered_model_alias(settings.model_name, tracking.CHAMPION, trained.model_version)
    return str(trained.model_version)


def champion_check(settings, spec) -> tuple[str | None, str]:
    """(version, description) of the home's champion if it is a real model with the dataset's comparable sales,
    else (None, why not)."""
    from tasks.core import tracking
    from tasks.features.featureset import feature_set

    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None, f"no MLflow store at {uri}"
    mv = tracking.champion_version(tracking.client(settings), settings.model_name)
    if mv is None:
        return None, f"model {settings.model_name!r} has no champion in {settings.home}"
    if mv.tags.get("stand_in"):
        return None, f"v{mv.version} is a stand-in ({mv.tags['stand_in']}), not what users run"
    from tasks.serving.champion import load_bundle

    bundle = load_bundle(tracking.client(settings), settings.model_name, str(mv.version), settings.lake_uri)
    wanted = feature_set(spec, settings.comps).comps
    if wanted is not None and bundle.prep.comps is None:
        return None, f"v{mv.version} has no comparable sales, the dataset's features have them"
    sales = bundle.history_frame()
    data = f"{spec.name} lake, {0 if sales is None else sales.height:,} validated sales"
    if sales is not None and sales.height:
        data += f" {sales[spec.event_time].min()}..{sales[spec.event_time].max()}"
    comps = "with comparable sales" if bundle.prep.comps is not None else "without comparable sales"
    return str(mv.version), (f"{settings.model_name} v{mv.version} ({bundle.cfg.family}, hidden {bundle.cfg.hidden}, "
                             f"{comps}), {data}")


# ---------------------------------------------------------------------------------------------
# A new day of sales and a new champion while requests flow (private home only)


def add_day(settings, spec) -> str:
    """The lake's last validated day again, dated the day after: a newly validated partition."""
    from tasks.core import lake, storage

    table = storage.join(settings.lake_uri, lake.VALIDATED)
    last = max(n.split("=", 1)[1] for n in storage.list_dir(table) if n.startswith("ds="))
    day = date.fromisoformat(last)
    rows = pl.read_parquet(storage.read_bytes(lake.partition_uri(settings.lake_uri, lake.VALIDATED, day)))
    new = date.fromordinal(day.toordinal() + 1)
    storage.write_parquet_atomic(rows.with_columns(pl.lit(new).alias(spec.event_time)),
                                 lake.partition_uri(settings.lake_uri, lake.VALIDATED, new))
    return new.isoformat()


def new_version(settings) -> str:
    """The champion's artifacts registered again as a new version, and the alias moved to it."""
    from tasks.core import tracking

    c = tracking.client(settings)
    mv = tracking.champion_version(c, settings.model_name)
    v2 = c.create_model_version(settings.model_name, source=mv.source, run_id=mv.run_id, tags=mv.tags)
    c.set_registered_model_alias(settings.model_name, tracking.CHAMPION, v2.version)
    return str(v2.version)


def during_swaps(base: str, houses: list[dict], settings, spec, seconds: float) -> dict:
    """One client, one house per request, for ``seconds``; a third of the way in a new day of sales lands in the
    lake, two thirds in a new champion version takes the alias. Latency over the whole window, and whether the
    endpoint then serves the new version."""
    import httpx

    events: dict = {}

    def act() -> None:
        time.sleep(seconds / 3)
        events["new_day"] = add_day(settings, spec)
        time.sleep(seconds / 3)
        events["new_version"] = new_version(settings)

    actor = threading.Thread(target=act)
    actor.start()
    result = measure(base, houses, 1, 10**9, seconds)
    actor.join()
    time.sleep(3)
    served = httpx.post(f"{base}/predict", json={"houses": houses[:1]}, headers=auth_headers(), timeout=30).json()
    return {**result, **events, "served_after": served["model_version"]}


# ---------------------------------------------------------------------------------------------
# Batch scoring throughput, in process, with the same tables


def batch_throughput(settings, spec, rows: int, chunk: int = 100_000) -> dict:
    """Price ``rows`` listings (the lake's sales resampled, dated the week after its last day) with the champion
    through ``tasks.serving.score.predict`` (the batch scoring call: comps index, preprocessing, network), in chunks
    of ``chunk``. Returns houses/s (the index is built before the clock starts, as a nightly's first day does)."""
    from tasks.core import tracking
    from tasks.serving.champion import load_bundle
    from tasks.serving.score import predict

    c = tracking.client(settings)
    mv = tracking.champion_version(c, settings.model_name)
    bundle = load_bundle(c, settings.model_name, str(mv.version), settings.lake_uri)
    bundle.warm()
    sales = bundle.history_frame()
    last = sales[spec.event_time].max()
    listings = sales.select([c for c in spec.columns if c in sales.columns]).sample(rows, with_replacement=True, seed=1)
    listings = listings.with_columns((pl.lit(last) + pl.duration(days=pl.int_range(pl.len()) % 7 + 1))
                                     .cast(pl.Date).alias(spec.event_time))
    t0, cpu0 = time.perf_counter(), time.process_time()
    n = 0
    for i in range(0, rows, chunk):
        n += len(predict(bundle, spec, listings.slice(i, chunk)))
    wall = time.perf_counter() - t0
    return {"rows": n, "seconds": round(wall, 1), "cpu_s": round(time.process_time() - cpu0, 1),
            "houses_per_s": round(n / wall, 1)}


# ---------------------------------------------------------------------------------------------
# Where the time of one house goes (in process, the champion's bundle): the plan's road and the index's


def where_the_time_goes(settings, spec, repeats: int = 30) -> list[tuple[str, float, float]]:
    """(stage, median ms the old road took, median ms now) for one house priced by the champion in process: the
    old road is the plan over the lake's history (listed on every call), Polars expressions for the network's
    inputs and offset, a one-row forward pass; the new one is the comps index, ``FeatureMatrices`` and a pass of
    ``SCORE_ROWS``."""
    import torch

    from tasks.core import tracking
    from tasks.features.comps import lake_history
    from tasks.model.tensors import to_tensors
    from tasks.serving.champion import load_bundle
    from tasks.serving.score import model_frame

    c = tracking.client(settings)
    version = str(tracking.champion_version(c, settings.model_name).version)
    bundle = load_bundle(c, settings.model_name, version, settings.lake_uri)
    bundle.warm()
    lh = lake_history(settings.lake_uri, bundle.prep.comps)
    sales = lh.frame()
    house = model_frame(spec, sales.tail(1).with_columns(pl.col(spec.event_time) + pl.duration(days=1)))
    index = bundle.comps_index(fresh=False)
    feats = bundle.prep.features(house, sales).collect()
    x = to_tensors(bundle.prep, feats, with_target=False)

    def ms(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return round(statistics.median(times) * 1000, 2)

    def old_predict():
        f = bundle.prep.features(house, lh.frame()).collect()
        with torch.inference_mode():
            z = bundle.net(*to_tensors(bundle.prep, f, with_target=False)).numpy()
        return bundle.prep.decode_rows(z, f)

    def forward_one():
        with torch.inference_mode():
            bundle.net(*x)

    z = np.zeros(1, np.float32)
    return [
        ("list the lake's partitions (every request before; every TTL in the background now)", ms(lh._partitions), 0.0),
        ("comparable sales + derive: the plan over the history / the index",
         ms(lambda: bundle.prep.features(house, sales).collect()), ms(lambda: bundle.prep.derive(index.comps(house).lazy()).collect())),
        ("network inputs: Polars expressions / FeatureMatrices", ms(lambda: to_tensors(bundle.prep, feats, with_target=False)),
         ms(lambda: bundle.matrices.tensors(feats))),
        ("forward pass: 1 row / a pass of SCORE_ROWS", ms(forward_one), ms(lambda: bundle.forward(*x))),
        ("decode with the offset: Polars / numpy", ms(lambda: bundle.prep.decode_rows(z, feats)), ms(lambda: bundle.matrices.decode(z, feats))),
        ("ModelBundle.predict, one house, in all", ms(old_predict), ms(lambda: bundle.predict(house, fresh=False))),
    ]


# ---------------------------------------------------------------------------------------------
# The table and the command line

BEGIN, END = "<!-- serving:begin -->", "<!-- serving:end -->"


def _spread(r: dict, k: str) -> str:
    lo, hi = r[f"{k}_spread"]
    return f"{r[k]} ({lo}-{hi})"


def markdown(results: list[dict], meta: dict, swap: dict | None, batch: dict | None) -> str:
    rows = "\n".join(f"| {r['clients']} | {r['batch']} | {r['repeats']} x {r['requests'] // r['repeats']} | "
                     f"{_spread(r, 'p50_ms')} | {_spread(r, 'p99_ms')} | {_spread(r, 'houses_per_s')} |" for r in results)
    lines = [BEGIN, "", f"Command: `{meta['command']}`", "",
             f"Model: {meta['model']}. Measured {meta['when']} on {meta['machine']} ({meta['cpus']} CPUs), Python "
             f"{meta['python']}, torch {meta['torch']} (the server: `HOMEWORTH_TORCH_THREADS` or 1 intra-op thread; "
             f"batch scoring: {meta['torch_threads']}); load average "
             f"before / after: {meta['load_before']} / {meta['load_after']} (other work on the machine inflates the "
             "figures).", "",
             "Each figure is the median of the repeats, the spread (min-max over the repeats) in brackets.", "",
             "| clients | houses per request | repeats x requests | p50 (ms) | p99 (ms) | houses/s |",
             "|---:|---:|---:|---:|---:|---:|", rows, ""]
    if swap:
        lines += [f"While a new day of sales ({swap['new_day']}) landed in the lake and a new champion "
                  f"(v{swap['new_version']}) took the alias: 1 client, 1 house, {swap['requests']} requests in "
                  f"{swap['seconds']} s: p50 {swap['p50_ms']} ms, p99 {swap['p99_ms']} ms, slowest {swap['max_ms']} ms; "
                  f"served afterwards: v{swap['served_after']}.", ""]
    if batch:
        one = next((r for r in results if r["batch"] == 1 and r["clients"] == 1), None)
        ratio = f", {batch['houses_per_s'] / one['houses_per_s']:.0f}x the endpoint's one-house rate above" if one else ""
        lines += [f"Batch scoring (`tasks.serving.score.predict`, in process, the same comps index and model): "
                  f"{batch['rows']:,} listings in {batch['seconds']} s ({batch['cpu_s']} s CPU): "
                  f"{batch['houses_per_s']:,.0f} houses/s{ratio}.", ""]
    return "\n".join([*lines, END])


def write_docs(text: str, path: Path) -> None:
    """Replace the measured block of ``path`` (between the markers; appended if missing), keeping the rest."""
    doc = path.read_text() if path.exists() else "# Serving\n"
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(doc)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=400, help="requests per run (upper bound)")
    p.add_argument("--max-seconds", type=float, default=8, help="time limit of each run")
    p.add_argument("--repeats", type=int, default=5, help="runs per row; figures are their median and spread")
    p.add_argument("--clients", type=int, default=4, help="client threads of the concurrent rows")
    p.add_argument("--train", action="store_true",
                   help="train a real champion (the dataset's lake and comps) in a private home instead of using "
                        "HOMEWORTH_HOME's; also measures the swap of a new day of sales and a new champion")
    p.add_argument("--max-epochs", type=int, default=3, help="epochs bound of --train (latency does not depend on it)")
    p.add_argument("--swap-seconds", type=float, default=30, help="length of the swap measurement (with --train)")
    p.add_argument("--batch-rows", type=int, default=1_000_000, help="listings of the batch scoring run (0: none)")
    p.add_argument("--out", default=str(ROOT / "docs" / "serving.md"), help="Markdown file to update ('' for none)")
    p.add_argument("--where", action="store_true", help="only print where one house's time goes (in process), old "
                   "road vs new, and exit")
    return p.parse_args(argv)


def prepare(args, spec, tmp: Path) -> tuple[dict, object, str, bool]:
    """(server environment, settings, model description, private home?) or SystemExit naming why not."""
    from tasks.core.settings import Settings

    env = dict(os.environ, HOMEWORTH_SERVING_ALIAS_TTL_S=os.environ.get("HOMEWORTH_SERVING_ALIAS_TTL_S", "2"))
    if args.train:
        env["HOMEWORTH_HOME"] = str(tmp / "state")
        for k in [k for k in env if k.startswith("HOMEWORTH_") and k not in ("HOMEWORTH_HOME", "HOMEWORTH_SERVING_ALIAS_TTL_S",
                                                                            "HOMEWORTH_DATASET_SPEC", "HOMEWORTH_COMPS")]:
            del env[k]
        settings = Settings(home=tmp / "state")
        train_champion(settings, spec, args.max_epochs)
    else:
        settings = Settings()
    version, described = champion_check(settings, spec)
    if version is None:
        raise SystemExit(f"benchmarks.serving refuses to measure: {described}. It measures what users run: a "
                         "champion trained on the dataset's lake with its comparable sales (`make demo`), or pass "
                         "--train to train one in a private home.")
    return env, settings, described, bool(args.train)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tasks.core.spec import get_spec

    tmp = Path(tempfile.mkdtemp(prefix="homeworth-bench-"))
    if args.train:  # the in-process steps (training, batch scoring) use the private home too
        os.environ["HOMEWORTH_HOME"] = str(tmp / "state")
    spec = get_spec()
    env, settings, model, private = prepare(args, spec, tmp)
    if args.where:
        from tasks.serving.api import set_torch_threads

        set_torch_threads(settings.torch_threads or 1)  # as python -m tasks.serving does
        print(f"Model: {model}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
        print("| stage | before (ms) | now (ms) |\n|---|---:|---:|")
        for stage, old, new in where_the_time_goes(settings, spec):
            print(f"| {stage} | {old} | {new} |")
        return 0
    houses = houses_json(spec, typed_rows(spec, sample_csv(spec, tmp / "houses.csv", every=7, offset=3, limit=2000)))
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(env, port, tmp / "server.log")
    swap = None
    try:
        wait_ready(base, proc, tmp / "server.log")
        measure(base, houses, 1, 50, 30)  # warm-up
        results = [repeated(base, houses, batch, clients, args.repeats, args.requests, args.max_seconds)
                   for batch, clients in ((1, 1), (1, args.clients), (100, 1))]
        if private:
            swap = during_swaps(base, houses, settings, spec, args.swap_seconds)
    finally:
        stop(proc)  # the server's process group: SIGTERM, then SIGKILL
    batch = batch_throughput(settings, spec, args.batch_rows) if args.batch_rows else None
    import torch

    from tasks.serving.api import set_torch_threads

    set_torch_threads(settings.torch_threads)
    shown = sys.argv[1:] if argv is None else argv
    meta = {"command": " ".join(["python -m benchmarks.serving", *shown]), "model": model,
            "when": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_before": load_before,
            "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    text = markdown(results, meta, swap, batch)
    print(json.dumps({"results": results, "swap": swap, "batch": batch, **meta}, indent=2))
    print(text)
    if args.out:
        write_docs(text, Path(args.out))
        print(f"updated {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
