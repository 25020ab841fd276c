"""The measured data stages of ``benchmarks.run``, each run in a fresh child interpreter.

A stage takes the size's parameters (a JSON dict) and a :class:`~benchmarks.measure.Clock`, imports what it
measures, calls ``clock.imported()`` and returns its seconds, rows and a note for the table. The model
stages (training input, training, scoring) are in ``benchmarks.model_stages``.
"""

from __future__ import annotations

import time
from datetime import date, timedelta
from pathlib import Path

from benchmarks.common import fmt_s
from benchmarks.measure import (
    Clock,
    best_of,
    days_with_rows,
    load_spec,
    partition_path,
    runs_note,
    timed,
    validated_paths,
    window,
)


def st_synth(p: dict, clock: Clock) -> dict:
    from tasks.datasets.king_county.synth import generate

    clock.imported()
    seconds, s = timed(generate, p["rows"], p["days"], p["seed"], p["landing"], start=date.fromisoformat(p["start"]))
    return {"seconds": seconds, "rows": s["rows"], "note": f"{s['files']} files"}


def st_ingest(p: dict, clock: Clock) -> dict:
    from tasks.ingest.landing import ingest_interval

    spec = load_spec()
    clock.imported()
    start, end = window(p)
    seconds, r, runs = best_of(p, lambda: timed(ingest_interval, spec, p["landing"], p["lake"], start, end))
    return {"seconds": seconds, "rows": r["rows_landed"], "runs": runs,
            "note": f"{r['days']} days, {r['files']} files, {r['coerce_errors']} coerce errors; {runs_note(runs)}"}


def _validate_chunks(days: list[tuple[date, int]], budget: int) -> list[tuple[date, date, int]]:
    chunks, cur, rows = [], [], 0
    for day, n in days:
        if cur and rows + n > budget:
            chunks.append((cur[0], cur[-1] + timedelta(days=1), rows))
            cur, rows = [], 0
        cur.append(day)
        rows += n
    if cur:
        chunks.append((cur[0], cur[-1] + timedelta(days=1), rows))
    return chunks


def st_validate(p: dict, clock: Clock) -> dict:
    import great_expectations  # noqa: F401  (imported outside the timer)

    from tasks.quality.validate import validate_interval

    spec = load_spec()
    clock.imported()
    chunks = _validate_chunks(days_with_rows(p, "raw"), p["validate_chunk_rows"])

    def run():
        t = time.perf_counter()
        counts = [0, 0, 0]
        for a, b, _ in chunks:
            r = validate_interval(spec, p["lake"], a, b)
            counts = [counts[0] + r["rows_read"], counts[1] + r["rows_accepted"], counts[2] + r["rows_quarantined"]]
        return time.perf_counter() - t, counts

    seconds, (read, accepted, quarantined), runs = best_of(p, run)
    largest = max((n for _, _, n in chunks), default=0)
    return {"seconds": seconds, "rows": read, "chunks": len(chunks), "largest_chunk_rows": largest, "runs": runs,
            "note": f"{len(chunks)} calls of <= {p['validate_chunk_rows']:,} rows (largest {largest:,}); "
                    f"{accepted:,} accepted, {quarantined:,} quarantined; {runs_note(runs)}"}


def st_validate_one_call(p: dict, clock: Clock) -> dict:
    import great_expectations  # noqa: F401

    from tasks.quality.validate import validate_interval

    spec = load_spec()
    clock.imported()
    start, end = window(p)
    seconds, r = timed(validate_interval, spec, p["lake"], start, end)
    return {"seconds": seconds, "rows": r["rows_read"], "note": "1 call, 1 run"}


def _busiest_day(p: dict) -> tuple[date, int]:
    return max(days_with_rows(p, "raw"), key=lambda dn: (dn[1], dn[0]))


def st_gx_partition(p: dict, clock: Clock) -> dict:
    import great_expectations  # noqa: F401
    import polars as pl

    from tasks.quality.validate import run_gx, validate_interval

    spec = load_spec()
    clock.imported()
    day, rows = _busiest_day(p)
    nxt = day + timedelta(days=1)
    validate_interval(spec, p["lake"], day, nxt)  # warm-up: GX's first call sets up its machinery
    seconds, _, runs = best_of(p, lambda: timed(validate_interval, spec, p["lake"], day, nxt))
    frame = pl.read_parquet(partition_path(p["lake"], "raw", day)).with_row_index("_row_id")
    gx_only, _, _ = best_of(p, lambda: timed(run_gx, spec, frame, day, nxt))
    return {"seconds": seconds, "rows": rows, "gx_only_s": gx_only, "runs": runs,
            "note": f"{day}; warm, {runs_note(runs)}; the GX suite alone (run_gx) {gx_only:.3f} s"}


