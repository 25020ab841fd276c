"""Per-epoch progress in the task log (tasks/model/progress.py) and the name of the logged RMSE (rmse_ln only on ln)."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import polars as pl
import pytest

from tasks.features.featureset import SPLIT
from tasks.model.config import ModelConfig
from tasks.model.progress import EpochProgress, duration, epoch_line, time_left
from tasks.model.train import train
from tests.unit.test_model import PREP, ROWS, synthetic_frame

LINE = re.compile(r"^(?P<label>\S+(?: refit)?) epoch (?P<epoch>\d+)/(?P<max>\d+): train loss (?P<train>[\d.]+), "
                  r"(?P<val>.*), elapsed (?P<elapsed>\S+), left at most (?P<left>\S+) \((?P<bound>[^)]+)\)$")


@pytest.fixture(scope="module")
def features_uri(tmp_path_factory) -> str:
    df = synthetic_frame(sum(ROWS.values()), seed=3)
    df = df.with_columns(pl.Series(SPLIT, [s for s, n in ROWS.items() for _ in range(n)]))
    path = tmp_path_factory.mktemp("progress") / "part-0.parquet"
    df.write_parquet(path)
    return str(path)


def config(**kw) -> ModelConfig:
    return ModelConfig(**{"family": "mlp", "hidden": [16], "cat_embedding_dim": 4, "batch_size": 64, "max_epochs": 3,
                          "patience": 3, "seed": 1, **kw})


def test_duration_and_time_left():
    assert [duration(s) for s in (0.04, 12.34, 234, 7500)] == ["0.0s", "12.3s", "3m54s", "2h05m"]
    assert duration(float("nan")) == "?"
    assert time_left(1, 5, 10.0, None) == (40.0, "epoch budget")  # 4 epochs left at 10 s each
    assert time_left(1, 5, 10.0, 30) == (20.0, "max_time_s")  # the time cap comes first
    assert time_left(4, 5, 40.0, 100) == (10.0, "epoch budget")
    assert time_left(2, 5, 40.0, 30) == (0.0, "max_time_s")  # past the cap: nothing left, never negative


def test_epoch_line_says_what_it_measured():
    line = epoch_line("trial-3", 1, 10, 0.21041, {"val loss": 0.18, "val rmse_ln": 0.165}, 24.0, None)
    assert line == ("trial-3 epoch 2/10: train loss 0.2104, val loss 0.1800, val rmse_ln 0.1650, elapsed 24.0s, "
                    "left at most 1m36s (epoch budget)")
    assert "val -" in epoch_line("train refit", 0, 2, None, {}, 1.0, None)


def test_callback_times_epochs_with_its_clock(caplog):
    """The callback's own arithmetic, driven by a stand-in trainer and clock (our logic, not Lightning's)."""
    ticks = iter([100.0, 130.0, 160.0])
    progress = EpochProgress("train", 4, 200, ("val/loss", "val/rmse_ln"), clock=lambda: next(ticks))
    trainer = SimpleNamespace(is_global_zero=True, current_epoch=0,
                              callback_metrics={"val/loss": 0.5, "val/rmse_ln": 0.25})
    module = SimpleNamespace(train_epoch_means=lambda: (0.75, 0.3))
    with caplog.at_level(logging.INFO, logger="tasks.model.progress"):
        progress.on_train_start(trainer, module)
        progress.on_train_epoch_end(trainer, module)
        trainer.current_epoch = 1
        progress.on_train_epoch_end(trainer, module)
    assert progress.lines == [
        "train epoch 1/4: train loss 0.7500, val loss 0.5000, val rmse_ln 0.2500, elapsed 30.0s, left at most 1m30s (epoch budget)",
        "train epoch 2/4: train loss 0.7500, val loss 0.5000, val rmse_ln 0.2500, elapsed 1m00s, left at most 1m00s (epoch budget)"]
    assert [r.getMessage() for r in caplog.records] == progress.lines
    other = EpochProgress("train", 4, None, (), clock=lambda: 0.0)
    other.on_train_epoch_end(SimpleNamespace(is_global_zero=False, current_epoch=0, callback_metrics={}), module)
    assert other.lines == []  # not rank 0: nothing logged


def test_train_logs_one_line_per_epoch_and_refit_epoch(features_uri, caplog):
    with caplog.at_level(logging.INFO, logger="tasks.model.progress"):
        result = train(config(), features_uri, PREP, accelerator="cpu", refit=True, label="trial-7")
    lines = [LINE.match(r.getMessage()) for r in caplog.records if r.name == "tasks.model.progress"]
    assert all(lines), [r.getMessage() for r in caplog.records]
    first = [m for m in lines if m["label"] == "trial-7"]
    refit = [m for m in lines if m["label"] == "trial-7 refit"]
    assert [int(m["epoch"]) for m in first] == list(range(1, result.epochs_run + 1)) and result.epochs_run == 3
    assert all(int(m["max"]) == 3 and "val rmse_ln" in m["val"] and m["bound"] == "epoch budget" for m in first)
    assert result.refit["done"] and [int(m["epoch"]) for m in refit] == list(range(1, result.refit["epochs"] + 1))
    assert all(m["val"] == "val -" for m in refit)
    # the train loss is the epoch's mean: it falls over the first run's epochs on this easy problem
    losses = [float(m["train"]) for m in first]
    assert losses[-1] < losses[0]


def test_rmse_ln_only_when_the_target_is_ln(features_uri, caplog):
    """A target that is not ln(price) gets its RMSE named rmse (in its own units), not rmse_ln."""
    log_run = train(config(max_epochs=1), features_uri, PREP, accelerator="cpu")
    assert set(log_run.metrics) >= {"val_rmse_ln"} and "val_rmse" not in log_run.metrics
    identity = PREP.model_copy(update={"target_transform": "identity", "target_mean": 200_000.0,
                                       "target_std": 50_000.0})
    caplog.clear()  # only the identity run's lines (the first run's may be captured when INFO is on globally)
    with caplog.at_level(logging.INFO, logger="tasks.model.progress"):
        run = train(config(max_epochs=1), features_uri, identity, accelerator="cpu")
    assert "val_rmse_ln" not in run.metrics and run.val_error == run.metrics["val_rmse"] > 0
    message = [r.getMessage() for r in caplog.records if r.name == "tasks.model.progress"][0]
    assert "val rmse " in message and "rmse_ln" not in message
