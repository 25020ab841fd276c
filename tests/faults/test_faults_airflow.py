"""Faults under the real Airflow scheduler: every task type killed (SIGKILL) at two or more points, Airflow's
retry, the invariants.

One private Airflow (api-server, scheduler, dag-processor; SQLite, LocalExecutor, parallelism 4) with
``HOMEWORTH_FAULT`` naming the points per task and run (``tasks/core/faults.py``; see ``FAULTS``), on every
8th bundled sale. A task with 2 retries (ingest, validate, score) is killed twice in one run; the retrain's
and the rollback's tasks (1 retry) once per run:

1. ``sales_ingest``, one bulk run: ``ingest`` killed at its start, then mid-write (its temporary file
   written, not renamed); ``validate`` after publishing the day manifests, then before returning;
2. ``price_model_retrain`` as of 2015-05-27 (the first champion): ``build_features`` killed after publishing
   its table, ``train`` after registering its model version, ``evaluate`` before returning, ``check_drift``
   at its start, ``promote`` after the ledger event and the alias move (before the MLflow tags);
3. ``price_model_retrain`` as of 2015-05-28 (``force_promotion``: v2 becomes champion; ``evaluate`` killed
   mid-write and ``check_drift`` before returning, side by side, then ``promote`` after its ledger event,
   before the alias move) and, at the same time, ``listings_score`` of 2015-05-27 with ``score`` killed
   mid-write, then after writing the predictions;
4. the ``promote`` task of run 2 (the older run) cleared, as an operator does in the UI;
5. ``champion_rollback`` to v1, killed after the ledger event and the alias move; then back to v2, killed
   after the ledger event, before the alias move;
6. at once (LocalExecutor, parallelism 4): a 30-day ``sales_ingest`` backfill re-validating the newest
   days (four of its runs killed: ``ingest`` after writing and before returning, ``validate`` at its start
   and mid-write), the nightly ``price_model_retrain`` as of 2015-05-29 (``build_features`` killed at its start,
   ``train`` before returning) and ``price_model_tune`` for the same window (both build that window's
   features while the backfill republishes its days), and ``listings_score`` of 2015-05-26 (``score``
   killed at its start, then before returning).

The retry delays are the DAGs' own (30 s for ingest, scoring and rollback, 60 s for the retrain): no
setting shortens them, so each retrain fault costs a minute.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import time
from datetime import date
from pathlib import Path

import pytest

from tests.faults.tally import NOTES, held, injected, survived
from tests.kc import KC_DATA_PATH, KC_SPEC_PATH
from tests.support import free_port, local_airflow_env

pytestmark = pytest.mark.slow_faults

REPO = Path(__file__).resolve().parents[2]
SCORE_DAY, SCORE_DAY_2 = date(2015, 5, 27), date(2015, 5, 26)  # one logical date per run and DAG
RUN_INGEST, RUN_1, RUN_2 = "faults_ingest", "faults_retrain_1", "faults_retrain_2"
RUN_SCORE, RUN_ROLLBACK, RUN_ROLLBACK_2 = "faults_score", "faults_rollback", "faults_rollback_2"
RUN_3, RUN_TUNE, RUN_SCORE_2 = "concurrent_retrain", "concurrent_tune", "concurrent_score"
CONCURRENT_AS_OF = "2015-05-29T03:00:00Z"
BACKFILL = ("2015-04-28T00:00:00Z", "2015-05-27T00:00:00Z")  # 30 daily runs
RETRAIN_CONF = {"max_epochs": 3, "max_mdape": 0.9, "min_ppe10": 0.0}
# (dag, run, task, point): at least two points per task type. A run may be a wildcard (one backfill run, by day).
FAULTS = [
    ("sales_ingest", RUN_INGEST, "ingest", "start"),
    ("sales_ingest", RUN_INGEST, "ingest", "mid_write"),
    ("sales_ingest", RUN_INGEST, "validate", "after_effect"),
    ("sales_ingest", RUN_INGEST, "validate", "before_return"),
    ("price_model_retrain", RUN_1, "build_features", "after_effect"),
    ("price_model_retrain", RUN_1, "train", "after_effect"),
    ("price_model_retrain", RUN_1, "evaluate", "before_return"),
    ("price_model_retrain", RUN_1, "check_drift", "start"),
    ("price_model_retrain", RUN_1, "promote", "after_effect"),
    ("price_model_retrain", RUN_2, "evaluate", "mid_write"),
    ("price_model_retrain", RUN_2, "check_drift", "before_return"),
    ("price_model_retrain", RUN_2, "promote", "after_commit"),
    ("listings_score", RUN_SCORE, "score", "mid_write"),
    ("listings_score", RUN_SCORE, "score", "after_effect"),
    ("champion_rollback", RUN_ROLLBACK, "rollback", "after_effect"),
    ("champion_rollback", RUN_ROLLBACK_2, "rollback", "after_commit"),
    ("sales_ingest", "backfill__2015-05-03*", "ingest", "after_effect"),
    ("sales_ingest", "backfill__2015-05-05*", "ingest", "before_return"),
    ("sales_ingest", "backfill__2015-05-07*", "validate", "start"),
    ("sales_ingest", "backfill__2015-05-09*", "validate", "mid_write"),
    ("price_model_retrain", RUN_3, "build_features", "start"),
    ("price_model_retrain", RUN_3, "train", "before_return"),
    ("listings_score", RUN_SCORE_2, "score", "start"),
    ("listings_score", RUN_SCORE_2, "score", "before_return"),
]
TIMEOUT = 900



def airflow_env(root: Path, port: int) -> dict:
    return local_airflow_env(root, port, parallelism=4,
                             HOMEWORTH_FAULT=",".join(f"{task}:{point}@{run}" for _, run, task, point in FAULTS),
                             HOMEWORTH_FAULT_DIR=str(root / "fault-markers"))


def landing(root: Path) -> dict:
    """Every 8th bundled sale replayed as the daily feed, and the listings of the scored days (their sales
    without the price)."""
    from tasks.core.settings import Settings
    from tasks.core.spec import load_spec
    from tasks.ingest.replay import replay

    settings = Settings(home=root / "state")
    lines = gzip.decompress(KC_DATA_PATH.read_bytes()).decode().splitlines(keepends=True)
    source = root / "sales_slice.csv"
    source.write_text(lines[0] + "".join(lines[1::8]))
    replayed = replay(load_spec(KC_SPEC_PATH), settings.landing_uri, source=source)
    header = next(csv.reader([lines[0]]))
    price = header.index("price")
    counts = {}
    for day in (SCORE_DAY, SCORE_DAY_2):
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(header[:price] + header[price + 1:])
        stamp = f'"{day:%Y%m%d}T'
        rows = [next(csv.reader([ln])) for ln in lines[1:] if stamp in ln]
        for r in rows:
            w.writerow(r[:price] + r[price + 1:])
        folder = Path(settings.landing_uri) / "listings" / day.isoformat()
        folder.mkdir(parents=True)
        (folder / "listings.csv").write_text(out.getvalue())
        counts[day] = len(rows)
    return {**replayed, "listings": counts}


def ti(af, dag_id: str, run_id: str, task_id: str) -> dict:
    return af.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")


def run_ok(af, dag_id: str, run_id: str) -> None:
    state = af.wait_run(dag_id, run_id, TIMEOUT)
    assert state == "success", f"{dag_id} {run_id} ended {state}; failed tasks: {af.failed_tasks(dag_id, run_id)}"


def clear_task(af, dag_id: str, run_id: str, task_id: str) -> None:
    """Clear one finished task of a run, as the UI's Clear does, and wait for its new try to succeed."""
    before = ti(af, dag_id, run_id, task_id)["try_number"]
    af.request("POST", f"/api/v2/dags/{dag_id}/clearTaskInstances",
               {"dry_run": False, "dag_run_id": run_id, "task_ids": [task_id], "only_failed": False,
                "reset_dag_runs": True, "include_downstream": False, "include_upstream": False})
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        now = ti(af, dag_id, run_id, task_id)
        if now["try_number"] > before and now["state"] in ("success", "failed"):
            assert now["state"] == "success", now
            return
        time.sleep(3)
    raise AssertionError(f"{dag_id} {run_id} {task_id} not re-run after {TIMEOUT}s")


