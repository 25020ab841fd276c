"""Multi-device training (tasks/model/distributed.py, tasks/model/data.py sharding) and benchmarks/gpu_check.py.

DDP over 2 CPU processes (gloo) trains the synthetic market to the test error of one process, within the
noise between two seeds of one process. Small on purpose (6,000 sales, 6 epochs): the machine has 2 cores.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from benchmarks import gpu_check
from tasks.features.featureset import SPLIT
from tasks.features.preprocessing import load_preprocessing
from tasks.model import data as data_mod
from tasks.model import distributed
from tasks.model.config import ModelConfig
from tasks.model.data import ParquetBatches, ShardedIndexBatches
from tasks.model.train import train
from tests.support import private_home


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    home = tmp_path_factory.mktemp("ddp")
    with private_home(home / "state"):
        features_uri, prep_uri = gpu_check.synthetic_features(home, 6000, 240, 3)
        yield features_uri, load_preprocessing(prep_uri)


def cfg(seed: int) -> ModelConfig:
    return ModelConfig(family="mlp_plr", hidden=[64, 64], batch_size=128, max_epochs=6, patience=6, seed=seed)


def test_two_process_ddp_matches_one_process(market, capfd):
    features_uri, prep = market
    one = train(cfg(7), features_uri, prep, accelerator="cpu", threads=1, devices=1, refit=True)
    other_seed = train(cfg(8), features_uri, prep, accelerator="cpu", threads=1, devices=1, refit=True)
    capfd.readouterr()
    before = set(Path(tempfile.gettempdir()).glob("homeworth-ddp-*"))
    ddp = train(cfg(7), features_uri, prep, accelerator="cpu", threads=1, devices=2, strategy="ddp", num_nodes=1,
                refit=True)
    err = capfd.readouterr().err
    e_one, e_seed, e_ddp = (gpu_check.test_metrics(r, cfg(7), prep, features_uri)["rmse_ln"]
                            for r in (one, other_seed, ddp))
    noise = abs(e_one - e_seed)  # what a different seed alone changes (0.003 when this test was written)
    assert abs(e_ddp - e_one) <= max(2 * noise, 0.004), (e_one, e_seed, e_ddp)
    assert e_ddp < 0.2  # near the market's noise (sigma 0.15), far below the spread of ln(price)
    # rank 0's result came back: the refit on train + val, the rows, the best epoch
    assert ddp.refit["done"] and ddp.refit["rows"] == one.refit["rows"] and ddp.rows == one.rows
    assert 0 <= ddp.best_epoch < 6 and ddp.epochs_run == 6 and not ddp.net.training
    # one progress line per epoch, from rank 0 only, through the task's stderr
    assert sum(f"[rank 0] INFO tasks.model.progress: train epoch {e}/6" in err for e in range(1, 7)) == 6
    assert "[rank 1] INFO tasks.model.progress" not in err
    assert set(Path(tempfile.gettempdir()).glob("homeworth-ddp-*")) <= before  # the job folder was removed


def _rows(batches) -> list[float]:
    return [float(v) for b in batches for v in b[2]]


@pytest.mark.parametrize("n", [1000, 1001, 1003])
def test_shards_are_disjoint_equal_and_cover_the_epoch(monkeypatch, n):
    """Each rank's share of an epoch (in memory): disjoint, the same number of batches on every rank (DDP
    needs it), the whole global batch order but for fewer than ``world`` rows of the last one."""
    y = torch.arange(n, dtype=torch.float32)
    tensors = (torch.zeros(n, 1), torch.zeros(n, 1, dtype=torch.long), y)
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(data_mod, "shard", lambda r=rank: (r, 2))
        ds = ShardedIndexBatches(tensors, 100, True, seed=5)
        batches = list(ds)
        assert len(batches) == len(ds) and all(len(b[2]) == 50 for b in batches[:-1])
        seen.append(_rows(batches))
    assert not set(seen[0]) & set(seen[1])
    assert n - len(seen[0]) - len(seen[1]) < 2 and len(seen[0]) == len(seen[1])
    monkeypatch.setattr(data_mod, "shard", lambda: (0, 1))
    whole = ShardedIndexBatches(tensors, 100, True, seed=5)
    assert _rows(whole) == [float(v) for v in torch.randperm(n, generator=torch.Generator().manual_seed(5))]


def test_streamed_shards_are_disjoint_and_equal(monkeypatch, market):
    features_uri, prep = market
    counts = dict(pl.read_parquet(features_uri, columns=[SPLIT])[SPLIT].value_counts().iter_rows())
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(data_mod, "shard", lambda r=rank: (r, 2))
        ds = ParquetBatches(features_uri, prep, "train", 128, True, seed=3, buffer_rows=1000)
        batches = list(ds)
        assert len(batches) == len(ds)
        seen.append(np.concatenate([np.concatenate([b[0].numpy(), b[2].numpy()[:, None]], axis=1) for b in batches]))
    a, b = ({tuple(r) for r in s} for s in seen)
    assert not a & b and len(seen[0]) == len(seen[1])
    assert counts["train"] - len(seen[0]) - len(seen[1]) < 2
    val = ParquetBatches(features_uri, prep, "val", 512, False)  # validation: whole on every rank
    assert sum(len(v[2]) for v in val) == counts["val"]


def test_the_plan_reads_the_settings_and_refuses_what_it_cannot_launch(monkeypatch, tmp_path):
    monkeypatch.setenv("HOMEWORTH_TRAIN_DEVICES", "2")
    monkeypatch.setenv("HOMEWORTH_TRAIN_NUM_NODES", "3")
    with private_home(tmp_path):
        p = distributed.plan(None, None, None, "cpu")
    assert (p.devices, p.num_nodes, p.strategy, p.world) == (2, 3, "ddp", 6)
    assert distributed.plan("1", "auto", 1, "cpu").world == 1
    assert distributed.plan("auto", "auto", 1, "cpu").devices == 1  # Lightning's CPU "auto" is one device
    with pytest.raises(ValueError, match="HOMEWORTH_TRAIN_DEVICES='two'"):
        distributed.plan("two", "auto", 1, "cpu")
    with pytest.raises(ValueError, match="ddp_spawn"):
        distributed.plan("2", "ddp_spawn", 1, "cpu")


def test_a_failing_worker_fails_the_task_naming_its_rank(market, tmp_path):
    _, prep = market
    with pytest.raises(RuntimeError, match="DDP worker of local rank . exited with status") as failed:
        train(cfg(7), str(tmp_path / "missing.parquet"), prep, accelerator="cpu", threads=1, devices=2,
              strategy="ddp", num_nodes=1)
    job = Path(str(failed.value).split("(job ")[1].split(")")[0])
    assert (job / distributed.JOB).exists()  # kept for the post-mortem, named in the error
    shutil.rmtree(job)


def test_gpu_check_refuses_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal path is for machines without it")
    out = tmp_path / "bench.md"
    out.write_text("# before\n")
    assert gpu_check.main(["--out", str(out)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and out.read_text() == "# before\n"


def test_gpu_check_dry_run_writes_its_section(tmp_path):
    out = tmp_path / "bench.md"
    out.write_text("# Benchmarks\n")
    assert gpu_check.main(["--dry-run", "--rows", "2000", "--days", "200", "--epochs", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Benchmarks\n") and text.count(gpu_check.BEGIN) == 1
    assert "dry run on the CPU" in text and "| ddp x2 cpu (dry run) | 1 |" in text and "| cpu bf16-mixed" in text
    assert gpu_check.main(["--dry-run", "--rows", "2000", "--days", "200", "--epochs", "1", "--out", str(out)]) == 0
    assert out.read_text().count(gpu_check.BEGIN) == 1  # a rerun replaces its section
