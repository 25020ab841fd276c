"""Comparable-sales features (tasks/features/comps/): point-in-time correctness, a brute-force oracle, scoring parity.

The core property: a sale's comp features are a function of the sales dated strictly before it.
``test_no_feature_sees_its_own_or_a_later_sale`` changes the prices (and sizes and places) of every
sale from a pivot day on, and the sale's own price, and checks that no feature of any sale up to
that day moves, while features of later sales do (so the check has power), for every comp column.
"""

from __future__ import annotations

import math
import statistics
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tasks.features.comps import KM_PER_DEGREE, CompsConfig, LakeHistory, comps
from tests.kc import KC_DATA_PATH

REPO = Path(__file__).resolve().parents[2]
START = date(2015, 1, 1)
CFG = CompsConfig(time="date", target="price", size="sqft", lat="lat", long="long", groups=["zip"], id="id",
                  market_windows_days=[7, 30], adjust_window_days=14, group_windows_days=[10, 30],
                  cell_deg=0.01, cell_windows_days=[30], knn_k=[4, 40], knn_max_age_days=40, knn_cell_deg=0.01,
                  knn_radius_cells=1, market_nowcast=True, market_location="zip", location_window_days=20)
# HOMEWORTH_COMPS=area: the same windows as means from per-(area, day) sums, and a ring of 3 x 3 cells.
AREA = CFG.area_only().model_copy(update={"ring_windows_days": [20, 60]})
CONFIGS = pytest.mark.parametrize("cfg", [CFG, AREA], ids=["full", "area"])


def sales(n: int = 320, days: int = 90, seed: int = 0) -> pl.DataFrame:
    """Synthetic sales in a 3 x 3 km area: 3 zipcodes, some houses sold twice (on different days)."""
    rng = np.random.default_rng(seed)
    day = np.sort(rng.integers(0, days, size=n))
    ids = [f"h{i:04d}" for i in range(n)]
    for i in range(0, n - 40, 23):  # a repeat sale: the same id again, at least 20 days later
        j = int(np.searchsorted(day, day[i] + 20))
        if j < n:
            ids[j] = ids[i]
    lat = 47.50 + rng.uniform(0, 0.03, n)
    lon = -122.30 + rng.uniform(0, 0.03, n)
    sqft = rng.uniform(800, 3500, n).round()
    price = np.exp(5.5 + 0.002 * day + np.log(sqft) + 3 * (lat - 47.5) + rng.normal(0, 0.15, n)).round()
    return pl.DataFrame({
        "id": ids, "date": [START + timedelta(days=int(d)) for d in day], "price": price, "sqft": sqft,
        "lat": lat, "long": lon, "zip": rng.choice(["98001", "98002", "98003"], n),
    })


# ---------------------------------------------------------------------------------------------
# Point in time


def _changed(a: pl.DataFrame, b: pl.DataFrame, col: str) -> np.ndarray:
    x, y = a[col].cast(pl.Float64).to_numpy(), b[col].cast(pl.Float64).to_numpy()
    same = (np.isnan(x) & np.isnan(y)) | (np.abs(x - y) <= 1e-12 * np.maximum(1, np.abs(x)))
    return ~same


