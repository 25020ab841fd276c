"""A tuning sweep on a GPU: tasks.model.tune's seeded sampler, tasks.model.train.train on CUDA, many trials in parallel.

    python -m benchmarks.gpu_sweep N_TRIALS SEED PROCESSES DEADLINE_S   # reads $FEATURES, $PREP; writes $OUT/trials.jsonl

FEATURES is a feature table and PREP its preprocessing JSON (``<lake>/features/window=.../part-0.parquet``
and ``<lake>/artifacts/preprocessing/<sha>.json`` of a retrain or of ``benchmarks.model_quality --home``).
Each trial records its validation rmse_ln (the selection criterion of ``price_model_tune``) and, for
analysis only, its val and test metrics. ``ACC=cpu`` runs it without a GPU. Lightning's deterministic
mode is off here (CUDA's embedding backward has no deterministic kernel), so a trial's numbers are
close to, not equal to, a CPU run of the same configuration. docs/model.md has the result.
"""
import json
import multiprocessing as mp
import os
import sys
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
OUT = os.environ.get("OUT", "/tmp/out")
N, SEED, PROCS, DEADLINE = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])

def flops(c, n_num=41):
    d_in = n_num * (c.get("num_embedding_dim") or 1) + 8
    h = c["hidden"]
    k = c.get("k") or 1
    return k * (d_in * h[0] + sum(a * b for a, b in zip(h, h[1:])) + h[-1])

def run(trial):
    import numpy as np
    import polars as pl
    import pytorch_lightning as L
    import torch
    orig = L.Trainer.__init__
    def init(self, *a, **k):
        k["deterministic"] = False
        orig(self, *a, **k)
    L.Trainer.__init__ = init
    torch.set_num_threads(1)
    from tasks.features.preprocessing import Preprocessing
    from tasks.model.bundle import ModelBundle
    from tasks.model.config import ModelConfig
    from tasks.model.train import train
    prep = Preprocessing.model_validate_json(open(os.environ["PREP"]).read())
    cfg = ModelConfig(**trial["config"])
    t = time.time()
    try:
        r = train(cfg, os.environ["FEATURES"], prep, accelerator=os.environ.get("ACC", "gpu"), threads=1)
    except Exception as e:
        return {"trial": trial["trial"], "error": repr(e)[:300]}
    df = pl.read_parquet(os.environ["FEATURES"])
    out = {"trial": trial["trial"], "config": trial["config"], "val_rmse_ln": r.metrics["val_rmse_ln"],
           "best_epoch": r.best_epoch, "epochs": r.epochs_run, "seconds": time.time() - t, "flops": flops(trial["config"])}
    b = ModelBundle(r.net, cfg, prep)
    for s in ("val", "test"):
        f = df.filter(pl.col("split") == s)
        p = b.predict_features(f)
        y = f["price"].to_numpy()
        ape = np.abs(p / y - 1)
        out[s] = {"mdape": float(np.median(ape)), "ppe10": float(np.mean(ape < 0.1)),
                  "rmse_ln": float(np.sqrt(np.mean(np.log(p / y) ** 2))), "bias": float(np.median(np.log(p / y)))}
    return out

if __name__ == "__main__":
    from tasks.model.tune import sample_trials
    trials = [t.to_xcom() for t in sample_trials(N, SEED, ["tabm"], max_epochs=int(os.environ.get("MAXEP", "40")))]
    t0 = time.time()
    ctx = mp.get_context("spawn")
    with ctx.Pool(PROCS) as pool, open(f"{OUT}/trials.jsonl", "w") as fh:
        for res in pool.imap_unordered(run, trials):
            fh.write(json.dumps(res) + "\n")
            fh.flush()
            print(res.get("trial"), res.get("val_rmse_ln"), res.get("test"), res.get("error"), round(time.time() - t0), flush=True)
            if time.time() - t0 > DEADLINE:
                print("deadline")
                pool.terminate()
                break
