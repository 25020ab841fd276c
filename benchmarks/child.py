"""The child side of ``benchmarks.run``: ``python -m benchmarks.run --child STAGE --params P --result R`` runs
one stage in a fresh interpreter (so its peak RSS is its own) and writes what it measured as JSON."""

from __future__ import annotations

import json
import logging
import os
import traceback
import warnings
from pathlib import Path

from benchmarks import model_stages as ms
from benchmarks import stages as st
from benchmarks.common import cpu_s_self, peak_rss_self
from benchmarks.measure import Clock

CHILD_STAGES = {
    "synth": st.st_synth, "ingest": st.st_ingest, "validate": st.st_validate,
    "validate_one_call": st.st_validate_one_call, "gx_partition": st.st_gx_partition,
    "scan_partition": st.st_scan_partition, "features": st.st_features, "floor": st.st_floor, "pandas": st.st_pandas,
    "train_sample": ms.st_train_sample, "train_load": ms.st_train_load, "train_lightning": ms.st_train_lightning,
    "train_raw": ms.st_train_raw, "score": ms.st_score,
}


def child_main(stage: str, params_path: str, result_path: str) -> int:
    """Run ``stage`` with the parameters at ``params_path``; its result (or its error), peak RSS, import
    seconds and CPU seconds go to ``result_path``. Returns the process's exit code."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    clock = Clock()
    params = json.loads(Path(params_path).read_text())
    try:
        out = CHILD_STAGES[stage](params, clock)
        code = 0
    except BaseException as exc:  # reported in the table, never crashes the run
        traceback.print_exc()
        out = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
        code = 1
    out.update(peak_rss=peak_rss_self(), baseline_rss=clock.baseline_rss, import_s=clock.import_s, cpu_s=cpu_s_self())
    Path(result_path).write_text(json.dumps(out, default=str))
    return code
