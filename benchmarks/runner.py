"""The parent side of ``benchmarks.run``: for each size, every stage in its own child process
(``benchmarks.common.run_child``), in order, skipped where a prerequisite failed or where a linear
extrapolation from a smaller size passes the memory cap or the stage timeout; one record per stage and size.
``benchmarks.render`` turns the records into the report.
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import date
from pathlib import Path

from benchmarks.common import (
    GIB,
    ROOT,
    code_fingerprint,
    extract_ref,
    fmt_mib,
    fmt_rate,
    fmt_s,
    git_state,
    parse_sizes,
    run_child,
    size_label,
    wait_quiet,
)

DEFAULT_SIZES = "1M,10M,50M"
QUICK_SIZES = "100k,1M"
START = date(2014, 5, 2)

# Stage key -> (label in the table, what its rows are)
STAGES: dict[str, str] = {
    "synth": "landing files (tasks.datasets.king_county.synth; setup, not a target)",
    "ingest": "ingest (ingest_interval = ingest_day per day)",
    "validate": "validate (validate_interval per chunk of days)",
    "ingest_validate": "ingest + validate",
    "validate_one_call": "validate_interval, whole window in one call",
    "gx_partition": "GX validation, 1 partition (validate_interval, 1 day)",
    "scan_partition": "plain Polars scan, same partition",
    "features": "features, Polars (build_features)",
    "floor": "floor: Polars scan_parquet -> sink_parquet copy",
    "pandas": "features, pandas tutorial way",
    "train_load": "train input (load_splits + to_tensors, whole window)",
    "train_lightning": "train, Lightning (tasks.model.train.train)",
    "train_raw": "train, raw PyTorch loop",
    "score": "score (ModelBundle.predict_features)",
}
# Stages whose memory grows with the rows they hold: skipped when the linear extrapolation passes the cap.
IN_MEMORY = {"validate_one_call", "pandas", "train_load"}
# Stages doing a fixed amount of work whatever N is (no time extrapolation, no growth ratio).
FIXED_WORK = {"train_lightning", "train_raw"}
# Child stages (ingest_validate is derived from two of them; train_sample is unmeasured setup).
PREREQ = {
    "ingest": "synth", "validate": "ingest", "validate_one_call": "validate", "gx_partition": "ingest",
    "scan_partition": "ingest", "features": "validate", "floor": "validate", "pandas": "validate",
    "train_sample": "features", "train_load": "features", "train_lightning": "train_sample",
    "train_raw": "train_sample", "score": "features",
}
RUN_ORDER = ["synth", "ingest", "validate", "validate_one_call", "gx_partition", "scan_partition", "features",
             "floor", "pandas", "train_sample", "train_load", "train_lightning", "train_raw", "score"]

# What a stage's child reports that its record keeps, besides rows, seconds and memory.
EXTRA_KEYS = ("fit_s", "gx_only_s", "batches", "columns", "split_rows", "median_rate", "runs", "codec_seconds", "codec")
# What a stage's child hands on to the later stages of the same size.
HANDED_ON = ("features_path", "preprocessing_uri", "train_sample_path", "train_batches")
# Stages whose output an earlier --keep run left in --workdir (--reuse).
REUSABLE = ("synth", "ingest", "validate")


def size_params(args: argparse.Namespace, size: int, d: Path) -> dict:
    """The parameters every stage's child of one size gets (``d`` is the size's data directory)."""
    a = args
    return {
        "rows": size, "days": a.days, "seed": a.seed, "start": START.isoformat(), "landing": str(d / "landing"),
        "lake": str(d / "lake"), "size_dir": str(d), "threads": a.threads, "batch_size": a.batch_size,
        "train_batches": a.train_batches, "val_rows": a.val_rows, "score_rows": a.score_rows,
        "score_chunk_rows": a.score_chunk_rows, "validate_chunk_rows": a.validate_chunk_rows, "repeats": a.repeats,
        "repeat_under_s": a.repeat_under, "comps": "full" if size <= a.comps_max_rows else a.comps_above,
    }


def extrapolation_reason(stage: str, prev: dict, size: int, cap: int, stage_timeout: float) -> str | None:
    """Why ``stage`` is not started at ``size``, from its record ``prev`` at a smaller size: its memory
    (in-memory stages) or its time, extrapolated linearly, passes the cap or the timeout."""
    scale = size / prev["size"]
    if stage in IN_MEMORY and prev.get("peak_rss"):
        base = prev.get("baseline_rss") or 0
        est = base + (prev["peak_rss"] - base) * scale
        if est > cap:
            return (f"not run: peak RSS would be ~{est / GIB:.1f} GiB (linear from {prev['peak_rss'] / GIB:.2f} "
                    f"GiB at {size_label(prev['size'])}) > the {cap / GIB:g} GiB cap")
    if stage not in FIXED_WORK and prev.get("wall"):
        est_s = prev["wall"] * scale
        if est_s > stage_timeout:
            return (f"not run: would take ~{est_s / 60:.0f} min (linear from {prev['wall']:.0f} s at "
                    f"{size_label(prev['size'])}) > --stage-timeout {stage_timeout:.0f} s")
    return None


class Bench:
    """Runs the stages of every size and keeps their records (``benchmarks.render`` writes them out)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = parse_sizes(args.sizes)
        self.cap = int(args.mem_cap_gib * GIB)
        self.records: list[dict] = []
        self.last_ok: dict[str, dict] = {}  # stage -> its record at the largest size it ran
        self.failed: dict[str, dict] = {}  # stage -> first record that failed for memory/time
        self.code_root = ROOT
        self.code_desc = ""
        self.fingerprint = self.fingerprint_end = ""

    # ---- running
    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def record(self, size: int, stage: str, status: str, **kw) -> dict:
        rec = {"size": size, "stage": stage, "label": STAGES.get(stage, stage), "status": status, "rows": None,
               "seconds": None, "rate": None, "peak_rss": None, "other_cores": None, "note": "", **kw}
        if rec["rows"] and rec["seconds"]:
            rec["rate"] = rec["rows"] / rec["seconds"]
        self.records.append(rec)
        shown = f"{fmt_s(rec['seconds'])} s, {fmt_rate(rec['rate'])}/s, peak {fmt_mib(rec['peak_rss'])} MiB" \
            if status == "ok" else status
        if rec.get("other_cores") is not None:
            shown += f", others {rec['other_cores']:.2f} cores"
        self.log(f"  [{size_label(size)}] {stage:<18} {shown}  {rec['note']}")
        return rec

    def skip_reason(self, size: int, stage: str, ctx: dict) -> str | None:
        if stage in self.args.skip:
            return "not run: --skip"
        need = PREREQ.get(stage)
        if need and not ctx["ok"].get(need):
            return f"not run: needs {need}"
        if stage in self.failed:
            f = self.failed[stage]
            return f"not run: {f['status']} at {size_label(f['size'])} rows"
        prev = self.last_ok.get(stage)
        if stage == "validate_one_call" and ctx.get("validate_chunks") == 1:
            return "not run: the window is one validate chunk, so it equals the validate row"
        if prev and prev["size"] < size and prev.get("comps") == ctx["params"]["comps"]:
            return extrapolation_reason(stage, prev, size, self.cap, self.args.stage_timeout)
        return None

    def run_stage(self, size: int, stage: str, ctx: dict) -> dict | None:
        reason = self.skip_reason(size, stage, ctx)
        if reason and stage in self.args.skip and self.args.reuse and stage in REUSABLE:
            ctx["ok"][stage] = True  # its output is already in --workdir (an earlier --keep run)
            reason = "not run: --skip, its data reused from --workdir (--reuse)"
        if reason:
            if stage != "train_sample":
                self.record(size, stage, "not run", note=reason)
            return None
        quiet = wait_quiet(self.args.quiet_wait)
        r = run_child(stage, ctx["params"], ctx["dir"] / "logs", f"{stage}", self.cap, self.args.stage_timeout,
                      code_root=self.code_root, env={"HOMEWORTH_COMPS": ctx["params"]["comps"]})
        peak = r.result.get("peak_rss") or r.sampled_peak_rss
        if r.status != "ok":
            self._record_failure(size, stage, r, peak, quiet)
            return None
        ctx["ok"][stage] = True
        res = r.result
        for key in HANDED_ON:
            if key in res:
                ctx["params"][key] = res[key]
        if stage == "validate":
            ctx["validate_chunks"] = res.get("chunks")
        if stage == "train_sample":
            return res
        extra = {k: res[k] for k in EXTRA_KEYS if k in res}
        rec = self.record(size, stage, "ok", rows=res.get("rows"), seconds=res.get("seconds"), peak_rss=peak,
                          baseline_rss=res.get("baseline_rss"), import_s=res.get("import_s"), wall=r.seconds_wall,
                          cpu_s=res.get("cpu_s"), other_cores=r.other_cores, quiet_before=quiet,
                          note=res.get("note", ""), comps=ctx["params"]["comps"], **extra)
        self.last_ok[stage] = rec
        return res

    def _record_failure(self, size: int, stage: str, r, peak: int, quiet: float | None) -> None:
        why = {"killed-memory": f"killed: RSS passed the {self.cap / GIB:g} GiB cap",
               "timeout": f"killed: ran past --stage-timeout {self.args.stage_timeout:.0f} s",
               }.get(r.status, f"error: {r.error}")
        if r.status in ("killed-memory", "timeout"):
            self.failed[stage] = {"status": r.status, "size": size}
        if stage != "train_sample":
            self.record(size, stage, r.status, peak_rss=peak, note=why, wall=r.seconds_wall,
                        other_cores=r.other_cores, quiet_before=quiet)
        else:
            self.log(f"  [{size_label(size)}] train_sample failed: {why}")

    def run_size(self, size: int, work: Path) -> None:
        d = work / f"n{size}"
        d.mkdir(parents=True, exist_ok=True)
        a = self.args
        params = size_params(a, size, d)
        ctx = {"params": params, "dir": d, "ok": {}}
        self.log(f"== {size_label(size)} rows ({size:,}) over {a.days} days in {d}; comparable-sales features "
                 f"{params['comps']}")
        t0 = time.perf_counter()
        for stage in RUN_ORDER:
            self.run_stage(size, stage, ctx)
            if stage == "validate":
                self._derive_ingest_validate(size)
        self.log(f"== {size_label(size)} done in {time.perf_counter() - t0:.0f} s")
        if not a.keep:
            shutil.rmtree(d, ignore_errors=True)

    def _derive_ingest_validate(self, size: int) -> None:
        got = {r["stage"]: r for r in self.records if r["size"] == size and r["stage"] in ("ingest", "validate")}
        i, v = got.get("ingest"), got.get("validate")
        if i and v and i["status"] == v["status"] == "ok":
            self.record(size, "ingest_validate", "ok", rows=v["rows"], seconds=i["seconds"] + v["seconds"],
                        peak_rss=max(i["peak_rss"] or 0, v["peak_rss"] or 0),
                        note="sum of the two rows above; peak = the larger")
        else:
            self.record(size, "ingest_validate", "not run", note="needs ingest and validate")

    def use_code(self, work: Path) -> None:
        """Measure the working tree (``--code worktree``) or a commit's code extracted under ``work/src``."""
        if self.args.code == "worktree":
            self.code_desc = f"the working tree (commit {git_state()})"
        else:
            commit = extract_ref(self.args.code, work / "src")
            self.code_root = work / "src"
            self.code_desc = (f"`{self.args.code}` = commit {commit}, its committed tasks/, expectations/ and "
                              f"datasets/ (extracted with git archive; the working tree was {git_state()})")

    def run_all(self, work: Path) -> None:
        """Every size in ``work``, between two fingerprints of the code measured (it may change meanwhile)."""
        self.use_code(work)
        self.fingerprint = code_fingerprint(self.code_root)  # the working tree may change during the run
        self.log(f"code: {self.code_desc}; fingerprint {self.fingerprint}")
        for size in self.sizes:
            self.run_size(size, work)
        self.fingerprint_end = code_fingerprint(self.code_root)

    # ---- lookups (benchmarks.render)
    def get(self, size: int, stage: str) -> dict | None:
        for r in self.records:
            if r["size"] == size and r["stage"] == stage:
                return r
        return None

    def ok(self, size: int, stage: str) -> dict | None:
        r = self.get(size, stage)
        return r if r and r["status"] == "ok" else None


def remove_data(work: Path, sizes: list[int], own_work: bool) -> None:
    """Remove what the run wrote: all of ``work`` when it made it, else the sizes' data and the extracted code."""
    if own_work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        for size in sizes:
            shutil.rmtree(work / f"n{size}", ignore_errors=True)
        shutil.rmtree(work / "src", ignore_errors=True)
