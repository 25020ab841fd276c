"""The feature pipeline written the way a typical pandas tutorial writes it, for comparison only.

    build_features_pandas(paths, out_path, window_end, test_days=88, val_days=59, comps=False) -> dict

Eager and in memory: ``pd.read_parquet`` of every validated partition, ``pd.concat``; the same derived
columns as ``tasks.datasets.king_county.features.derive`` (logs, basement share, age, renovation, neighbour
ratio, market time, month sine/cosine), the same time split as ``tasks.features.featureset.assign_split``, a
per-zipcode-and-month median price per square foot (over the training rows) joined back with
``merge``, z-scores of every numeric feature (mean and standard deviation of the training rows), and
``to_parquet`` (zstd). It is deliberately idiomatic rather than tuned: what a notebook turned into a
job usually looks like. Nothing in the pipeline imports it; ``benchmarks.run`` times it against
``tasks.features.build.build_features``.

With ``comps=True`` (what ``benchmarks.run`` passes when the Polars job runs
``HOMEWORTH_COMPS=area``, above 100k rows) it also computes :func:`area_comps`: the same comparable-sales
columns as the Polars job, with the same values (checked against ``tasks.features.comps`` on King County), the
pandas way. The Polars job in addition fits clip quantiles, means, standard deviations and
vocabularies on the training rows (``fit_preprocessing``) and writes the features unscaled; it
computes no zip-code-month median.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd

EPOCH = pd.Timestamp("2014-01-01")
ZIP_MONTH_PPSF = "zip_month_median_ppsf"


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """The columns of ``tasks.datasets.king_county.features.derive``, in pandas."""
    when = pd.to_datetime(df["date"])
    year = when.dt.year
    renovated = df["yr_renovated"] > 0
    month = when.dt.month.astype("float64")
    df["log_sqft_living"] = np.log(df["sqft_living"])
    df["log_sqft_lot"] = np.log(df["sqft_lot"])
    df["log_sqft_above"] = np.log(df["sqft_above"])
    df["basement_share"] = df["sqft_basement"] / df["sqft_living"]
    df["age"] = (year - df["yr_built"]).clip(lower=0)
    df["renovated"] = renovated.astype("float64")
    df["years_since_renovation"] = pd.Series(
        np.where(renovated, year - df["yr_renovated"], year - df["yr_built"]), index=df.index
    ).clip(lower=0)
    df["log_sqft_living15"] = np.log(df["sqft_living15"])
    df["log_sqft_lot15"] = np.log(df["sqft_lot15"])
    df["living_vs_neighbours"] = np.log(df["sqft_living"] / df["sqft_living15"])
    df["sale_day"] = (when - EPOCH).dt.days.astype("float64")
    df["month_sin"] = np.sin(month * (2 * np.pi / 12))
    df["month_cos"] = np.cos(month * (2 * np.pi / 12))
    df["_month"] = when.dt.to_period("M")
    return df


def assign_split(df: pd.DataFrame, window_end: date, test_days: int, val_days: int) -> pd.DataFrame:
    test_start = pd.Timestamp(window_end - timedelta(days=test_days))
    val_start = pd.Timestamp(window_end - timedelta(days=test_days + val_days))
    when = pd.to_datetime(df["date"])
    df["split"] = np.select([when >= test_start, when >= val_start], ["test", "val"], default="train")
    return df


def numeric_features() -> list[str]:
    """The numeric feature names the Polars pipeline uses (so new features show up here by name)."""
    try:
        from tasks.datasets.king_county.features import NUMERIC

        return list(NUMERIC)
    except Exception:  # the feature module is being edited: fall back to the columns derive() makes
        return []


CELL_DEG = 0.01


def _trailing(wide: pd.DataFrame, w: int) -> pd.DataFrame:
    """Per column (an area, or the county), the sum over the ``w`` days before each day (rows: every day)."""
    return wide.rolling(w, min_periods=1).sum().shift(1).fillna(0.0)


def _wide(df: pd.DataFrame, keys: list[str], col: str, days: pd.DatetimeIndex) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Daily sums and counts of ``col`` per area, as day x area frames (missing days: 0)."""
    g = df.groupby([*keys, "_day"])[col].agg(["sum", "count"])
    s = g["sum"].unstack(keys).reindex(days).fillna(0.0)
    n = g["count"].unstack(keys).reindex(days).fillna(0.0)
    return s, n


