"""The typed handoffs between tasks: what XCom carries, as small pydantic models.

Each step returns one of these and the next step takes it, so a field is named in one place instead of
being read by string keys in several modules. Over XCom they travel as JSON (``to_xcom``), never as
pickles or frames: URIs, counts, versions, metrics. ``from_xcom`` accepts the JSON back (extra keys,
such as the ``peak_rss_mib`` a task adds, are kept).
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from tasks.core.faults import fault_point


class Handoff(BaseModel):
    """Base of every XCom payload: JSON in, JSON out; unknown keys are kept, not dropped."""

    model_config = ConfigDict(extra="allow")

    def to_xcom(self) -> dict[str, Any]:
        fault_point(None, "before_return")  # test-only (tasks/core/faults.py)
        return self.model_dump(mode="json")

    @classmethod
    def from_xcom(cls, value: Self | dict[str, Any]) -> Self:
        return value if isinstance(value, cls) else cls.model_validate(value)


class IngestResult(Handoff):
    """``ingest``: the interval's days read from the landing zone into ``raw``."""

    start: str
    end: str
    days: int
    files: int
    rows_landed: int
    coerce_errors: int
    dropped_columns: dict[str, Any] = {}


class ValidationSummary(Handoff):
    """``validate``: the interval's rows split into ``validated`` and ``quarantine``."""

    start: str
    end: str
    rows_read: int
    rows_accepted: int
    rows_quarantined: int
    failing_expectations: dict[str, int] = {}
    data_docs: str | None = None
    drift: dict[str, Any] | None = None


class FeatureTable(Handoff):
    """``build_features``: the window's feature table and its fitted preprocessing."""

    features_uri: str
    features_sha256: str
    preprocessing_uri: str
    preprocessing_sha256: str
    window_start: str
    window_end: str
    rows: dict[str, int]
    partitions: int
    partitions_sha256: str


class TrainedModel(Handoff):
    """``train``: the MLflow run and the registered model version it produced."""

    mlflow_run_id: str
    model_version: str
    val_rmse_ln: float | None = None
    refit: dict[str, Any] | None = None
    reused: bool = False
    epochs: int | None = None
    best_epoch: int | None = None
    train_seconds: float | None = None
    model_family: str | None = None
    config_source: str | None = None


class Evaluation(Handoff):
    """``evaluate``: the new model, the champion and the boosting on the same test rows."""

    model_version: str
    champion_version: str | None = None
    metrics: dict[str, dict[str, float] | None]
    report_uri: str
    predictions_uri: str
    mlflow_run_id: str
    test_rows: int
    gbm: dict[str, Any] | None = None


class DriftReport(Handoff):
    """``check_drift``: PSI per feature of the newest rows against the training split."""

    status: str
    reason: str | None = None
    max_psi: float | None = None
    max_feature: str | None = None
    flagged: list[str] = []
    threshold: float | None = None
    action: str | None = None
    psi: dict[str, float] = {}


class Assessment(Handoff):
    """``assess``: the promotion gate's verdict before a person is asked."""

    outcome: str
    reason: str
    ci: dict[str, Any] | None = None
    model_version: str
    champion_version: str | None = None


class PromotionResult(Handoff):
    """``promote``: whether the champion moved, and why."""

    model_version: str
    promoted: bool
    reason: str
    previous_champion: str | None = None
    champion_version: str | None = None
    outcome: str | None = None
    ci: dict[str, Any] | None = None
    ledger_event: str | None = None


class ChampionRef(Handoff):
    """``listings_score``'s ``champion``: the version pinned for the whole run (retries use the same model)."""

    model_name: str
    model_version: str
    run_id: str | None = None


class ScoreResult(Handoff):
    """``listings_score``'s ``score``: listings scored and rejected per day with one model version."""

    start: str
    end: str
    model_version: str
    rows: int
    scored: int
    rejected: int
    days: list[dict[str, Any]] = []


class Trial(Handoff):
    """``price_model_tune``'s ``plan_trials``: one configuration to train (a ``ModelConfig`` as JSON)."""

    trial: int
    config: dict[str, Any]


class TrialResult(Handoff):
    """``run_trial``: the trial's validation error and its MLflow run."""

    trial: int
    config: dict[str, Any]
    val_rmse_ln: float | None = None
    best_epoch: int | None = None
    epochs: int | None = None
    seconds: float | None = None
    mlflow_run_id: str | None = None
    reused: bool = False


class TuningResult(Handoff):
    """``record_best``: the best configuration, recorded as the dataset's tuning result in MLflow."""

    best: dict[str, Any]
    best_trial: int
    val_rmse_ln: float | None = None
    mlflow_run_id: str
    trials: list[dict[str, Any]] = []
    reused: bool = False
