"""Unit tests of tasks.features.build (split, preprocessing, build_features) and the King County feature module."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tasks.core import lake as lake_paths
from tasks.core import storage
from tasks.core.spec import DatasetSpec, SplitSpec
from tasks.datasets.king_county import features as kc
from tasks.features.build import build_features
from tasks.features.featureset import SPLIT, FeatureSet, assign_split
from tasks.features.fit import fit_preprocessing
from tasks.features.preprocessing import Preprocessing, load_preprocessing
from tasks.ingest.landing import DS, POLARS_TYPES

WINDOW_END = date(2015, 5, 28)  # with test_days=88, val_days=59: test >= 2015-03-01, val >= 2015-01-01


def kc_rows(day: date, n: int, first_id: int, zipcodes: tuple[str, ...] = ("98001", "98002")) -> pl.DataFrame:
    """``n`` validated King County rows sold on ``day``, typed as the spec says, plus the ``ds`` column."""
    i = np.arange(first_id, first_id + n)
    data = {
        "id": [f"{k:010d}" for k in i],
        "date": [day] * n,
        "price": (300_000.0 + 10_000.0 * i).tolist(),
        "bedrooms": (2 + i % 4).tolist(),
        "bathrooms": (1.0 + (i % 3) * 0.5).tolist(),
        "sqft_living": (1000.0 + 100.0 * i).tolist(),
        "sqft_lot": (5000.0 + 10.0 * i).tolist(),
        "floors": [1.0 + (k % 2) for k in i],
        "waterfront": [0] * n,
        "view": (i % 5).tolist(),
        "condition": (1 + i % 5).tolist(),
        "grade": (5 + i % 6).tolist(),
        "sqft_above": (800.0 + 100.0 * i).tolist(),
        "sqft_basement": [200.0] * n,
        "yr_built": (1950 + i % 60).tolist(),
        "yr_renovated": [0 if k % 3 else 2000 for k in i],
        "zipcode": [zipcodes[k % len(zipcodes)] for k in range(n)],
        "lat": (47.5 + 0.001 * i).tolist(),
        "long": (-122.2 - 0.001 * i).tolist(),
        "sqft_living15": (1200.0 + 50.0 * i).tolist(),
        "sqft_lot15": (5500.0 + 5.0 * i).tolist(),
        DS: [day] * n,
    }
    return pl.DataFrame(data)


def typed(spec: DatasetSpec, df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.col(c).cast(POLARS_TYPES[cs.type]) for c, cs in spec.columns.items())


# ---------------------------------------------------------------------------------------------
# assign_split


def test_time_split_boundaries_are_exact(spec):
    days = [date(2014, 12, 31), date(2015, 1, 1), date(2015, 2, 28), date(2015, 3, 1), date(2015, 5, 27)]
    lf = pl.LazyFrame({"date": days})

    out = assign_split(lf, spec, WINDOW_END).collect()

    expected = pl.DataFrame({"date": days, SPLIT: ["train", "val", "val", "test", "test"]})
    assert_frame_equal(out, expected)


def _random_spec(spec: DatasetSpec, seed: int) -> DatasetSpec:
    return spec.model_copy(update={"split": SplitSpec(method="random", seed=seed, val_fraction=0.1, test_fraction=0.2)})


def test_random_split_is_deterministic_under_its_seed_and_keyed_by_id(spec):
    ids = [f"{i:010d}" for i in range(2000)]
    lf = pl.LazyFrame({"id": ids, "price": [1.0] * len(ids)})
    s7 = _random_spec(spec, 7)

    first = assign_split(lf, s7, WINDOW_END).collect()
    again = assign_split(lf, s7, WINDOW_END).collect()
    reversed_rows = assign_split(lf.reverse(), s7, WINDOW_END).collect().sort("id")
    other_seed = assign_split(lf, _random_spec(spec, 8), WINDOW_END).collect()

    assert_frame_equal(first, again)
    assert_frame_equal(first, reversed_rows)  # a row's split depends on its id, not on its position
    assert not first[SPLIT].equals(other_seed[SPLIT])
    shares = first[SPLIT].value_counts(normalize=True).sort(SPLIT)
    share = dict(zip(shares[SPLIT].to_list(), shares["proportion"].to_list()))
    assert set(share) == {"train", "val", "test"}
    assert share["test"] == pytest.approx(0.2, abs=0.05)
    assert share["val"] == pytest.approx(0.1, abs=0.05)


def test_column_split_reads_and_lowercases_the_named_column(spec):
    data = spec.model_dump()
    data["columns"]["fold"] = {"type": "string", "role": "split"}
    data["split"] = {"method": "column", "column": "fold"}
    col_spec = DatasetSpec.model_validate(data)
    lf = pl.LazyFrame({"fold": ["TRAIN", "Val", "test"]})

    out = assign_split(lf, col_spec, WINDOW_END).collect()

    assert out[SPLIT].to_list() == ["train", "val", "test"]


# ---------------------------------------------------------------------------------------------
# fit_preprocessing / Preprocessing

FSET = FeatureSet(numeric=["x", "t", "k"], categorical=["z"], target_transform="log", derive=lambda lf: lf,
                  module=None, unclipped=("t",))


@pytest.fixture
def features_file(tmp_path) -> tuple[str, pl.DataFrame]:
    """1000 train rows (x = 1..999 and one outlier 1e6), 10 val and 10 test rows with absurd values."""
    n = 1000
    x = [float(v) for v in range(1, n)] + [1e6]
    train = pl.DataFrame({
        "x": x,
        "t": [float(v) for v in range(n - 1)] + [5000.0],
        "k": [3.0] * n,
        "z": ["b" if v % 2 else "a" for v in range(n)],
        "price": [100_000.0 + 1000.0 * v for v in range(n)],
        SPLIT: ["train"] * n,
    })
    other = pl.DataFrame({
        "x": [-1e9] * 10 + [1e9] * 10,
        "t": [1e9] * 20,
        "k": [7.0] * 20,
        "z": ["c"] * 20,
        "price": [1e9] * 20,
        SPLIT: ["val"] * 10 + ["test"] * 10,
    })
    df = pl.concat([train, other])
    path = tmp_path / "features.parquet"
    df.write_parquet(path)
    return str(path), train


def test_fit_preprocessing_uses_train_only(spec, features_file):
    uri, train = features_file
    fitted_on = {"window_start": "2014-01-01", "window_end": "2015-01-01", "rows": {"train": 1000}}

    prep = fit_preprocessing(uri, spec, FSET, fitted_on)

    x, t, k = prep.numeric
    # Nearest-rank quantiles of 1000 train values: 0.001 -> the 2nd smallest (2), 0.999 -> the 999th (999).
    assert (x.name, x.lo, x.hi) == ("x", 2.0, 999.0)
    clipped = np.clip(train["x"].to_numpy(), 2.0, 999.0)
    assert x.mean == pytest.approx(clipped.mean())
    assert x.std == pytest.approx(clipped.std(ddof=1))
    # Unclipped feature: no bounds, raw train moments (the 5000 outlier counts).
    assert (t.lo, t.hi) == (None, None)
    assert t.mean == pytest.approx(train["t"].mean())
    assert t.std == pytest.approx(train["t"].std())
    # A constant column gets std 1 instead of a division by zero.
    assert (k.mean, k.std) == (3.0, 1.0)
    assert [(v.name, v.values) for v in prep.categorical] == [("z", ["a", "b"])]
    log_price = np.log(train["price"].to_numpy())
    assert prep.target_mean == pytest.approx(log_price.mean())
    assert prep.target_std == pytest.approx(log_price.std(ddof=1))
    assert (prep.dataset, prep.spec_sha256, prep.features_module) == (spec.name, spec.source_hash, None)
    assert prep.target == "price" and prep.target_transform == "log"
    assert prep.fitted_on == {**fitted_on, "statistics": {"method": "exact", "rows": 1000}}


def test_fitted_statistics_do_not_depend_on_row_order(spec, tmp_path):
    """Sums are exact (decimal), so a table in another row order (as the streaming engine's threads may
    add it up) gives bit-identical means and standard deviations, and the same preprocessing hash. Float
    sums of these values differ in their last digits from one order to another."""
    rng = np.random.default_rng(5)
    n = 50_000
    df = pl.DataFrame({"x": rng.lognormal(3.0, 2.0, n), "t": rng.normal(1e4, 1e-3, n), "k": rng.uniform(0, 1, n),
                       "z": rng.choice(["a", "b"], n), "price": rng.lognormal(12.0, 0.5, n), SPLIT: ["train"] * n})
    fitted = []
    for seed in (None, 1, 2):
        path = tmp_path / f"f{seed}.parquet"
        (df if seed is None else df.sample(fraction=1.0, shuffle=True, seed=seed)).write_parquet(path, row_group_size=997)
        fitted.append(fit_preprocessing(str(path), spec, FSET, {}))
    assert fitted[0].sha256() == fitted[1].sha256() == fitted[2].sha256()
    x, t, _ = fitted[0].numeric
    clipped = np.clip(df["x"].to_numpy(), x.lo, x.hi)
    # exact sums of values quantized to 2**-k (k = 34 here, 6e-11 on a mean of 140)
    assert x.mean == pytest.approx(math.fsum(clipped) / n, rel=1e-12)
    assert x.std == pytest.approx(clipped.std(ddof=1), rel=1e-10)
    assert t.std == pytest.approx(df["t"].to_numpy().std(ddof=1), rel=1e-6)  # a tiny spread on a large mean
    assert fitted[0].target_mean == pytest.approx(np.log(df["price"].to_numpy()).mean(), rel=1e-12)


def test_preprocessing_matrices_clip_standardize_and_map_unknowns(spec, features_file):
    prep = fit_preprocessing(features_file[0], spec, FSET, {})
    x, t, _ = prep.numeric
    df = pl.DataFrame({
        "x": [500.0, 1e7, -1e7, None, float("nan")],
        "t": [1e7, 0.0, 0.0, 0.0, 0.0],
        "k": [3.0] * 5,
        "z": ["a", "b", "c", None, "a"],
    })

    num = prep.numeric_matrix(df)
    cat = prep.categorical_matrix(df)

    assert num.dtype == np.float32 and num.shape == (5, 3)
    np.testing.assert_allclose(num[:, 0], [(500 - x.mean) / x.std, (999 - x.mean) / x.std, (2 - x.mean) / x.std, 0, 0],
                               rtol=1e-6)
    assert num[0, 1] == pytest.approx((1e7 - t.mean) / t.std, rel=1e-6)  # not clipped
    np.testing.assert_array_equal(num[:, 2], np.zeros(5))
    np.testing.assert_array_equal(cat, np.array([[1], [2], [0], [0], [1]]))  # unseen and null -> 0


def test_target_encoding_round_trips_through_log(spec, features_file):
    prep = fit_preprocessing(features_file[0], spec, FSET, {})
    price = np.array([75_000.0, 450_000.0, 7_700_000.0])

    z = prep.encode_target(price)
    back = prep.decode_target(z)

    assert z.dtype == np.float32
    np.testing.assert_allclose(z, (np.log(price) - prep.target_mean) / prep.target_std, rtol=1e-6)
    np.testing.assert_allclose(back, price, rtol=1e-6)


def test_preprocessing_json_round_trip_keeps_sha(spec, features_file):
    prep = fit_preprocessing(features_file[0], spec, FSET, {"rows": {"train": 1000}})

    compact = Preprocessing.model_validate_json(prep.model_dump_json())
    indented = Preprocessing.model_validate_json(prep.model_dump_json(indent=2))

    assert compact == prep and indented == prep
    assert compact.sha256() == indented.sha256() == prep.sha256()
    assert len(prep.sha256()) == 64


# ---------------------------------------------------------------------------------------------
# build_features on a tiny lake

START = date(2014, 12, 1)
LAKE_DAYS = {  # day -> (rows, expected split; None: outside the window [START, WINDOW_END))
    date(2014, 11, 30): (2, None),
    date(2014, 12, 1): (3, "train"),
    date(2014, 12, 31): (3, "train"),
    date(2015, 1, 1): (2, "val"),
    date(2015, 2, 28): (2, "val"),
    date(2015, 3, 1): (2, "test"),
    date(2015, 5, 27): (2, "test"),
    date(2015, 5, 28): (2, None),
}


@pytest.fixture
def lake(tmp_path, spec) -> tuple[str, dict[date, str], pl.DataFrame]:
    lake_uri = str(tmp_path / "lake")
    shas, expected, next_id = {}, [], 0
    for day, (n, split) in LAKE_DAYS.items():
        zips = ("98001", "98002") if split == "train" else ("98001", "98999")
        df = typed(spec, kc_rows(day, n, next_id, zips))
        shas[day] = storage.write_parquet_atomic(df, lake_paths.partition_uri(lake_uri, "validated", day))
        if split:
            expected.append(df.select("id", pl.lit(split).alias(SPLIT)))
        next_id += n
    return lake_uri, shas, pl.concat(expected).sort("id")


def test_build_features_splits_and_writes_a_manifest(spec, lake):
    lake_uri, shas, expected_split = lake

    meta = build_features(spec, lake_uri, START, WINDOW_END)

    feats = pl.read_parquet(storage.local_path(meta["features_uri"]))
    assert_frame_equal(feats.select("id", SPLIT).sort("id"), expected_split)
    assert meta["rows"] == {"train": 6, "val": 4, "test": 4}
    assert meta["partitions"] == 6
    assert set(kc.NUMERIC) <= set(feats.columns) and {*spec.columns, DS, SPLIT} <= set(feats.columns)
    folder, name = meta["features_uri"].rsplit("/", 1)
    assert folder.startswith(f"{lake_uri}/features/window=2014-12-01_2015-05-28/inputs=") and name == "part-0.parquet"
    assert storage.list_dir(folder, hidden=True) == ["manifest.json", "part-0.parquet"]

    manifest = json.loads(storage.read_bytes(meta["features_uri"].rsplit("/", 1)[0] + "/manifest.json"))
    in_window = [d for d, (_, s) in LAKE_DAYS.items() if s]
    assert [p["day"] for p in manifest["partitions"]] == [d.isoformat() for d in in_window]
    assert [p["sha256"] for p in manifest["partitions"]] == [shas[d] for d in in_window]
    assert manifest["rows"] == meta["rows"]
    assert (manifest["window_start"], manifest["window_end"]) == ("2014-12-01", "2015-05-28")
    assert (manifest["features_uri"], manifest["preprocessing_uri"]) == (meta["features_uri"], meta["preprocessing_uri"])

    prep = load_preprocessing(meta["preprocessing_uri"])
    assert meta["preprocessing_uri"].endswith(f"/artifacts/preprocessing/{meta['preprocessing_sha256']}.json")
    assert prep.sha256() == meta["preprocessing_sha256"]
    assert prep.categorical[0].values == ["98001", "98002"]  # 98999 appears only in val/test
    assert prep.fitted_on["rows"] == meta["rows"]
    # market time is no model input: the market level enters through the target offset
    assert "sale_day" not in {s.name for s in prep.numeric}
    assert [t.name for t in prep.target_offset] == (kc.TARGET_OFFSET if prep.comps else [])


def test_build_features_is_reproducible(spec, lake):
    lake_uri = lake[0]

    first = build_features(spec, lake_uri, START, WINDOW_END)
    first_bytes = storage.read_bytes(first["features_uri"])
    shutil.rmtree(Path(storage.local_path(first["features_uri"])).parent)  # else the finished table is reused
    second = build_features(spec, lake_uri, START, WINDOW_END)

    assert storage.read_bytes(second["features_uri"]) == first_bytes
    assert second == first  # same features sha, preprocessing sha, partitions sha


def _build_with_comps(spec, lake_uri: str, mode: str, monkeypatch) -> tuple[dict, pl.DataFrame]:
    """build_features with the settings' comps mode under HOMEWORTH_COMPS=mode: its metadata and its feature table."""
    from tasks.core.settings import get_settings

    monkeypatch.setenv("HOMEWORTH_COMPS", mode)
    get_settings.cache_clear()
    try:
        meta = build_features(spec, lake_uri, START, WINDOW_END, comps_mode=get_settings().comps)
    finally:
        monkeypatch.delenv("HOMEWORTH_COMPS")
        get_settings.cache_clear()
    return meta, pl.read_parquet(storage.local_path(meta["features_uri"]))


