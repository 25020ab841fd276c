"""Feature drift: the population stability index (PSI) of every feature, training data vs the newest sales.

For each feature the reference sample (the training split a model was fitted on) and the current
sample (the newest sales) are binned the same way and compared bin by bin:

    PSI = sum_i (c_i - r_i) * ln(c_i / r_i)

with ``r_i`` and ``c_i`` the shares of the reference and the current rows in bin ``i``, each floored at
``EPS`` (1e-4) so that an empty bin costs a large but finite amount.

- numeric features: ``bins`` (10) quantile bins fitted on the reference (right-closed, the outer ones
  open-ended; repeated quantiles of a discrete feature merge into one edge), plus one bin for nulls
  and non-finite values;
- categorical features: one bin per value of either sample (nulls are a value); a value never seen in
  the reference is reported in ``new_categories``. The Jensen-Shannon divergence (base 2, 0..1) is
  reported beside the PSI.

A feature is flagged when its PSI exceeds the threshold (``drift_threshold``, 0.2: the usual "significant
shift"; below 0.1 is usually read as stable). Calendar features, computed from the event time alone
(market time, month of the year), are left out: the newest sales always lie after the training window,
so they differ by construction. Drift is not judged on fewer than ``MIN_ROWS`` current rows: with few rows
the PSI of a 70-value categorical is large by chance alone (about (bins - 1) / rows).

``drift_step`` compares the train and test splits of a features table (the test split is the newest
``test_days`` of the window) and logs ``drift/<feature>`` to the model's MLflow run;
``drift_vs_champion`` compares the validated sales of the last ``drift_recent_days`` days with the
champion's training split (used by ``sales_ingest`` when ``drift_action`` is ``trigger_retrain``);
``drift_blocks_promotion`` is the promote step's question. Everything is computed in Polars.
"""

from __future__ import annotations

import logging
import math
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from tasks.core import lake, storage
from tasks.core.faults import fault_point
from tasks.core.handoffs import DriftReport, FeatureTable, TrainedModel
from tasks.core.spec import DatasetSpec
from tasks.features.featureset import SPLIT, FeatureSet, bounded_sample, feature_set
from tasks.ingest.landing import POLARS_TYPES, days_in_interval

if TYPE_CHECKING:
    from tasks.core.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_BINS = 10
EPS = 1e-4
MIN_ROWS = 500
NULL = "<null>"
METRIC_PREFIX = "drift/"


# ------------------------------------------------------------------------------------------ measures
def _finite(s: pl.Series) -> pl.Series:
    """As Float64, with NaN and infinities as nulls."""
    v = pl.col("v")
    return pl.DataFrame({"v": s.cast(pl.Float64)}).select(pl.when(v.is_finite()).then(v).alias(s.name)).to_series()


def quantile_edges(reference: pl.Series, bins: int = DEFAULT_BINS) -> list[float]:
    """Inner bin edges: the reference's i/bins quantiles (i = 1 .. bins-1, observed values), repeats merged."""
    ref = _finite(reference).drop_nulls()
    if ref.len() == 0:
        return []
    qs = pl.DataFrame({"v": ref}).select(
        [pl.col("v").quantile(i / bins, interpolation="nearest").alias(str(i)) for i in range(1, bins)]).row(0)
    return sorted({float(q) for q in qs})


def _numeric_counts(values: pl.Series, edges: list[float]) -> dict[str, int]:
    """Rows per bin: ``(-inf, e0]`` is "0", ``(e0, e1]`` is "1", ..., ``(e_last, inf)``; nulls in NULL."""
    v = _finite(values)
    nulls = v.null_count()
    kept = v.drop_nulls()
    out: dict[str, int] = {NULL: nulls} if nulls else {}
    if kept.len() and not edges:
        out["0"] = kept.len()
    elif kept.len():
        idx = pl.Series(edges, dtype=pl.Float64).search_sorted(kept, side="left")
        for b, n in pl.DataFrame({"b": idx}).group_by("b").len().iter_rows():
            out[str(b)] = n
    return out


def _category_counts(values: pl.Series) -> dict[str, int]:
    s = values.cast(pl.String).fill_null(NULL)
    return dict(pl.DataFrame({"v": s}).group_by("v").len().iter_rows())


def _shares(counts: dict[str, int]) -> dict[str, float]:
    n = sum(counts.values())
    return {k: c / n for k, c in counts.items()} if n else {}


def psi_from_counts(ref: dict[str, int], cur: dict[str, int]) -> float:
    """PSI of two binnings (same bin names); shares floored at EPS."""
    r, c = _shares(ref), _shares(cur)
    if not r or not c:
        return 0.0
    total = 0.0
    for k in sorted(set(r) | set(c)):
        rk, ck = max(r.get(k, 0.0), EPS), max(c.get(k, 0.0), EPS)
        total += (ck - rk) * math.log(ck / rk)
    return total


