"""The promotion policy: every rule that decides whether a new model replaces the champion, as plain functions.

Nothing here reads MLflow, the lake or the settings: the promote step (``tasks/registry/promote.py``)
gathers the inputs (the test metrics, the paired bootstrap, the live champion, the run, the drift check,
a person's answer) and applies what :func:`resolve` returns. The rules, in order:

1. the gate (:func:`gate`): the bars (:class:`Bars`: absolute ``max_mdape`` / ``min_ppe10`` when the run or
   the dataset sets them, and no worse than the gradient boosting of the same run), then the first model
   with no champion, then the bootstrap intervals (clearly worse, clearly better by enough, inconclusive),
   or the point-estimate relative improvement (:func:`decide`) when there are no paired predictions;
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


@dataclass(frozen=True)
class Bars:
    """The bars a new model must pass before any comparison with the champion.

    ``max_mdape`` / ``min_ppe10``: absolute (None: no such bar). ``max_mdape_vs_boosting``: the new model's
    test mdape may exceed the same run's gradient boosting's by at most this fraction of it (None: the
    boosting is not a bar). ``source`` says where the absolute bars came from, for the reasons.
    """

    max_mdape: float | None = None
    min_ppe10: float | None = None
    max_mdape_vs_boosting: float | None = None
    source: str = "the run's Params"


def params_bars(params: RetrainParams) -> Bars:
    """The run's Params as bars (absolute only): the rule before datasets had bars of their own."""
    return Bars(params.max_mdape, params.min_ppe10, None, "the run's Params")


def bars_for(params: RetrainParams, dataset: Any = None) -> Bars:
    """The bars of a run: each absolute bar from the run's Params when a person set it (a value other than
    the Param's default), else from the dataset (the spec's ``promotion``: ``max_mdape``, ``min_ppe10``,
    ``max_mdape_vs_boosting``), else none. Without a dataset, the Params' values as they are."""
    if dataset is None:
        return params_bars(params)
    fields, values, sources = type(params).model_fields, {}, []
    for name in ("max_mdape", "min_ppe10"):
        value = getattr(params, name, None)
        if value is not None and name in fields and value != fields[name].default:
            values[name] = value
            sources.append(f"{name} from the run's Params")
        else:
            values[name] = getattr(dataset, name, None)
            if values[name] is not None:
                sources.append(f"{name} from the dataset spec")
    return Bars(values["max_mdape"], values["min_ppe10"], getattr(dataset, "max_mdape_vs_boosting", None),
                "; ".join(sources) or "no absolute bars (the dataset sets none)")


def _as_bars(params: RetrainParams | Bars) -> Bars:
    return params if isinstance(params, Bars) else params_bars(params)


def absolute_failures(new: dict, params: RetrainParams | Bars) -> list[str]:
    bars = _as_bars(params)
    failures = []
    if bars.max_mdape is not None and new["mdape"] > bars.max_mdape:
        failures.append(f"mdape {new['mdape']:.4f} > bar {bars.max_mdape}")
    if bars.min_ppe10 is not None and new["ppe10"] < bars.min_ppe10:
        failures.append(f"ppe10 {new['ppe10']:.4f} < bar {bars.min_ppe10}")
    return failures


def boosting_failure(new: dict, gbm: dict | None, bars: Bars) -> str | None:
    """Why the new model fails the boosting bar, or None (no boosting, no bar, or it passes)."""
    if gbm is None or bars.max_mdape_vs_boosting is None or "mdape" not in gbm:
        return None
    allowed = gbm["mdape"] * (1 + bars.max_mdape_vs_boosting)
    if new["mdape"] <= allowed:
        return None
    return (f"worse than the gradient boosting trained in the same run on the same features: mdape "
            f"{new['mdape']:.4f} vs boosting {gbm['mdape']:.4f} (allowed at most {allowed:.4f})")


def _source(bars: Bars) -> str:
    return "" if bars.source == "the run's Params" else f" ({bars.source})"


def _versus_boosting(new: dict, gbm: dict | None) -> str:
    if gbm is None or "mdape" not in gbm:
        return ""
    return f"; boosting of the same run: mdape {gbm['mdape']:.4f}, ppe10 {gbm.get('ppe10', float('nan')):.4f}"


def decide(new: dict, champion: dict | None, params: RetrainParams | Bars, *, gbm: dict | None = None,
           min_relative_improvement: float | None = None) -> tuple[bool, str]:
    """The point-estimate gate: the bars, then relative improvement of mdape over the champion.

    Used when no paired predictions exist; :func:`gate` adds the bootstrap intervals on top of it.
    ``params`` is the run's Params (their bars) or the :class:`Bars` of :func:`bars_for`.
    """
    bars = _as_bars(params)
    failures = absolute_failures(new, bars)
    if failures:
        return False, "fails the absolute bars: " + "; ".join(failures) + _source(bars)
    if (worse := boosting_failure(new, gbm, bars)) is not None:
        return False, worse
    if champion is None:
        return True, (f"no champion yet and the absolute bars pass (mdape {new['mdape']:.4f}, ppe10 {new['ppe10']:.4f}"
                      f"{_versus_boosting(new, gbm)})")
    required = min_relative_improvement if min_relative_improvement is not None else params.min_relative_improvement
    gain = (champion["mdape"] - new["mdape"]) / champion["mdape"]
    verdict = (f"mdape {new['mdape']:.4f} vs champion {champion['mdape']:.4f}: relative improvement {gain:+.2%}, "
               f"required {required:.2%}")
    return gain >= required, verdict


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


def gate(new: dict, champion: dict | None, params: RetrainParams, ci: dict | None, *, gbm: dict | None = None,
         bars: Bars | None = None) -> Verdict:
    """The promotion decision from the test metrics and the paired bootstrap (see the module doc).

    ``gbm``: the test metrics of the same run's gradient boosting (the evaluation's ``metrics["gbm"]``);
    ``bars``: :func:`bars_for` the run and its dataset (None: the Params' absolute bars, as before).
    """
    bars = bars or params_bars(params)
    failures = absolute_failures(new, bars)
    if failures:
        return Verdict("reject", "fails the absolute bars: " + "; ".join(failures) + _source(bars), ci)
    if (worse := boosting_failure(new, gbm, bars)) is not None:
        return Verdict("reject", worse, ci)
    if champion is None or ci is None:
        ok, reason = decide(new, champion, bars, gbm=gbm, min_relative_improvement=params.min_relative_improvement)
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