def test_build_features_row_level_only_streams_the_same_rows(spec, lake, monkeypatch):
    """HOMEWORTH_COMPS=false: one streaming plan instead of the chunks; same rows in the same order, no comps."""
    lake_uri = lake[0]
    with_comps = pl.read_parquet(storage.local_path(build_features(spec, lake_uri, START, WINDOW_END)["features_uri"]))
    meta, plain = _build_with_comps(spec, lake_uri, "false", monkeypatch)
    assert meta["rows"] == {"train": 6, "val": 4, "test": 4}
    assert not [c for c in plain.columns if c.startswith(kc.COMPS.prefix)]
    assert_frame_equal(plain, with_comps.select(plain.columns))
    prep = load_preprocessing(meta["preprocessing_uri"])
    assert prep.comps is None and prep.target_offset == []


def test_build_features_market_only_streams_the_market_index_of_comps(spec, lake, monkeypatch):
    """HOMEWORTH_COMPS=market: one streaming plan with the market index joined by day; the values are
    those ``comps`` computes for the market-only configuration, and the other comps columns are absent."""
    from tasks.features.comps import comps

    lake_uri, _, _ = lake
    full = pl.read_parquet(storage.local_path(build_features(spec, lake_uri, START, WINDOW_END)["features_uri"]))
    meta, market = _build_with_comps(spec, lake_uri, "market", monkeypatch)
    cfg = kc.COMPS.market_only()
    mkt = cfg.columns()
    assert mkt == [f"{cfg.prefix}{m}_{w}" for m in ("mkt", "mktloc") for w in [*cfg.market_windows_days, "now"]]
    assert [c for c in market.columns if c.startswith(cfg.prefix)] == mkt
    # row for row the same as the full run, whose market columns come from the same definition
    assert_frame_equal(market.drop(mkt), full.select(market.drop(mkt).columns))
    assert_frame_equal(market.select(mkt), full.select(mkt))
    assert market.select(mkt).null_count().sum_horizontal().item() < market.height * len(mkt)
    validated = pl.scan_parquet(f"{lake_uri}/validated/**/*.parquet")
    direct = comps(validated, market.select(*cfg.input_columns(with_target=False)), cfg)
    assert_frame_equal(market.select(mkt), direct.select(mkt))
    prep = load_preprocessing(meta["preprocessing_uri"])
    assert prep.comps == cfg and [t.name for t in prep.target_offset] == kc.TARGET_OFFSET