def js_from_counts(ref: dict[str, int], cur: dict[str, int]) -> float:
    """Jensen-Shannon divergence (base 2, between 0 and 1) of two binnings."""
    r, c = _shares(ref), _shares(cur)
    if not r or not c:
        return 0.0
    js = 0.0
    for k in set(r) | set(c):
        p, q = r.get(k, 0.0), c.get(k, 0.0)
        m = (p + q) / 2
        js += (0.5 * p * math.log2(p / m) if p else 0.0) + (0.5 * q * math.log2(q / m) if q else 0.0)
    return max(0.0, min(1.0, js))


def psi_numeric(reference: pl.Series, current: pl.Series, bins: int = DEFAULT_BINS) -> float:
    edges = quantile_edges(reference, bins)
    return psi_from_counts(_numeric_counts(reference, edges), _numeric_counts(current, edges))


def psi_categorical(reference: pl.Series, current: pl.Series) -> float:
    return psi_from_counts(_category_counts(reference), _category_counts(current))


# ------------------------------------------------------------------------------------------ features
def calendar_features(spec: DatasetSpec, fset: FeatureSet) -> dict[str, str]:
    """Features computed from the event time alone: {name: why it is left out}.

    Found by deriving the features of two rows whose only non-null value is the event time (January and
    July): a feature that is still non-null and differs between them depends on the date and nothing else.
    Features the dataset marks as unclipped (market time, extrapolated past the window) are included.
    """
    out = {c: "market-time feature (extrapolates past the training window)" for c in fset.unclipped}
    if not spec.event_time:
        return out
    schema = {c: POLARS_TYPES[cs.type] for c, cs in spec.columns.items()}
    probe = pl.DataFrame({c: [None, None] for c in spec.columns}, schema=schema).with_columns(
        pl.Series(spec.event_time, [date(2014, 1, 15), date(2014, 7, 15)]).cast(schema[spec.event_time]))
    try:
        derived = fset.derive(probe.lazy()).collect()
    except Exception as exc:  # a feature module that cannot take nulls: keep only the declared ones
        log.warning("calendar-feature probe failed (%s); leaving out only %s", exc, sorted(out))
        return out
    for c in [*fset.numeric, *fset.categorical]:
        if c == spec.event_time or (c in derived.columns and c not in spec.columns
                                    and derived[c].null_count() == 0 and derived[c].n_unique() > 1):
            out.setdefault(c, "calendar feature (a function of the event time alone)")
    return out


def feature_drift(reference: pl.DataFrame, current: pl.DataFrame, numeric: list[str], categorical: list[str], *,
                  threshold: float, action: str = "none", bins: int = DEFAULT_BINS, skip: dict[str, str] | None = None,
                  min_rows: int = MIN_ROWS) -> dict:
    """PSI per feature of ``current`` against ``reference``; the small JSON the pipeline passes around."""
    skip = dict(skip or {})
    psi, js, new = {}, {}, {}
    for c in numeric + categorical:
        if c in skip:
            continue
        if c not in reference.columns or c not in current.columns:
            skip[c] = "missing from the reference or the current rows"
            continue
        if c in numeric:
            psi[c] = psi_numeric(reference[c], current[c], bins)
        else:
            rc, cc = _category_counts(reference[c]), _category_counts(current[c])
            psi[c], js[c] = psi_from_counts(rc, cc), round(js_from_counts(rc, cc), 6)
            unseen = sorted(set(cc) - set(rc))
            if unseen:
                new[c] = {"values": unseen[:10], "count": len(unseen),
                          "share": round(sum(cc[v] for v in unseen) / max(current.height, 1), 6)}
    psi = {k: round(v, 6) for k, v in psi.items()}
    enough = current.height >= min_rows and reference.height >= min_rows
    flagged = sorted((c for c, v in psi.items() if v > threshold), key=lambda c: (-psi[c], c)) if enough else []
    top = max(psi, key=lambda c: (psi[c], c), default=None)
    return {
        "status": "ok" if enough else "insufficient_data",
        "reason": None if enough else f"{current.height} current / {reference.height} reference rows "
                                      f"(at least {min_rows} needed to judge drift)",
        "method": "psi", "bins": bins, "threshold": threshold, "action": action,
        "psi": psi, "max_psi": psi[top] if top else 0.0, "max_feature": top,
        "flagged": flagged, "drifted": bool(flagged),
        "js": js, "new_categories": new, "skipped_features": skip,
        "reference_rows": reference.height, "current_rows": current.height,
    }


def _comps(fset: FeatureSet) -> tuple[list[str], list[str]]:
    """(columns, market-time columns) of the dataset's history-aware comparable-sales stage, if any."""
    cfg = getattr(fset, "comps", None)
    if cfg is None:
        return [], []
    return list(cfg.columns()), list(cfg.unclipped())


