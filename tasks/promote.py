"""Promotion: the gate that decides whether a new model replaces the champion, and the alias move."""

from __future__ import annotations

import logging

from tasks import tracking
from tasks.params import RetrainParams
from tasks.retrain import Lineage
from tasks.settings import Settings

log = logging.getLogger(__name__)


def decide(new: dict, champion: dict | None, params: RetrainParams) -> tuple[bool, str]:
    """The promotion gate: absolute bars, then relative improvement of mdape over the champion."""
    failures = []
    if new["mdape"] > params.max_mdape:
        failures.append(f"mdape {new['mdape']:.4f} > bar {params.max_mdape}")
    if new["ppe10"] < params.min_ppe10:
        failures.append(f"ppe10 {new['ppe10']:.4f} < bar {params.min_ppe10}")
    if failures:
        return False, "fails the absolute bars: " + "; ".join(failures)
    if champion is None:
        return True, f"no champion yet and the absolute bars pass (mdape {new['mdape']:.4f}, ppe10 {new['ppe10']:.4f})"
    gain = (champion["mdape"] - new["mdape"]) / champion["mdape"]
    verdict = (f"mdape {new['mdape']:.4f} vs champion {champion['mdape']:.4f}: relative improvement {gain:+.2%}, "
               f"required {params.min_relative_improvement:.2%}")
    return gain >= params.min_relative_improvement, verdict


def promote_step(settings: Settings, evaluation: dict, params: RetrainParams, lineage: Lineage) -> dict:
    c = tracking.client(settings)
    version = str(evaluation["model_version"])
    metrics = evaluation["metrics"]
    ok, reason = decide(metrics["new"], metrics.get("champion"), params)
    if lineage.run_type == "backfill":
        ok, reason = False, f"backfill runs evaluate but never promote ({reason})"
    elif not ok and params.force_promotion:
        ok, reason = True, f"forced by the run's force_promotion param ({reason})"
    current = tracking.champion_version(c, settings.model_name)
    previous = str(current.version) if current is not None else None
    decision = "promoted" if ok else "rejected"
    for k, v in {"promotion.decision": decision, "promotion.reason": reason,
                 "promotion.previous_champion": previous or "none",
                 "promotion.airflow_run_id": lineage.run_id}.items():
        c.set_model_version_tag(settings.model_name, version, k, v)
        c.set_tag(evaluation["mlflow_run_id"], k, v)
    if ok and previous != version:
        c.set_registered_model_alias(settings.model_name, tracking.CHAMPION, version)
    log.info("model v%s %s: %s", version, decision, reason)
    champion = version if ok else previous
    return {"model_version": version, "promoted": ok, "reason": reason, "previous_champion": previous,
            "champion_version": champion}