def test_row_span_comes_from_the_footers_or_is_left_to_a_scan():
    from tasks.features.plan import row_span

    d = date(2015, 1, 1)
    info = [{"rows": 3, "tmin": d, "tmax": d + timedelta(days=2)}, {"rows": 0, "tmin": None, "tmax": None},
            {"rows": 5, "tmin": d - timedelta(days=1), "tmax": d}]
    assert row_span(info) == (d - timedelta(days=1), d + timedelta(days=2))
    assert row_span([*info, {"rows": 2, "tmin": None, "tmax": None}]) is None  # a range unknown: scan
    assert row_span([{"rows": 2, "tmin": 1, "tmax": 5}]) is None  # not dates
    assert row_span([]) is None


def test_build_features_area_streams_the_same_values_as_comps(spec, lake, monkeypatch):
    """HOMEWORTH_COMPS=area: one streaming plan joining the per-(area, day) tables; the values are those
    ``comps`` computes for the aggregated configuration from the whole lake, the market columns are
    those of the full run, and a rerun writes the same bytes."""
    from tasks.features.comps import comps

    lake_uri, _, _ = lake
    full = pl.read_parquet(storage.local_path(build_features(spec, lake_uri, START, WINDOW_END)["features_uri"]))
    meta, area = _build_with_comps(spec, lake_uri, "area", monkeypatch)
    cfg = kc.COMPS.area_only()
    cols = cfg.columns()
    assert [c for c in area.columns if c.startswith(cfg.prefix)] == cols
    assert {"comp_zipcode_90d_mean", "comp_cell_365d_n", "comp_ring_365d_mean"} <= set(cols)
    assert not [c for c in cols if "knn" in c or "prev" in c or c.endswith("_med")]
    plain = [c for c in area.columns if not c.startswith(cfg.prefix)]
    assert_frame_equal(area.select(plain), full.select(plain))
    mkt = cfg.market_only().columns()
    assert_frame_equal(area.select(mkt), full.select(mkt))
    validated = pl.scan_parquet(f"{lake_uri}/validated/**/*.parquet")
    direct = comps(validated, area.select(*cfg.input_columns(with_target=False)), cfg)
    assert_frame_equal(area.select(cols), direct.select(cols), check_exact=False, rel_tol=1e-9, abs_tol=1e-12)
    assert area["comp_zipcode_365d_n"].sum() > 0 and area["comp_ring_365d_mean"].drop_nulls().len() > 0
    prep = load_preprocessing(meta["preprocessing_uri"])
    assert prep.comps == cfg and [t.name for t in prep.target_offset] == kc.TARGET_OFFSET
    again, _ = _build_with_comps(spec, lake_uri, "area", monkeypatch)
    # The hash taken while the table was written is the hash of the file's bytes.
    assert again["features_sha256"] == meta["features_sha256"] == hashlib.sha256(
        Path(storage.local_path(meta["features_uri"])).read_bytes()).hexdigest()


