"""The pipeline's throughput and memory at 100k-50M synthetic rows; prints one table and writes a Markdown report.

    make bench                                          # = python -m benchmarks.run --quick (100k and 1M rows)
    python -m benchmarks.run                            # 1M, 10M, 50M rows (about 35 minutes on 2 cores)
    python -m benchmarks.run --write-docs               # the same, and the report replaces docs/benchmarks.md
    python -m benchmarks.run --sizes 1M,10M --out /tmp/b.md [--keep] [--workdir /tmp/bench-x]

The report goes to a scratch file, ``$HOMEWORTH_HOME/bench/benchmarks.md`` (``.state/bench/`` with env.sh),
unless ``--out`` names another or ``--write-docs`` asks for the curated ``docs/benchmarks.md``.

For each size N: ``tasks.datasets.king_county.synth`` writes N rows over ``--days`` days of landing Parquet
files, then each stage runs in a fresh child interpreter (so its peak RSS is its own, read from the kernel's
high-water mark ``ru_maxrss``) while this process watches the child's resident memory and kills it
past ``--mem-cap-gib`` (a stage whose memory, extrapolated linearly from a smaller size, would pass
the cap is not started at all; the report says so). Stages, all through the project's public functions:

- ingest: ``tasks.ingest.landing.ingest_interval`` (``ingest_day`` for every day of the window);
- validate: ``tasks.quality.validate.validate_interval`` per chunk of consecutive days of at most
  ``--validate-chunk-rows`` rows (its memory grows with the interval; see the one-call stage);
- validate_one_call: ``validate_interval`` over the whole window at once, where it fits the cap;
- gx_partition / scan_partition: ``validate_interval`` of the busiest single day (warm: a first call
  is made and not timed) against a plain ``pl.scan_parquet(...).select(pl.all().null_count())`` of the
  same raw partition;
- features: ``tasks.features.build.build_features`` on the validated lake (includes ``fit_preprocessing``);
- floor: ``pl.scan_parquet(validated partitions).sink_parquet(...)``, the same rows copied;
- pandas: ``benchmarks.pandas_features.build_features_pandas``, the tutorial way;
- train_load: ``tasks.model.train.load_splits`` + ``tasks.model.tensors.to_tensors`` of the whole window (what
  ``tasks.model.train.train`` holds in memory before its first batch);
- train_lightning / train_raw: ``--train-batches`` batches of ``--batch-size`` rows, Lightning through
  ``tasks.model.train.train`` against a plain PyTorch loop over the same in-memory tensors (same
  ``TabularNet``, AdamW settings, batch size and ``torch`` threads); throughput is samples / time from
  the first batch's start to the last batch's end;
- score: ``tasks.model.bundle.ModelBundle.predict_features`` over up to ``--score-rows`` feature rows.

Module imports are not timed (each child reports its import seconds). Data is written under a
``/tmp/bench-*`` directory that is removed at the end unless ``--keep``.

This module is the command line; the stages are in ``benchmarks.stages`` and ``benchmarks.model_stages``
(run by ``benchmarks.child`` in each child), the sizes and stages are run by ``benchmarks.runner`` and the
report is written by ``benchmarks.render``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import render
from benchmarks.common import GIB, ROOT, machine
from benchmarks.runner import DEFAULT_SIZES, QUICK_SIZES, STAGES, Bench, remove_data

DOCS_REPORT = ROOT / "docs" / "benchmarks.md"  # the curated report, replaced only with --write-docs


def scratch_report() -> Path:
    """Where a run writes its report unless told otherwise: below HOMEWORTH_HOME, ignored by git."""
    from tasks.core.settings import get_settings

    return Path(get_settings().home) / "bench" / "benchmarks.md"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated row counts (default {DEFAULT_SIZES})")
    ap.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES}: a smoke run")
    ap.add_argument("--days", type=int, default=365, help="days of sales (default 365; the split needs > 147)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None,
                    help="Markdown report (default: the scratch file $HOMEWORTH_HOME/bench/benchmarks.md)")
    ap.add_argument("--write-docs", action="store_true", help=f"write the report to {DOCS_REPORT.relative_to(ROOT)}")
    ap.add_argument("--json", default=None, help="also write the records as JSON here")
    ap.add_argument("--workdir", default=None, help="data directory (default: a new /tmp/bench-*; removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--reuse", action="store_true",
                    help="with --workdir of an earlier --keep run: synth, ingest and validate named in --skip count as "
                         "done (their landing files and lake are reused), so later stages run")
    ap.add_argument("--mem-cap-gib", type=float, default=None,
                    help="kill a stage past this RSS (default: 14 GiB or 60%% of RAM, the smaller)")
    ap.add_argument("--quiet-wait", type=float, default=120.0,
                    help="before each stage wait up to this many seconds for other processes to use < 0.5 cores")
    ap.add_argument("--stage-timeout", type=float, default=1800.0, help="kill a stage after this many seconds")
    ap.add_argument("--validate-chunk-rows", type=int, default=400_000, help="rows per validate_interval call")
    ap.add_argument("--train-batches", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--val-rows", type=int, default=8192, help="validation rows in the training sample")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training and scoring")
    ap.add_argument("--score-rows", type=int, default=2_000_000, help="rows scored at most")
    ap.add_argument("--score-chunk-rows", type=int, default=262_144)
    ap.add_argument("--repeats", type=int, default=3,
                    help="a stage is run up to this many times in its child and its best time kept ...")
    ap.add_argument("--repeat-under", type=float, default=30.0,
                    help="... while its runs so far add up to less than this many seconds (default 30)")
    ap.add_argument("--skip", default="", help="comma-separated stages not to run")
    ap.add_argument("--comps-max-rows", type=int, default=100_000,
                    help="sizes up to this run the features with comparable sales (HOMEWORTH_COMPS); larger ones "
                         "--comps-above (the k-nearest search costs rows x nearby earlier sales)")
    ap.add_argument("--comps-above", choices=("area", "market", "off"), default="area",
                    help="HOMEWORTH_COMPS above --comps-max-rows: 'area' (default: market index and area trailing "
                         "means from one grouped pass), 'market' (the market index only) or 'off' (row-level only)")
    ap.add_argument("--code", default="worktree",
                    help="pipeline code to measure: 'worktree' (default) or a git ref whose committed tasks/ is used")
    # child mode (internal)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap


def resolve_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The defaults that depend on other flags or on the machine, and the flags' checks."""
    if args.quick:
        args.sizes = QUICK_SIZES
    if args.write_docs and args.out:
        ap.error("--write-docs writes docs/benchmarks.md; drop --out")
    args.out = args.out or str(DOCS_REPORT if args.write_docs else scratch_report())
    if args.mem_cap_gib is None:
        import psutil

        args.mem_cap_gib = round(min(14.0, 0.6 * psutil.virtual_memory().total / GIB), 1)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.reuse:
        if not args.workdir:
            ap.error("--reuse needs --workdir (the data of an earlier --keep run)")
        args.keep = True  # never delete data this run did not make
    unknown = args.skip - set(STAGES)
    if unknown:
        ap.error(f"unknown stages in --skip: {sorted(unknown)}; known: {list(STAGES)}")
    return args


def measure(bench: Bench, args: argparse.Namespace) -> None:
    """Every size in ``--workdir`` (default: a new /tmp/bench-*); what the run wrote is removed unless --keep."""
    own_work = args.workdir is None
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench.run_all(work)
    finally:
        if not args.keep:
            remove_data(work, bench.sizes, own_work)


def write_report(bench: Bench, args: argparse.Namespace, command: str, elapsed: float) -> None:
    """Print the table and the targets; write the Markdown report (and the records as JSON with --json)."""
    md = render.markdown(bench, command.strip(), datetime.now(timezone.utc), elapsed)
    print()
    print("\n".join(render.table(bench)))
    print()
    print("\n".join(render.targets(bench)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print(f"\nwrote {out}")
    if args.json:
        Path(args.json).write_text(json.dumps({"records": bench.records, "machine": machine(),
                                               "command": command, "seconds": elapsed}, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.child:
        from benchmarks.child import child_main

        return child_main(args.child, args.params, args.result)
    args = resolve_args(ap, args)
    bench = Bench(args)
    command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    measure(bench, args)
    write_report(bench, args, command, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
