"""Promotion: the paired bootstrap, the gate's inputs, and the step that applies the policy and moves the alias.

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
These rules and the other overrides are plain functions in ``tasks/registry/policy.py``; this module
gathers their inputs (MLflow, the lake, the ledger) and applies the decision. Every move of the champion,
by a run or by a person (``tasks/registry/rollback.py``), is first an event in the ledger
(``tasks/registry/ledger.py``, the source of truth, compare-and-set on the champion it replaces), then a
move of the alias, which follows the ledger (``tasks/registry/champion.py``).
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timezone
from typing import Any

import numpy as np

from tasks.core import tracking
from tasks.core.faults import fault_point
from tasks.core.handoffs import Assessment, DriftReport, Evaluation, PromotionResult
from tasks.core.lineage import Lineage
from tasks.core.params import RetrainParams
from tasks.core.settings import Settings
from tasks.core.spec import get_spec
from tasks.registry import champion, ledger, policy

log = logging.getLogger(__name__)

# Metrics of the paired comparison: name -> per-row loss and how it is aggregated.
PAIRED = {"mdape": "median of |pred - actual| / actual", "mean_abs_log_error": "mean of |ln pred - ln actual|"}


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


def assess(settings: Settings, evaluation: Evaluation, params: RetrainParams, *, target: str) -> policy.Verdict:
    """The gate over an evaluation result (XCom of ``evaluate``), with the bootstrap when a champion exists.

    ``target`` is the price column of the evaluation's predictions (the dataset spec's target).
    """
    metrics = evaluation.metrics
    ci = None
    if metrics.get("champion") is not None and evaluation.predictions_uri:
        ci = compare_predictions(settings, evaluation.predictions_uri, target)
    # The bars belong to the dataset (its spec's ``promotion``) unless the run's Params set them; the same
    # run's boosting is a bar when the dataset says so (by default: no worse than the boosting).
    bars = policy.bars_for(params, get_spec(settings.dataset_spec).promotion)
    return policy.gate(metrics["new"], metrics.get("champion"), params, ci, gbm=metrics.get("gbm"), bars=bars)


def assess_step(settings: Settings, evaluation: Evaluation, params: RetrainParams, *, target: str) -> Assessment:
    """The gate's verdict as XCom for the approval branch: outcome, reason, intervals."""
    v = assess(settings, evaluation, params, target=target)
    return Assessment(outcome=v.outcome, reason=v.reason, ci=v.ci, model_version=str(evaluation.model_version),
                      champion_version=evaluation.champion_version)


# ---------------------------------------------------------------------------------------------
# Moving the alias


def _situation(evaluation: Evaluation, version: str, live: str | None, lineage: Lineage, params: RetrainParams,
               approval: dict | None, drift: DriftReport | None) -> policy.Situation:
    """The policy's inputs besides the verdict: the champion now, the run, a person's answer, the drift check."""
    option, user = policy.chosen(approval)
    drift_blocked, drift_reason = (False, "")
    if drift is not None:
        from tasks.quality.drift import drift_blocks_promotion

        drift_blocked, drift_reason = drift_blocks_promotion(drift.model_dump())
    return policy.Situation(version=version, live=live, evaluated_against=evaluation.champion_version,
                            run_type=lineage.run_type, force=params.force_promotion, chosen=option, user=user,
                            drift_blocked=drift_blocked, drift_reason=drift_reason)


def _promotion_event(c, settings: Settings, key: str, at, evaluation: Evaluation, lineage: Lineage,
                     decision: policy.Decision, verdict: policy.Verdict, s: policy.Situation,
                     triggered_by: str | None, approval: dict | None) -> ledger.LedgerEvent:
    """The ledger event of a promotion: who, why, the metrics and intervals, the data and validation behind it."""
    actor = {"type": "dag_run", "dag_id": lineage.dag_id, "run_id": lineage.run_id, "run_type": lineage.run_type,
             "task": "promote"}
    if triggered_by:
        actor["triggered_by"] = triggered_by
    if s.chosen is not None:
        actor["approved_by"] = s.user
    metrics = evaluation.metrics
    mv = c.get_model_version(settings.model_name, s.version)
    return ledger.new_event(
        key, kind="promotion", at=at, model_name=settings.model_name, from_version=s.live, to_version=s.version,
        reason=decision.reason, actor=actor, outcome=decision.outcome,
        metrics={"new": metrics["new"], "champion": metrics.get("champion"),
                 "difference": policy.metric_difference(metrics["new"], metrics.get("champion"))},
        ci=verdict.ci,
        data_window={"start": lineage.window_start, "end": lineage.window_end,
                     "partitions_sha256": mv.tags.get("data.partitions_sha256"),
                     "features_sha256": mv.tags.get("data.features_sha256"),
                     "preprocessing_sha256": mv.tags.get("preprocessing.sha256")},
        validation=ledger.validation_summary(settings, lineage.window_start, lineage.window_end),
        evaluation=evaluation.model_dump(include={"report_uri", "predictions_uri", "test_rows", "mlflow_run_id",
                                                  "champion_version"}),
        approval=approval,
    )


def _result(version: str, promoted: bool, reason: str, previous: str | None, champion: str | None, outcome: str,
            ci: dict | None, ledger_event: str | None) -> PromotionResult:
    """promote_step's XCom."""
    return PromotionResult(model_version=version, promoted=promoted, reason=reason, previous_champion=previous,
                           champion_version=champion, outcome=outcome, ci=ci, ledger_event=ledger_event)


def _tag(c, settings: Settings, mlflow_run_id: str | None, version: str, tags: dict[str, str]) -> None:
    """The tags on the model version and on its MLflow run."""
    for k, v in tags.items():
        c.set_model_version_tag(settings.model_name, version, k, v[:5000])
        if mlflow_run_id:
            c.set_tag(mlflow_run_id, k, v[:5000])


