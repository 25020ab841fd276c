"""Deep model vs gradient boosting on a dataset's time split, outside Airflow; writes docs/model.md's table.

    python -m benchmarks.model_quality                         # default family (tabm), fresh private state
    python -m benchmarks.model_quality --families tabm,mlp_plr,mlp --write-docs
    python -m benchmarks.model_quality --home .state --use-tuned  # an existing state, its tuning result
    python -m benchmarks.model_quality --spec tasks/datasets/melbourne/spec.yaml   # another market (its spec)

It runs the retrain's own steps in-process, in a private ``HOMEWORTH_HOME`` (a temporary folder unless
``--home`` is given): the bundled sales are replayed, ingested and validated (skipped when the lake
already has validated partitions), then for each family ``features_step`` -> ``train_step`` ->
``evaluate_step`` of ``tasks/model/retrain.py`` and ``tasks/registry/evaluate.py`` exactly as the DAG's tasks call
them (MLflow run, registered version, evaluation report). ``evaluate_step`` trains gradient boosting
on the same features and split; its metrics are the ``gbm`` rows. The retrain window ends on
``--as-of`` (King County's default 2015-05-28: test = sales on or after 2015-03-01, validation = January-February
2015; with ``--spec`` and no ``--as-of``: the day after the spec's bundled file's last sale).
Times are wall-clock seconds on this machine; ``cpu_s`` is the process CPU time of the step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BEGIN, END = "<!-- model_quality:begin -->", "<!-- model_quality:end -->"
DATASET_NAMES = {"king_county": "King County", None: "King County"}


def _timed(fn, *args):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, round(time.perf_counter() - w, 1), round(time.process_time() - c, 1)


def ensure_lake(spec, settings) -> dict:
    """Replay, ingest and validate the bundled sales unless the lake already has validated partitions."""
    from tasks.core import storage

    if storage.list_dir(storage.join(settings.lake_uri, "validated")):
        return {"reused_lake": True}
    from tasks.ingest.landing import ingest_interval
    from tasks.ingest.replay import replay
    from tasks.quality.validate import validate_interval

    replayed = replay(spec, settings.landing_uri)
    first, last = date.fromisoformat(replayed["first_day"]), date.fromisoformat(replayed["last_day"])
    end = date.fromordinal(last.toordinal() + 1)
    ingest_interval(spec, settings.landing_uri, settings.lake_uri, first, end)
    result = validate_interval(spec, settings.lake_uri, first, end)
    return {"reused_lake": False, "rows_accepted": result["rows_accepted"]}


def run(families: list[str], as_of: date | None, use_tuned: bool, seed: int, refit: bool = True,
        max_epochs: int | None = None) -> dict:
    from tasks.core.lineage import Lineage, training_window
    from tasks.core.params import RetrainParams
    from tasks.core.settings import get_settings
    from tasks.core.spec import get_spec
    from tasks.model.retrain import features_step, train_step
    from tasks.registry.evaluate import evaluate_step

    settings, spec = get_settings(), get_spec()
    lake = ensure_lake(spec, settings)
    as_of = as_of or lake_end(settings, spec)
    results = []
    features = None
    for family in families:
        params = RetrainParams(model_family=family, use_tuned_config=use_tuned, seed=seed, refit_on_val=refit,
                               **({"max_epochs": max_epochs} if max_epochs else {}))
        start, end = training_window(as_of, params.window_days)
        lineage = Lineage(dag_id="benchmark_model_quality", run_id=f"{family}_{int(time.time())}",
                          window_start=start.isoformat(), window_end=end.isoformat())
        t_features = c_features = 0.0
        if features is None:
            features, t_features, c_features = _timed(features_step, spec, settings, as_of, params)
        trained, t_train, c_train = _timed(train_step, settings, features, params, lineage)
        evaluation, t_eval, c_eval = _timed(evaluate_step, spec, settings, features, trained)
        results.append({"family": family, "config_source": trained.config_source,
                        "features_s": t_features, "features_cpu_s": c_features,
                        "train_step_s": t_train, "train_step_cpu_s": c_train, "train_s": trained.train_seconds,
                        "epochs": trained.epochs, "best_epoch": trained.best_epoch, "refit": trained.refit,
                        "val_rmse_ln": trained.val_rmse_ln, "evaluate_s": t_eval, "evaluate_cpu_s": c_eval,
                        "metrics": evaluation.metrics, "gbm": evaluation.gbm,
                        "test_rows": evaluation.test_rows, "report": evaluation.report_uri})
    test_start = (as_of - timedelta(days=spec.split.test_days)).isoformat()
    return {"dataset": spec.name, "as_of": as_of.isoformat(), "test_start": test_start, "rows": features.rows,
            "lake": lake,
            "results": results,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"}


def lake_end(settings, spec) -> date:
    """The day after the newest validated partition (the retrain's interval end for a whole bundled file)."""
    from tasks.core import storage

    days = [n.split("=", 1)[1] for n in storage.list_dir(storage.join(settings.lake_uri, "validated")) if "=" in n]
    return date.fromisoformat(max(days)) + timedelta(days=1)


def table(out: dict) -> str:
    rows = ["| model | test mdape | test ppe10 | test rmse_ln | val rmse_ln | training s (wall) | full retrain s |",
            "|---|---|---|---|---|---|---|"]
    gbm_done = False
    for r in out["results"]:
        m = r["metrics"]["new"]
        full = r["features_s"] + r["train_step_s"] + r["evaluate_s"]
        refit = r.get("refit") or {}
        averaged = f", weights of its last {refit['averaged_epochs']} averaged" if refit.get("averaged_epochs", 1) > 1 else ""
        how = (f"{r['epochs']} epochs, refit {refit['epochs']} on train + val{averaged}" if refit.get("done")
               else f"{r['epochs']} epochs" + (f", no refit: {refit['reason']}" if refit else ""))
        rows.append(f"| {r['family']} ({r['config_source']} config, {how}) | {m['mdape']:.3%} | "
                    f"{m['ppe10']:.1%} | {m['rmse_ln']:.4f} | {r['val_rmse_ln']:.4f} | {r['train_s']:.0f} | {full:.0f} |")
        if r.get("gbm") and "gbm" in r["metrics"] and not gbm_done:
            g, gi = r["metrics"]["gbm"], r["gbm"]
            refit = ", refit on train + val" if gi.get("refit") else ""
            rows.append(f"| gradient boosting (HistGradientBoosting, same features, {gi['n_iter']:.0f} trees{refit}) | "
                        f"{g['mdape']:.3%} | {g['ppe10']:.1%} | {g['rmse_ln']:.4f} | {gi['val_rmse_ln']:.4f} | "
                        f"{gi['train_seconds']:.0f} | - |")
            gbm_done = True
    rows_by_split = "/".join(str(out["rows"][s]) for s in ("train", "val", "test"))
    return "\n".join([
        f"{DATASET_NAMES.get(out.get('dataset'), out.get('dataset'))}, retrain as of {out['as_of']} (rows train/val/test {rows_by_split}; test = sales on or "
        f"after {out['test_start']}); {out['machine']}. \"full retrain\" = features + train step (MLflow, "
        "registry) + evaluate step (which also trains the gradient boosting); \"training s\" includes the refit; "
        "val rmse_ln is that of the early-stopped model, before any refit.", "", *rows])


def write_docs(text: str, path: Path, dataset: str = "king_county") -> None:
    """Replace the table between the dataset's markers (King County's: BEGIN / END; another dataset's:
    ``<!-- model_quality:<name>:begin -->`` / ``...:end -->``)."""
    doc = path.read_text()
    begin, end = (BEGIN, END) if dataset == "king_county" else (f"<!-- model_quality:{dataset}:begin -->",
                                                               f"<!-- model_quality:{dataset}:end -->")
    if begin not in doc or end not in doc:
        raise SystemExit(f"{path}: markers {begin} / {end} not found")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="tabm", help="comma-separated model families (first: the default model)")
    p.add_argument("--as-of", type=date.fromisoformat, default=None,
                   help="the retrain's interval end (default: 2015-05-28 for King County, else the day after the "
                        "lake's last sale)")
    p.add_argument("--spec", default=None, help="the dataset spec (HOMEWORTH_DATASET_SPEC; default King County's)")
    p.add_argument("--max-epochs", type=int, default=None, help="the retrain's max_epochs Param (default: its default)")
    p.add_argument("--home", default=None, help="HOMEWORTH_HOME to use (default: a fresh temporary folder)")
    p.add_argument("--use-tuned", action="store_true", help="use the home's tuning result if it has one")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-refit", action="store_true",
                   help="refit_on_val=false: keep the early-stopped models (deep and boosting) instead of refitting "
                        "them on train + validation")
    p.add_argument("--write-docs", action="store_true", help="replace the table in docs/model.md")
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args(argv)

    os.environ["HOMEWORTH_HOME"] = args.home or tempfile.mkdtemp(prefix="homeworth-quality-")
    for k in [k for k in os.environ if k.startswith("HOMEWORTH_") and k not in ("HOMEWORTH_HOME", "HOMEWORTH_TORCH_THREADS")]:
        del os.environ[k]
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if args.spec:
        os.environ["HOMEWORTH_DATASET_SPEC"] = str(Path(args.spec).resolve())
    as_of = args.as_of or (None if args.spec else date(2015, 5, 28))
    out = run([f.strip() for f in args.families.split(",") if f.strip()], as_of, args.use_tuned, args.seed,
              refit=not args.no_refit, max_epochs=args.max_epochs)
    text = table(out)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    if args.write_docs:
        write_docs(text, ROOT / "docs" / "model.md", out["dataset"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
