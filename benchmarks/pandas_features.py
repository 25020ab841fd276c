"""The feature pipeline written the way a typical pandas tutorial writes it, for comparison only.

    build_features_pandas(paths, out_path, window_end, test_days=88, val_days=59) -> dict

Eager and in memory: ``pd.read_parquet`` of every validated partition, ``pd.concat``; the same derived
columns as ``tasks.datasets.king_county.derive`` (logs, basement share, age, renovation, neighbour
ratio, market time, month sine/cosine), the same time split as ``tasks.features.assign_split``, a
per-zipcode-and-month median price per square foot (over the training rows) joined back with
``merge``, z-scores of every numeric feature (mean and standard deviation of the training rows), and
``to_parquet`` (zstd). It is deliberately idiomatic rather than tuned: what a notebook turned into a
job usually looks like. Nothing in the pipeline imports it; ``benchmarks.run`` times it against
``tasks.features.build_features``.

The Polars pipeline computes no zip-code-month median; in the benchmark (``HOMEWORTH_COMPS=area``
above 100k rows) it computes, for every sale, point-in-time statistics of the earlier sales instead:
the county market index and trailing-window means and counts per zipcode, per grid cell and per 3 x 3
cells (from one aggregation of the window and its lookback by zipcode, cell and day, joined back by
zipcode, cell and day), and it fits clip quantiles, means, standard deviations and vocabularies on
the training rows (``fit_preprocessing``) and writes the features unscaled. So the Polars job does
more grouped work than this one: one scan of the history for the aggregates, one of the window, the
same derived columns, one Parquet file out.
"""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd

EPOCH = pd.Timestamp("2014-01-01")
ZIP_MONTH_PPSF = "zip_month_median_ppsf"


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """The columns of ``tasks.datasets.king_county.derive``, in pandas."""
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
        from tasks.datasets.king_county import NUMERIC

        return list(NUMERIC)
    except Exception:  # the feature module is being edited: fall back to the columns derive() makes
        return []


def build_features_pandas(paths: list[str], out_path: str, window_end: date, test_days: int = 88,
                          val_days: int = 59) -> dict:
    """Read, derive, split, join the zip-month median, z-score, write. Returns row counts."""
    df = pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)
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
    train = df[df["split"] == "train"]
    mean, std = train[numeric].mean(), train[numeric].std().replace(0, 1.0)
    df[numeric] = (df[numeric] - mean) / std

    df = df.drop(columns=["_ppsf", "_month"])
    df.to_parquet(out_path, compression="zstd", index=False)
    counts = df["split"].value_counts().to_dict()
    return {"rows": int(len(df)), "columns": int(df.shape[1]), "split_rows": {k: int(v) for k, v in counts.items()}}