def _recorded(c, settings: Settings, evaluation: Evaluation, lineage: Lineage, done: ledger.LedgerEvent,
              state: champion.State) -> PromotionResult:
    """A retried or cleared promote whose earlier try recorded ``done``: finish its tags, never move the alias.

    The alias already follows the ledger (``champion.sync``). If a newer event has replaced this run's
    version since, the re-run is ``superseded``: it succeeds and says why, and the champion stays."""
    version = done.to_version
    outcome = done.outcome or "promote"
    if c.get_model_version(settings.model_name, version).tags.get("promotion.ledger_event") != done.event_id:
        # the earlier try stopped between its ledger event and its tags
        _tag(c, settings, evaluation.mlflow_run_id, version, policy.promotion_tags(
            policy.Decision(True, done.reason, outcome), done.from_version, lineage.run_id, done.event_id))
    if state.version == version:
        log.info("model v%s: promotion already recorded as ledger event #%d %s (retry)", version, done.seq,
                 done.event_id)
        return _result(version, True, done.reason, done.from_version, version, outcome, done.ci, done.event_id)
    h = state.head
    reason = (f"this run promoted v{version} (ledger event #{done.seq}), but v{h.to_version} has been the champion "
              f"since ledger event #{h.seq} ({h.kind} by {h.who()}); re-running the promotion leaves it there")
    _tag(c, settings, evaluation.mlflow_run_id, version, policy.rerun_tags("superseded", reason, lineage.run_id))
    log.warning("model v%s superseded: %s", version, reason)
    return _result(version, False, reason, h.to_version, h.to_version, "superseded", done.ci, done.event_id)


def promote_step(settings: Settings, evaluation: Evaluation, params: RetrainParams, lineage: Lineage,
                 approval: dict | None = None, event_time: datetime | date | str | None = None,
                 triggered_by: str | None = None, drift: DriftReport | None = None, *,
                 target: str) -> PromotionResult:
    """Decide (``tasks.registry.policy``), record the decision as MLflow tags, and on a "yes" move the champion:
    a ledger event first (compare-and-set on the champion the evaluation compared against), then the alias.

    ``approval`` is the human-in-the-loop answer for an inconclusive result (``chosen_options``,
    ``responded_by_user``); ``event_time`` the run's logical/interval time for the ledger (default:
    the end of the run's data window); ``triggered_by`` the user who triggered the run, if any;
    ``drift`` the drift check of the run (``tasks.quality.drift.drift_step``), which blocks promotion when the
    ``drift_action`` setting says so and a feature drifted; ``target`` the price column of the predictions.
    A move whose expected champion is no longer the champion (a newer model won meanwhile, or this is a
    re-run of an older run) does not happen: the outcome is ``superseded`` and the task succeeds.

    MLflow calls fail fast here (``tracking.fail_fast``: bounded HTTP retries and timeout): with the tracking
    server down the step raises :class:`tasks.core.tracking.TrackingUnavailable` within seconds, saying whether
    its ledger event was recorded (then the retry, or the next promote, rollback or ``homeworth champion
    --repair``, points the alias at it) or not (nothing changed).
    """
    fault_point("promote", "start")
    version = str(evaluation.model_version)
    at = event_time or datetime.combine(date.fromisoformat(lineage.window_end), datetime.min.time(), timezone.utc)
    key = f"{lineage.dag_id}/{lineage.run_id}/promote/{version}"
    eid = ledger.event_id(at, "promotion", key)
    with tracking.fail_fast():
        try:
            return _promote(settings, evaluation, params, lineage, approval, triggered_by, drift, target, at, key, eid)
        except Exception as exc:
            if not tracking.unreachable(exc):
                raise
            raise champion.outage("promote", settings, eid, exc) from exc


def _promote(settings: Settings, evaluation: Evaluation, params: RetrainParams, lineage: Lineage,
             approval: dict | None, triggered_by: str | None, drift: DriftReport | None, target: str,
             at, key: str, eid: str) -> PromotionResult:
    """promote_step's work, its event's time, key and id given."""
    c = tracking.client(settings)
    version = str(evaluation.model_version)
    state = champion.sync(c, settings)  # first complete a move recorded in the ledger but not applied
    done = state.scan.find(eid)
    if done is not None:  # an earlier try decided and recorded
        return _recorded(c, settings, evaluation, lineage, done, state)

    verdict = assess(settings, evaluation, params, target=target)
    s = _situation(evaluation, version, state.version, lineage, params, approval, drift)
    decision = policy.resolve(verdict, s)
    event_ref, now = None, s.live
    if policy.moves_alias(decision, s):
        event = _promotion_event(c, settings, key, at, evaluation, lineage, decision, verdict, s, triggered_by,
                                 approval)
        try:
            stored, _ = ledger.append(settings, event, expected=evaluation.champion_version, empty_head=state.alias)
        except ledger.Superseded as exc:  # another move won between our read and our append
            decision, now = policy.superseded(f"{exc}; the champion stays ({decision.reason})"), exc.champion
        else:
            event_ref = stored.event_id
            fault_point("promote", "after_commit")  # the ledger holds the move; the alias has not followed
            champion.sync(c, settings, own=event_ref)  # the commit point was the append; the alias follows
            fault_point("promote", "after_effect")
    _tag(c, settings, evaluation.mlflow_run_id, version,
         policy.promotion_tags(decision, s.live, lineage.run_id, event_ref))
    log.info("model v%s %s: %s", version, decision.decision, decision.reason)
    return _result(version, decision.promote, decision.reason, s.live, version if decision.promote else now,
                   decision.outcome, verdict.ci, event_ref)
