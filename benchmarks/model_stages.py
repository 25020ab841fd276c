"""The measured model stages of ``benchmarks.run``: the training input, Lightning against a raw PyTorch
loop on the same sample, and scoring; each runs in a fresh child interpreter (see ``benchmarks.stages``).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from benchmarks.common import MIB
from benchmarks.measure import Clock, best_of, runs_note, timed


def st_train_sample(p: dict, clock: Clock) -> dict:
    """Setup (not measured): a features file with exactly batches x batch_size training rows."""
    import polars as pl

    from tasks.features.featureset import SPLIT

    clock.imported()
    lf = pl.scan_parquet(p["features_path"])
    want = p["train_batches"] * p["batch_size"]
    train = lf.filter(pl.col(SPLIT) == "train").head(want).collect()
    batches = min(p["train_batches"], train.height // p["batch_size"])
    if batches < 1:
        raise ValueError(f"only {train.height} training rows: fewer than one batch of {p['batch_size']}")
    train = train.head(batches * p["batch_size"])
    val = lf.filter(pl.col(SPLIT) == "val").head(p["val_rows"]).collect()
    test = lf.filter(pl.col(SPLIT) == "test").head(1024).collect()
    out = str(Path(p["size_dir"]) / "train-sample.parquet")
    pl.concat([train, val, test], how="vertical").write_parquet(out)
    return {"seconds": 0.0, "rows": train.height, "train_sample_path": out, "train_batches": batches}


def _model_config(p: dict):
    from tasks.model.config import ModelConfig

    return ModelConfig(batch_size=p["batch_size"], max_epochs=1, seed=p["seed"])


def st_train_load(p: dict, clock: Clock) -> dict:
    from tasks.features.preprocessing import load_preprocessing
    from tasks.model.tensors import to_tensors
    from tasks.model.train import load_splits

    clock.imported()
    prep = load_preprocessing(p["preprocessing_uri"])
    t = time.perf_counter()
    frames = load_splits(p["features_path"])
    tensors = {s: to_tensors(prep, frames[s]) for s in ("train", "val")}
    seconds = time.perf_counter() - t
    rows = sum(len(f) for f in frames.values())
    nbytes = sum(x.element_size() * x.nelement() for ts in tensors.values() for x in ts)
    return {"seconds": seconds, "rows": rows,
            "note": f"all {rows:,} feature rows in memory; train+val tensors {nbytes / MIB:,.0f} MiB; 1 run"}


class _LoopTimer:
    """Start of every batch and end of the last, from the module's own Lightning hooks."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.last: float | None = None
        self.batches = 0
        self.samples = 0


def _median_rate(starts: list[float], end: float, batch_size: int) -> float:
    """Samples/s from the median iteration (start to next start; the last: start to end): robust to a
    few iterations slowed by other processes on a shared machine."""
    periods = [b - a for a, b in zip(starts, [*starts[1:], end])]
    return batch_size / statistics.median(periods)


def st_train_lightning(p: dict, clock: Clock) -> dict:
    import inspect

    import torch

    from tasks.features.preprocessing import load_preprocessing
    from tasks.model.module import PriceModule
    from tasks.model.train import train

    clock.imported()
    cfg = _model_config(p)
    prep = load_preprocessing(p["preprocessing_uri"])
    lt = _LoopTimer()
    orig_start, orig_end = PriceModule.on_train_batch_start, PriceModule.on_train_batch_end

    def on_start(self, batch, batch_idx, *a, **k):
        lt.starts.append(time.perf_counter())
        return orig_start(self, batch, batch_idx, *a, **k)

    def on_end(self, outputs, batch, batch_idx, *a, **k):
        out = orig_end(self, outputs, batch, batch_idx, *a, **k)
        lt.last, lt.batches, lt.samples = time.perf_counter(), lt.batches + 1, lt.samples + len(batch[-1])
        return out

    PriceModule.on_train_batch_start, PriceModule.on_train_batch_end = on_start, on_end
    kwargs = {"accelerator": "cpu", "threads": p["threads"]}
    accepted = inspect.signature(train).parameters
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    if "threads" not in kwargs:
        torch.set_num_threads(p["threads"])

    def run():
        lt.__init__()
        fit_s, result = timed(train, cfg, p["train_sample_path"], prep, **kwargs)
        if not lt.starts or not lt.batches:
            raise RuntimeError("the Lightning hooks saw no training batch")
        info = {"samples": lt.samples, "batches": lt.batches, "fit_s": getattr(result, "seconds", fit_s),
                "median_rate": _median_rate(lt.starts, lt.last, p["batch_size"])}
        return lt.last - lt.starts[0], info

    seconds, info, runs = best_of(p, run)
    return {"seconds": seconds, "rows": info["samples"], "batches": info["batches"], "fit_s": info["fit_s"],
            "median_rate": info["median_rate"], "runs": runs, "torch_threads": torch.get_num_threads(),
            "note": f"{info['batches']} batches x {p['batch_size']}, {torch.get_num_threads()} threads, {runs_note(runs)}; "
                    f"median iteration {info['median_rate']:,.0f} samples/s; train() end to end {info['fit_s']:.2f} s "
                    "(setup, 1 val pass)"}