@CONFIGS
def test_no_feature_sees_its_own_or_a_later_sale(cfg):
    df = sales()
    base = comps(df, df, cfg)
    reached: set[str] = set()
    for pivot_day in (10, 35, 60):
        pivot = START + timedelta(days=pivot_day)
        rng = np.random.default_rng(pivot_day)
        later = (df["date"] >= pivot).to_numpy()
        # Every sale from the pivot day on (those of the pivot day are the "own" sales of the rows
        # dated on it) gets another price; later sales also move, change size, and a third of them
        # disappear from the history (their existence must not count either).
        factor = np.where(later, np.exp(rng.normal(0, 0.5, df.height)), 1.0)
        shift = np.where(later, rng.normal(0, 0.002, df.height), 0.0)
        keep = ~later | (rng.uniform(size=df.height) > 0.33)
        perturbed = df.with_columns(pl.col("price") * factor, pl.col("sqft") * np.where(later, 1.3, 1.0),
                                    pl.col("lat") + shift, pl.col("long") - shift).filter(pl.Series(keep))
        # The rows keep their own attributes but every row's own price changes too.
        rows = df.with_columns(pl.col("price") * np.exp(rng.normal(0, 0.5, df.height)))
        after = comps(perturbed, rows, cfg)
        up_to_pivot = (df["date"] <= pivot).to_numpy()
        for col in cfg.columns():
            moved = _changed(base, after, col)
            assert not moved[up_to_pivot].any(), f"{col} of a sale on or before {pivot} depends on a later sale"
            if moved[~up_to_pivot].any():
                reached.add(col)
    # The check has power: every feature of some later sale did move.
    assert reached == set(cfg.columns()), f"the perturbations never reached {set(cfg.columns()) - reached}"


@CONFIGS
def test_a_sale_never_counts_itself_or_its_own_day(cfg):
    df = sales(n=60)
    one_day = df.filter(pl.col("date") == df["date"][30])
    alone = comps(one_day, one_day, cfg)  # history = only the sales of that day
    for col in cfg.columns():
        values = alone[col].cast(pl.Float64)
        assert values.is_null().all() or (values.fill_null(0) == 0).all(), col


@CONFIGS
def test_every_comp_column_is_populated_somewhere(cfg):
    out = comps(sales(), sales(), cfg)
    assert out.columns[-len(cfg.columns()):] == cfg.columns()
    for col in cfg.columns():
        assert out[col].drop_nulls().len() > 0, col


@CONFIGS
def test_row_order_and_columns_are_kept(cfg):
    df = sales(n=120)
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=3).with_columns(pl.lit(1).alias("extra"))
    out = comps(df, shuffled, cfg)
    assert out.select(shuffled.columns).equals(shuffled)
    again = comps(df, df, cfg)
    keyed = out.drop("extra").sort("id", "date")
    assert_frame_equal(keyed, again.sort("id", "date"))


@pytest.mark.parametrize("cfg", [CFG.market_only(), AREA], ids=["market", "area"])
def test_market_index_does_not_depend_on_history_order(cfg):
    """A day's (an area's day's) sum of ln(price / size) is exact (decimal): the history in any row
    order gives bit-identical columns (a float sum depends on the order the engine's threads add)."""
    df = sales(n=3000, days=60)
    first = comps(df, df, cfg)
    for seed in (1, 2):
        shuffled = df.sample(fraction=1.0, shuffle=True, seed=seed)
        assert_frame_equal(comps(shuffled, df, cfg), first, check_exact=True)


def test_chunking_gives_the_same_features():
    df = sales()
    whole = comps(df, df, CFG)
    chunked = comps(df, df, CFG.model_copy(update={"chunk_rows": 37}))
    assert_frame_equal(whole, chunked)


# ---------------------------------------------------------------------------------------------
# A brute-force oracle


def _window_mean(rows: list[dict], key: str, day: date, w: int, where=lambda h: True) -> float | None:
    """The mean of ``h[key]`` over the sales ``h`` dated in [day - w days, day) that have one (and ``where``)."""
    vals = [h[key] for h in rows if day - timedelta(days=w) <= h["date"] < day and h[key] is not None and where(h)]
    return sum(vals) / len(vals) if vals else None


def _cell(h: dict, deg: float) -> tuple[int, int]:
    return math.floor(h["lat"] / deg), math.floor(h["long"] / deg)


def _oracle_history(df: pl.DataFrame, cfg: CompsConfig) -> list[dict]:
    """Each sale with ln(price / size), ``adj`` (minus the market index of its day) and ``v`` (minus its
    location's mean ``adj`` before its day)."""
    rows = df.to_dicts()
    for r in rows:
        r["lnppsf"] = math.log(r["price"] / r["sqft"])
    for h in rows:
        m = _window_mean(rows, "lnppsf", h["date"], cfg.adjust_window_days)
        h["adj"] = None if m is None else h["lnppsf"] - m
    for h in rows:  # the location's mean adjusted value before the sale's day
        z = (_window_mean(rows, "adj", h["date"], cfg.location_window_days, lambda o: o["zip"] == h["zip"])
             if cfg.market_location else None)
        h["v"] = None if z is None else h["lnppsf"] - z
    return rows


