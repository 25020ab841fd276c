"""The default features of a spec without a feature module (issue 16 item 2): comparable sales configured
from the spec's ``comps:`` roles, market time, the target transform chosen from the data, and, without an
event time, leave-one-out comparables that never see the row's own target nor a validation or test one."""

from __future__ import annotations

import hashlib
import math
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tasks.core.spec import DatasetSpec, load_spec
from tasks.features.comps import comps
from tasks.features.featureset import SPLIT, default_comps, feature_set

REPO = Path(__file__).resolve().parents[2]
MELBOURNE = REPO / "tasks" / "datasets" / "melbourne" / "spec.yaml"


def cross_sectional_spec(**split) -> DatasetSpec:
    """A market file without an event time: coordinates, a zone, a living area, an id, the price."""
    return DatasetSpec.model_validate({
        "name": "blocks", "target_transform": None,
        "columns": {
            "block": {"type": "string", "role": "id"},
            "lat": {"type": "float", "role": "numeric", "comps": "latitude"},
            "lon": {"type": "float", "role": "numeric", "comps": "longitude"},
            "area": {"type": "float", "role": "numeric", "comps": "living_area", "nullable": False},
            "rooms": {"type": "int", "role": "numeric"},
            "zone": {"type": "string", "role": "categorical", "comps": "location"},
            "price": {"type": "float", "role": "target"},
        },
        "split": {"method": "random", "seed": 3, **split},
    })