def st_scan_partition(p: dict, clock: Clock) -> dict:
    import polars as pl

    clock.imported()
    day, rows = _busiest_day(p)
    path = partition_path(p["lake"], "raw", day)
    pl.scan_parquet(path).select(pl.len()).collect()  # warm-up, as for GX
    q = {**p, "repeats": max(p["repeats"], 5)}
    seconds, _, runs = best_of(q, lambda: timed(lambda: pl.scan_parquet(path).select(pl.all().null_count()).collect()))
    return {"seconds": seconds, "rows": rows, "runs": runs,
            "note": f"{day}; scan_parquet + null_count of every column; {runs_note(runs)}"}



def st_features(p: dict, clock: Clock) -> dict:
    import polars as pl

    from tasks.core import storage
    from tasks.features.build import build_features

    spec = load_spec()
    clock.imported()
    start, end = window(p)
    seconds, out, runs = best_of(p, lambda: timed(build_features, spec, p["lake"], start, end, comps_mode=p["comps"], rebuild=True))
    local = storage.local_path(out["features_uri"])
    columns = len(pl.read_parquet_schema(local))
    rows = sum(out["rows"].values())
    split = "/".join(f"{out['rows'].get(s, 0):,}" for s in ("train", "val", "test"))
    comps = {"full": "with comparable sales", "market": "row-level + market index (HOMEWORTH_COMPS=market)",
             "area": "row-level + area comparable sales (HOMEWORTH_COMPS=area)",
             "off": "row-level only (HOMEWORTH_COMPS=off)"}[p["comps"]]
    return {"seconds": seconds, "rows": rows, "features_path": local, "preprocessing_uri": out["preprocessing_uri"],
            "columns": columns, "split_rows": out["rows"], "runs": runs,
            "note": f"{comps}; {columns} columns out; train/val/test {split}; {runs_note(runs)}"}


def st_floor(p: dict, clock: Clock) -> dict:
    import polars as pl

    clock.imported()
    paths = validated_paths(p)
    from tasks.features.write import FEATURES_COMPRESSION

    out = str(Path(p["size_dir"]) / "floor.parquet")
    sink = lambda codec: pl.scan_parquet(paths).sink_parquet(out, compression=codec, row_group_size=65_536)  # noqa: E731
    seconds, _, runs = best_of(p, lambda: timed(sink, "zstd"))
    rows = pl.scan_parquet(out).select(pl.len()).collect().item()
    # The same copy with the feature table's codec: the like-for-like comparison (zstd, Polars' default,
    # is the floor the issue defines; the features write FEATURES_COMPRESSION).
    same = None
    if FEATURES_COMPRESSION != "zstd":
        same, _, _ = best_of(p, lambda: timed(sink, FEATURES_COMPRESSION))
    Path(out).unlink()
    return {"seconds": seconds, "rows": rows, "runs": runs, "codec_seconds": same, "codec": FEATURES_COMPRESSION,
            "note": f"{len(paths)} partitions, zstd, 65,536-row groups; {runs_note(runs)}"
                    + (f"; with {FEATURES_COMPRESSION} (the features' codec): {fmt_s(same)} s" if same else "")}


def st_pandas(p: dict, clock: Clock) -> dict:
    import pandas  # noqa: F401

    from benchmarks.pandas_features import build_features_pandas

    spec = load_spec()
    clock.imported()
    paths = validated_paths(p)
    out = str(Path(p["size_dir"]) / "pandas-features.parquet")
    _, end = window(p)
    # With the Polars job's area comparable sales (HOMEWORTH_COMPS=area), the pandas job computes them too.
    area = p.get("comps") == "area"
    seconds, r, runs = best_of(p, lambda: timed(build_features_pandas, paths, out, end, spec.split.test_days,
                                                  spec.split.val_days, area))
    Path(out).unlink()
    what = "with the area comparable sales (benchmarks.pandas_features.area_comps); " if area else ""
    return {"seconds": seconds, "rows": r["rows"], "runs": runs,
            "note": f"{what}{r['columns']} columns out; {runs_note(runs)}"}