def champion_state(settings):
    from tasks.core import tracking
    from tasks.registry import champion

    return champion.read(tracking.client(settings), settings)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from tasks.core.settings import Settings
    from tools.airflow_local import LocalAirflow, migrate, set_password

    root = tmp_path_factory.mktemp("faults")
    port = free_port()
    env = airflow_env(root, port)
    migrate(env)
    set_password(root / "airflow", "admin", "admin")
    af = LocalAirflow(env, root / "logs", f"http://127.0.0.1:{port}")
    laps: dict[str, float] = {}
    t0 = time.monotonic()
    af.start()
    try:
        replayed = landing(root)  # while Airflow starts
        settings = Settings(home=root / "state")
        af.wait_healthy(timeout=240)
        for dag_id in ("sales_ingest", "price_model_retrain", "listings_score", "champion_rollback",
                       "price_model_tune"):
            af.wait_dag(dag_id, timeout=240)
            af.unpause(dag_id)
        laps["start"] = time.monotonic() - t0

        t = time.monotonic()
        first, last = replayed["first_day"], replayed["last_day"]
        af.trigger("sales_ingest", logical_date=f"{first}T00:00:00Z", run_id=RUN_INGEST,
                   conf={"from_date": first, "to_date": last})
        run_ok(af, "sales_ingest", RUN_INGEST)
        laps["ingest"] = time.monotonic() - t

        t = time.monotonic()
        af.trigger("price_model_retrain", logical_date="2015-05-27T03:00:00Z", run_id=RUN_1, conf=RETRAIN_CONF)
        run_ok(af, "price_model_retrain", RUN_1)
        laps["retrain_1"] = time.monotonic() - t

        t = time.monotonic()
        af.trigger("price_model_retrain", logical_date="2015-05-28T03:00:00Z", run_id=RUN_2,
                   conf={**RETRAIN_CONF, "seed": 7, "force_promotion": True})
        day = SCORE_DAY.isoformat()
        af.trigger("listings_score", logical_date=f"{day}T00:00:00Z", run_id=RUN_SCORE,
                   conf={"from_date": day, "to_date": day})
        run_ok(af, "listings_score", RUN_SCORE)
        run_ok(af, "price_model_retrain", RUN_2)
        laps["retrain_2_and_score"] = time.monotonic() - t

        t = time.monotonic()
        before_clear = champion_state(settings)
        clear_task(af, "price_model_retrain", RUN_1, "promote")
        after_clear = champion_state(settings)
        laps["clear_promote"] = time.monotonic() - t

        t = time.monotonic()
        af.trigger("champion_rollback", run_id=RUN_ROLLBACK, conf={"version": 1, "reason": "fault suite: back to v1"})
        run_ok(af, "champion_rollback", RUN_ROLLBACK)
        af.trigger("champion_rollback", run_id=RUN_ROLLBACK_2, conf={"version": 2, "reason": "fault suite: v2 again"})
        run_ok(af, "champion_rollback", RUN_ROLLBACK_2)
        laps["rollback"] = time.monotonic() - t

        t = time.monotonic()
        backfill_runs = concurrently(af)
        laps["concurrent"] = time.monotonic() - t
        NOTES.append("fault suite phases (s): " + ", ".join(f"{k} {v:.0f}" for k, v in laps.items()))
        yield {"af": af, "root": root, "settings": settings, "replayed": replayed,
               "before_clear": before_clear, "after_clear": after_clear, "backfill_runs": backfill_runs}
    finally:
        leftover = af.stop()
        assert not leftover, f"Airflow processes left running: {leftover}"