def blocks(n: int = 400, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    lat, lon = 37.0 + rng.uniform(0, 0.08, n), -122.0 + rng.uniform(0, 0.08, n)
    area = rng.uniform(50, 250, n)
    zone = np.array(["a", "b", "c", "d"])[((lat - 37.0) / 0.02).astype(int).clip(0, 3)]
    price = np.exp(11 + 0.8 * np.log(area) + 5 * (lat - 37.0) + rng.normal(0, 0.5, n))
    return pl.DataFrame({"block": [f"b{i}" for i in range(n)], "lat": lat, "lon": lon, "area": area,
                         "rooms": rng.integers(1, 6, n), "zone": zone, "price": price})


def _comp_frame(df: pl.DataFrame, cfg) -> pl.DataFrame:
    return comps(df, df, cfg).select(cfg.columns())


def test_leave_one_out_comps_never_see_the_rows_own_target():
    cfg = default_comps(cross_sectional_spec())
    assert cfg is not None and cfg.leave_one_out and cfg.time is None
    assert cfg.groups == ["zone"] and cfg.size == "area" and cfg.knn_k == [8, 24]
    df = blocks()
    base = _comp_frame(df, cfg)
    for col in cfg.columns():
        assert base[col].null_count() < df.height, f"{col} is never computed"
    for i in (0, 57, 311):
        changed = df.with_columns(pl.when(pl.int_range(pl.len()) == i).then(pl.col("price") * 7.5)
                                  .otherwise(pl.col("price")).alias("price"))
        after = _comp_frame(changed, cfg)
        # the row itself: not one of its comp features moves with its own price
        assert after.row(i) == base.row(i), f"row {i} sees its own price"
        # other rows do use it (the check could fail): some neighbour's features move
        moved = [c for c in cfg.columns() if not after[c].equals(base[c])]
        assert moved, f"row {i}'s price reaches no other row"


def test_a_scored_house_is_never_its_own_comparable_when_it_is_a_history_sale():
    cfg = default_comps(cross_sectional_spec())
    df = blocks()
    one = df.slice(10, 1)
    scored = comps(df, one, cfg)  # the house is in the history, price and all: left out of its own knn
    from_others = comps(df.filter(pl.int_range(pl.len()) != 10), one.drop("price"), cfg)
    knn = [c for c in cfg.columns() if "knn" in c]
    assert scored.select(knn).row(0) == pytest.approx(from_others.select(knn).row(0))


def _write_lake(lake: Path, df: pl.DataFrame) -> None:
    from tasks.core import lake as lake_paths
    from tasks.core import storage
    from tasks.ingest.landing import DS

    days = [date(2020, 1, 1 + i % 5) for i in range(df.height)]
    for (day,), part in df.with_columns(pl.Series(DS, days)).group_by(DS):
        storage.write_parquet_atomic(part, lake_paths.partition_uri(str(lake), "validated", day))


def _build(tmp_path: Path, name: str, df: pl.DataFrame, spec: DatasetSpec) -> pl.DataFrame:
    from tasks.features.build import build_features

    lake = tmp_path / name / "lake"
    _write_lake(lake, df)
    meta = build_features(spec, str(lake), date(2019, 6, 1), date(2020, 1, 6))
    return pl.read_parquet(meta["features_uri"]).sort("block"), meta


def test_validation_and_test_targets_never_enter_the_comparables(tmp_path):
    spec = cross_sectional_spec()
    cfg = default_comps(spec)
    df = blocks(300)
    base, meta = _build(tmp_path, "base", df, spec)
    split = base.select("block", SPLIT)
    held_out = split.filter(pl.col(SPLIT) != "train")["block"]
    assert held_out.len() > 30 and meta["rows"]["train"] > 150
    shuffled = df.with_columns(pl.when(pl.col("block").is_in(held_out.implode())).then(pl.col("price") * 3.0)
                               .otherwise(pl.col("price")).alias("price"))
    after, _ = _build(tmp_path, "held_out_prices", shuffled, spec)
    assert after.select("block", SPLIT).equals(split)
    for col in cfg.columns():
        assert after[col].equals(base[col]), f"{col} moved with validation / test prices"
    train_changed = df.with_columns(pl.when(pl.col("block") == split.filter(pl.col(SPLIT) == "train")["block"][0])
                                    .then(pl.col("price") * 3.0).otherwise(pl.col("price")).alias("price"))
    moved, _ = _build(tmp_path, "train_price", train_changed, spec)
    assert any(not moved[c].equals(base[c]) for c in cfg.columns()), "training prices must reach the comparables"


def test_default_feature_set_is_configured_from_the_spec_roles():
    spec = load_spec(MELBOURNE)
    fset = feature_set(spec)
    cfg = fset.comps
    assert cfg is not None and not cfg.leave_one_out
    assert (cfg.time, cfg.target, cfg.lat, cfg.long) == ("Date", "Price", "Lattitude", "Longtitude")
    assert cfg.groups == ["Postcode"] and cfg.market_location == "Postcode" and cfg.id is None
    assert cfg.size is None, "BuildingArea is nullable: prices per sale, not per m2"
    assert fset.target_offset == ("comp_mktloc_now",) and "comp_sale_day" in fset.not_inputs
    assert {"comp_sale_day", "comp_month_sin", "comp_month_cos", "comp_knn8_est"} <= set(cfg.columns())
    no_coords = spec.model_copy(update={"columns": {
        n: c.model_copy(update={"comps": None}) if c.comps in ("latitude", "longitude") else c
        for n, c in spec.columns.items()}})
    cfg2 = default_comps(no_coords)
    assert cfg2.lat is None and not cfg2.knn_k and not cfg2.cell_windows_days
    with pytest.raises(ValueError, match="need lat and long"):
        cfg2.model_copy(update={"knn_k": [8]}).model_validate(cfg2.model_dump() | {"knn_k": [8]})


def test_market_time_is_computed_from_the_row_alone():
    spec = load_spec(MELBOURNE)
    cfg = default_comps(spec)
    rows = pl.DataFrame({"Date": [date(2000, 1, 1), date(2017, 4, 15)], "Price": [1.0, 2.0]})
    out = rows.lazy().with_columns(cfg.time_exprs()).collect()
    assert out["comp_sale_day"].to_list() == [0.0, float((date(2017, 4, 15) - date(2000, 1, 1)).days)]
    assert out["comp_month_sin"][1] == pytest.approx(math.sin(4 * 2 * math.pi / 12))
    assert out["comp_month_cos"][0] == pytest.approx(math.cos(2 * math.pi / 12))


def test_target_transform_is_chosen_from_the_training_targets():
    from tasks.features.fit import choose_target_transform

    rng = np.random.default_rng(1)
    skewed = pl.LazyFrame({"y": np.exp(rng.normal(13, 0.6, 2000))})
    chosen, why = choose_target_transform(skewed, "y")
    assert chosen == "log" and why["skew"] > 0.5
    assert choose_target_transform(pl.LazyFrame({"y": rng.normal(0, 1, 2000)}), "y")[0] == "identity"
    assert choose_target_transform(pl.LazyFrame({"y": rng.normal(50, 1, 2000)}), "y")[0] == "identity"
    assert feature_set(cross_sectional_spec()).target_transform == "auto"
    assert feature_set(load_spec(MELBOURNE)).target_transform == "log", "the spec's target_transform overrides"


def test_build_records_the_chosen_transform_in_the_preprocessing(tmp_path):
    from tasks.features.preprocessing import load_preprocessing

    _, meta = _build(tmp_path, "prep", blocks(300), cross_sectional_spec())
    prep = load_preprocessing(meta["preprocessing_uri"])
    assert prep.target_transform == "log" and prep.fitted_on["target_transform"]["chosen"] == "log"
    assert prep.comps is not None and prep.comps.leave_one_out
    assert [t.name for t in prep.target_offset] == ["comp_ln_size"]


def test_nullable_numeric_inputs_get_a_missing_value_indicator(tmp_path):
    from tasks.features.preprocessing import load_preprocessing

    melbourne = feature_set(load_spec(MELBOURNE))
    assert melbourne.null_indicators == ("Car", "BuildingArea", "YearBuilt")
    assert {"Car__isnull", "BuildingArea__isnull", "YearBuilt__isnull"} <= set(melbourne.categorical)

    spec = cross_sectional_spec()
    spec = spec.model_copy(update={"columns": {**spec.columns, "rooms": spec.columns["rooms"].model_copy(
        update={"nullable": True})}})
    df = blocks(300).with_columns(pl.when(pl.int_range(pl.len()) % 3 == 0).then(None).otherwise(pl.col("rooms"))
                                  .alias("rooms"))
    table, meta = _build(tmp_path, "indicators", df, spec)
    expected = pl.when(pl.col("rooms").is_null()).then(pl.lit("missing")).otherwise(pl.lit("present"))
    assert table["rooms__isnull"].to_list() == table.select(expected)[:, 0].to_list()
    assert table["rooms__isnull"].value_counts().height == 2
    prep = load_preprocessing(meta["preprocessing_uri"])
    assert prep.null_indicators == ["rooms"]
    assert [v.values for v in prep.categorical if v.name == "rooms__isnull"] == [["missing", "present"]]
    # Scoring derives the same indicator from a raw row (null, NaN, a value).
    rows = pl.DataFrame({"rooms": [None, float("nan"), 3.0]})
    assert prep.derive(rows.lazy()).collect()["rooms__isnull"].to_list() == ["missing", "missing", "present"]
    # The indicators are part of the artifact's identity; a preprocessing without any hashes as before the field.
    bare = prep.model_copy(update={"null_indicators": []})
    assert prep.sha256() != bare.sha256()
    assert bare.sha256() == hashlib.sha256(bare.model_dump_json(exclude={"null_indicators": True}).encode()).hexdigest()
