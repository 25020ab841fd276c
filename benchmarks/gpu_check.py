"""The GPU check of issue 18: the retrain's training on CUDA against the CPU, on the same features, in one go.

    python -m benchmarks.gpu_check                       # on a machine with CUDA; appends to docs/benchmarks.md
    python -m benchmarks.gpu_check --out /tmp/gpu.md --rows 200000 --epochs 8
    python -m benchmarks.gpu_check --dry-run --out /tmp/dry.md   # no GPU: the same steps on the CPU, tiny

Needs nothing outside the repository: it generates the synthetic market on the spot
(``tasks.datasets.king_county.synth``, ``--rows`` sales over ``--days`` days, seed ``--seed``), writes its days
as validated partitions of a private lake (the generator follows the data contract; Great Expectations is
not run here) and builds the feature table with ``tasks.features.build.build_features`` (comparable sales
off: the model's own inputs). Then it trains the same configuration (``tasks.model.train.train``, the
retrain's function, default family at ``--epochs`` epochs, early stopping off) several ways:

1. ``cpu``: ``accelerator="cpu"``, 32-bit: the reference;
2. ``cuda``: ``accelerator="auto"`` (CUDA), 32-bit;
3. ``cuda bf16-mixed`` and ``cuda 16-mixed``: mixed precision (bf16 where the GPU supports it);
4. ``ddp xN``: DDP over all N visible GPUs (``devices="auto"``, ``strategy="ddp"``, launched by
   ``tasks.model.distributed``), only when there are at least two.

For each: the training time, samples per second (optimizer steps x batch size / fit seconds), the best
validation rmse_ln and the test metrics (mdape, ppe10, rmse_ln) of the returned network on the test split.
The result is a section of Markdown between ``<!-- gpu_check:begin -->`` and ``<!-- gpu_check:end -->`` in
``--out`` (replaced when there, appended otherwise), and JSON on stdout.

Without CUDA it stops with status 2 and a message, measuring nothing. ``--dry-run`` runs the same steps on
the CPU instead (the CUDA runs become CPU runs, bf16-mixed on the CPU, DDP over 2 CPU processes with gloo)
on a tiny market, so the script itself is tested where there is no GPU (tests/e2e/test_ddp.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"
START = date(2014, 5, 2)


def synthetic_features(home: Path, rows: int, days: int, seed: int) -> tuple[str, str]:
    """(feature table URI, preprocessing URI) of a synthetic market of ``rows`` sales over ``days`` days from
    2014-05-02, in the lake under ``home`` (validated partitions written from the generated landing files)."""
    import polars as pl

    from tasks.core import lake, storage
    from tasks.core.spec import get_spec
    from tasks.datasets.king_county.synth import generate
    from tasks.features.build import build_features

    spec = get_spec()
    landing, lake_uri = home / "landing", str(home / "lake")
    generate(rows=rows, days=days, seed=seed, out=landing, start=START)
    for i in range(days):
        day = START + timedelta(days=i)
        files = sorted((landing / day.isoformat()).glob("*.parquet"))
        df = pl.concat([pl.read_parquet(p).with_columns(pl.lit(str(p)).alias("_source_file"),
                                                        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("_source_row"))
                        for p in files])
        df = df.select(*spec.columns, pl.lit(day).alias("ds"), "_source_file", "_source_row")
        storage.write_parquet_atomic(df, lake.partition_uri(lake_uri, "validated", day))
    out = build_features(spec, lake_uri, START, START + timedelta(days=days), comps_mode="off")
    return out["features_uri"], out["preprocessing_uri"]


def test_metrics(result, cfg, prep, features_uri: str) -> dict[str, float]:
    """mdape, ppe10, rmse_ln of ``result.net`` on the test split (the evaluation's metrics)."""
    import polars as pl

    from tasks.core.metrics import price_metrics
    from tasks.features.featureset import SPLIT
    from tasks.model.bundle import ModelBundle

    test = pl.read_parquet(features_uri).filter(pl.col(SPLIT) == "test")
    predicted = ModelBundle(result.net, cfg, prep).predict_features(test)
    m = price_metrics(test[prep.target].to_numpy(), predicted)
    return {k: round(float(m[k]), 5) for k in ("mdape", "ppe10", "rmse_ln")}


def plan(dry_run: bool) -> list[dict]:
    """The runs: name and train()'s accelerator / precision / devices / strategy."""
    import torch

    if dry_run:
        return [{"name": "cpu", "accelerator": "cpu"},
                {"name": "cpu bf16-mixed (dry run)", "accelerator": "cpu", "precision": "bf16-mixed"},
                {"name": "ddp x2 cpu (dry run)", "accelerator": "cpu", "devices": 2, "strategy": "ddp"}]
    runs = [{"name": "cpu", "accelerator": "cpu"}, {"name": "cuda", "accelerator": "auto"}]
    if torch.cuda.is_bf16_supported():
        runs.append({"name": "cuda bf16-mixed", "accelerator": "auto", "precision": "bf16-mixed"})
    runs.append({"name": "cuda 16-mixed", "accelerator": "auto", "precision": "16-mixed"})
    n = torch.cuda.device_count()
    if n > 1:
        runs.append({"name": f"ddp x{n}", "accelerator": "auto", "devices": "auto", "strategy": "ddp"})
    return runs


def run_one(run: dict, cfg, prep, features_uri: str, threads: int) -> dict:
    from tasks.model.train import train

    t0 = time.perf_counter()
    result = train(cfg, features_uri, prep, accelerator=run["accelerator"], threads=threads,
                   devices=run.get("devices", 1), strategy=run.get("strategy", "auto"), num_nodes=1,
                   precision=run.get("precision"), label=run["name"])
    wall = time.perf_counter() - t0
    return {"name": run["name"], "epochs": result.epochs_run, "fit_s": round(result.seconds, 2),
            "wall_s": round(wall, 2), "samples_per_s": round(result.metrics["samples_per_second"]),
            "val_rmse_ln": round(result.metrics.get("val_rmse_ln", float("nan")), 5),
            **test_metrics(result, cfg, prep, features_uri)}


def machine() -> dict:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": gpus, "cpu_count": os.cpu_count(),
            "python": platform.python_version()}


