"""The evaluation report: one self-contained HTML file per retrain run (tables and inline PNG plots)."""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from tasks.core.metrics import HIGHER_IS_BETTER, METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Price bands of the residual plot (upper bounds, dollars).
BANDS = [250_000, 400_000, 550_000, 750_000, 1_000_000, float("inf")]


def _png(fig: "Figure") -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _band(price: pl.Expr) -> pl.Expr:
    expr = pl.lit(f">{BANDS[-2] / 1e3:,.0f}k")
    for lo, hi in reversed(list(zip([0, *BANDS[:-1]], BANDS[:-1]))):
        expr = pl.when(price < hi).then(pl.lit(f"{lo / 1e3:,.0f}-{hi / 1e3:,.0f}k")).otherwise(expr)
    return expr


SCATTER_MAX_POINTS = 20_000


def plots(pred: pl.DataFrame, models: list[str], actual: str, time_col: str | None) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    fig, ax = plt.subplots(figsize=(5.5, 5))
    # At most SCATTER_MAX_POINTS points (every k-th test row): a denser cloud says nothing more.
    shown = pred.gather_every(max(1, -(-pred.height // SCATTER_MAX_POINTS)))
    y = shown[actual].to_numpy()
    for m in models:
        ax.scatter(y, shown[f"pred_{m}"].to_numpy(), s=4, alpha=0.35, label=m)
    lo, hi = float(y.min()), float(y.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="actual price ($)", ylabel="predicted price ($)",
           title="Predicted vs actual (test rows)")
    ax.legend()
    out.append(("Predicted vs actual", _png(fig)))

    cols = [actual, *[f"pred_{m}" for m in models]]
    banded = pred.select(cols).with_columns(_band(pl.col(actual)).alias("band"),
                               pl.sum_horizontal([(pl.col(actual) >= b).cast(pl.Int32) for b in BANDS[:-1]]).alias("band_order"))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        g = (banded.group_by("band", "band_order")
             .agg(((pl.col(f"pred_{m}").log() - pl.col(actual).log())).median().alias("r"))
             .sort("band_order"))
        ax.bar(np.arange(g.height) + i * width, g["r"].to_numpy() * 100, width, label=m)
        ax.set_xticks(np.arange(g.height) + width * (len(models) - 1) / 2, g["band"].to_list())
    ax.axhline(0, color="k", lw=1)
    ax.set(ylabel="median residual, % (ln pred - ln actual)", title="Residuals by price band")
    ax.legend()
    out.append(("Residuals by price band", _png(fig)))

    if time_col:
        fig, ax = plt.subplots(figsize=(7, 4))
        for m in models:
            g = (pred.select(time_col, *cols).with_columns(pl.col(time_col).dt.truncate("1mo").alias("month"))
                 .group_by("month").agg(((pl.col(f"pred_{m}") - pl.col(actual)).abs() / pl.col(actual)).median().alias("e"))
                 .sort("month"))
            ax.plot(g["month"].to_list(), g["e"].to_numpy() * 100, marker="o", label=m)
        ax.set(ylabel="median APE, %", title="Error by month")
        ax.legend()
        fig.autofmt_xdate()
        out.append(("Error by month", _png(fig)))
    return out


def metrics_table(metrics: dict[str, dict[str, float]]) -> str:
    models = list(metrics)
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    rows = []
    for k in METRICS:
        vals = [metrics[m].get(k) for m in models]
        best = [v for v in vals if v is not None]
        pick = (max if HIGHER_IS_BETTER[k] else min)(best) if best else None
        cells = []
        for v in vals:
            if v is None:
                cells.append("<td>-</td>")
                continue
            text = f"{v:.2%}" if k in ("mdape", "ppe10") else (f"{v:.4f}" if k == "rmse_ln" else f"${v:,.0f}")
            cells.append(f"<td{' class=best' if v == pick and len(best) > 1 else ''}>{text}</td>")
        rows.append(f"<tr><th>{k}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _gbm_note(models: list[str]) -> str:
    if not any("gradient boosting" in m for m in models):
        return ""
    return (" Gradient boosting (HistGradientBoostingRegressor on ln(price)) was trained in this run on the same"
            " features and train/validation split as the new model: the yardstick the deep model has to beat.")


def render(title: str, metrics: dict[str, dict[str, float]], pred: pl.DataFrame, actual: str,
           time_col: str | None, facts: dict[str, str]) -> str:
    """The report's HTML. ``pred`` has the actual price and one ``pred_<model>`` column per model."""
    models = list(metrics)
    fact_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    figures = "".join(f"<h2>{html.escape(t)}</h2>{img}" for t, img in plots(pred, models, actual, time_col))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.3em .8em;text-align:right}}th{{background:#f4f4f4}}.best{{font-weight:bold;color:#064}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>All models scored on the same {pred.height:,} test rows. mdape: median absolute percentage error; ppe10: share
within &plusmn;10%; rmse_ln: RMSE of ln(price).{_gbm_note(models)}</p>
{metrics_table(metrics)}<table>{fact_rows}</table>{figures}</body></html>"""