def _nowcast(f: dict, name: str, cfg: CompsConfig) -> float | None:
    """The shortest window carried forward by its lag along the slope to the next."""
    short, long_ = sorted(set(cfg.market_windows_days))[:2]
    ms, ml = f[f"comp_{name}_{short}"], f[f"comp_{name}_{long_}"]
    return None if ms is None or ml is None else ms + (short + 1) / (long_ - short) * (ms - ml)


def _oracle_market(rows: list[dict], d: date, cfg: CompsConfig) -> dict:
    f = {f"comp_mkt_{w}": _window_mean(rows, "lnppsf", d, w) for w in cfg.market_windows_days}
    if cfg.market_nowcast:
        f["comp_mkt_now"] = _nowcast(f, "mkt", cfg)
    if cfg.market_location:
        f |= {f"comp_mktloc_{w}": _window_mean(rows, "v", d, w) for w in cfg.market_windows_days}
        if cfg.market_nowcast:
            f["comp_mktloc_now"] = _nowcast(f, "mktloc", cfg)
    return f


def _oracle_areas(earlier: list[dict], r: dict, cfg: CompsConfig) -> dict:
    """The zipcode, cell and ring windows and the days since the zipcode's last sale."""
    d, f = r["date"], {}
    stat, summary = ("mean", statistics.fmean) if cfg.aggregated else ("med", statistics.median)

    def recent(w: int, where) -> list[float]:
        return [h["adj"] for h in earlier if h["adj"] is not None and h["date"] >= d - timedelta(days=w) and where(h)]

    for w in cfg.group_windows_days:
        vals = recent(w, lambda h: h["zip"] == r["zip"])
        f[f"comp_zip_{w}d_{stat}"] = summary(vals) if vals else None
        f[f"comp_zip_{w}d_n"] = len(vals)
    same_zip = [h["date"] for h in earlier if h["zip"] == r["zip"]]
    f["comp_zip_days_since"] = (d - max(same_zip)).days if same_zip else None
    ci, cj = _cell(r, cfg.cell_deg)
    for w in cfg.cell_windows_days:
        vals = recent(w, lambda h: _cell(h, cfg.cell_deg) == (ci, cj))
        f[f"comp_cell_{w}d_{stat}"] = summary(vals) if vals else None
        f[f"comp_cell_{w}d_n"] = len(vals)
    for w in cfg.ring_windows_days if cfg.ring_cells else []:
        vals = recent(w, lambda h: abs(_cell(h, cfg.cell_deg)[0] - ci) <= cfg.ring_cells
                      and abs(_cell(h, cfg.cell_deg)[1] - cj) <= cfg.ring_cells)
        f[f"comp_ring_{w}d_mean"] = statistics.fmean(vals) if vals else None
        f[f"comp_ring_{w}d_n"] = len(vals)
    return f


def _oracle_knn(earlier: list[dict], r: dict, cfg: CompsConfig, m_row: float | None) -> dict:
    """The k nearest earlier sales within the maximum age and the neighbouring cells, by distance."""
    d, f = r["date"], {}
    g, rad = cfg.knn_cell_deg, cfg.knn_radius_cells
    ci, cj = _cell(r, g)
    cands = []
    for h in earlier:
        if h["adj"] is None or h["date"] < d - timedelta(days=cfg.knn_max_age_days):
            continue
        if abs(_cell(h, g)[0] - ci) > rad or abs(_cell(h, g)[1] - cj) > rad:
            continue
        dy = h["lat"] - r["lat"]
        dx = (h["long"] - r["long"]) * math.cos(r["lat"] * (math.pi / 180))
        dist = KM_PER_DEGREE * math.sqrt(dx * dx + dy * dy)
        cands.append((dist, float((d - h["date"]).days), h["adj"], math.log(h["sqft"])))
    cands.sort()
    for k in cfg.knn_k:
        top = cands[:k]
        med = statistics.median([c[2] for c in top]) if top else None
        f[f"comp_knn{k}_med"] = med
        f[f"comp_knn{k}_est"] = None if med is None or m_row is None else med + m_row + math.log(r["sqft"])
        f[f"comp_knn{k}_dist_km"] = statistics.fmean([c[0] for c in top]) if top else None
        f[f"comp_knn{k}_age_days"] = statistics.fmean([c[1] for c in top]) if top else None
        f[f"comp_knn{k}_size"] = statistics.fmean([c[3] for c in top]) if top else None
    f["comp_knn_n"] = min(len(cands), max(cfg.knn_k))
    return f


