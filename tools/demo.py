"""The end-to-end demo behind ``make demo``: a bundled market's sales through the real scheduler.

``--dataset NAME`` picks ``tasks/datasets/NAME/spec.yaml`` (default ``king_county``; ``make demo
DATASET=melbourne``): the demo and the Airflow processes it starts use that spec
(``HOMEWORTH_DATASET_SPEC``), and the replay dates come from its data.

1. Starts from a clean ``.state/`` and ``.airflow/`` (the demo's own folders).
2. Replays the bundled sales as a daily feed into the landing zone.
3. Starts Airflow (api-server, scheduler, dag-processor; SQLite, LocalExecutor, 2 slots) with
   scheduling off (``use_job_schedule=False``: this is a historical replay, so only the runs the
   demo asks for happen; DAG schedules are untouched).
4. ``sales_ingest``: one bulk run with a wide data interval for the older history, then an Airflow
   backfill of the last ``--backfill-days`` days, one run per day.
5. ``price_model_retrain``: a run as of ``--first-retrain`` (default: 30 days before the day after the
   last sale; its model becomes the first champion), then the nightly run as of the day after the last
   sale, which is compared with that champion.
6. Stops every process it started, checks none is left, writes ``demo-summary.json`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from tasks.core import lake, storage
from tasks.core.settings import DATASETS_DIR, get_settings
from tasks.core.spec import get_spec
from tasks.ingest.replay import replay
from tools.airflow_local import LocalAirflow, migrate, set_password

ROOT = Path(__file__).resolve().parent.parent
# Days between the first retrain (whose model becomes the first champion) and the nightly one, by default.
FIRST_RETRAIN_DAYS_BEFORE = 30


def use_dataset(name: str) -> Path:
    """Point this process (and the Airflow processes it starts, through the environment) at the bundled
    dataset ``name``'s spec; returns its path."""
    spec_path = DATASETS_DIR / name / "spec.yaml"
    if not spec_path.exists():
        found = sorted(p.parent.name for p in DATASETS_DIR.glob("*/spec.yaml"))
        raise SystemExit(f"--dataset {name!r}: no {spec_path}; bundled datasets: {found}")
    os.environ["HOMEWORTH_DATASET_SPEC"] = str(spec_path)
    get_settings.cache_clear()
    return spec_path


def first_retrain_day(last_sale: date, given: date | None) -> date:
    """The as-of day of the first retrain: ``given``, else 30 days before the day after the last sale
    (King County: 2015-04-28)."""
    return given or last_sale + timedelta(days=1) - timedelta(days=FIRST_RETRAIN_DAYS_BEFORE)


