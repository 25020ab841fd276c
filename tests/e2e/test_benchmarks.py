"""Smoke test of the pipeline benchmark harness (``python -m benchmarks.run``) on 20k synthetic rows.

Runs every stage once in its own child process, as `make bench` does at 1M-50M rows, and checks the
table: every stage is there with positive rows, time, throughput and peak RSS. No timing assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.runner import STAGES
from tests.kc import KC_DATA_PATH

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_harness_smoke(tmp_path):
    out, js, work = tmp_path / "benchmarks.md", tmp_path / "bench.json", tmp_path / "work"
    cmd = [sys.executable, "-m", "benchmarks.run", "--sizes", "20k", "--days", "180", "--train-batches", "4",
           "--batch-size", "256", "--validate-chunk-rows", "8000", "--score-rows", "5000", "--repeats", "1",
           "--quiet-wait", "0", "--mem-cap-gib", "4", "--out", str(out), "--json", str(js), "--workdir", str(work)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]

    records = json.loads(js.read_text())["records"]
    by_stage = {rec["stage"]: rec for rec in records}
    assert set(by_stage) == set(STAGES), sorted(set(STAGES) ^ set(by_stage))
    for stage, rec in by_stage.items():
        assert rec["status"] == "ok", f"{stage}: {rec['note']}"
        for key in ("rows", "seconds", "rate", "peak_rss"):
            assert rec[key] and rec[key] > 0, f"{stage}: {key} = {rec[key]!r}"
    assert by_stage["train_lightning"]["rows"] == by_stage["train_raw"]["rows"] == 4 * 256

    md = out.read_text()
    for label in STAGES.values():
        assert label in md, label
    for word in ("Machine", "Polars", "pandas", "torch", "RAM", "## Targets", "## Growth with size"):
        assert word in md, word
    assert "rows/s" in r.stdout  # the table is printed too
    assert not (work / "n20000").exists()  # the generated data is removed


def test_benchmark_reuses_the_data_of_a_kept_run(tmp_path):
    """--keep leaves the lake; --reuse with synth/ingest/validate skipped runs later stages on it."""
    work = tmp_path / "work"
    later = "validate_one_call,gx_partition,scan_partition,floor,pandas,train_load,train_lightning,train_raw,score"
    base = [sys.executable, "-m", "benchmarks.run", "--sizes", "20k", "--days", "180", "--repeats", "1",
            "--quiet-wait", "0", "--mem-cap-gib", "4", "--workdir", str(work)]
    runs = []
    for extra in (["--keep", "--skip", f"features,{later}"], ["--reuse", "--skip", f"synth,ingest,validate,{later}"]):
        js = tmp_path / f"run{len(runs)}.json"
        r = subprocess.run([*base, *extra, "--out", str(tmp_path / f"run{len(runs)}.md"), "--json", str(js)], cwd=REPO,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
        runs.append({rec["stage"]: rec for rec in json.loads(js.read_text())["records"]})
    assert runs[0]["validate"]["status"] == "ok" and runs[0]["features"]["status"] == "not run"
    assert "reused" in runs[1]["validate"]["note"] and runs[1]["features"]["status"] == "ok"
    assert runs[1]["features"]["rows"] == runs[0]["validate"]["rows"]
    assert (work / "n20000" / "lake").is_dir()  # --reuse never deletes what it did not make


def test_retrain_scale_report_flags_tasks_over_the_memory_limit():
    from benchmarks.retrain_scale import markdown

    def task(rss, xcom=None):
        return {"state": "success", "duration_s": 12.5, "peak_rss_mib": rss, "xcom": xcom or {"peak_rss_mib": rss}}

    r = {"command": "python -m benchmarks.retrain_scale --lake L", "comps": "market", "window_days": 365,
         "as_of": "2015-05-02", "state": "success", "wall_s": 100.0, "sigma": 0.15,
         "machine": {"cpu": "cpu", "logical_cpus": 2, "ram_gib": 23.5},
         "noise_floor": {"rows": 10, "rmse_ln": 0.149},
         "tasks": {"build_features": task(900, {"rows": {"train": 6, "val": 2, "test": 2}}),
                   "train": task(5000, {"epochs": 2, "best_epoch": 1, "train_seconds": 10}),
                   "evaluate": task(1000, {"metrics": {"new": {"rmse_ln": 0.156, "mdape": 0.1, "ppe10": 0.5}},
                                           "gbm": {"train_rows": 6}}),
                   "check_drift": task(300)}}
    md = markdown(r)
    assert "| train | success | 12.5 | 5,000 | **no** |" in md
    assert "| build_features | success | 12.5 | 900 | yes |" in md
    assert "| promote | not run |" in md
    assert "1.040 x sigma" in md and "met)" in md and "not met" not in md
    r["tasks"]["evaluate"]["xcom"]["metrics"]["new"]["rmse_ln"] = 0.16
    assert "not met" in markdown(r)


def test_the_pandas_area_comps_compute_the_polars_values(spec):
    """The pandas side of the comparison does the same work: ``benchmarks.pandas_features.area_comps``
    gives the columns and values of ``tasks.features.comps`` under ``HOMEWORTH_COMPS=area`` (every 4th King County sale)."""
    import numpy as np
    import polars as pl

    from benchmarks.pandas_features import area_comps
    from tasks.datasets.king_county import features as kc
    from tasks.features.comps import comps
    from tasks.ingest.landing import POLARS_TYPES

    raw = pl.read_csv(KC_DATA_PATH,
                      infer_schema=False).gather_every(4)
    df = raw.select([(pl.col(c).str.strptime(pl.Date, cs.format) if cs.type == "date"
                      else pl.col(c).cast(POLARS_TYPES[cs.type])).alias(c) for c, cs in spec.columns.items()])
    cfg = kc.COMPS.area_only()
    want = comps(df, df, cfg)
    got = area_comps(df.to_pandas())
    assert len(got) == df.height and got["id"].tolist() == df["id"].to_list()
    for col in cfg.columns():
        a, b = want[col].cast(pl.Float64).to_numpy(), got[col].to_numpy(dtype=float)
        assert np.array_equal(np.isnan(a), np.isnan(b)), col
        assert np.allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-9, atol=1e-12), col