def _oracle_previous(rows: list[dict], earlier: list[dict], r: dict, cfg: CompsConfig, m_row: float | None) -> dict:
    """The same house's latest earlier sale, adjusted by the market index of its day."""
    prev = [h for h in earlier if h["id"] == r["id"]]
    if not prev:
        return {"comp_prev_adj": None, "comp_prev_est": None, "comp_prev_days": None}
    p = max(prev, key=lambda h: h["date"])
    mp = _window_mean(rows, "lnppsf", p["date"], cfg.adjust_window_days)
    adj = None if mp is None else math.log(p["price"]) - mp
    return {"comp_prev_adj": adj, "comp_prev_est": None if mp is None or m_row is None else adj + m_row,
            "comp_prev_days": float((r["date"] - p["date"]).days)}


def _oracle(df: pl.DataFrame, cfg: CompsConfig) -> list[dict]:
    """Per sale, every comp column computed the slow, obvious way from the sales dated before it."""
    rows = _oracle_history(df, cfg)
    out = []
    for r in rows:
        earlier = [h for h in rows if h["date"] < r["date"]]
        f = _oracle_market(rows, r["date"], cfg) | _oracle_areas(earlier, r, cfg)
        if cfg.knn_k:  # (an aggregated configuration has no k nearest and no previous sale)
            m_row = _window_mean(rows, "lnppsf", r["date"], cfg.adjust_window_days)
            f |= _oracle_knn(earlier, r, cfg, m_row) | _oracle_previous(rows, earlier, r, cfg, m_row)
        out.append(f)
    return out


@CONFIGS
def test_features_match_a_brute_force_oracle(cfg):
    df = sales(n=200, days=70, seed=4)
    got = comps(df, df, cfg).select(cfg.columns()).to_dicts()
    want = _oracle(df, cfg)
    assert set(want[0]) == set(cfg.columns())
    for i, (g, w) in enumerate(zip(got, want)):
        for col in cfg.columns():
            if w[col] is None:
                assert g[col] is None, (i, col, g[col])
            else:
                assert g[col] is not None and g[col] == pytest.approx(w[col], rel=1e-9, abs=1e-9), (i, col, g[col], w[col])


def test_area_lookup_by_grid_and_by_join_agree_across_the_zero_meridian_and_equator(monkeypatch):
    """The area table finds a row's cell through a dense grid over the cells' bounding box, or, when
    the box is larger than MAX_CELL_GRID, a join on the packed (row, column) key: both give the oracle's
    values, also for cells on both sides of latitude and longitude 0 (negative cell indices)."""
    import tasks.features.comps.area as comps_area

    df = sales(n=200, days=70, seed=5).with_columns(pl.col("lat") - 47.515, pl.col("long") + 122.285)
    assert (df["lat"] < 0).any() and (df["lat"] > 0).any() and (df["long"] < 0).any() and (df["long"] > 0).any()
    by_grid = comps(df, df, AREA)
    monkeypatch.setattr(comps_area, "MAX_CELL_GRID", 0)
    by_join = comps(df, df, AREA)
    assert_frame_equal(by_grid, by_join, check_exact=True)
    want = _oracle(df, AREA)
    for col in [c for c in AREA.columns() if c.startswith(("comp_cell", "comp_ring"))]:
        got = by_grid[col].to_list()
        for i, w in enumerate(want):
            assert (got[i] is None) if w[col] is None else got[i] == pytest.approx(w[col], rel=1e-9, abs=1e-9), (i, col)