def lake_counts(lake_uri: str, table: str) -> int:
    root = storage.join(lake_uri, table)
    files = [f for d in storage.list_dir(root) if d.startswith("ds=") and (f := lake.day_file(lake_uri, table, d[3:]))]
    return sum(pl.scan_parquet(f).select(pl.len()).collect().item() for f in files) if files else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="king_county", help="a bundled dataset (a folder of tasks/datasets/)")
    p.add_argument("--backfill-days", type=int, default=60, help="days ingested one run per day by a backfill")
    p.add_argument("--first-retrain", type=date.fromisoformat, default=None,
                   help="as-of date of the retrain whose model becomes the first champion "
                        f"(default: {FIRST_RETRAIN_DAYS_BEFORE} days before the day after the last sale)")
    p.add_argument("--max-epochs", type=int, default=60)
    p.add_argument("--keep-state", action="store_true", help="do not wipe .state/ and .airflow/ first")
    p.add_argument("--timeout", type=float, default=1500, help="seconds to wait for each phase")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    t0 = time.monotonic()
    use_dataset(args.dataset)
    settings, spec = get_settings(), get_spec()
    airflow_home = Path(os.environ["AIRFLOW_HOME"])
    if not args.keep_state:
        for folder in (settings.home, airflow_home):
            if folder.resolve() in (ROOT / ".state", ROOT / ".airflow"):  # never wipe a folder we do not own
                shutil.rmtree(folder, ignore_errors=True)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.monotonic() - since, 1)
        print(f"[demo] {name}: {timings[name]} s", flush=True)
        return time.monotonic()

    t = time.monotonic()
    replayed = replay(spec, settings.landing_uri)
    first, last = date.fromisoformat(replayed["first_day"]), date.fromisoformat(replayed["last_day"])
    t = lap("replay", t)

    env = dict(os.environ, AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False")
    migrate(env)
    set_password(airflow_home, "admin", "admin")
    af = LocalAirflow(env, airflow_home / "demo-logs", os.environ.get("AIRFLOW__API__BASE_URL", "http://localhost:8080"))
    af.start()
    summary: dict = {}
    try:
        af.wait_healthy()
        for dag_id in ("sales_ingest", "price_model_retrain"):
            af.wait_dag(dag_id)
            af.unpause(dag_id)
        t = lap("airflow_start", t)

        backfill_from = last - timedelta(days=args.backfill_days - 1)
        bulk = af.trigger("sales_ingest", logical_date=f"{first}T00:00:00Z", run_id=f"bulk__{first}_{backfill_from}",
                          interval=(f"{first}T00:00:00Z", f"{backfill_from}T00:00:00Z"))
        if af.wait_run("sales_ingest", bulk, args.timeout) != "success":
            raise RuntimeError(f"bulk ingest failed: tasks {af.failed_tasks('sales_ingest', bulk)}")
        t = lap("ingest_bulk", t)

        bf = af.backfill("sales_ingest", f"{backfill_from}T00:00:00Z", f"{last}T00:00:00Z")
        runs = af.wait_backfill(bf, "sales_ingest", args.timeout)
        bad = [r["dag_run_id"] for r in runs if r["state"] != "success"]
        if bad:
            raise RuntimeError(f"backfill runs not successful: {bad}")
        t = lap("ingest_backfill", t)

        conf = {"max_epochs": args.max_epochs}
        results = []
        for as_of in (first_retrain_day(last, args.first_retrain), last + timedelta(days=1)):
            run = af.trigger("price_model_retrain", logical_date=f"{as_of}T03:00:00Z", conf=conf,
                             run_id=f"demo__retrain_{as_of}")
            if af.wait_run("price_model_retrain", run, args.timeout) != "success":
                raise RuntimeError(f"retrain {run} failed: tasks {af.failed_tasks('price_model_retrain', run)}")
            results.append({task: af.xcom("price_model_retrain", run, task)
                            for task in ("build_features", "train", "evaluate", "promote")})
            t = lap(f"retrain_{as_of}", t)
        summary = {"dataset": spec.name, **build_summary(settings, replayed, len(runs), results)}
    finally:
        leftover = af.stop()
    if leftover:
        print(f"[demo] processes still alive after stop: {leftover}", file=sys.stderr)
        return 1
    summary["timings_s"] = {**timings, "total": round(time.monotonic() - t0, 1)}
    out = ROOT / "demo-summary.json"
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(comparison_table(summary))
    print(f"[demo] summary written to {out}; Airflow UI: `source env.sh && airflow standalone` (login admin/admin)")
    return 0


def comparison_table(summary: dict) -> str:
    """The nightly run's test metrics: the new model, the champion it was compared with, gradient boosting."""
    names = {"new": f"new model (v{summary['model_version']}, {summary['model_family']})",
             "champion": f"champion before the run (v{summary['previous_champion']})",
             "gbm": "gradient boosting, same features and split"}
    lines = [f"[demo] test sales: {summary['test_rows']}", "| model | mdape | ppe10 | rmse_ln |", "|---|---|---|---|"]
    for key, label in names.items():
        m = summary["test_metrics"].get(key)
        if m:
            lines.append(f"| {label} | {m['mdape']:.3%} | {m['ppe10']:.1%} | {m['rmse_ln']:.4f} |")
    return "\n".join(lines)


def build_summary(settings, replayed: dict, backfill_runs: int, results: list[dict]) -> dict:
    last = results[-1]
    evaluation, promotion, trained = last["evaluate"], last["promote"], last["train"]
    return {
        "rows_landed": replayed["rows"],
        "rows_accepted": lake_counts(settings.lake_uri, "validated"),
        "rows_quarantined": lake_counts(settings.lake_uri, "quarantine"),
        "landing_days": replayed["files_written"] + replayed["files_existing"],
        "backfill_runs": backfill_runs,
        "test_rows": evaluation["test_rows"],
        # new, champion (if any) and "gbm": gradient boosting trained in the same run on the same features
        "test_metrics": evaluation["metrics"],
        "model_family": trained.get("model_family"),
        "config_source": trained.get("config_source"),
        "gbm_train_seconds": round((evaluation.get("gbm") or {}).get("train_seconds") or 0, 1) or None,
        "model_version": promotion["model_version"],
        "champion_version": promotion["champion_version"],
        "previous_champion": promotion["previous_champion"],
        "promoted": promotion["promoted"],
        "reason": promotion["reason"],
        "training_window": [last["build_features"]["window_start"], last["build_features"]["window_end"]],
        "rows_by_split": last["build_features"]["rows"],
        "train_seconds": trained.get("train_seconds"),
        "epochs": trained.get("epochs"),
        "refit": trained.get("refit"),  # the refit on train + validation: epochs and rows, or why not
        "gbm_refit": (evaluation.get("gbm") or {}).get("refit"),
        "report": evaluation["report_uri"],
        "mlflow_tracking_uri": settings.mlflow_tracking_uri,
        "mlflow_store": str(settings.home / "mlflow"),
        "lake": settings.lake_uri,
        "earlier_runs": [
            {"model_version": r["promote"]["model_version"], "promoted": r["promote"]["promoted"],
             "reason": r["promote"]["reason"], "test_metrics": r["evaluate"]["metrics"]}
            for r in results[:-1]
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