def _long(values: dict[str, pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    """Day x area frames back to one row per (area, day), to merge with the sales."""
    parts = [v.stack(list(range(v.columns.nlevels)), future_stack=True).rename(k) for k, v in values.items()]
    out = pd.concat(parts, axis=1)
    out.index = out.index.set_names(["_day", *keys])
    return out.reset_index()


def area_comps(df: pd.DataFrame) -> pd.DataFrame:
    """The Polars job's ``HOMEWORTH_COMPS=area`` columns, the pandas way: for each sale, statistics of
    the sales of EARLIER days (the county market index, plain and net of each zipcode's effect, and
    trailing means and counts of market-adjusted ln price per sqft per zipcode, per 0.01-degree cell
    and per 3 x 3 cells), from daily sums pivoted to day x area frames, ``rolling`` windows and
    ``merge`` back on (area, day). The same definitions as ``tasks.features.comps`` (point in time)."""
    df["_day"] = pd.to_datetime(df["date"]).dt.normalize()
    df["_lnppsf"] = np.log(df["price"] / df["sqft_living"])
    df["_ci"] = np.floor(df["lat"] / CELL_DEG).astype("int64")
    df["_cj"] = np.floor(df["long"] / CELL_DEG).astype("int64")
    days = pd.date_range(df["_day"].min(), df["_day"].max(), freq="D")
    daily = df.groupby("_day")["_lnppsf"].agg(["sum", "count"]).reindex(days).fillna(0.0)
    mkt = {w: (_trailing(daily[["sum"]], w)["sum"] / _trailing(daily[["count"]], w)["count"]) for w in (30, 90)}
    mkt = {w: m.where(np.isfinite(m)) for w, m in mkt.items()}
    df["comp_mkt_30"], df["comp_mkt_90"] = df["_day"].map(mkt[30]), df["_day"].map(mkt[90])
    df["comp_mkt_now"] = df["comp_mkt_30"] + 31 / 60 * (df["comp_mkt_30"] - df["comp_mkt_90"])
    df["_adj"] = df["_lnppsf"] - df["comp_mkt_90"]

    # the zipcode's effect (its mean adjusted value over the 365 days before), then the index of the
    # sales net of it
    zs, zn = _wide(df, ["zipcode"], "_adj", days)
    effect = (_trailing(zs, 365) / _trailing(zn, 365)).where(lambda e: np.isfinite(e))
    ls, ln_ = _wide(df, ["zipcode"], "_lnppsf", days)
    net_s = (ls - ln_ * effect).where(effect.notna(), 0.0).sum(axis=1)
    net_n = ln_.where(effect.notna(), 0.0).sum(axis=1)
    for w in (30, 90):
        m = _trailing(net_s.to_frame("s"), w)["s"] / _trailing(net_n.to_frame("n"), w)["n"]
        df[f"comp_mktloc_{w}"] = df["_day"].map(m.where(np.isfinite(m)))
    df["comp_mktloc_now"] = df["comp_mktloc_30"] + 31 / 60 * (df["comp_mktloc_30"] - df["comp_mktloc_90"])

    def windows(s: pd.DataFrame, n: pd.DataFrame, keys: list[str], name: str, ws: list[int]) -> None:
        nonlocal df
        values = {}
        for w in ws:
            tn = _trailing(n, w)
            values[f"comp_{name}_{w}d_mean"] = (_trailing(s, w) / tn).where(tn > 0)
            values[f"comp_{name}_{w}d_n"] = tn
        df = df.merge(_long(values, keys), on=[*keys, "_day"], how="left")

    windows(zs, zn, ["zipcode"], "zipcode", [90, 365])
    sold = ln_.gt(0)  # any sale that day (with or without a market index to adjust it by)
    last = sold.mul(np.arange(len(days)), axis=0).where(sold).ffill().shift(1)
    since = pd.DataFrame(np.arange(len(days))[:, None] - last.to_numpy(), index=days, columns=ln_.columns)
    df = df.merge(_long({"comp_zipcode_days_since": since}, ["zipcode"]), on=["zipcode", "_day"], how="left")
    cs, cn = _wide(df, ["_ci", "_cj"], "_adj", days)
    windows(cs, cn, ["_ci", "_cj"], "cell", [365])
    # the 3 x 3 cells around each cell: the daily sums of the neighbours, added up
    g = df.groupby(["_ci", "_cj", "_day"])["_adj"].agg(["sum", "count"]).reset_index()
    ring = pd.concat([g.assign(_ci=g["_ci"] + di, _cj=g["_cj"] + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)])
    ring = ring.groupby(["_ci", "_cj", "_day"])[["sum", "count"]].sum()
    rs = ring["sum"].unstack(["_ci", "_cj"]).reindex(days).fillna(0.0)
    rn = ring["count"].unstack(["_ci", "_cj"]).reindex(days).fillna(0.0)
    windows(rs, rn, ["_ci", "_cj"], "ring", [90, 365])
    counts = [c for c in df.columns if c.startswith("comp_") and c.endswith("_n")]
    df[counts] = df[counts].fillna(0.0)
    return df.drop(columns=["_day", "_lnppsf", "_ci", "_cj", "_adj"])


def build_features_pandas(paths: list[str], out_path: str, window_end: date, test_days: int = 88,
                          val_days: int = 59, comps: bool = False) -> dict:
    """Read, derive, split, join the zip-month median, (with ``comps``: :func:`area_comps`), z-score,
    write. Returns row counts."""
    df = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
    if comps:
        df = area_comps(df)
    df = derive(df)
    df = assign_split(df, window_end, test_days, val_days)

    # Per zip code and month: median price per square foot of the training sales, joined back.
    df["_ppsf"] = df["price"] / df["sqft_living"]
    medians = (
        df[df["split"] == "train"].groupby(["zipcode", "_month"])["_ppsf"].median()
        .rename(ZIP_MONTH_PPSF).reset_index()
    )
    df = df.merge(medians, on=["zipcode", "_month"], how="left")
    df[ZIP_MONTH_PPSF] = df[ZIP_MONTH_PPSF].fillna(df[ZIP_MONTH_PPSF].median())

    # z-scores with the training rows' mean and standard deviation.
    numeric = [c for c in numeric_features() if c in df.columns] or [
        c for c in df.columns if c.startswith(("log_", "month_")) or c in ("age", "sale_day", "basement_share")
    ]
    numeric.append(ZIP_MONTH_PPSF)
    numeric += [c for c in df.columns if c.startswith("comp_")]
    train = df[df["split"] == "train"]
    mean, std = train[numeric].mean(), train[numeric].std().replace(0, 1.0)
    df[numeric] = (df[numeric] - mean) / std

    df = df.drop(columns=["_ppsf", "_month"])
    df.to_parquet(out_path, compression="zstd", index=False)
    counts = df["split"].value_counts().to_dict()
    return {"rows": int(len(df)), "columns": int(df.shape[1]), "split_rows": {k: int(v) for k, v in counts.items()}}