def concurrently(af) -> list[dict]:
    """The backfill, the nightly retrain, the tuning of the same window and a scoring run, all at once."""
    day = SCORE_DAY_2.isoformat()
    backfill = af.backfill("sales_ingest", *BACKFILL, max_active_runs=2)
    # Not promoted (a 99 % improvement asked for): the champion stays the second rollback's v2.
    af.trigger("price_model_retrain", logical_date=CONCURRENT_AS_OF, run_id=RUN_3,
               conf={**RETRAIN_CONF, "seed": 11, "min_relative_improvement": 0.99})
    af.trigger("price_model_tune", logical_date=CONCURRENT_AS_OF, run_id=RUN_TUNE,
               conf={"n_trials": 2, "max_epochs": 2})
    af.trigger("listings_score", logical_date=f"{day}T00:00:00Z", run_id=RUN_SCORE_2,
               conf={"from_date": day, "to_date": day})
    runs = af.wait_backfill(backfill, "sales_ingest", TIMEOUT)
    for dag_id, run_id in (("price_model_retrain", RUN_3), ("price_model_tune", RUN_TUNE),
                           ("listings_score", RUN_SCORE_2)):
        run_ok(af, dag_id, run_id)
    return runs


def test_the_concurrent_runs_all_succeeded(suite):
    states = [r["state"] for r in suite["backfill_runs"]]
    held("every run of the 30-day backfill succeeded beside the retrain, the tuning and the scoring",
         len(states) >= 29 and set(states) == {"success"}, states)