def st_train_raw(p: dict, clock: Clock) -> dict:
    import torch
    from torch import nn

    from tasks.features.preprocessing import load_preprocessing
    from tasks.model.networks import build_net
    from tasks.model.tensors import to_tensors
    from tasks.model.train import load_splits

    clock.imported()
    torch.set_num_threads(p["threads"])
    cfg = _model_config(p)
    prep = load_preprocessing(p["preprocessing_uri"])
    x_num, x_cat, y = to_tensors(prep, load_splits(p["train_sample_path"])["train"])

    def run():
        torch.manual_seed(p["seed"])
        net = build_net(prep, cfg)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        net.train()
        # PriceModule's objective: every member of an ensemble fitted on its own (one member for the
        # plain networks); code without forward_members fits net(x) directly.
        members = getattr(net, "forward_members", None)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(p["seed"]))
        samples, starts = 0, []
        t = time.perf_counter()
        for idx in order.split(p["batch_size"]):
            starts.append(time.perf_counter())
            xn, xc, yy = x_num[idx], x_cat[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            if members is not None:
                out = members(xn, xc)
                loss = nn.functional.mse_loss(out, yy[:, None].expand_as(out))
            else:
                loss = nn.functional.mse_loss(net(xn, xc), yy)
            loss.backward()
            opt.step()
            samples += len(yy)
        end = time.perf_counter()
        return end - t, {"samples": samples, "batches": len(starts),
                         "median_rate": _median_rate(starts, end, p["batch_size"])}

    seconds, info, runs = best_of(p, run)
    return {"seconds": seconds, "rows": info["samples"], "batches": info["batches"], "runs": runs,
            "torch_threads": torch.get_num_threads(), "median_rate": info["median_rate"],
            "note": f"{info['batches']} batches x {p['batch_size']}, {torch.get_num_threads()} threads, {runs_note(runs)}; "
                    f"same TabularNet + AdamW; median iteration {info['median_rate']:,.0f} samples/s"}


def st_score(p: dict, clock: Clock) -> dict:
    import polars as pl
    import pyarrow.parquet as pq
    import torch

    from tasks.features.preprocessing import load_preprocessing
    from tasks.model.bundle import ModelBundle, save_bundle
    from tasks.model.networks import build_net

    clock.imported()
    torch.set_num_threads(p["threads"])
    torch.manual_seed(p["seed"])
    cfg = _model_config(p)
    prep = load_preprocessing(p["preprocessing_uri"])
    bundle_dir = Path(p["size_dir"]) / "bundle"
    save_bundle(bundle_dir, build_net(prep, cfg), cfg, prep)
    bundle = ModelBundle.load(bundle_dir)
    chunk = p["score_chunk_rows"]

    def run():
        rows, seconds = 0, 0.0
        for rb in pq.ParquetFile(p["features_path"]).iter_batches(batch_size=chunk):
            df = pl.from_arrow(rb).head(p["score_rows"] - rows)
            dt, pred = timed(bundle.predict_features, df)
            seconds += dt
            assert len(pred) == df.height
            rows += df.height
            if rows >= p["score_rows"]:
                break
        return seconds, rows

    seconds, rows, runs = best_of(p, run)
    return {"seconds": seconds, "rows": rows, "runs": runs,
            "note": f"untrained default network; chunks of {chunk:,} rows read outside the timer; "
                    f"{torch.get_num_threads()} threads; {runs_note(runs)}"}