def test_market_only_configuration_reaches_back_only_as_far_as_its_windows():
    cfg = kc.COMPS.market_only()
    assert cfg.is_market_only() and not kc.COMPS.is_market_only()
    # the location-adjusted index: its longest window of values adjusted by the location's trailing effect
    reach = max(cfg.market_windows_days) + cfg.location_window_days
    assert cfg.lookback_days() == reach + cfg.adjust_window_days
    plain = cfg.model_copy(update={"market_location": None})
    assert plain.lookback_days() == max(cfg.market_windows_days) + cfg.adjust_window_days
    assert kc.COMPS.lookback_days() == max(kc.COMPS.knn_max_age_days, reach) + kc.COMPS.adjust_window_days


def test_build_features_without_partitions_raises(spec, tmp_path):
    with pytest.raises(ValueError, match="no validated partitions"):
        build_features(spec, str(tmp_path / "empty-lake"), START, WINDOW_END)


def test_build_features_with_an_empty_split_raises(spec, lake):
    # Only training days in this window: val and test are empty.
    with pytest.raises(ValueError, match="has no rows"):
        build_features(spec, lake[0], START, date(2015, 1, 1))


# ---------------------------------------------------------------------------------------------
# King County derived features


def test_king_county_derive_by_hand(spec):
    base = {c: [1.0, 1.0] for c in ("bedrooms", "bathrooms", "floors", "waterfront", "view", "condition", "grade",
                                      "lat", "long", "price")}
    df = typed(spec, pl.DataFrame({
        **base,
        "id": ["1", "2"],
        "zipcode": ["98001", "98002"],
        # Row 0: sold 2014-06-15 before it was built (presale); row 1: renovated in 2000, sold 2015-03-10.
        "date": [date(2014, 6, 15), date(2015, 3, 10)],
        "yr_built": [2015, 1950],
        "yr_renovated": [0, 2000],
        "sqft_living": [1000.0, 2000.0],
        "sqft_lot": [5000.0, 8000.0],
        "sqft_above": [750.0, 2000.0],
        "sqft_basement": [250.0, 0.0],
        "sqft_living15": [2000.0, 1000.0],
        "sqft_lot15": [4000.0, 9000.0],
    }))

    out = kc.derive(df.lazy()).collect()

    expected = pl.DataFrame({
        "log_sqft_living": [math.log(1000), math.log(2000)],
        "log_sqft_lot": [math.log(5000), math.log(8000)],
        "log_sqft_above": [math.log(750), math.log(2000)],
        "basement_share": [0.25, 0.0],
        "age": [0.0, 65.0],  # 2014 - 2015 clipped at 0; 2015 - 1950
        "renovated": [0.0, 1.0],
        "years_since_renovation": [0.0, 15.0],  # never renovated: since built (clipped); 2015 - 2000
        "log_sqft_living15": [math.log(2000), math.log(1000)],
        "log_sqft_lot15": [math.log(4000), math.log(9000)],
        "living_vs_neighbours": [math.log(0.5), math.log(2.0)],
        "sale_day": [165.0, 433.0],  # 31+28+31+30+31+14; 365+31+28+9
        "month_sin": [0.0, 1.0],  # June: sin(pi); March: sin(pi/2)
        "month_cos": [-1.0, 0.0],
    })
    assert (date(2014, 6, 15) - kc.EPOCH) == timedelta(days=165)
    assert_frame_equal(out.select(expected.columns).cast(pl.Float64), expected, abs_tol=1e-12)
    assert set(kc.NUMERIC) <= set(out.columns)


