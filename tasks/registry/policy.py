"""The promotion policy: every rule that decides whether a new model replaces the champion, as plain functions.

Nothing here reads MLflow, the lake or the settings: the promote step (``tasks/registry/promote.py``)
gathers the inputs (the test metrics, the paired bootstrap, the live champion, the run, the drift check,
a person's answer) and applies what :func:`resolve` returns. The rules, in order:

1. the gate (:func:`gate`): absolute bars (``max_mdape``, ``min_ppe10``), then the first model with no
   champion, then the bootstrap intervals (clearly worse, clearly better by enough, inconclusive), or
   the point-estimate relative improvement (:func:`decide`) when there are no paired predictions;
2. the overrides (:func:`resolve`): a backfill run never promotes; a drift check can block a "yes"; a
   champion that moved after the evaluation turns anything but a rejection into ``superseded`` (which
   nothing overrides); a person's answer settles an inconclusive result; ``force_promotion`` turns the
   remaining "no" into a "yes" (the reason says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tasks.core.params import RetrainParams

APPROVE, KEEP = "Promote", "Keep champion"  # the options a person gets for an inconclusive result
SUPERSEDED = "superseded"  # the outcome of a move whose expected champion is no longer the champion


# ---------------------------------------------------------------------------------------------
# The gate: test metrics and bootstrap intervals


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


@dataclass
class Verdict:
    outcome: str  # "promote", "reject" or "inconclusive"
    reason: str
    ci: dict[str, Any] | None = field(default=None)

    @property
    def promote(self) -> bool:
        return self.outcome == "promote"


def ci_text(ci: dict) -> str:
    """The bootstrap intervals in words, as the reasons quote them."""
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
    text = ci_text(ci)
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


# ---------------------------------------------------------------------------------------------
# The overrides: the run, the drift check, the live champion, a person, force_promotion


def chosen(approval: dict | None) -> tuple[str | None, str | None]:
    """(chosen option, user name) of a human-in-the-loop answer (``chosen_options``, ``responded_by_user``)."""
    if not approval:
        return None, None
    options = approval.get("chosen_options") or []
    user = approval.get("responded_by_user")
    if isinstance(user, dict):
        name = user.get("name") or user.get("id")
    else:
        name = str(user) if user else None
    return (options[0] if options else None), name or "nobody (the default after the response timeout)"


@dataclass(frozen=True)
class Situation:
    """What the overrides look at besides the gate's verdict."""

    version: str  # the model version being decided on
    live: str | None  # the champion now (None: no champion yet)
    evaluated_against: str | None  # the champion the evaluation compared with
    run_type: str = "manual"  # the Airflow run type; "backfill" never promotes
    force: bool = False  # the run's force_promotion param
    chosen: str | None = None  # a person's answer (APPROVE or KEEP), None when nobody was asked
    user: str | None = None  # who answered
    drift_blocked: bool = False  # the drift check blocks promotion (tasks.quality.drift.drift_blocks_promotion)
    drift_reason: str = ""


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    outcome: str  # the gate's outcome: "promote", "reject" or "inconclusive"; or SUPERSEDED

    @property
    def decision(self) -> str:
        return "promoted" if self.promote else "superseded" if self.outcome == SUPERSEDED else "rejected"


def superseded(reason: str) -> Decision:
    """No move: the champion this model was compared with (the move's expectation) is no longer the champion.

    Not an error (a newer model won, or an older run was re-run) and not overridable, ``force_promotion``
    included: the comparison behind the decision is out of date."""
    return Decision(False, reason, SUPERSEDED)


def resolve(verdict: Verdict, s: Situation) -> Decision:
    """The final decision: the gate's verdict after the overrides (see the module doc)."""
    ok, reason, outcome = verdict.promote, verdict.reason, verdict.outcome
    if s.run_type == "backfill":
        ok, reason = False, f"backfill runs evaluate but never promote ({reason})"
    elif s.drift_blocked and ok:
        ok, reason = False, f"{s.drift_reason} ({reason})"
    elif s.live not in (s.evaluated_against, s.version) and outcome != "reject":
        return superseded(f"the champion moved from v{s.evaluated_against or 'none'} to v{s.live} after this model "
                          f"was evaluated; re-run to compare with the new champion ({reason})")
    elif outcome == "inconclusive" and s.chosen is not None:
        ok = s.chosen == APPROVE
        reason = f"{reason}; {'promoted' if ok else 'kept the champion'}: {s.chosen!r} chosen by {s.user}"
    if not ok and s.force and s.run_type != "backfill":
        ok, reason = True, f"forced by the run's force_promotion param ({reason})"
    return Decision(ok, reason, outcome)


def moves_alias(decision: Decision, s: Situation) -> bool:
    """Whether the decision moves the ``champion`` alias (a "yes" for a version that is not live already)."""
    return decision.promote and s.live != s.version


# ---------------------------------------------------------------------------------------------
# The record of a decision


def metric_difference(new: dict, champion: dict | None) -> dict:
    """champion - new for each numeric metric both have (positive: the new model is better on an error)."""
    if not champion:
        return {}
    return {k: champion[k] - new[k] for k in new if k in champion and isinstance(new[k], (int, float))}


def rerun_tags(outcome: str, reason: str, airflow_run_id: str) -> dict[str, str]:
    """The MLflow tags of a re-run of a promotion already recorded (its first decision's tags stay)."""
    return {"promotion.rerun.outcome": outcome, "promotion.rerun.reason": reason,
            "promotion.rerun.airflow_run_id": airflow_run_id}


def promotion_tags(decision: Decision, live: str | None, airflow_run_id: str,
                   ledger_event: str | None) -> dict[str, str]:
    """The MLflow tags that record a decision on the model version and its training run."""
    tags = {"promotion.decision": decision.decision, "promotion.reason": decision.reason,
            "promotion.outcome": decision.outcome, "promotion.previous_champion": live or "none",
            "promotion.airflow_run_id": airflow_run_id}
    if ledger_event:
        tags["promotion.ledger_event"] = ledger_event
    return tags
