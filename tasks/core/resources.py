"""How much memory a task used: its process's peak resident set, reported in the task's XCom result.

Under Airflow's LocalExecutor and CeleryExecutor every task instance runs in a process of its own, so
the peak of that process is the task's peak (``dag.test()`` runs all tasks in one process: there the
figure is the running maximum of the tasks so far). ``benchmarks/retrain_scale.py`` reads it from XCom.
"""

from __future__ import annotations

import resource
import sys


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (Linux: ``VmHWM`` of /proc/self/status; else ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)


def with_peak_rss(result) -> dict:
    """``result`` (a task's XCom metadata: a handoff model or a dict) as JSON with ``peak_rss_mib`` added."""
    payload = result.to_xcom() if hasattr(result, "to_xcom") else dict(result)
    return {**payload, "peak_rss_mib": peak_rss_mib()}