def test_target_offset_is_fitted_on_train_and_round_trips(spec, features_file):
    """With a target offset the model's target is ln(price) minus the offset columns' sum (null: train mean)."""
    path, train = features_file
    prep = fit_preprocessing(path, spec, dataclasses.replace(FSET, target_offset=("x", "k")), {})
    assert [t.name for t in prep.target_offset] == ["x", "k"]
    assert prep.target_offset[0].fill == pytest.approx(train["x"].mean())
    resid = np.log(train[spec.target].to_numpy()) - train["x"].to_numpy() - train["k"].to_numpy()
    assert prep.target_mean == pytest.approx(resid.mean()) and prep.target_std == pytest.approx(resid.std(ddof=1))

    rows = pl.DataFrame({"x": [1.0, None, 3.0], "k": [3.0, 3.0, None], spec.target: [1e5, 2e5, 3e5]})
    off = prep.offset(rows)
    np.testing.assert_allclose(off, [4.0, train["x"].mean() + 3.0, 3.0 + train["k"].mean()])
    z = prep.encode_rows(rows)
    np.testing.assert_allclose(z, (np.log([1e5, 2e5, 3e5]) - off - prep.target_mean) / prep.target_std, rtol=1e-5)
    np.testing.assert_allclose(prep.decode_rows(z, rows), [1e5, 2e5, 3e5], rtol=1e-4)  # z is float32
    with pytest.raises(ValueError, match="target offset"):
        prep.encode_target(np.array([1e5]))
    # a table without an offset column: no offset (all or none), and the hash is the one without offsets
    plain = fit_preprocessing(path, spec, dataclasses.replace(FSET, target_offset=("x", "missing")), {})
    assert plain.target_offset == [] and plain.sha256() == fit_preprocessing(path, spec, FSET, {}).sha256()