def test_every_fault_fired_once_and_its_retry_succeeded(suite):
    markers = suite["root"] / "fault-markers"
    points: dict[str, set[str]] = {}
    for dag_id, run_id, task, point in FAULTS:
        fired = sorted(markers.glob(f"{dag_id}__{run_id.replace(':', '_')}__{task}__{point}"))
        assert len(fired) == 1, f"{dag_id} {run_id} {task}:{point} fired {len(fired)} times: {fired}"
        injected()
        run = fired[0].read_text().split("run=", 1)[1].strip()  # the run's real id (a wildcard names one)
        t = ti(suite["af"], dag_id, run, task)
        assert t["state"] == "success" and t["try_number"] >= 2, (task, point, t)
        survived()
        points.setdefault(task, set()).add(point)
    held("every task type killed at two or more points", all(len(p) >= 2 for p in points.values())
         and len(points) == 9, points)


def test_per_day_landed_rows_are_accepted_plus_quarantined(suite):
    import polars as pl

    from tasks.core import lake

    settings = suite["settings"]
    landing_root = Path(settings.landing_uri)
    days = sorted(p.name for p in landing_root.iterdir() if p.name[:2] == "20")
    bad = []
    for day in days:
        landed = sum(len(f.read_text().splitlines()) - 1 for f in (landing_root / day).glob("*.csv"))
        man = lake.published_day(settings.lake_uri, day)
        raw = pl.read_parquet(lake.partition_uri(settings.lake_uri, "raw", date.fromisoformat(day))).height
        accepted = pl.read_parquet(lake.day_file(settings.lake_uri, "validated", day)).height
        quarantined = pl.read_parquet(lake.day_file(settings.lake_uri, "quarantine", day)).height
        if not (man and landed == raw == accepted + quarantined == man["validated"]["rows"] + man["quarantine"]["rows"]):
            bad.append((day, landed, raw, accepted, quarantined))
    held(f"landed = accepted + quarantined (duplicates included) on each of {len(days)} days", not bad, bad[:5])
    held("every replayed row landed once", sum(
        pl.read_parquet(lake.partition_uri(settings.lake_uri, "raw", date.fromisoformat(d))).height for d in days)
        == suite["replayed"]["rows"])


def test_no_temporary_file_is_visible_to_a_reader(suite):
    from tasks.core import storage

    lake_uri = suite["settings"].lake_uri
    listed, hidden = [], []

    def walk(uri: str) -> None:
        for name in storage.list_dir(uri):
            if storage.is_temp_name(name):
                listed.append(f"{uri}/{name}")
            child = storage.join(uri, name)
            if os.path.isdir(child):
                walk(child)

    walk(lake_uri)
    for folder, _, files in os.walk(lake_uri):
        hidden += [f"{folder}/{n}" for n in files if storage.is_temp_name(n)]
    assert hidden, "the ingest killed mid-write left its temporary file on disk (the fault happened mid-write)"
    held(f"no temporary file listed by a reader ({len(hidden)} on disk, hidden)", not listed, listed)


