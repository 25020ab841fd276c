"""Smoke test of the pipeline benchmark harness (benchmarks/run.py) on 20k synthetic rows.

Runs every stage once in its own child process, as `make bench` does at 1M-50M rows, and checks the
table: every stage is there with positive rows, time, throughput and peak RSS. No timing assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.run import STAGES

REPO = Path(__file__).resolve().parent.parent


def test_benchmark_harness_smoke(tmp_path):
    out, js, work = tmp_path / "benchmarks.md", tmp_path / "bench.json", tmp_path / "work"
    cmd = [sys.executable, "-m", "benchmarks.run", "--sizes", "20k", "--days", "180", "--train-batches", "4",
           "--batch-size", "256", "--validate-chunk-rows", "8000", "--score-rows", "5000", "--repeats", "1",
           "--quiet-wait", "0", "--mem-cap-gib", "4", "--out", str(out), "--json", str(js), "--workdir", str(work)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
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
