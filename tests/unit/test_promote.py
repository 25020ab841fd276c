"""The promotion gate: paired bootstrap intervals, the decision rules, and promote_step's moves.

The bootstrap runs on synthetic predictions; the policy (``tasks.registry.policy``: the gate and every
override) on plain values, with no MLflow and no files; promote_step runs against a real MLflow
registry (sqlite, in a private home) with model versions that need no bundle, since promotion only
reads the evaluation's predictions and moves the alias.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from tasks.core.handoffs import Evaluation
from tasks.core.lineage import Lineage
from tasks.core.params import RetrainParams
from tasks.registry import policy
from tasks.registry.policy import APPROVE, KEEP, decide, gate
from tasks.registry.promote import paired_bootstrap
from tests.support import private_home

BARS = {"max_mdape": 0.5, "min_ppe10": 0.0}
TARGET = "price"  # the price column of the evaluations' predictions below


def _prices(n: int = 3000, seed: int = 1) -> np.ndarray:
    return np.exp(np.random.default_rng(seed).normal(13.0, 0.5, n))


def _noisy(actual: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    return actual * np.exp(np.random.default_rng(seed).normal(0, sigma, actual.size))


def test_bootstrap_is_seeded_and_paired():
    a = _prices()
    champ, new = _noisy(a, 0.20, 2), _noisy(a, 0.15, 3)
    first = paired_bootstrap(a, new, champ, resamples=1000, seed=7)
    assert first == paired_bootstrap(a, new, champ, resamples=1000, seed=7), "same seed, same intervals"
    assert first != paired_bootstrap(a, new, champ, resamples=1000, seed=8)
    assert first["resamples"] == 1000 and first["rows"] == a.size and first["confidence"] == 0.95
    for m in ("mdape", "mean_abs_log_error"):
        r = first["metrics"][m]
        assert r["verdict"] == "better" and 0 < r["ci_low"] < r["difference"] < r["ci_high"], (m, r)


def test_bootstrap_verdicts():
    a = _prices()
    base = _noisy(a, 0.2, 4)
    same = paired_bootstrap(a, base, base.copy(), seed=0)["metrics"]
    assert all(r["ci_low"] == r["ci_high"] == 0 and r["verdict"] == "inconclusive" for r in same.values())
    # Nearly the same model: an interval straddling 0.
    close = paired_bootstrap(a, base * np.exp(np.random.default_rng(5).normal(0, 0.01, a.size)), base, seed=0)
    assert {r["verdict"] for r in close["metrics"].values()} == {"inconclusive"}
    assert all(r["ci_low"] < 0 < r["ci_high"] for r in close["metrics"].values())
    worse = paired_bootstrap(a, _noisy(a, 0.3, 6), base, seed=0)["metrics"]
    assert all(r["verdict"] == "worse" and r["ci_high"] < 0 for r in worse.values())
    with pytest.raises(ValueError):
        paired_bootstrap(a, base[:-1], base)
    with pytest.raises(ValueError):
        paired_bootstrap(a, -base, base)


def _metrics(mdape: float) -> dict:
    return {"mdape": mdape, "ppe10": 0.5, "rmse_ln": 0.2, "rmse": 1e5, "mae": 8e4}


def _ci(*verdicts: str) -> dict:
    los = {"better": 0.001, "worse": -0.02, "inconclusive": -0.01}
    his = {"better": 0.02, "worse": -0.001, "inconclusive": 0.01}
    return {"confidence": 0.95, "rows": 100, "metrics": {
        m: {"new": 0.1, "champion": 0.11, "difference": 0.01, "ci_low": los[v], "ci_high": his[v], "verdict": v}
        for m, v in zip(("mdape", "mean_abs_log_error"), verdicts)}}


def test_gate_rules():
    p = RetrainParams(**BARS, min_relative_improvement=0.01)
    assert gate(_metrics(0.6), _metrics(0.7), p, _ci("better", "better")).outcome == "reject"  # bars first
    assert gate(_metrics(0.1), None, p, None).outcome == "promote"
    clear = gate(_metrics(0.10), _metrics(0.11), p, _ci("better", "better"))
    assert clear.outcome == "promote" and "clear improvement" in clear.reason and "vs champion" in clear.reason
    small = gate(_metrics(0.10), _metrics(0.11), RetrainParams(**BARS, min_relative_improvement=0.5), _ci("better", "better"))
    assert small.outcome == "reject" and "less than required" in small.reason
    unsure = gate(_metrics(0.10), _metrics(0.11), p, _ci("better", "inconclusive"))
    assert unsure.outcome == "inconclusive" and "95% CI" in unsure.reason
    worse = gate(_metrics(0.10), _metrics(0.11), p, _ci("worse", "better"))
    assert worse.outcome == "reject" and "clearly worse" in worse.reason and "mdape" in worse.reason
    # Without paired predictions the point-estimate gate decides, as before.
    assert gate(_metrics(0.10), _metrics(0.11), p, None).promote
    assert decide(_metrics(0.10), _metrics(0.11), p)[0] and not decide(_metrics(0.109), _metrics(0.11), p)[0]


# ---------------------------------------------------------------------------------------------
# The policy alone: each rule over plain values (no MLflow, no files)

YES = policy.Verdict("promote", "clear improvement")
NO = policy.Verdict("reject", "fails the absolute bars")
UNSURE = policy.Verdict("inconclusive", "inconclusive (an interval contains 0)")


def _situation(**kw) -> policy.Situation:
    return policy.Situation(**{"version": "3", "live": "2", "evaluated_against": "2", **kw})


def test_absolute_bars_each_and_both():
    p = RetrainParams(max_mdape=0.15, min_ppe10=0.40)
    assert policy.absolute_failures({"mdape": 0.15, "ppe10": 0.40}, p) == [], "the bars themselves pass"
    assert policy.absolute_failures({"mdape": 0.2, "ppe10": 0.5}, p) == ["mdape 0.2000 > bar 0.15"]
    assert policy.absolute_failures({"mdape": 0.1, "ppe10": 0.3}, p) == ["ppe10 0.3000 < bar 0.4"]
    assert len(policy.absolute_failures({"mdape": 0.2, "ppe10": 0.3}, p)) == 2
    bad = gate({"mdape": 0.2, "ppe10": 0.3}, None, p, None)
    assert bad.outcome == "reject"
    assert bad.reason == "fails the absolute bars: mdape 0.2000 > bar 0.15; ppe10 0.3000 < bar 0.4"


def test_first_model_without_a_champion_promotes_on_the_bars_alone():
    p = RetrainParams(**BARS)
    first = gate(_metrics(0.12), None, p, None)
    assert first.promote and first.ci is None
    assert first.reason == "no champion yet and the absolute bars pass (mdape 0.1200, ppe10 0.5000)"
    assert policy.moves_alias(policy.resolve(first, _situation(live=None, evaluated_against=None)),
                              _situation(live=None, evaluated_against=None))


def test_relative_improvement_with_intervals():
    ci = _ci("better", "better")
    p = RetrainParams(**BARS, min_relative_improvement=0.05)
    clear = gate(_metrics(0.10), _metrics(0.11), p, ci)  # gain 9.09%
    assert clear.reason == f"clear improvement: {policy.ci_text(ci)}; relative mdape improvement +9.09%, required 5.00%"
    small = gate(_metrics(0.10), _metrics(0.104), p, ci)  # gain 3.85%
    assert small.outcome == "reject" and small.reason.endswith("relative mdape improvement +3.85%, required 5.00%")
    assert policy.ci_text(ci).endswith(" over 100 paired test rows")
    assert "95% CI [+0.0010, +0.0200], better" in clear.reason


def test_the_verdict_stands_without_overrides():
    for v in (YES, NO, UNSURE):
        d = policy.resolve(v, _situation())
        assert (d.promote, d.reason, d.outcome) == (v.promote, v.reason, v.outcome)
    assert policy.resolve(YES, _situation()).decision == "promoted"
    assert policy.resolve(UNSURE, _situation()).decision == "rejected", "inconclusive keeps the champion"


def test_backfill_runs_never_promote_even_when_forced():
    for v in (YES, NO, UNSURE):
        d = policy.resolve(v, _situation(run_type="backfill", force=True, chosen=APPROVE, user="alice"))
        assert not d.promote and d.reason == f"backfill runs evaluate but never promote ({v.reason})"
        assert d.outcome == v.outcome


def test_drift_blocks_a_yes_only():
    drift = {"drift_blocked": True, "drift_reason": "feature drift blocks promotion: PSI > 0.25 for sqft 0.400"}
    blocked = policy.resolve(YES, _situation(**drift))
    assert not blocked.promote
    assert blocked.reason == "feature drift blocks promotion: PSI > 0.25 for sqft 0.400 (clear improvement)"
    assert policy.resolve(NO, _situation(**drift)).reason == NO.reason, "a no stays the gate's no"
    assert policy.resolve(YES, _situation(drift_reason="no feature drift")).promote, "drift that does not block"
    forced = policy.resolve(YES, _situation(**drift, force=True))
    assert forced.promote and forced.reason == f"forced by the run's force_promotion param ({blocked.reason})"


def test_a_champion_that_moved_after_evaluation_blocks_all_but_a_rejection():
    moved = _situation(live="4", evaluated_against="2")
    d = policy.resolve(YES, moved)
    assert not d.promote and d.reason == ("the champion moved from v2 to v4 after this model was evaluated; re-run to "
                                          "compare with the new champion (clear improvement)")
    assert d.outcome == "superseded" and d.decision == "superseded"
    forced = policy.resolve(YES, _situation(live="4", evaluated_against="2", force=True))
    assert not forced.promote and forced.outcome == "superseded", "force_promotion cannot override an outdated comparison"
    approved = policy.resolve(UNSURE, _situation(live="4", evaluated_against="2", chosen=APPROVE, user="a"))
    assert not approved.promote and approved.reason.startswith("the champion moved"), "a person's yes cannot override it"
    assert policy.resolve(NO, moved).reason == NO.reason
    first = policy.resolve(YES, _situation(live="4", evaluated_against=None))
    assert "moved from vnone to v4" in first.reason
    # A retry after the alias moved to this very version is no move of the champion.
    again = _situation(live="3", evaluated_against="2")
    assert policy.resolve(YES, again).promote and not policy.moves_alias(policy.resolve(YES, again), again)


def test_a_person_settles_an_inconclusive_result():
    yes = policy.resolve(UNSURE, _situation(chosen=APPROVE, user="alice"))
    assert yes.promote and yes.outcome == "inconclusive"
    assert yes.reason == "inconclusive (an interval contains 0); promoted: 'Promote' chosen by alice"
    no = policy.resolve(UNSURE, _situation(chosen=KEEP, user="bob"))
    assert not no.promote
    assert no.reason == "inconclusive (an interval contains 0); kept the champion: 'Keep champion' chosen by bob"
    assert policy.resolve(NO, _situation(chosen=APPROVE, user="alice")).reason == NO.reason, "only inconclusive asks"


def test_force_promotion_turns_a_no_into_a_yes():
    d = policy.resolve(NO, _situation(force=True))
    assert d.promote and d.outcome == "reject"
    assert d.reason == "forced by the run's force_promotion param (fails the absolute bars)"
    kept = policy.resolve(UNSURE, _situation(force=True, chosen=KEEP, user="bob"))
    assert kept.promote and kept.reason.startswith("forced by the run's force_promotion param (inconclusive")
    assert policy.resolve(YES, _situation(force=True)).reason == YES.reason, "a yes needs no force"


def test_chosen_reads_a_human_in_the_loop_answer():
    assert policy.chosen(None) == (None, None) and policy.chosen({}) == (None, None)
    answer = {"chosen_options": [APPROVE], "responded_by_user": {"id": "a1", "name": "alice"}}
    assert policy.chosen(answer) == (APPROVE, "alice")
    assert policy.chosen({"chosen_options": [KEEP], "responded_by_user": {"id": "a1"}}) == (KEEP, "a1")
    assert policy.chosen({"chosen_options": [KEEP], "responded_by_user": "carol"}) == (KEEP, "carol")
    assert policy.chosen({"chosen_options": [KEEP]}) == (KEEP, "nobody (the default after the response timeout)")
    assert policy.chosen({"chosen_options": [], "responded_by_user": "carol"}) == (None, "carol")


def test_tags_and_differences_record_the_decision():
    d = policy.Decision(True, "clear improvement", "promote")
    assert policy.promotion_tags(d, "2", "run_b", "evt") == {
        "promotion.decision": "promoted", "promotion.reason": "clear improvement", "promotion.outcome": "promote",
        "promotion.previous_champion": "2", "promotion.airflow_run_id": "run_b", "promotion.ledger_event": "evt"}
    tags = policy.promotion_tags(policy.Decision(False, "no", "reject"), None, "run_c", None)
    assert tags["promotion.decision"] == "rejected" and tags["promotion.previous_champion"] == "none"
    assert "promotion.ledger_event" not in tags
    assert policy.metric_difference({"mdape": 0.1, "ppe10": 0.5, "x": "a"}, {"mdape": 0.12, "ppe10": 0.4}) == \
        pytest.approx({"mdape": 0.02, "ppe10": -0.1})
    assert policy.metric_difference({"mdape": 0.1}, None) == {}


# ---------------------------------------------------------------------------------------------
# promote_step against a registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    from tasks.core import lake, storage, tracking
    from tasks.core.settings import get_settings

    home = tmp_path_factory.mktemp("promote")
    with private_home(home / "state"):
        settings = get_settings()
        c = tracking.client(settings)
        exp = tracking.experiment_id(c, settings)
        tracking.ensure_registered_model(c, settings.model_name)
        # The validation summary an ingest run leaves; the ledger quotes it.
        storage.write_json_atomic(storage.join(lake.validation_dir(settings.lake_uri), "2014-05-02_2015-05-28.json"), {
            "start": "2014-05-02", "end": "2015-05-28", "rows_read": 120, "rows_accepted": 117, "rows_quarantined": 3,
            "expectations": [{"expectation": "expect_column_values_to_be_between(price, ...)", "severity": "row",
                              "success": False, "unexpected_count": 3}]})

        def new_version() -> tuple[str, str]:
            run = c.create_run(exp, tags={"data.partitions_sha256": "abc", "data.window_start": "2014-05-28",
                                          "data.window_end": "2015-05-28"})
            c.set_terminated(run.info.run_id, "FINISHED")
            mv = c.create_model_version(settings.model_name, source=f"{run.info.artifact_uri}/model",
                                        run_id=run.info.run_id, tags={"data.partitions_sha256": "abc"})
            return str(mv.version), run.info.run_id

        yield settings, c, new_version


def _evaluation(settings, version, run_id, champion_version, sigma_new, name) -> Evaluation:
    from tasks.core import storage
    from tasks.core.metrics import price_metrics

    a = _prices(2000, seed=11)
    champ, new = _noisy(a, 0.20, 12), _noisy(a, sigma_new, 13)
    uri = storage.join(settings.lake_uri, "evaluations", name, "predictions.parquet")
    df = pl.DataFrame({TARGET: a, "pred_new": new, "pred_champion": champ})
    storage.write_parquet_atomic(df if champion_version else df.drop("pred_champion"), uri)
    metrics = {"new": price_metrics(a, new)}
    if champion_version:
        metrics["champion"] = price_metrics(a, champ)
    return Evaluation(model_version=version, champion_version=champion_version, metrics=metrics,
                      predictions_uri=uri, report_uri=f"{settings.reports_uri}/{name}/report.html",
                      mlflow_run_id=run_id, test_rows=2000)


def _lineage(run_id: str, run_type: str = "manual") -> Lineage:
    return Lineage(dag_id="price_model_retrain", run_id=run_id, run_type=run_type, window_start="2014-05-28",
                   window_end="2015-05-28")


def test_promote_step_moves_alias_and_writes_one_ledger_event(registry):
    from tasks.core import tracking
    from tasks.registry import ledger
    from tasks.registry.promote import promote_step

    settings, c, new_version = registry
    params = RetrainParams(**BARS)
    v1, r1 = new_version()
    first = promote_step(settings, _evaluation(settings, v1, r1, None, 0.2, "a"), params, _lineage("run_a"),
                         event_time="2015-05-28T03:00:00+00:00", target=TARGET)
    assert first.promoted and first.ledger_event and first.ci is None
    v2, r2 = new_version()
    evaluation = _evaluation(settings, v2, r2, v1, 0.12, "b")
    out = promote_step(settings, evaluation, params, _lineage("run_b"), event_time="2015-05-29T03:00:00+00:00",
                       target=TARGET)
    assert {"model_version", "promoted", "reason", "previous_champion", "champion_version", "ci", "ledger_event"} <= set(out.to_xcom())
    assert out.promoted and out.previous_champion == v1 and out.champion_version == v2
    assert out.ci["metrics"]["mdape"]["verdict"] == "better" and out.ci["resamples"] == settings.gate_resamples
    assert str(tracking.champion_version(c, settings.model_name).version) == v2
    mv = c.get_model_version(settings.model_name, v2)
    assert mv.tags["promotion.decision"] == "promoted" and mv.tags["promotion.ledger_event"] == out.ledger_event

    event = ledger.get(settings, out.ledger_event)
    assert event.kind == "promotion" and event.from_version == v1 and event.to_version == v2
    assert event.at.isoformat() == "2015-05-29T03:00:00+00:00", "the run's time, not the clock's"
    assert event.actor == {"type": "dag_run", "dag_id": "price_model_retrain", "run_id": "run_b", "run_type": "manual",
                           "task": "promote"}
    assert event.metrics["difference"]["mdape"] > 0 and event.ci["metrics"]["mean_abs_log_error"]["ci_low"] > 0
    assert event.data_window["start"] == "2014-05-28" and event.data_window["partitions_sha256"] == "abc"
    assert event.validation["rows_quarantined"] == 3 and event.validation["failing_expectations"]
    assert event.evaluation["report_uri"].endswith("b/report.html")

    # A retried task (same run, same version) finds its event: nothing is appended twice.
    before = len(ledger.read_all(settings))
    again = promote_step(settings, evaluation, params, _lineage("run_b"), event_time="2015-05-29T03:00:00+00:00",
                         target=TARGET)
    assert again.ledger_event == out.ledger_event and again.promoted and again.previous_champion == v1
    assert len(ledger.read_all(settings)) == before
    assert [e.seq for e in ledger.read_all(settings)] == list(range(1, before + 1))


def test_backfill_runs_never_promote(registry):
    from tasks.core import tracking
    from tasks.registry import ledger
    from tasks.registry.promote import promote_step

    settings, c, new_version = registry
    live = str(tracking.champion_version(c, settings.model_name).version)
    v, r = new_version()
    before = len(ledger.read_all(settings))
    out = promote_step(settings, _evaluation(settings, v, r, live, 0.10, "c"), RetrainParams(**BARS, force_promotion=True),
                       _lineage("backfill__2015-05-30", run_type="backfill"), target=TARGET)
    assert not out.promoted and "backfill runs evaluate but never promote" in out.reason
    assert out.ci["metrics"]["mdape"]["verdict"] == "better", "it was clearly better, and still not promoted"
    assert out.ledger_event is None and len(ledger.read_all(settings)) == before
    assert str(tracking.champion_version(c, settings.model_name).version) == live


def test_inconclusive_keeps_champion_unless_a_person_approves(registry):
    from tasks.core import tracking
    from tasks.registry import ledger
    from tasks.registry.promote import promote_step

    settings, c, new_version = registry
    params = RetrainParams(**BARS)
    live = str(tracking.champion_version(c, settings.model_name).version)
    v, r = new_version()
    evaluation = _evaluation(settings, v, r, live, 0.20, "d")
    # Nearly the champion's own predictions: an interval straddles 0.
    from tasks.core import storage

    df = pl.read_parquet(storage.read_bytes(evaluation.predictions_uri))
    df = df.with_columns((pl.col("pred_champion") * np.exp(np.random.default_rng(3).normal(0, 0.01, df.height))).alias("pred_new"))
    storage.write_parquet_atomic(df, evaluation.predictions_uri)
    kept = promote_step(settings, evaluation, params, _lineage("run_d"), target=TARGET)
    assert kept.outcome == "inconclusive" and not kept.promoted and "inconclusive" in kept.reason
    no = promote_step(settings, evaluation, params, _lineage("run_d2"),
                      approval={"chosen_options": [KEEP], "responded_by_user": {"id": "bob", "name": "bob"}},
                      target=TARGET)
    assert not no.promoted and "'Keep champion' chosen by bob" in no.reason
    yes = promote_step(settings, evaluation, params, _lineage("run_d3"), event_time="2015-06-01T03:00:00Z",
                       approval={"chosen_options": [APPROVE], "responded_by_user": {"id": "alice", "name": "alice"},
                                 "responded_at": "2015-06-01T09:00:00Z"}, target=TARGET)
    assert yes.promoted and "chosen by alice" in yes.reason
    event = ledger.get(settings, yes.ledger_event)
    assert event.actor["approved_by"] == "alice" and event.approval["chosen_options"] == [APPROVE]
    assert str(tracking.champion_version(c, settings.model_name).version) == v
    json.dumps(yes.to_xcom())  # XCom-able


def test_a_champion_that_moved_after_evaluation_blocks_promotion(registry):
    from tasks.core import tracking
    from tasks.registry.promote import promote_step

    settings, c, new_version = registry
    live = str(tracking.champion_version(c, settings.model_name).version)
    v, r = new_version()
    out = promote_step(settings, _evaluation(settings, v, r, "1" if live != "1" else "2", 0.10, "e"),
                       RetrainParams(**BARS), _lineage("run_e"), target=TARGET)
    assert not out.promoted and "moved" in out.reason and out.outcome == "superseded" and out.champion_version == live
    assert c.get_model_version(settings.model_name, v).tags["promotion.decision"] == "superseded"
    assert str(tracking.champion_version(c, settings.model_name).version) == live


@pytest.mark.dag
def test_approval_wiring_is_off_by_default_and_waits_for_a_person_when_on(monkeypatch):
    from pathlib import Path

    from airflow.dag_processing.dagbag import DagBag

    from tasks.core.settings import get_settings

    path = str(Path(__file__).resolve().parents[2] / "dags" / "price_model_retrain.py")
    off = DagBag(dag_folder=path).dags["price_model_retrain"]
    assert {t.task_id for t in off.tasks} == {"build_features", "train", "evaluate", "check_drift", "promote"}
    monkeypatch.setenv("HOMEWORTH_PROMOTION_APPROVAL", "true")
    get_settings.cache_clear()
    try:
        on = DagBag(dag_folder=path).dags["price_model_retrain"]
    finally:
        monkeypatch.delenv("HOMEWORTH_PROMOTION_APPROVAL")
        get_settings.cache_clear()
    assert {t.task_id for t in on.tasks} == {"build_features", "train", "evaluate", "check_drift", "assess", "approval", "promote"}
    approval = on.get_task("approval")
    assert type(approval).__name__ == "HITLOperator" and approval.options == [APPROVE, KEEP]
    assert approval.defaults == [KEEP] and approval.response_timeout.total_seconds() == 24 * 3600
    assert on.get_task("assess").upstream_task_ids == {"evaluate"}
    assert on.get_task("promote").upstream_task_ids == {"evaluate", "check_drift", "assess", "approval"}
    assert on.get_task("promote").trigger_rule == "none_failed_min_one_success"
    assert all(t.retries >= 1 for t in on.tasks)
