"""Promotion: the gate that decides whether a new model replaces the champion, and every alias move.

The gate compares the challenger and the champion on the same test rows (``tasks/registry/evaluate.py``
writes both predictions per row). Point estimates of two medians differ by noise, so the gate
bootstraps the paired rows (seeded, ``gate_resamples`` resamples, vectorised numpy) and looks at the
interval of each difference, champion minus challenger, of the median APE and of the mean
\\|ln error\\|:

- absolute bars (``max_mdape``, ``min_ppe10``) fail: **reject**;
- no champion yet: **promote**;
- an interval lies wholly below 0 (the challenger is clearly worse on a metric): **reject**;
- every interval lies wholly above 0 (clearly better on both) and the relative mdape gain reaches
  ``min_relative_improvement``: **promote**; clearly better but by less: **reject**;
- otherwise the result is **inconclusive**: the champion stays, or, with the ``promotion_approval``
  setting, a person decides through Airflow's human-in-the-loop task.

Backfill runs evaluate but never promote; ``force_promotion`` overrides a "no" (the reason says so).
Every move of the alias, by a run or by a person (:func:`rollback`), is an event in the ledger
(``tasks/registry/ledger.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

import numpy as np

from tasks.core import tracking
from tasks.core.lineage import Lineage
from tasks.core.params import RetrainParams
from tasks.core.settings import Settings
from tasks.registry import ledger

log = logging.getLogger(__name__)

# Metrics of the paired comparison: name -> per-row loss and how it is aggregated.
PAIRED = {"mdape": "median of |pred - actual| / actual", "mean_abs_log_error": "mean of |ln pred - ln actual|"}
APPROVE, KEEP = "Promote", "Keep champion"  # the options a person gets for an inconclusive result


def absolute_failures(new: dict, params: RetrainParams) -> list[str]:
    failures = []
    if new["mdape"] > params.max_mdape:
        failures.append(f"mdape {new['mdape']:.4f} > bar {params.max_mdape}")
    if new["ppe10"] < params.min_ppe10:
        failures.append(f"ppe10 {new['ppe10']:.4f} < bar {params.min_ppe10}")
    return failures


def decide(new: dict, champion: dict | None, params: RetrainParams) -> tuple[bool, str]:
    """The point-estimate gate: absolute bars, then relative improvement of mdape over the champion.

    Used when no paired predictions exist; :func:`gate` adds the bootstrap intervals on top of it.
    """
    failures = absolute_failures(new, params)
    if failures:
        return False, "fails the absolute bars: " + "; ".join(failures)
    if champion is None:
        return True, f"no champion yet and the absolute bars pass (mdape {new['mdape']:.4f}, ppe10 {new['ppe10']:.4f})"
    gain = (champion["mdape"] - new["mdape"]) / champion["mdape"]
    verdict = (f"mdape {new['mdape']:.4f} vs champion {champion['mdape']:.4f}: relative improvement {gain:+.2%}, "
               f"required {params.min_relative_improvement:.2%}")
    return gain >= params.min_relative_improvement, verdict


# ---------------------------------------------------------------------------------------------
# The paired bootstrap


# The bootstrap resamples at most this many test rows (a seeded sample of them beyond): its interval
# is then that of a smaller test set, i.e. wider (conservative); at 1M rows it is already far below
# any difference worth a promotion. Index matrices are kept under BOOTSTRAP_BYTES.
BOOTSTRAP_MAX_ROWS = 1_000_000
BOOTSTRAP_BYTES = 256 * 2**20


def paired_bootstrap(actual: np.ndarray, pred_new: np.ndarray, pred_champion: np.ndarray, *, resamples: int = 1000,
                     confidence: float = 0.95, seed: int = 0, chunk: int = 200,
                     max_rows: int = BOOTSTRAP_MAX_ROWS) -> dict[str, dict[str, Any]]:
    """Percentile intervals of (champion - challenger) for each metric in :data:`PAIRED`.

    Every resample draws the same row indices for both models (paired), so the noise the two share
    (hard houses, the month's market) cancels. Positive differences mean the challenger is better.
    Resamples are drawn up to ``chunk`` at a time as one (chunk, n) index matrix of at most
    :data:`BOOTSTRAP_BYTES`; a test set of more than ``max_rows`` rows is first cut to a seeded
    sample of ``max_rows`` rows (the point estimates stay those of every row).
    """
    a = np.asarray(actual, dtype=np.float64)
    pn, pc = np.asarray(pred_new, dtype=np.float64), np.asarray(pred_champion, dtype=np.float64)
    if not (a.shape == pn.shape == pc.shape) or a.ndim != 1 or a.size < 2:
        raise ValueError(f"need three equal 1-d arrays of at least 2 rows; got {a.shape}, {pn.shape}, {pc.shape}")
    if not (np.all(np.isfinite(pn)) and np.all(np.isfinite(pc)) and np.all(a > 0) and np.all(pn > 0) and np.all(pc > 0)):
        raise ValueError("prices and predictions must be finite and positive")
    loss = {"mdape": (np.abs(pn - a) / a, np.abs(pc - a) / a),
            "mean_abs_log_error": (np.abs(np.log(pn) - np.log(a)), np.abs(np.log(pc) - np.log(a)))}
    agg = {"mdape": np.median, "mean_abs_log_error": np.mean}
    rng = np.random.default_rng(seed)
    total = a.size
    sample = np.sort(rng.choice(total, size=max_rows, replace=False)) if total > max_rows else None
    n = total if sample is None else max_rows
    chunk = max(1, min(chunk, BOOTSTRAP_BYTES // (8 * n)))
    resampled = loss if sample is None else {m: (ln[sample], lc[sample]) for m, (ln, lc) in loss.items()}
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in loss}
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        for m, (ln, lc) in resampled.items():
            diffs[m].append(agg[m](lc[idx], axis=1) - agg[m](ln[idx], axis=1))
    alpha = 1 - confidence
    out = {}
    for m, (ln, lc) in loss.items():
        d = np.concatenate(diffs[m])
        lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
        verdict = "better" if lo > 0 else "worse" if hi < 0 else "inconclusive"
        out[m] = {"new": float(agg[m](ln)), "champion": float(agg[m](lc)), "difference": float(agg[m](lc) - agg[m](ln)),
                  "ci_low": float(lo), "ci_high": float(hi), "verdict": verdict}
    return {"metrics": out, "confidence": confidence, "resamples": resamples, "seed": seed, "rows": int(total),
            "rows_resampled": int(n),
            "method": "paired percentile bootstrap of champion minus challenger (positive: challenger better)"}


def compare_predictions(settings: Settings, predictions_uri: str, target: str) -> dict[str, Any]:
    """The paired bootstrap over an evaluation's ``predictions.parquet`` (``pred_new``, ``pred_champion``)."""
    import polars as pl

    from tasks.core import storage

    df = pl.read_parquet(storage.read_bytes(predictions_uri))
    return paired_bootstrap(df[target].to_numpy(), df["pred_new"].to_numpy(), df["pred_champion"].to_numpy(),
                            resamples=settings.gate_resamples, confidence=settings.gate_confidence, seed=settings.gate_seed)


@dataclass
class Verdict:
    outcome: str  # "promote", "reject" or "inconclusive"
    reason: str
    ci: dict[str, Any] | None = field(default=None)

    @property
    def promote(self) -> bool:
        return self.outcome == "promote"


def _ci_text(ci: dict) -> str:
    level = f"{ci['confidence']:.0%}"
    parts = []
    for m, r in ci["metrics"].items():
        parts.append(f"{m} {r['new']:.4f} vs champion {r['champion']:.4f}, improvement {r['difference']:+.4f} "
                     f"({level} CI [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}], {r['verdict']})")
    return "; ".join(parts) + f" over {ci['rows']} paired test rows"


def gate(new: dict, champion: dict | None, params: RetrainParams, ci: dict | None) -> Verdict:
    """The promotion decision from the test metrics and the paired bootstrap (see the module doc)."""
    failures = absolute_failures(new, params)
    if failures:
        return Verdict("reject", "fails the absolute bars: " + "; ".join(failures), ci)
    if champion is None or ci is None:
        ok, reason = decide(new, champion, params)
        return Verdict("promote" if ok else "reject", reason, ci)
    verdicts = {m: r["verdict"] for m, r in ci["metrics"].items()}
    text = _ci_text(ci)
    gain = (champion["mdape"] - new["mdape"]) / champion["mdape"]
    if "worse" in verdicts.values():
        worse = [m for m, v in verdicts.items() if v == "worse"]
        return Verdict("reject", f"clearly worse than the champion on {', '.join(worse)}: {text}", ci)
    if all(v == "better" for v in verdicts.values()):
        if gain >= params.min_relative_improvement:
            return Verdict("promote", f"clear improvement: {text}; relative mdape improvement {gain:+.2%}, "
                                      f"required {params.min_relative_improvement:.2%}", ci)
        return Verdict("reject", f"clearly better but by less than required: {text}; relative mdape improvement "
                                 f"{gain:+.2%}, required {params.min_relative_improvement:.2%}", ci)
    return Verdict("inconclusive", f"inconclusive (an interval contains 0): {text}; relative mdape improvement "
                                   f"{gain:+.2%}", ci)


def assess(settings: Settings, evaluation: dict, params: RetrainParams) -> Verdict:
    """The gate over an evaluation result (XCom of ``evaluate``), with the bootstrap when a champion exists."""
    from tasks.core.spec import get_spec

    metrics = evaluation["metrics"]
    ci = None
    if metrics.get("champion") is not None and evaluation.get("predictions_uri"):
        ci = compare_predictions(settings, evaluation["predictions_uri"], get_spec(settings.dataset_spec).target)
    return gate(metrics["new"], metrics.get("champion"), params, ci)


def assess_step(settings: Settings, evaluation: dict, params: RetrainParams) -> dict:
    """The gate's verdict as XCom for the approval branch: outcome, reason, intervals."""
    v = assess(settings, evaluation, params)
    return {"outcome": v.outcome, "reason": v.reason, "ci": v.ci, "model_version": str(evaluation["model_version"]),
            "champion_version": evaluation.get("champion_version")}


# ---------------------------------------------------------------------------------------------
# Moving the alias


def _difference(new: dict, champion: dict | None) -> dict:
    if not champion:
        return {}
    return {k: champion[k] - new[k] for k in new if k in champion and isinstance(new[k], (int, float))}


def _chosen(approval: dict | None) -> tuple[str | None, str | None]:
    """(chosen option, user name) of a human-in-the-loop answer."""
    if not approval:
        return None, None
    options = approval.get("chosen_options") or []
    user = approval.get("responded_by_user")
    if isinstance(user, dict):
        name = user.get("name") or user.get("id")
    else:
        name = str(user) if user else None
    return (options[0] if options else None), name or "nobody (the default after the response timeout)"


def promote_step(settings: Settings, evaluation: dict, params: RetrainParams, lineage: Lineage,
                 approval: dict | None = None, event_time: datetime | date | str | None = None,
                 triggered_by: str | None = None, drift: dict | None = None) -> dict:
    """Decide, record the decision as MLflow tags, and move the alias (with a ledger event) on a "yes".

    ``approval`` is the human-in-the-loop answer for an inconclusive result (``chosen_options``,
    ``responded_by_user``); ``event_time`` the run's logical/interval time for the ledger (default:
    the end of the run's data window); ``triggered_by`` the user who triggered the run, if any;
    ``drift`` the drift check of the run (``tasks.quality.drift.drift_step``), which blocks promotion when the
    ``drift_action`` setting says so and a feature drifted.
    """
    c = tracking.client(settings)
    version = str(evaluation["model_version"])
    metrics = evaluation["metrics"]
    at = event_time or datetime.combine(date.fromisoformat(lineage.window_end), datetime.min.time(), timezone.utc)
    key = f"{lineage.dag_id}/{lineage.run_id}/promote/{version}"
    eid = ledger.event_id(at, "promotion", key)

    done = ledger.get(settings, eid)
    if done is not None:  # an earlier try decided and recorded; finish its move
        _apply_alias(c, settings, done.to_version)
        log.info("model v%s: promotion already recorded as ledger event %s (retry)", version, eid)
        return {"model_version": version, "promoted": True, "reason": done.reason, "previous_champion": done.from_version,
                "champion_version": done.to_version, "outcome": "promote", "ci": done.ci, "ledger_event": eid}

    current = tracking.champion_version(c, settings.model_name)
    previous = str(current.version) if current is not None else None
    verdict = assess(settings, evaluation, params)
    ok, reason, outcome = verdict.promote, verdict.reason, verdict.outcome
    evaluated_against = evaluation.get("champion_version")
    chosen, user = _chosen(approval)
    drift_blocked, drift_reason = (False, "")
    if drift is not None:
        from tasks.quality.drift import drift_blocks_promotion

        drift_blocked, drift_reason = drift_blocks_promotion(drift)
    if lineage.run_type == "backfill":
        ok, reason = False, f"backfill runs evaluate but never promote ({reason})"
    elif drift_blocked and ok:
        ok, reason = False, f"{drift_reason} ({reason})"
    elif previous not in (evaluated_against, version) and outcome != "reject":
        ok, reason = False, (f"the champion moved from v{evaluated_against or 'none'} to v{previous} after this model "
                             f"was evaluated; re-run to compare with the new champion ({reason})")
    elif outcome == "inconclusive" and chosen is not None:
        ok = chosen == APPROVE
        reason = f"{reason}; {'promoted' if ok else 'kept the champion'}: {chosen!r} chosen by {user}"
    if not ok and params.force_promotion and lineage.run_type != "backfill":
        ok, reason = True, f"forced by the run's force_promotion param ({reason})"
    decision = "promoted" if ok else "rejected"

    event_ref = None
    if ok and previous != version:
        actor = {"type": "dag_run", "dag_id": lineage.dag_id, "run_id": lineage.run_id, "run_type": lineage.run_type,
                 "task": "promote"}
        if triggered_by:
            actor["triggered_by"] = triggered_by
        if chosen is not None:
            actor["approved_by"] = user
        mv = c.get_model_version(settings.model_name, version)
        event = ledger.new_event(
            key, kind="promotion", at=at, model_name=settings.model_name, from_version=previous, to_version=version,
            reason=reason, actor=actor,
            metrics={"new": metrics["new"], "champion": metrics.get("champion"),
                     "difference": _difference(metrics["new"], metrics.get("champion"))},
            ci=verdict.ci,
            data_window={"start": lineage.window_start, "end": lineage.window_end,
                         "partitions_sha256": mv.tags.get("data.partitions_sha256"),
                         "features_sha256": mv.tags.get("data.features_sha256"),
                         "preprocessing_sha256": mv.tags.get("preprocessing.sha256")},
            validation=ledger.validation_summary(settings, lineage.window_start, lineage.window_end),
            evaluation={k: evaluation.get(k) for k in ("report_uri", "predictions_uri", "test_rows", "mlflow_run_id",
                                                       "champion_version")},
            approval=approval,
        )
        stored, _ = ledger.append(settings, event)
        event_ref = stored.event_id
    tags = {"promotion.decision": decision, "promotion.reason": reason, "promotion.outcome": outcome,
            "promotion.previous_champion": previous or "none", "promotion.airflow_run_id": lineage.run_id}
    if event_ref:
        tags["promotion.ledger_event"] = event_ref
    for k, v in tags.items():
        c.set_model_version_tag(settings.model_name, version, k, v[:5000])
        c.set_tag(evaluation["mlflow_run_id"], k, v[:5000])
    if ok and previous != version:
        c.set_registered_model_alias(settings.model_name, tracking.CHAMPION, version)
    log.info("model v%s %s: %s", version, decision, reason)
    champion = version if ok else previous
    return {"model_version": version, "promoted": ok, "reason": reason, "previous_champion": previous,
            "champion_version": champion, "outcome": outcome, "ci": verdict.ci, "ledger_event": event_ref}


class RollbackError(ValueError):
    """The rollback cannot be done as asked; the message says why."""


def _run_metrics(c, run_id: str | None) -> dict:
    if not run_id:
        return {}
    data = c.get_run(run_id).data.metrics
    return {k.removeprefix("test/"): v for k, v in data.items() if k.startswith("test/")}


def rollback(settings: Settings, version: str | int, reason: str, actor: dict, at: datetime | date | str,
             key: str) -> dict:
    """Move ``champion`` back to ``version``, an earlier champion, and record why in the ledger.

    ``actor`` says who (a DAG run or a person), ``at`` when (the run's time, or the wall clock for a
    person), ``key`` makes the event unique to that actor and action (a retried task reuses it).
    """
    version = str(version).strip().lstrip("v")
    reason = (reason or "").strip()
    if not reason:
        raise RollbackError("a rollback needs a reason")
    if not version.isdigit():
        raise RollbackError(f"version must be a model version number, got {version!r}")
    c = tracking.client(settings)
    eid = ledger.event_id(at, "rollback", key)
    done = ledger.get(settings, eid)
    if done is not None:
        _apply_alias(c, settings, done.to_version)
        return {"champion_version": done.to_version, "previous_champion": done.from_version, "ledger_event": eid,
                "reason": done.reason, "created": False}

    from mlflow.exceptions import MlflowException

    try:
        mv = c.get_model_version(settings.model_name, version)
    except MlflowException as exc:
        raise RollbackError(f"model {settings.model_name!r} has no version {version}") from exc
    current = tracking.champion_version(c, settings.model_name)
    previous = str(current.version) if current is not None else None
    if previous == version:
        raise RollbackError(f"v{version} is already the champion")
    events = ledger.read_all(settings)
    was_champion = any(e.to_version == version for e in events) or mv.tags.get("promotion.decision") == "promoted"
    if not was_champion:
        raise RollbackError(f"v{version} was never the champion (no ledger event made it one and its MLflow tag "
                            f"promotion.decision is {mv.tags.get('promotion.decision')!r}); a rollback goes back to an "
                            "earlier champion")
    new_m = _run_metrics(c, mv.run_id)
    old_m = _run_metrics(c, current.run_id) if current is not None else {}
    start, end = mv.tags.get("data.window_start"), mv.tags.get("data.window_end")
    event = ledger.new_event(
        key, kind="rollback", at=at, model_name=settings.model_name, from_version=previous, to_version=version,
        reason=reason, actor=actor,
        metrics={"new": new_m, "champion": old_m, "difference": _difference(new_m, old_m) if old_m else {},
                 "note": "each version's own test metrics (test windows may differ; not a paired comparison)"},
        data_window={"start": start, "end": end, "partitions_sha256": mv.tags.get("data.partitions_sha256")},
        validation=ledger.validation_summary(settings, start, end) if start and end else None,
        evaluation={"mlflow_run_id": mv.run_id},
    )
    stored, created = ledger.append(settings, event)
    _apply_alias(c, settings, stored.to_version)
    c.set_model_version_tag(settings.model_name, version, "rollback.reason", reason[:5000])
    c.set_model_version_tag(settings.model_name, version, "rollback.ledger_event", stored.event_id)
    log.info("champion rolled back from v%s to v%s by %s: %s", previous, version, stored.who(), reason)
    return {"champion_version": stored.to_version, "previous_champion": stored.from_version,
            "ledger_event": stored.event_id, "reason": stored.reason, "created": created}


def _apply_alias(c, settings: Settings, version: str) -> None:
    current = tracking.champion_version(c, settings.model_name)
    if current is None or str(current.version) != str(version):
        c.set_registered_model_alias(settings.model_name, tracking.CHAMPION, str(version))