def _scan(uri: str) -> pl.LazyFrame:
    return pl.scan_parquet(storage.local_path(uri) or uri)


def _columns(lf: pl.LazyFrame, wanted: list[str]) -> list[str]:
    names = set(lf.collect_schema().names())
    return [c for c in wanted if c in names]


# ------------------------------------------------------------------------------------------ steps
# Rows each side of the comparison holds at most (every k-th row beyond): shares of ten bins are
# estimated to about 0.1 point from a million rows, and memory stays bounded on any history.
DRIFT_MAX_ROWS = 1_000_000


def drift_step(spec: DatasetSpec, settings: "Settings", features: FeatureTable, trained: TrainedModel | None = None,
               *, recent_days: int | None = None, bins: int = DEFAULT_BINS, max_rows: int = DRIFT_MAX_ROWS) -> DriftReport:
    """Drift of the newest rows of a features table against its train split.

    ``features`` is the build_features step's result (``features_uri``, ``window_end``). The current rows are
    the test split (the newest ``test_days`` of the window under a time split), or, with ``recent_days``,
    the rows of the last ``recent_days`` days before the window end. Each side is read whole up to
    ``max_rows`` rows, else every k-th row (so memory is bounded on a history of any size). With
    ``trained`` (the train step's result), ``drift/<feature>`` metrics and ``drift.*`` tags are logged to
    ``trained.mlflow_run_id``.
    """
    fault_point("check_drift", "start")
    fset = feature_set(spec, settings.comps)
    uri = features.features_uri
    lf = _scan(uri)
    comp_cols, comp_market = _comps(fset)
    numeric = [*fset.numeric, *(c for c in _columns(lf, comp_cols) if c not in fset.numeric)]
    cols = _columns(lf, [*numeric, *fset.categorical])
    skip = calendar_features(spec, fset) | {c: "market-time feature (extrapolates past the training window)"
                                            for c in comp_market if c in numeric}
    reference = bounded_sample(lf.filter(pl.col(SPLIT) == "train").select(cols), max_rows)
    if recent_days and spec.event_time:
        since = date.fromisoformat(features.window_end) - timedelta(days=recent_days)
        current = bounded_sample(lf.filter(pl.col(spec.event_time) >= since).select(cols), max_rows)
        selection = f"{spec.event_time} >= {since.isoformat()}"
    else:
        current = bounded_sample(lf.filter(pl.col(SPLIT) == "test").select(cols), max_rows)
        selection = f"{SPLIT} == 'test'"
    out = feature_drift(reference, current, numeric, fset.categorical, threshold=settings.drift_threshold,
                        action=settings.drift_action, bins=bins, skip=skip)
    out["reference"] = {"source": uri, "selection": f"{SPLIT} == 'train'"}
    out["current"] = {"source": uri, "selection": selection}
    if trained is not None and trained.mlflow_run_id:
        log_drift(settings, trained.mlflow_run_id, out)
        fault_point("check_drift", "after_effect")
    log.info("drift: max PSI %.3f (%s), flagged %s (threshold %s, action %s)", out["max_psi"], out["max_feature"],
             out["flagged"], out["threshold"], out["action"])
    return DriftReport.model_validate(out)


def log_drift(settings: "Settings", run_id: str, drift: dict) -> None:
    """``drift/<feature>`` metrics (PSI) and ``drift.max_psi``/``drift.flagged``/``drift.action`` tags on a run."""
    import time

    from mlflow.entities import Metric, RunTag

    from tasks.core import tracking

    ts = int(time.time() * 1000)
    metrics = [Metric(f"{METRIC_PREFIX}{k}", float(v), ts, 0) for k, v in sorted(drift["psi"].items())
               if math.isfinite(v)]
    tags = [RunTag("drift.max_psi", f"{drift['max_psi']:.6f}"), RunTag("drift.flagged", ",".join(drift["flagged"])),
            RunTag("drift.action", str(drift["action"])), RunTag("drift.status", str(drift["status"]))]
    tracking.client(settings).log_batch(run_id, metrics=metrics, tags=tags)


def drift_blocks_promotion(drift: dict | None) -> tuple[bool, str]:
    """(block?, reason) for the promote step: blocks only when the action is ``block_promotion`` and a
    feature is flagged."""
    if not drift:
        return False, "no drift check"
    action, t = drift.get("action", "none"), drift.get("threshold")
    if drift.get("status") != "ok":
        return False, f"drift not judged: {drift.get('reason') or drift.get('status')}"
    flagged = drift.get("flagged") or []
    listed = ", ".join(f"{c} {drift['psi'][c]:.3f}" for c in flagged[:5]) + (" ..." if len(flagged) > 5 else "")
    if not flagged:
        return False, f"no feature drift: max PSI {drift.get('max_psi', 0.0):.3f} ({drift.get('max_feature')}) <= {t}"
    if action != "block_promotion":
        return False, f"feature drift (PSI > {t}: {listed}) does not block: drift_action is {action!r}"
    return True, f"feature drift blocks promotion: PSI > {t} for {listed}"


