"""Shared helpers of the benchmarks: sizes, child processes with a memory cap, the machine's description.

Kept free of heavy imports (no polars, torch or Great Expectations): the parent process of
``benchmarks.run`` only starts children, watches them and writes the report.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
GIB = 1024 * MIB


# --------------------------------------------------------------------------------------------------
# Sizes


def parse_size(text: str) -> int:
    """``20k``, ``1M``, ``50m``, ``1_000_000``, ``2.5M`` -> an int."""
    m = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 100k, 1M, 50M)")
    value = float(m.group(1).replace("_", ""))
    return int(round(value * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]))


def parse_sizes(text: str) -> list[int]:
    return [parse_size(t) for t in text.split(",") if t.strip()]


def size_label(n: int) -> str:
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div and n % (div // 10 or 1) == 0:
            v = n / div
            return f"{v:g}{unit}"
    return str(n)


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:.0f}"


def fmt_mib(b: int | None) -> str:
    return "-" if not b else f"{b / MIB:,.0f}"


# --------------------------------------------------------------------------------------------------
# Child processes


@dataclass
class ChildResult:
    status: str  # ok | error | killed-memory | timeout
    seconds_wall: float
    sampled_peak_rss: int  # bytes, the highest RSS the parent saw (process and its children)
    result: dict = field(default_factory=dict)  # what the child wrote
    other_cores: float | None = None  # mean CPU cores used by other processes while the child ran
    error: str = ""
    log: str = ""


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _kill_tree(proc: psutil.Process) -> None:
    """SIGKILL the child and the processes it started, each by its own id."""
    try:
        victims = [*proc.children(recursive=True), proc]
    except psutil.Error:
        victims = [proc]
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


def run_child(stage: str, params: dict, workdir: Path, tag: str, mem_cap: int, timeout_s: float,
              code_root: Path = ROOT, env: dict | None = None, poll_s: float = 0.05) -> ChildResult:
    """Run ``python -m benchmarks.run --child STAGE`` in a fresh interpreter, watching its memory.

    The child is killed (with its own children) as soon as its resident memory passes ``mem_cap``
    bytes or it runs longer than ``timeout_s``. Its result is the JSON it writes to a file. The child
    imports ``tasks`` and ``expectations`` (and reads an older commit's ``datasets/``) from ``code_root``,
    ``benchmarks`` from here.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    params_path = workdir / f"{tag}.params.json"
    result_path = workdir / f"{tag}.result.json"
    log_path = workdir / f"{tag}.log"
    params_path.write_text(json.dumps(params, default=str))
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.run", "--child", stage, "--params", str(params_path),
           "--result", str(result_path)]
    child_env = {**os.environ, **(env or {})}
    # The child must import the measured code: with --code REF, the tasks/ and expectations/ extracted under
    # code_root, not the working tree's. The project is installed in editable mode, and that install's finder
    # comes after the path-based one, so a PYTHONPATH entry put first wins; ROOT follows it for benchmarks/
    # itself (not an installed package, and the child's cwd is code_root).
    paths = [str(code_root)] + ([str(ROOT)] if Path(code_root) != ROOT else [])
    paths += [x for x in child_env.get("PYTHONPATH", "").split(os.pathsep) if x and x not in (str(ROOT), str(code_root))]
    child_env["PYTHONPATH"] = os.pathsep.join(paths)
    status, peak = "ok", 0
    me = psutil.Process()
    busy0, mine0 = _busy_cpu_s(), sum(me.cpu_times()[:2])
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(cmd, cwd=code_root, env=child_env, stdout=log, stderr=subprocess.STDOUT)
        proc = psutil.Process(popen.pid)
        try:
            while popen.poll() is None:
                rss = _tree_rss(proc)
                peak = max(peak, rss)
                if rss > mem_cap:
                    status = "killed-memory"
                    _kill_tree(proc)
                    break
                if time.perf_counter() - t0 > timeout_s:
                    status = "timeout"
                    _kill_tree(proc)
                    break
                time.sleep(poll_s)
        except BaseException:
            _kill_tree(proc)
            popen.wait()
            raise
        popen.wait()
    wall = time.perf_counter() - t0
    busy = _busy_cpu_s() - busy0 - (sum(me.cpu_times()[:2]) - mine0)  # minus this watcher's own CPU
    text = log_path.read_text(errors="replace")
    out = ChildResult(status=status, seconds_wall=wall, sampled_peak_rss=peak, log=text[-4000:])
    if status == "ok" and popen.returncode != 0:
        out.status = "error"
    if result_path.exists():
        out.result = json.loads(result_path.read_text())
        if out.result.get("error"):
            out.status, out.error = "error", out.result["error"]
    elif out.status == "ok":
        out.status = "error"
    if out.result.get("cpu_s") is not None and wall > 0:
        out.other_cores = max(busy - out.result["cpu_s"], 0.0) / wall
    if out.status == "error" and not out.error:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        out.error = lines[-1][:300] if lines else f"exit code {popen.returncode}"
    return out


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores) since boot."""
    t = psutil.cpu_times()
    return sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))  # guest is in user


def wait_quiet(max_wait_s: float, threshold_cores: float = 0.5, sample_s: float = 2.0) -> float | None:
    """Wait (at most ``max_wait_s``) until other processes use under ``threshold_cores`` CPU cores.

    Returns the load seen in the last sample (cores). Benchmarks on a shared machine are only
    comparable when nothing else runs; the report shows the load during every stage either way.
    """
    if max_wait_s <= 0:
        return None
    deadline = time.monotonic() + max_wait_s
    me = psutil.Process()
    while True:
        b0, c0 = _busy_cpu_s(), sum(me.cpu_times()[:2])
        time.sleep(sample_s)
        load = max(_busy_cpu_s() - b0 - (sum(me.cpu_times()[:2]) - c0), 0.0) / sample_s
        if load < threshold_cores or time.monotonic() >= deadline:
            return load


def cpu_s_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_self() -> int:
    """This process's peak resident set (the kernel's high-water mark), in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