def test_area_rows_with_unknown_keys_get_null_means_and_zero_counts():
    """A row in a zipcode or cell without history, or without a date or location, gets null means
    (and days since) and zero counts; the market columns need only its date."""
    df = sales(n=200, days=70, seed=6)
    last = df["date"].max()
    rows = pl.DataFrame({"id": ["new1", "new2", "new3"], "date": [last, None, last], "price": [1.0, 1.0, 1.0],
                         "sqft": [1000.0, 1000.0, 1000.0], "lat": [10.0, 47.51, None], "long": [10.0, -122.29, None],
                         "zip": ["00000", "98001", None]})
    out = comps(df, rows, AREA)
    known = comps(df, df.filter(pl.col("date") == last).head(1), AREA)
    for col in AREA.columns():
        if col.endswith("_n"):
            assert out[col].to_list() == [0, 0, 0], col
        elif col.startswith(("comp_mkt", "comp_mktloc")):
            assert out[col][0] == known[col][0] and out[col][2] == known[col][0] and out[col][1] is None, col
        else:
            assert out[col].is_null().all(), col


# ---------------------------------------------------------------------------------------------
# The lake: build_features, and scoring from the lake's history (train/serve parity)


def write_validated_lake(lake: Path, spec, every: int = 8) -> pl.DataFrame:
    """Every ``every``-th bundled King County sale as validated day partitions of ``lake``."""
    from tasks.core import lake as lake_paths
    from tasks.core import storage
    from tasks.ingest.landing import DS, POLARS_TYPES

    raw = pl.read_csv(KC_DATA_PATH, infer_schema=False).gather_every(every)
    df = raw.select([
        (pl.col(c).str.strptime(pl.Date, cs.format) if cs.type == "date" else pl.col(c).cast(POLARS_TYPES[cs.type]))
        .alias(c) for c, cs in spec.columns.items()
    ]).with_columns(pl.col("date").alias(DS))
    for (day,), part in df.group_by(DS):
        storage.write_parquet_atomic(part, lake_paths.partition_uri(str(lake), "validated", day))
    return df


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory, spec):
    from tasks.features.build import build_features

    lake = tmp_path_factory.mktemp("comps-lake") / "lake"
    sold = write_validated_lake(lake, spec)
    features = build_features(spec, str(lake), date(2013, 5, 28), date(2015, 5, 28))
    return lake, sold, features


def test_build_features_records_comps_in_the_preprocessing(small_lake):
    from tasks.datasets.king_county import features as kc
    from tasks.features.preprocessing import load_preprocessing

    _, _, features = small_lake
    prep = load_preprocessing(features["preprocessing_uri"])
    assert prep.comps == kc.COMPS
    names = [s.name for s in prep.numeric]
    assert names[: len(kc.NUMERIC)] == kc.NUMERIC and names[len(kc.NUMERIC):] == kc.COMPS.columns()
    market = [s for s in prep.numeric if s.name.startswith("comp_mkt_")]
    assert market and all(s.lo is not None for s in market), "the market index is clipped unless extrapolate_market"
    assert kc.COMPS.model_copy(update={"extrapolate_market": True}).unclipped() == [
        "comp_mkt_30", "comp_mkt_90", "comp_mkt_now", "comp_mktloc_30", "comp_mktloc_90", "comp_mktloc_now"]
    with pytest.raises(ValueError, match="two market windows"):
        kc.COMPS.model_validate({**kc.COMPS.model_dump(), "market_windows_days": [30]})