def markdown(out: dict) -> str:
    a = out["args"]
    rows = ["| run | epochs | fit s | samples/s | val rmse_ln | test mdape | test ppe10 | test rmse_ln |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in out["runs"]:
        rows.append(f"| {r['name']} | {r['epochs']} | {r['fit_s']:.1f} | {r['samples_per_s']:,} | {r['val_rmse_ln']:.4f} "
                    f"| {r['mdape']:.2%} | {r['ppe10']:.1%} | {r['rmse_ln']:.4f} |")
    m = out["machine"]
    title = "GPU check (dry run on the CPU: not a GPU measurement)" if a["dry_run"] else "GPU check"
    return "\n".join([
        BEGIN, f"## {title}", "",
        f"`python -m benchmarks.gpu_check {' '.join(out['argv'])}`: the synthetic market ({a['rows']:,} sales over "
        f"{a['days']} days, seed {a['seed']}; {out['split_rows']}), features without comparable sales, the default "
        f"family for {a['epochs']} epochs (no early stopping), batch {out['batch_size']}. Machine: GPUs "
        f"{', '.join(m['gpus']) or 'none'}; torch {m['torch']} (CUDA {m['cuda']}); {m['cpu_count']} CPU cores.",
        "", *rows, "",
        "samples/s = optimizer steps x batch size / fit seconds. CUDA runs use Lightning's deterministic mode as "
        "`warn` (CUDA's embedding backward has no deterministic kernel), so they are close to, not equal to, the "
        "CPU run. " + out["notes"], END, ""])


def write_section(path: Path, section: str) -> None:
    """``section`` replaces the marked one in ``path`` or is appended; written to a temporary name, renamed."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section.rstrip("\n") + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=None, help="sales (default 200,000; dry run 3,000)")
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default 8; dry run 2)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--dry-run", action="store_true", help="no GPU needed: the same steps on the CPU, tiny")
    args = ap.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, built for CUDA {torch.version.cuda}): nothing measured, {args.out} "
              "unchanged. Run it on a machine with a GPU and a CUDA build of torch, or pass --dry-run.",
              file=sys.stderr)
        return 2
    rows = args.rows or (3_000 if args.dry_run else 200_000)
    epochs = args.epochs or (2 if args.dry_run else 8)
    return _run(args, rows, epochs, argv if argv is not None else sys.argv[1:])


def _run(args, rows: int, epochs: int, argv: list[str]) -> int:
    from tasks.features.preprocessing import load_preprocessing
    from tasks.model.config import default_config

    threads = max(1, (os.cpu_count() or 1) // (2 if args.dry_run else 1))
    with tempfile.TemporaryDirectory(prefix="homeworth-gpu-check-") as tmp:
        features_uri, prep_uri = synthetic_features(Path(tmp), rows, args.days, args.seed)
        prep = load_preprocessing(prep_uri)
        cfg = default_config("tabm", max_epochs=epochs, patience=epochs, seed=args.seed)
        results = []
        for run in plan(args.dry_run):
            results.append(run_one(run, cfg, prep, features_uri, threads))
            print(json.dumps(results[-1]), file=sys.stderr)
        import polars as pl

        from tasks.features.featureset import SPLIT

        counts = dict(pl.read_parquet(features_uri, columns=[SPLIT])[SPLIT].value_counts().iter_rows())
    notes = "" if args.dry_run or len(machine()["gpus"]) > 1 else "One GPU visible: no DDP run."
    out = {"args": {"rows": rows, "days": args.days, "seed": args.seed, "epochs": epochs, "dry_run": args.dry_run},
           "argv": argv, "machine": machine(), "batch_size": cfg.batch_size, "runs": results, "notes": notes,
           "split_rows": "train / val / test " + " / ".join(f"{counts.get(s, 0):,}" for s in ("train", "val", "test"))}
    write_section(args.out, markdown(out))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