def rss_self() -> int:
    return psutil.Process().memory_info().rss


# --------------------------------------------------------------------------------------------------
# The machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict:
    vm = psutil.virtual_memory()
    virt = ""
    try:
        if "hypervisor" in Path("/proc/cpuinfo").read_text():
            virt = " (virtual machine)"
    except OSError:
        pass
    return {
        "cpu": _cpu_model() + virt,
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(vm.total / GIB, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "polars": _version("polars"),
        "pandas": _version("pandas"),
        "pyarrow": _version("pyarrow"),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "lightning": _version("pytorch-lightning") if _version("pytorch-lightning") != "not installed" else _version("lightning"),
        "great_expectations": _version("great_expectations"),
    }


# The pipeline code a run measures: tasks/ and expectations/, and datasets/ in commits older than the
# move of King County into tasks/datasets/king_county/ (their spec and suite lived at the top level).
CODE_PATHS = ("tasks", "expectations", "datasets")
CODE_GLOBS = (("tasks", "**/*.py"), ("tasks", "**/*.yaml"), ("expectations", "*.py"), ("datasets", "*.yaml"))


def code_paths_of(commit: str) -> list[str]:
    """Those of :data:`CODE_PATHS` that ``commit`` has (``git ls-tree``; read-only git)."""
    listed = subprocess.run(["git", "ls-tree", "--name-only", commit, *CODE_PATHS], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [p for p in CODE_PATHS if p in listed]


def extract_ref(ref: str, dest: Path) -> str:
    """The committed ``tasks/``, ``expectations/`` and (older commits) ``datasets/`` of ``ref`` into ``dest``
    (read-only git); returns the short commit id."""
    commit = subprocess.run(["git", "rev-parse", "--verify", "--short", f"{ref}^{{commit}}"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit, *code_paths_of(commit)], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return commit


def code_fingerprint(code_root: Path) -> str:
    """sha256 (12 hex digits) of the pipeline code measured: the Python and YAML files of tasks/ (the
    datasets' specs included), expectations/*.py and, where an older commit has it, datasets/*.yaml."""
    import hashlib

    h = hashlib.sha256()
    for sub, pattern in CODE_GLOBS:
        for f in sorted((Path(code_root) / sub).glob(pattern)):
            h.update(str(f.relative_to(code_root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def git_state() -> str:
    """The commit and whether tasks/ has uncommitted changes (read-only git commands)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tasks"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + (" with uncommitted changes under tasks/" if dirty else "")