def test_one_model_version_per_retrain_run(suite):
    from tasks.core import tracking

    settings = suite["settings"]
    c = tracking.client(settings)
    versions = c.search_model_versions(f"name='{settings.model_name}'")
    usable: dict[str, list[str]] = {}
    for v in versions:
        if "homeworth.orphan" not in v.tags:
            usable.setdefault(v.tags.get("airflow.run_id", "?"), []).append(str(v.version))
    held("exactly one usable model version per retrain run", usable == {RUN_1: ["1"], RUN_2: ["2"], RUN_3: ["3"]},
         {"usable": usable, "all": [(v.version, v.tags.get("airflow.run_id")) for v in versions]})
    trained = suite["af"].xcom("price_model_retrain", RUN_1, "train")
    held("the retry of the train killed after registering reused its version", trained.get("reused") is True,
         trained)


def test_feature_tables_published_once(suite):
    lake = Path(suite["settings"].lake_uri) / "features"
    windows = sorted(lake.glob("window=*"))
    tables = {w.name: sorted(p.name for p in w.glob("inputs=*")) for w in windows}
    complete = {w.name: sorted(p.name for p in w.glob("inputs=*") if (p / "manifest.json").exists()) for w in windows}
    held("three windows; every table complete (manifest written)", len(windows) == 3 and tables == complete,
         (tables, complete))
    held("one table for each window of the faulted runs, the killed build's reused",
         all(len(complete[w.name]) == 1 for w in windows[:2]), complete)
    # The retrain and the tuning of one window, built at once, share their table unless the backfill changed a
    # day's published bytes in between (it republishes the same bytes: one table).
    held("the concurrent retrain and tuning of one window share one table", len(complete[windows[2].name]) == 1,
         complete)


def test_rerunning_an_older_promote_leaves_the_champion(suite):
    before, after = suite["before_clear"], suite["after_clear"]
    held("champion v2 before the clear", before.version == "2" and before.agrees, (before.alias, before.head))
    held("re-running run 1's promote leaves the champion and the ledger", after.version == "2" and after.agrees
         and len(after.scan.events) == len(before.scan.events), (after.alias, after.head))


def test_champion_alias_is_the_ledgers_newest_event(suite):
    from tasks.registry import ledger

    state = champion_state(suite["settings"])
    events = state.scan.events
    held("alias == ledger's newest event", state.agrees and state.alias == "2", (state.alias, state.head))
    held("ledger sequence numbers unique", len({e.seq for e in events}) == len(events), [e.seq for e in events])
    held("no unreadable ledger file", not state.scan.problems, state.scan.problems)
    kinds = [(e.kind, e.from_version, e.to_version) for e in events]
    held("one event per move despite the kills after the event and after the alias",
         kinds == [("promotion", None, "1"), ("promotion", "1", "2"), ("rollback", "2", "1"), ("rollback", "1", "2")],
         kinds)
    assert ledger.head(suite["settings"]).to_version == "2"


def test_scoring_killed_after_writing_left_one_complete_day(suite):
    import polars as pl

    from tasks.core import lake, storage

    settings = suite["settings"]
    out = suite["af"].xcom("listings_score", RUN_SCORE, "score")
    pred = lake.partition_uri(settings.lake_uri, "predictions", SCORE_DAY)
    n = pl.read_parquet(pred).height
    held("the day's predictions are the retry's, complete", n == out["scored"] > 0 and out["scored"] + out["rejected"]
         == suite["replayed"]["listings"][SCORE_DAY], (n, out))
    listed = storage.list_dir(os.path.dirname(pred))
    held("one predictions file listed", listed == ["part-0.parquet"], listed)