def recent_validated(spec: DatasetSpec, lake_uri: str, end: date, days: int, fset: FeatureSet | None = None) -> pl.DataFrame:
    """Features of the validated sales of the ``days`` days before ``end`` (derived as training derives them)."""
    fset = fset or feature_set(spec)
    uris = [u for d in days_in_interval(end - timedelta(days=days), end)
            if (u := lake.day_file(lake_uri, lake.VALIDATED, d))]
    if not uris:
        return pl.DataFrame()
    lf = pl.scan_parquet([storage.local_path(u) or u for u in uris]).pipe(fset.derive)
    return lf.select(_columns(lf, [*fset.numeric, *fset.categorical])).collect()


def drift_vs_champion(spec: DatasetSpec, settings: "Settings", end: date, *, recent_days: int | None = None,
                      bins: int = DEFAULT_BINS) -> dict:
    """Drift of the last ``recent_days`` (``drift_recent_days``) days of validated sales before ``end``
    against the training split the champion was fitted on (its ``data.window_*`` tags name the features
    table). ``status`` is ``skipped`` when there is no champion or no reference to compare with."""
    recent_days = recent_days or settings.drift_recent_days
    base: dict[str, Any] = {"threshold": settings.drift_threshold, "action": settings.drift_action,
                            "flagged": [], "drifted": False}
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not storage.exists(uri.removeprefix("sqlite:///")):
        return {**base, "status": "skipped", "reason": "no MLflow store yet (no champion)"}
    from tasks.core import tracking

    c = tracking.client(settings)
    mv = tracking.champion_version(c, settings.model_name)
    if mv is None:
        return {**base, "status": "skipped", "reason": "no champion model yet"}
    tags = dict(mv.tags or {})
    if not tags.get("data.window_start") and mv.run_id:
        tags.update(c.get_run(mv.run_id).data.tags)
    ws, we = tags.get("data.window_start"), tags.get("data.window_end")
    if not (ws and we):
        return {**base, "status": "skipped", "reason": f"champion v{mv.version} has no data.window_* tags"}
    ref_uri = lake.find_features_uri(settings.lake_uri, ws, we, tags.get("data.features_sha256"))
    if not storage.exists(ref_uri):
        return {**base, "status": "skipped", "reason": f"champion v{mv.version}'s features table {ref_uri} is gone"}
    fset = feature_set(spec, settings.comps)
    lf = _scan(ref_uri)
    reference = lf.filter(pl.col(SPLIT) == "train").select(_columns(lf, [*fset.numeric, *fset.categorical])).collect()
    current = recent_validated(spec, settings.lake_uri, end, recent_days, fset)
    # Comparable-sales features need the history of every row: not derived for this check (drift_step has them).
    skip = calendar_features(spec, fset) | {c: "comparable-sales feature (not derived at ingest time)"
                                            for c in _columns(lf, _comps(fset)[0])}
    out = feature_drift(reference, current, fset.numeric, fset.categorical, threshold=settings.drift_threshold,
                        action=settings.drift_action, bins=bins, skip=skip)
    out["reference"] = {"source": ref_uri, "selection": f"{SPLIT} == 'train'", "champion_version": str(mv.version)}
    out["current"] = {"source": lake.table_uri(settings.lake_uri, lake.VALIDATED),
                      "selection": f"ds in [{(end - timedelta(days=recent_days)).isoformat()}, {end.isoformat()})"}
    return out


def event_extra(drift: dict) -> dict:
    """The small part of a drift result an asset event carries."""
    return {k: drift.get(k) for k in ("status", "max_psi", "max_feature", "flagged", "threshold", "action",
                                      "current_rows", "reference", "current")} | {
        "psi": {c: drift["psi"][c] for c in drift.get("flagged", [])}}


def check_after_ingest(spec: DatasetSpec, settings: "Settings", end: date) -> tuple[dict, dict | None]:
    """``sales_ingest``'s drift check: (its summary for XCom, the asset event's extra when a feature drifted).

    A failing check is reported in the summary, never raised: a drift check must not fail ingestion.
    """
    try:
        drift = drift_vs_champion(spec, settings, end)
    except Exception as exc:
        log.exception("drift check failed")
        drift = {"status": "error", "reason": f"{type(exc).__name__}: {exc}", "flagged": [], "drifted": False}
    summary = {k: drift.get(k) for k in ("status", "reason", "max_psi", "max_feature", "flagged")}
    log.info("drift vs champion: %s", summary)
    return summary, (event_extra(drift) if drift.get("drifted") else None)
