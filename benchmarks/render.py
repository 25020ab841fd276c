"""The report of ``benchmarks.run``: the table of every stage and size, the issue's targets, the growth
with size, and the Markdown page (docs/benchmarks.md) that holds them, from ``benchmarks.runner.Bench``'s records.
"""

from __future__ import annotations

from datetime import datetime

from benchmarks.common import GIB, fmt_mib, fmt_rate, fmt_s, machine, size_label
from benchmarks.runner import FIXED_WORK, STAGES, START, Bench


def table(bench: Bench) -> list[str]:
    """One row per size and stage: rows, time, throughput, peak RSS, other load and the note."""
    lines = ["| rows | stage | rows processed | time (s) | rows/s | peak RSS (MiB) | other load | notes |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    for size in bench.sizes:
        for stage in STAGES:
            r = bench.get(size, stage)
            if r is None:
                continue
            rows = f"{r['rows']:,}" if r["rows"] else "-"
            note = r["note"] if r["status"] == "ok" else f"**{r['note']}**"
            load = "-" if r.get("other_cores") is None else f"{r['other_cores']:.2f}"
            lines.append(f"| {size_label(size)} | {r['label']} | {rows} | {fmt_s(r['seconds'])} | "
                         f"{fmt_rate(r['rate'])} | {fmt_mib(r['peak_rss'])} | {load} | {note.replace('|', '/')} |")
    return lines


def _row(target: str, size: int | None, measured: str, met: bool | None) -> str:
    return (f"| {target} | {size_label(size) if size else 'all'} | {measured} | "
            f"{'yes' if met else '**no**' if met is not None else 'n/a'} |")


def _floor_rows(bench: Bench, size: int) -> list[str]:
    f, fl = bench.ok(size, "features"), bench.ok(size, "floor")
    if not (f and fl):
        return [_row("features time <= 2x the floor's", size, "not measured", None)]
    ratio = f["seconds"] / fl["seconds"]
    out = [_row("features time <= 2x the floor's", size, f"{ratio:.2f}x ({fmt_s(f['seconds'])} s vs "
                f"{fmt_s(fl['seconds'])} s)", ratio <= 2)]
    if fl.get("codec_seconds"):
        same = f["seconds"] / fl["codec_seconds"]
        out.append(_row(f"features time vs a copy with the features' codec ({fl['codec']}; not a target)", size,
                        f"{same:.2f}x ({fmt_s(f['seconds'])} s vs {fmt_s(fl['codec_seconds'])} s)", None))
    return out


def _pandas_rows(bench: Bench, size: int) -> list[str]:
    f, pd_ = bench.ok(size, "features"), bench.get(size, "pandas")
    if f and pd_ and pd_["status"] == "ok":
        ratio = pd_["seconds"] / f["seconds"]
        mem = (pd_["peak_rss"] or 0) / max(f["peak_rss"] or 1, 1)
        return [_row("features >= 2x faster than pandas", size, f"pandas takes {ratio:.2f}x the time and "
                     f"{mem:.2f}x the peak memory", ratio >= 2)]
    if f and pd_:
        return [_row("features >= 2x faster than pandas", size, f"pandas {pd_['note']}; Polars ran in "
                     f"{fmt_s(f['seconds'])} s, {fmt_mib(f['peak_rss'])} MiB", True if "cap" in pd_["note"] else None)]
    return [_row("features >= 2x faster than pandas", size, "not measured", None)]


def _features_rss_rows(bench: Bench, size: int) -> list[str]:
    f = bench.get(size, "features")
    if f and f["status"] == "ok":
        return [_row("features peak RSS < 1.5 GiB", size, f"{f['peak_rss'] / GIB:.2f} GiB", f["peak_rss"] < 1.5 * GIB)]
    if f:
        return [_row("features peak RSS < 1.5 GiB", size, f["note"], False if f["status"] == "killed-memory" else None)]
    return []


def _lightning_rows(bench: Bench, size: int) -> list[str]:
    lt, raw = bench.ok(size, "train_lightning"), bench.ok(size, "train_raw")
    if not (lt and raw):
        return []
    ratio = lt["rate"] / raw["rate"]
    text = f"{ratio:.2f}x ({fmt_rate(lt['rate'])} vs {fmt_rate(raw['rate'])} samples/s)"
    if lt.get("median_rate") and raw.get("median_rate"):
        text += f"; median iterations {lt['median_rate'] / raw['median_rate']:.2f}x"
    return [_row("Lightning >= 0.9x the raw loop", size, text, ratio >= 0.9)]


def _comparison_rows(bench: Bench, size: int) -> list[str]:
    out = []
    gx, scan = bench.ok(size, "gx_partition"), bench.ok(size, "scan_partition")
    if gx and scan:
        out.append(_row("(comparison) GX validation of 1 partition vs a plain Polars scan", size,
                        f"{gx['seconds'] / scan['seconds']:,.0f}x the time ({fmt_s(gx['seconds'])} s vs "
                        f"{fmt_s(scan['seconds'])} s for {gx['rows']:,} rows; GX suite alone "
                        f"{gx.get('gx_only_s', 0):.3f} s)", None))
    v, one = bench.ok(size, "validate"), bench.get(size, "validate_one_call")
    if v and one and one["status"] == "ok":
        out.append(_row("(comparison) validate_interval: one call vs chunks", size,
                        f"peak {one['peak_rss'] / GIB:.2f} GiB vs {v['peak_rss'] / GIB:.2f} GiB, time "
                        f"{one['seconds'] / v['seconds']:.2f}x", None))
    elif v and one:
        out.append(_row("(comparison) validate_interval: one call vs chunks", size,
                        f"one call {one['note'].removeprefix('not run: ')}; chunks peak "
                        f"{v['peak_rss'] / GIB:.2f} GiB", None))
    return out


def _memory_row(bench: Bench) -> str:
    """Every stage's peak RSS under 4 GiB at the largest size."""
    big = max(bench.sizes)
    recs = [r for r in bench.records if r["size"] == big and r["stage"] not in ("synth", "ingest_validate")]
    over = [r for r in recs if r["status"] in ("ok", "killed-memory") and (r["peak_rss"] or 0) >= 4 * GIB]
    over += [r for r in recs if r["status"] == "not run" and "GiB" in r["note"]]
    measured = [r for r in recs if r["status"] == "ok"]
    top = max(measured, key=lambda r: r["peak_rss"] or 0) if measured else None
    text = (f"largest measured: {top['stage']} {top['peak_rss'] / GIB:.2f} GiB" if top else "nothing measured")
    if over:
        text += "; over 4 GiB: " + ", ".join(
            f"{r['stage']} ({r['peak_rss'] / GIB:.1f} GiB)" if r["peak_rss"] and r["status"] == "ok"
            else f"{r['stage']} ({r['note'].removeprefix('not run: ')})" for r in over)
    not_run = [r["stage"] for r in recs if r["status"] != "ok" and r not in over]
    if not_run:
        text += "; not measured: " + ", ".join(not_run)
    return _row(f"every stage's peak RSS < 4 GiB at {size_label(big)} rows", big, text, not over if measured else None)


def targets(bench: Bench) -> list[str]:
    """The issue's targets (shown, not asserted) and the comparisons, each target over every size."""
    out = ["| target | rows | measured | met? |", "|---|---:|---|---|"]
    for rows_of in (_floor_rows, _pandas_rows, _features_rss_rows, _lightning_rows, _comparison_rows):
        for size in bench.sizes:
            out += rows_of(bench, size)
    out.append(_memory_row(bench))
    return out


def scaling(records: list[dict]) -> list[str]:
    """Time ratio against rows ratio, smallest (1M where run) to largest size, for every stage."""
    lines = ["| stage | from | to | time ratio | rows ratio | ratio to linear |", "|---|---:|---:|---:|---:|---:|"]
    for stage in STAGES:
        if stage in ("synth",):
            continue
        ok = [r for r in records if r["stage"] == stage and r["status"] == "ok" and r["seconds"]]
        small = [r for r in ok if r["size"] >= 1_000_000] or ok
        if len(ok) < 2 or not small:
            continue
        a, b = min(small, key=lambda r: r["size"]), max(ok, key=lambda r: r["size"])
        if a is b:
            continue
        t_ratio, n_ratio = b["seconds"] / a["seconds"], b["rows"] / a["rows"]
        lin = "fixed work" if stage in FIXED_WORK or n_ratio < 1.01 else f"{t_ratio / n_ratio:.2f}"
        lines.append(f"| {STAGES[stage]} | {size_label(a['size'])} | {size_label(b['size'])} | {t_ratio:.2f} | "
                     f"{n_ratio:.1f} | {lin} |")
    if len(lines) == 2:
        lines.append("| (one size only: nothing to compare) | | | | | |")
    return lines


def _header(bench: Bench, command: str, started: datetime, seconds: float) -> list[str]:
    """The page's title, what was measured, on what machine and how."""
    m = machine()
    a = bench.args
    return [
        "# Pipeline benchmarks",
        "",
        f"Written by `benchmarks/run.py`. Command: `{command}` (finished {started:%Y-%m-%d %H:%M} UTC, "
        f"{seconds / 60:.1f} min).",
        "",
        f"**Code measured**: {bench.code_desc}; pipeline code fingerprint `{bench.fingerprint}` "
        "(sha256 of tasks/, expectations/, datasets/)" + (
            f"; **the code changed during the run** (fingerprint `{bench.fingerprint_end}` at the end)"
            if bench.fingerprint_end and bench.fingerprint_end != bench.fingerprint else "") + ".",
        "",
        f"**Machine**: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['physical_cores']} cores), "
        f"{m['ram_gib']} GiB RAM, {m['os']}. Python {m['python']}, Polars {m['polars']}, pandas {m['pandas']}, "
        f"pyarrow {m['pyarrow']}, NumPy {m['numpy']}, torch {m['torch']} (CPU), Lightning {m['lightning']}, "
        f"Great Expectations {m['great_expectations']}.",
        "",
        f"**Data**: `tasks.datasets.king_county.synth`, N rows over {a.days} days from {START} (seed {a.seed}), "
        "Parquet landing files; "
        f"every stage in a fresh child process; peak RSS is the child's `ru_maxrss` (imports included); "
        f"times exclude module imports; a stage runs up to {a.repeats} times in its child while its runs add up "
        f"to under {a.repeat_under:g} s, and the best time is kept (the note says how many). Memory cap per "
        f"stage: {a.mem_cap_gib:g} GiB (a child is killed past it; a stage whose linear extrapolation passes it "
        f"is not started). Training: {a.train_batches} batches of {a.batch_size}, {a.threads} torch threads, "
        f"default `ModelConfig` network. Scoring: up to {a.score_rows:,} rows. **Comparable-sales features** "
        f"(`tasks/features/comps/`) at sizes up to {a.comps_max_rows:,} rows; above, "
        f"`HOMEWORTH_COMPS={a.comps_above}` "
        "(see the notes). **Other load** is the mean number "
        "of CPU cores other processes kept busy while the stage's child ran (this machine is shared: on 2 cores, "
        f"0.5 already slows a 2-thread stage noticeably); before each stage the harness waits up to "
        f"{a.quiet_wait:g} s for it to drop under 0.5.",
        "",
    ]


def markdown(bench: Bench, command: str, started: datetime, seconds: float) -> str:
    """docs/benchmarks.md: the header, the table, the targets, the growth with size and how to read them."""
    return "\n".join([
        *_header(bench, command, started, seconds),
        *table(bench),
        "",
        "## Targets (issue 3; shown, not asserted) and comparisons",
        "",
        *targets(bench),
        "",
        "## Growth with size",
        "",
        "Time at the largest size each stage ran divided by time at the smallest (1M where run), against the "
        "ratio of rows: 1.00 is linear, below it fixed costs are being amortised, above it the stage grows "
        "faster than its input.",
        "",
        *scaling(bench.records),
        "",
        *NOTES,
        "",
    ])


NOTES = [
    "## How to read it",
    "",
    "- **ingest + validate** calls the public functions exactly as the DAG tasks do. `validate_interval` holds",
    "  the whole interval in memory (Polars frame, its pandas copy for GX and GX's COMPLETE result lists), so",
    "  its memory grows with the interval: the harness validates in chunks of consecutive days of at most",
    "  `--validate-chunk-rows` rows (one day when a day is larger), and the *whole window in one call* row",
    "  shows, or extrapolates, what a single bulk call costs.",
    "- **GX validation, 1 partition** is `validate_interval` for the busiest day (read, duplicate check, GX",
    "  suite, write validated and quarantine) after an untimed warm-up call; the note gives `run_gx` alone.",
    "  Compare it with the plain Polars scan of the same raw partition to see what validation costs.",
    "- **features** is `build_features` end to end (window partitions and their sha256, lazy scan, derive,",
    "  split, `sink_parquet`, split counts, `fit_preprocessing`, manifest). The **floor** is the least any",
    "  feature job can do: stream the same validated rows from Parquet to Parquet.",
    "- **comparable sales**: the full set (k nearest, rolling medians, previous sale) only up to",
    "  `--comps-max-rows`: its k-nearest search joins each sale with every earlier sale in the neighbouring",
    "  grid cells of the last year, so its cost grows with rows x sales nearby, quadratically when a",
    "  synthetic county of fixed area gets denser (docs/out-of-core.md). Above that size the features row",
    "  runs `HOMEWORTH_COMPS=area` (`--comps-above`): the row-level pipeline (derive, split, preprocessing",
    "  fit) plus the county market index and the per-zipcode, per-cell and 3 x 3-cell ring trailing means",
    "  and counts of earlier sales, from one streaming aggregation of the history by (zipcode, cell, day)",
    "  joined back by area and day; `market` keeps only the market index, `off` leaves it out too.",
    "- **pandas** (`benchmarks/pandas_features.py`) reads every partition with `pd.read_parquet`, derives",
    "  the same columns, joins back a per-zipcode-and-month median price per sqft, z-scores the numeric",
    "  features and writes Parquet. Where the Polars job runs `area` comparable sales, so does pandas",
    "  (`area_comps`: the same columns and values, from daily sums pivoted to day x area frames, `rolling`",
    "  windows and `merge` back by area and day); the Polars job also fits clip quantiles.",
    "- **train input** is what `tasks.model.train.train` loads before its first batch: `load_splits` reads the",
    "  whole feature table into memory and `to_tensors` converts train and val. The two training rows run",
    "  on a fixed sample (`--train-batches` x `--batch-size` training rows cut from that size's features) so",
    "  their throughput does not depend on N; the Lightning row is timed from its own `on_train_batch_start`",
    "  of the first batch to `on_train_batch_end` of the last, the raw loop the same way.",
    "- **score** runs `ModelBundle.predict_features` (preprocessing + forward + decode) on feature rows read",
    "  in chunks outside the timer, with an untrained default network (speed does not depend on weights).",
]
