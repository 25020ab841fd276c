"""The comps index (``tasks.features.comps_index``) gives the plan's features, and the bundle its prices.

Real King County sales (the bundled file, coerced as ingest does), the real comps plan
(``tasks.features.comps.comps``) as the oracle, a real lake of validated day partitions for the
refresh tests, and a real (untrained) network for the bundle: no mocks but the one that corrupts the
index to prove the self-check refuses it.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from tasks.core import lake, storage
from tasks.datasets.king_county.features import COMPS
from tasks.features.comps import comps
from tasks.features.comps_index import CompsIndex, IndexMismatch, LakeIndex, compare
from tests.kc import kc_spec

SPLIT_DAY = date(2015, 3, 1)


@pytest.fixture(scope="module")
def sales(tmp_path_factory) -> pl.DataFrame:
    from benchmarks.serving import sample_csv, typed_rows

    spec = kc_spec()
    tmp = tmp_path_factory.mktemp("kc")
    return typed_rows(spec, sample_csv(spec, tmp / "kc.csv", every=2)).select(list(spec.columns))


@pytest.fixture(scope="module")
def history(sales) -> pl.DataFrame:
    return sales.filter(pl.col("date") < SPLIT_DAY)


def queries(sales: pl.DataFrame, n: int = 600) -> pl.DataFrame:
    """Houses to price: later sales, earlier ones (inside the history), a far future day, an unseen zipcode,
    a house far from any sale, a repeated id."""
    picked = sales.sample(n, seed=7)
    odd = picked.head(4).with_columns(
        pl.Series("date", [date(2016, 6, 1), date(2014, 1, 1), SPLIT_DAY, SPLIT_DAY + timedelta(days=3)]),
        pl.Series("zipcode", ["98999", picked["zipcode"][1], picked["zipcode"][2], picked["zipcode"][3]]),
        pl.Series("lat", [picked["lat"][0], picked["lat"][1], 40.0, picked["lat"][3]]),
    )
    return pl.concat([picked, odd, picked.head(3)])


def test_index_gives_the_plans_features(history, sales):
    rows = queries(sales)
    index = CompsIndex.build(COMPS, history)
    expected = comps(history, rows, COMPS)
    got = index.comps(rows)
    assert got.columns == expected.columns and got.schema == expected.schema
    compare(expected, got, COMPS.columns())
    # not vacuous: the rows have comps of every kind
    for c in ("comp_knn8_med", "comp_prev_adj", "comp_zipcode_90d_med", "comp_cell_365d_med", "comp_mktloc_now"):
        assert got[c].null_count() < got.height, c
    assert got["comp_prev_adj"].null_count() > 0 and (got["comp_knn_n"] == 0).any()


def test_one_row_at_a_time_equals_the_batch(history, sales):
    rows = queries(sales, 40)
    index = CompsIndex.build(COMPS, history, check_rows=8)
    batch = index.comps(rows)
    singles = pl.concat([index.comps(rows.slice(i, 1)) for i in range(rows.height)])
    assert singles.equals(batch)


def test_market_only_configuration(history, sales):
    cfg = COMPS.market_only()
    rows = queries(sales, 50)
    compare(comps(history, rows, cfg), CompsIndex.build(cfg, history).comps(rows), cfg.columns())


def test_a_wrong_index_is_refused(history, monkeypatch):
    real = CompsIndex.values

    def off_by_a_little(self, rows):
        out = real(self, rows)
        out["comp_knn8_med"] = out["comp_knn8_med"] + 1e-6
        return out

    monkeypatch.setattr(CompsIndex, "values", off_by_a_little)
    with pytest.raises(IndexMismatch, match="comp_knn8_med"):
        CompsIndex.build(COMPS, history, check_rows=16)


def write_days(lake_uri: str, sales: pl.DataFrame) -> None:
    for (day,), part in sales.partition_by("date", as_dict=True, maintain_order=True).items():
        storage.write_parquet_atomic(part, lake.partition_uri(lake_uri, lake.VALIDATED, day))


def test_lake_index_picks_up_a_new_day(tmp_path, history, sales):
    lake_uri = str(tmp_path / "lake")
    days = sorted(history["date"].unique().to_list())
    write_days(lake_uri, history.filter(pl.col("date") < days[-1]))
    li = LakeIndex(lake_uri, COMPS, ttl_s=0.0)
    first = li.get(fresh=True)
    assert first is not None and li.builds == 1
    assert li.get(fresh=True) is first and li.builds == 1  # unchanged partitions: no rebuild
    house = sales.filter(pl.col("date") >= SPLIT_DAY).head(1).with_columns(pl.lit(days[-1] + timedelta(days=1)).alias("date"))
    before = first.comps(house)
    write_days(lake_uri, history.filter(pl.col("date") == days[-1]))  # a newly validated day
    key = li.key
    assert li.get(fresh=False) is first  # the endpoint's path answers at once with the current index...
    li._thread.join(60)  # ...while the new one is built in the background
    second = li.get(fresh=False)
    assert second is not first and li.builds == 2 and li.key != key
    after = second.comps(house)
    assert after["comp_mkt_30"][0] != before["comp_mkt_30"][0]  # the new day's sales are in its market
    compare(comps(history, house, COMPS), after, COMPS.columns())


@pytest.fixture(scope="module")
def bundle_and_history(tmp_path_factory, history, sales):
    """A bundle whose preprocessing was fitted on real comps features (untrained network) over a lake."""
    import torch

    from tasks.features.featureset import SPLIT, feature_set
    from tasks.features.fit import fit_preprocessing
    from tasks.model.bundle import ModelBundle
    from tasks.model.config import ModelConfig
    from tasks.model.networks import build_net

    spec = kc_spec()
    fset = feature_set(spec)
    tmp = tmp_path_factory.mktemp("bundle")
    train = history.filter(pl.col("date") >= date(2014, 9, 1))
    feats = fset.derive(comps(history, train, COMPS).lazy()).with_columns(pl.lit("train").alias(SPLIT)).collect()
    feats.write_parquet(tmp / "features.parquet")
    prep = fit_preprocessing(str(tmp / "features.parquet"), spec, fset, {"rows": {"train": feats.height}})
    assert prep.comps is not None and prep.target_offset
    torch.manual_seed(0)
    lake_uri = str(tmp / "lake")
    write_days(lake_uri, history)
    cfg = ModelConfig(seed=0)
    return ModelBundle(build_net(prep, cfg), cfg, prep, lake_uri=lake_uri), history


def test_bundle_prices_from_the_index_equal_the_plans(bundle_and_history, sales):
    from tasks.model.tensors import to_tensors

    bundle, history = bundle_and_history
    rows = queries(sales, 300)
    assert bundle.comps_index(fresh=True) is not None
    via_index = bundle.predict(rows)
    via_plan = bundle.predict(rows, history=history)  # an explicit history takes the plan
    np.testing.assert_allclose(via_index, via_plan, rtol=1e-9)
    feats = bundle.features(rows)
    x_num, x_cat = to_tensors(bundle.prep, feats, with_target=False)
    y_num, y_cat = bundle.matrices.tensors(feats)
    assert torch_equal(x_num, y_num) and torch_equal(x_cat, y_cat)
    assert np.array_equal(bundle.prep.offset(feats), bundle.matrices.offset(feats))
    assert np.array_equal(bundle.prep.decode_rows(np.zeros(rows.height, np.float32), feats),
                          bundle.matrices.decode(np.zeros(rows.height, np.float32), feats))
    one = [float(bundle.predict(rows.slice(i, 1), fresh=False)[0]) for i in range(5)]
    assert one == via_index[:5].tolist()  # one house at a time: the same prices as in a batch


def torch_equal(a, b) -> bool:
    return bool((a == b).all()) and a.dtype == b.dtype and a.shape == b.shape


def test_categorical_matrix_unseen_and_null(bundle_and_history, sales):
    bundle, _ = bundle_and_history
    feats = bundle.features(queries(sales, 20))
    odd = feats.with_columns(pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.lit("00000")).otherwise(pl.col("zipcode"))
                             .alias("zipcode"))
    assert np.array_equal(bundle.prep.categorical_matrix(odd), bundle.matrices.categorical(odd))
    nulls = feats.with_columns(pl.lit(None, pl.Float64).alias("lat"), pl.lit(float("nan")).alias("grade"))
    assert np.array_equal(bundle.prep.numeric_matrix(nulls), bundle.matrices.numeric(nulls))


def test_knn_in_chunks_equals_one_pass(history, sales, monkeypatch):
    import tasks.features.comps_index as ci

    rows = queries(sales, 60)
    index = CompsIndex.build(COMPS, history, check_rows=8)
    whole = index.comps(rows)
    monkeypatch.setattr(ci, "KNN_CHUNK_ROWS", 7)
    assert index.comps(rows).equals(whole)