def test_comps_can_be_switched_off_by_setting(spec, monkeypatch):
    """HOMEWORTH_COMPS=false: row-level features only; the target offset then has no column to use."""
    from tasks.core.settings import get_settings
    from tasks.features.featureset import feature_set

    assert feature_set(spec).comps == feature_set(spec, get_settings().comps).comps == kc.COMPS
    monkeypatch.setenv("HOMEWORTH_COMPS", "false")
    get_settings.cache_clear()
    try:
        fset = feature_set(spec, get_settings().comps)
        assert fset.comps is None and fset.comp_columns() == []
        assert fset.numeric == kc.NUMERIC and not set(fset.target_offset) <= set(fset.numeric)
        for value, mode in (("market", "market"), ("area", "area"), ("true", "full"), ("0", "off"), ("FULL", "full")):
            monkeypatch.setenv("HOMEWORTH_COMPS", value)
            get_settings.cache_clear()
            assert get_settings().comps == mode
        monkeypatch.setenv("HOMEWORTH_COMPS", "market")
        get_settings.cache_clear()
        assert feature_set(spec, get_settings().comps).comps == kc.COMPS.market_only()
        monkeypatch.setenv("HOMEWORTH_COMPS", "area")
        get_settings.cache_clear()
        assert feature_set(spec, get_settings().comps).comps == kc.COMPS.area_only()
        monkeypatch.setenv("HOMEWORTH_COMPS", "knn")
        get_settings.cache_clear()
        with pytest.raises(ValueError, match="comps"):
            get_settings()
        with pytest.raises(ValueError, match="comps mode"):
            feature_set(spec, "knn")
    finally:
        monkeypatch.delenv("HOMEWORTH_COMPS")
        get_settings.cache_clear()
