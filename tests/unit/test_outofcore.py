"""Out-of-core features and training (docs/out-of-core.md): chunked build_features, sampled clip
quantiles, the streaming loader and a streaming training run. Small and fast: every size knob is
forced down so the big-data paths run on a few thousand rows."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from polars.testing import assert_frame_equal

from tasks.features.featureset import SPLIT, FeatureSet
from tasks.features.fit import CLIP_QUANTILES, fit_preprocessing
from tasks.features.preprocessing import NumericStat, Preprocessing, Vocabulary

# ---------------------------------------------------------------------------------------------
# build_features in chunks


@pytest.fixture(scope="module")
def kc_lake(tmp_path_factory, spec):
    from tests.unit.test_comps import write_validated_lake

    lake = tmp_path_factory.mktemp("ooc-lake") / "lake"
    write_validated_lake(lake, spec, every=16)
    return lake


def test_chunked_build_features_equals_a_single_chunk(kc_lake, spec, caplog):
    from tasks.core import storage
    from tasks.features.build import build_features
    from tasks.features.preprocessing import load_preprocessing

    window = (date(2013, 5, 28), date(2015, 5, 28))
    whole = build_features(spec, str(kc_lake), *window)  # KC's 1.3k rows: one chunk (chunk_rows 200k)
    whole_df = pl.read_parquet(storage.local_path(whole["features_uri"]))
    whole_prep = load_preprocessing(whole["preprocessing_uri"])
    with caplog.at_level("INFO", logger="tasks"):
        chunked = build_features(spec, str(kc_lake), *window, chunk_rows=300, max_knn_pairs=2_000)
    assert "features: chunk 2/" in caplog.text and "k-nearest of" in caplog.text  # both bounds were hit
    path = storage.local_path(chunked["features_uri"])
    chunked_df = pl.read_parquet(path)

    assert pq.ParquetFile(path).metadata.num_row_groups >= 1
    assert chunked["rows"] == whole["rows"]
    # Same rows, same order (the window's scan order), same values up to float rounding (rolling sums).
    assert_frame_equal(chunked_df, whole_df, check_exact=False, rel_tol=1e-9, abs_tol=1e-12)
    prep = load_preprocessing(chunked["preprocessing_uri"])
    for a, b in zip(prep.numeric, whole_prep.numeric):
        assert a.name == b.name
        for field in ("lo", "hi", "mean", "std"):
            x, y = getattr(a, field), getattr(b, field)
            assert (x is None and y is None) or x == pytest.approx(y, rel=1e-9, abs=1e-12), (a.name, field)
    assert prep.categorical == whole_prep.categorical
    assert not storage.exists(chunked["features_uri"] + ".tmp")


def test_knn_in_slices_of_bounded_candidate_pairs_gives_the_same_features():
    from tasks.features.comps import comps, knn_candidates, slice_bounds
    from tests.unit.test_comps import CFG, sales

    df = sales()
    whole = comps(df, df, CFG)
    est = knn_candidates(df.lazy(), df.sort("date"), CFG)
    assert est.sum() > 2_000
    assert all(b - a == 1 or est[a:b].sum() <= 2_000 for a, b in slice_bounds(est, 10_000, 2_000))
    sliced = comps(df, df, CFG, max_pairs=2_000)
    assert_frame_equal(sliced, whole, check_exact=False, rel_tol=1e-9, abs_tol=1e-12)
    assert_frame_equal(comps(df, df, CFG, max_pairs=10**9), whole, check_exact=True)  # under budget: one pass


def test_plan_chunks_keeps_day_order_and_bounds_rows():
    from tasks.features.plan import plan_chunks

    parts = [{"uri": str(i), "rows": n} for i, n in enumerate([5, 5, 12, 1, 1, 1, 0, 7])]
    chunks = plan_chunks(parts, 10)
    assert [p["uri"] for c in chunks for p in c] == [p["uri"] for p in parts]
    assert [sum(p["rows"] for p in c) for c in chunks] == [10, 12, 10]  # a 12-row day is a chunk of its own


# ---------------------------------------------------------------------------------------------
# Clip quantiles on a sample above the threshold


def test_sampled_statistics_are_close_to_exact_and_deterministic(tmp_path, spec):
    rng = np.random.default_rng(0)
    n = 100_000
    df = pl.DataFrame({"a": rng.normal(size=n), "b": rng.lognormal(size=n), "c": rng.integers(0, 50, n).astype(float),
                       "z": rng.choice(["p", "q"], n), "price": rng.lognormal(12.0, 0.5, n),
                       SPLIT: np.where(rng.uniform(size=n) < 0.8, "train", "val")})
    path = tmp_path / "f.parquet"
    df.write_parquet(path)
    fset = FeatureSet(["a", "b", "c"], ["z"], "log", lambda lf: lf, None)
    n_train = int((df[SPLIT] == "train").sum())
    exact = fit_preprocessing(str(path), spec, fset, {}, exact_max_rows=n_train, sample_rows=20_000)
    assert exact.fitted_on["statistics"] == {"method": "exact", "rows": n_train}
    sampled = fit_preprocessing(str(path), spec, fset, {}, exact_max_rows=1_000, sample_rows=20_000)
    how = sampled.fitted_on["statistics"]
    # every k-th row of the table (k = ceil(training rows / 20k)), of which the training rows
    k = -(-n_train // 20_000)
    assert how["method"] == "every_kth_row" and how["modulus"] == k and how["of_rows"] == n_train
    assert how["rows"] == int(df.with_row_index("r").filter((pl.col(SPLIT) == "train") & (pl.col("r") % k == 0)).height)
    again = fit_preprocessing(str(path), spec, fset, {}, exact_max_rows=1_000, sample_rows=20_000)
    assert again.sha256() == sampled.sha256()
    tr = df.filter(pl.col(SPLIT) == "train")
    for e, s_, c in zip(exact.numeric, sampled.numeric, "abc"):
        assert (e.lo, e.hi) == (tr[c].quantile(CLIP_QUANTILES[0]), tr[c].quantile(CLIP_QUANTILES[1]))
        # within a fraction of the column's spread (the 0.1% tails of a 20k sample: ~20 values each)
        spread = tr[c].quantile(0.99) - tr[c].quantile(0.01)
        assert abs(s_.lo - e.lo) < 0.3 * spread and abs(s_.hi - e.hi) < 0.3 * spread, c
        assert abs(s_.mean - e.mean) < 0.05 * e.std and abs(s_.std / e.std - 1) < 0.1, c
    assert abs(sampled.target_mean - exact.target_mean) < 0.05 * exact.target_std
    assert [v.values for v in sampled.categorical] == [["p", "q"]]  # vocabularies: every training row
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.parquet"]  # the sample is held in memory, no file


# ---------------------------------------------------------------------------------------------
# The streaming loader

ROWS = 3_000
PREP = Preprocessing(
    dataset="synthetic", spec_sha256="0" * 64, features_module=None,
    numeric=[NumericStat(name="row", lo=None, hi=None, mean=0.0, std=1.0),
             *[NumericStat(name=f"x{i}", lo=-3.0, hi=3.0, mean=0.0, std=1.0) for i in range(3)]],
    categorical=[Vocabulary(name="zone", values=["a", "b", "c"])],
    target="price", target_transform="log", target_mean=12.0, target_std=0.5, fitted_on={},
)


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory) -> tuple[str, pl.DataFrame]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(ROWS, 3))
    zone = rng.choice(["a", "b", "c", "d"], size=ROWS)
    effect = np.select([zone == "a", zone == "b"], [0.2, -0.1], 0.0)
    price = np.exp(12.0 + 0.3 * x[:, 0] - 0.2 * x[:, 1] + effect + rng.normal(scale=0.05, size=ROWS))
    split = np.where(np.arange(ROWS) < 2_000, "train", np.where(np.arange(ROWS) < 2_600, "val", "test"))
    split = np.where((np.arange(ROWS) % 7 == 0) & (np.arange(ROWS) < 2_000), "val", split)  # interleaved too
    df = pl.DataFrame({"row": np.arange(ROWS, dtype=float), "x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "zone": zone,
                       "price": price, SPLIT: split})
    path = tmp_path_factory.mktemp("stream") / "part-0.parquet"
    df.write_parquet(path, row_group_size=256)
    return str(path), df


def _epoch_rows(ds) -> list[int]:
    out = []
    for x_num, x_cat, y in ds:
        assert x_num.dtype == torch.float32 and x_cat.dtype == torch.int64 and y.dtype == torch.float32
        assert len(x_num) == len(x_cat) == len(y) <= ds.batch_size
        out += x_num[:, 0].long().tolist()
    return out


def test_loader_yields_every_train_row_once_per_epoch_in_a_seeded_order(stream_file):
    from tasks.model.data import ParquetBatches

    path, df = stream_file
    train_rows = df.filter(pl.col(SPLIT) == "train")["row"].cast(pl.Int64).to_list()
    ds = ParquetBatches(path, PREP, "train", 64, shuffle=True, seed=5, buffer_rows=500)
    assert len(ds) == math.ceil(len(train_rows) / 64)
    epochs = [_epoch_rows(ds) for _ in range(3)]
    for e in epochs:
        assert sorted(e) == train_rows  # every train row exactly once, nothing else
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != train_rows
    assert sum(1 for _ in ds) == len(ds)  # batches per epoch as __len__ says
    same = ParquetBatches(path, PREP, "train", 64, shuffle=True, seed=5, buffer_rows=500)
    assert [_epoch_rows(same) for _ in range(3)] == epochs  # deterministic under the seed
    other = ParquetBatches(path, PREP, "train", 64, shuffle=True, seed=6, buffer_rows=500)
    assert _epoch_rows(other) != epochs[0]
    # the batches carry the Preprocessing's conversion of their rows
    x_num, x_cat, y = next(iter(ParquetBatches(path, PREP, "val", 10_000, shuffle=False)))
    val = df.filter(pl.col(SPLIT) == "val")
    np.testing.assert_array_equal(x_num.numpy(), PREP.numeric_matrix(val))
    np.testing.assert_array_equal(x_cat.numpy(), PREP.categorical_matrix(val))
    np.testing.assert_array_equal(y.numpy(), PREP.encode_target(val["price"].to_numpy()))
    # a target offset whose column is not an input is read too (Preprocessing.encode_rows)
    from tasks.features.preprocessing import OffsetTerm

    with_offset = PREP.model_copy(update={"numeric": PREP.numeric[:2], "target_offset": [OffsetTerm(name="x2", fill=0.0)]})
    *_, y = next(iter(ParquetBatches(path, with_offset, "val", 10_000, shuffle=False)))
    np.testing.assert_array_equal(y.numpy(), with_offset.encode_rows(val))


def test_streaming_training_run(stream_file):
    from tasks.model.config import ModelConfig
    from tasks.model.train import train

    path, df = stream_file
    cfg = ModelConfig(family="mlp", hidden=[16], cat_embedding_dim=4, batch_size=64, max_epochs=2, seed=3,
                      clamp_inputs=True)
    prep = PREP.model_copy(update={"numeric": PREP.numeric[1:]})  # not the row number
    runs = [train(cfg, path, prep, accelerator="cpu", threads=1, in_memory_max_rows=0, buffer_rows=512)
            for _ in range(2)]
    r = runs[0]
    counts = df.group_by(SPLIT).len()
    assert r.rows == {s: int(counts.filter(pl.col(SPLIT) == s)["len"].item()) for s in ("train", "val", "test")}
    assert r.epochs_run == 2 and math.isfinite(r.metrics["val_rmse_ln"]) and r.metrics["val_rmse_ln"] < 1.0
    assert r.metrics["samples_per_second"] > 0
    assert runs[1].metrics["val_rmse_ln"] == r.metrics["val_rmse_ln"]  # deterministic under the seed
    train_x = prep.numeric_matrix(df.filter(pl.col(SPLIT) == "train"))
    np.testing.assert_array_equal(r.net.num_lo.numpy(), train_x.min(axis=0))
    np.testing.assert_array_equal(r.net.num_hi.numpy(), train_x.max(axis=0))


def test_streaming_training_validates_within_an_epoch_on_a_sample_of_val(stream_file, monkeypatch):
    """An epoch longer than VAL_EVERY_SAMPLES is validated several times (best weights, early stopping),
    on every k-th val row once val passes VAL_MAX_ROWS."""
    from pytorch_lightning.loggers.logger import Logger

    import tasks.model.data
    import tasks.model.train
    from tasks.model.config import ModelConfig
    from tasks.model.train import train

    class Recorder(Logger):
        name, version = "recorder", "0"
        seen: list[dict] = []

        @property
        def experiment(self):
            return None

        def log_hyperparams(self, params, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.seen.append(dict(metrics))

    path, df = stream_file
    monkeypatch.setattr(tasks.model.train, "VAL_EVERY_SAMPLES", 640)  # every 10 batches of 64
    monkeypatch.setattr(tasks.model.data, "VAL_MAX_ROWS", 100)
    cfg = ModelConfig(family="mlp", hidden=[16], cat_embedding_dim=4, batch_size=64, max_epochs=1, seed=3)
    prep = PREP.model_copy(update={"numeric": PREP.numeric[1:]})
    rec = Recorder()
    r = train(cfg, path, prep, logger=rec, accelerator="cpu", threads=1, in_memory_max_rows=0, buffer_rows=512)
    checks = [m for m in rec.seen if "val/rmse_ln" in m]
    train_rows = df.filter(pl.col(SPLIT) == "train").height
    assert len(checks) == math.ceil(train_rows / 64) // 10  # one epoch, a check every 10 batches
    assert r.metrics["val_rmse_ln"] == min(m["val/rmse_ln"] for m in checks)
    assert r.rows["val"] == df.filter(pl.col(SPLIT) == "val").height  # the split's size; validated on a sample
    # training metrics: logged once an epoch, not per step (PriceModule sums them itself)
    train_logs = [m for m in rec.seen if "train/rmse_ln" in m]
    assert len(train_logs) == 1 and 0 < train_logs[0]["train/rmse_ln"] < 2 and train_logs[0]["train/loss"] > 0


# ---------------------------------------------------------------------------------------------
# Bounded reads for evaluation, the boosting yardstick, drift and the promotion bootstrap


def test_iter_split_yields_one_split_in_file_order_in_bounded_batches(stream_file):
    from tasks.model.data import iter_split

    path, df = stream_file
    for split in ("train", "val", "test"):
        want = df.filter(pl.col(SPLIT) == split)
        batches = list(iter_split(path, split, batch_rows=500))
        assert all(b.height < 500 + 256 for b in batches)  # a batch stops at the row group that reaches 500
        assert_frame_equal(pl.concat(batches), want)
    cols = list(iter_split(path, "test", batch_rows=10**9, columns=["row", "price"]))
    assert len(cols) == 1 and cols[0].columns == ["row", "price"]
    assert cols[0]["row"].to_list() == df.filter(pl.col(SPLIT) == "test")["row"].to_list()
    assert list(iter_split(path, "holdout")) == []


def test_sample_split_is_whole_when_small_and_every_kth_row_when_large(stream_file):
    from tasks.model.data import sample_split

    path, df = stream_file
    train = df.filter(pl.col(SPLIT) == "train")
    assert_frame_equal(sample_split(path, "train", max_rows=10**6), train)
    sampled = sample_split(path, "train", max_rows=500)
    step = math.ceil(train.height / 500)
    assert step > 1 and sampled.height <= 500
    assert_frame_equal(sampled, train.gather_every(step))
    assert_frame_equal(sample_split(path, "train", max_rows=500), sampled)  # deterministic


def test_gbm_trains_on_a_bounded_sample(stream_file):
    from tasks.model.gbm import train_gbm

    path, df = stream_file
    prep = PREP
    whole = train_gbm(path, prep)
    assert whole.metrics["train_rows"] == df.filter(pl.col(SPLIT) == "train").height
    small = train_gbm(path, prep, max_rows={"train": 400, "val": 100})
    assert small.metrics["train_rows"] <= 400


def test_drift_reads_a_bounded_sample_of_each_side():
    from tasks.features.featureset import bounded_sample

    lf = pl.LazyFrame({"x": np.arange(10_000, dtype=float)})
    assert bounded_sample(lf, 10**6).height == 10_000
    cut = bounded_sample(lf, 999)
    assert cut.height <= 999 and cut["x"].to_list() == list(np.arange(0, 10_000, 11, dtype=float))


def test_bootstrap_resamples_a_seeded_sample_of_a_large_test_set():
    from tasks.registry.promote import paired_bootstrap

    rng = np.random.default_rng(3)
    a = rng.lognormal(13, 0.5, 5_000)
    new, champ = a * rng.lognormal(0, 0.08, a.size), a * rng.lognormal(0, 0.12, a.size)
    full = paired_bootstrap(a, new, champ, resamples=200, seed=1)
    assert full["rows"] == full["rows_resampled"] == 5_000
    assert full == paired_bootstrap(a, new, champ, resamples=200, seed=1, max_rows=5_000)  # at the limit: all rows
    cut = paired_bootstrap(a, new, champ, resamples=200, seed=1, max_rows=1_000)
    assert cut["rows"] == 5_000 and cut["rows_resampled"] == 1_000
    assert cut == paired_bootstrap(a, new, champ, resamples=200, seed=1, max_rows=1_000)
    for m, v in cut["metrics"].items():
        assert v["new"] == full["metrics"][m]["new"]  # point estimates over every row
        # a smaller sample: a wider interval around the same difference
        assert v["ci_high"] - v["ci_low"] > full["metrics"][m]["ci_high"] - full["metrics"][m]["ci_low"]
        assert v["verdict"] == "better"