def test_scoring_recomputes_the_same_comps_from_the_lake(small_lake, spec):
    from tasks.features.featureset import SPLIT
    from tasks.features.preprocessing import load_preprocessing
    from tasks.model.bundle import ModelBundle
    from tasks.model.config import ModelConfig
    from tasks.model.networks import build_net

    lake, sold, features = small_lake
    stored = pl.read_parquet(features["features_uri"]).filter(pl.col(SPLIT) == "test").sort("id", "date")
    prep = load_preprocessing(features["preprocessing_uri"])
    rows = stored.select(list(spec.columns)).with_columns(pl.lit(None, pl.Float64).alias(spec.target))
    history = LakeHistory(str(lake), prep.comps.input_columns(with_target=True))
    recomputed = prep.features(rows, history.frame()).collect()
    cols = [s.name for s in prep.numeric]
    assert_frame_equal(recomputed.select(cols), stored.select(cols))

    cfg = ModelConfig(family="tabm", hidden=[8], k=2, num_embedding_dim=2, n_frequencies=2)
    net = build_net(prep, cfg)
    bundle = ModelBundle(net, cfg, prep, history=history)
    np.testing.assert_allclose(bundle.predict(rows), bundle.predict_features(stored), rtol=1e-6)


def test_scoring_an_area_model_recomputes_its_comps_from_the_lake(small_lake, spec):
    """HOMEWORTH_COMPS=area: the streamed feature table and scoring (``comps`` on the lake's history,
    rows without a price) agree, and the preprocessing records the aggregated configuration."""
    from tasks.datasets.king_county import features as kc
    from tasks.features.build import build_features
    from tasks.features.featureset import SPLIT
    from tasks.features.preprocessing import load_preprocessing

    lake, _, _ = small_lake
    features = build_features(spec, str(lake), date(2014, 5, 28), date(2015, 5, 28), comps_mode="area")
    prep = load_preprocessing(features["preprocessing_uri"])
    assert prep.comps == kc.COMPS.area_only() and prep.comps.aggregated
    stored = pl.read_parquet(features["features_uri"]).filter(pl.col(SPLIT) == "test").sort("id", "date")
    rows = stored.select(list(spec.columns)).with_columns(pl.lit(None, pl.Float64).alias(spec.target))
    history = LakeHistory(str(lake), prep.comps.input_columns(with_target=True))
    recomputed = prep.features(rows, history.frame()).collect()
    cols = [s.name for s in prep.numeric]
    assert {"comp_zipcode_365d_mean", "comp_ring_90d_n"} <= set(cols)
    assert_frame_equal(recomputed.select(cols), stored.select(cols), check_exact=False, rel_tol=1e-9, abs_tol=1e-12)


def test_lake_history_rereads_only_when_partitions_change(small_lake, tmp_path):
    import shutil

    lake, sold, _ = small_lake
    copy = tmp_path / "lake"
    shutil.copytree(lake / "validated", copy / "validated")
    h = LakeHistory(str(copy), ["date", "price"])
    first = h.frame()
    assert first.height == sold.height and h.frame() is first
    day = sorted(p.name for p in (copy / "validated").iterdir())[-1]
    shutil.rmtree(copy / "validated" / day)
    assert h.frame().height < sold.height


def test_area_configuration_has_no_row_to_row_joins():
    from tasks.datasets.king_county import features as kc

    area = kc.COMPS.area_only()
    assert area.aggregated and not area.knn_k and area.id is None and not area.is_market_only()
    # the location-adjusted index reaches furthest: its 90-day window of values adjusted by a 365-day effect
    assert area.lookback_days() == max(*area.group_windows_days, *area.ring_windows_days,
                                       max(area.market_windows_days) + area.location_window_days) + area.adjust_window_days
    assert [c for c in area.columns() if "_mean" in c] == [
        "comp_zipcode_90d_mean", "comp_zipcode_365d_mean", "comp_cell_365d_mean", "comp_ring_90d_mean",
        "comp_ring_365d_mean"]
    assert area.market_only() == kc.COMPS.market_only()
    with pytest.raises(ValueError, match="no k nearest"):
        CompsConfig.model_validate({**kc.COMPS.model_dump(), "aggregated": True})
    with pytest.raises(ValueError, match="ring_cells needs"):
        CompsConfig.model_validate({**kc.COMPS.model_dump(), "ring_cells": 1})
