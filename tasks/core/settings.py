"""One typed settings object for homeworth, read from ``HOMEWORTH_*`` environment variables.

Every storage root is a URI (a plain path means the local file system), so the same code runs on a
laptop and against object storage or a tracking server: only the settings change. The names here are
the names used in ``env.sh`` and ``docker-compose.yaml``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The checkout (or install) root: tasks/core/settings.py -> tasks/core -> tasks -> root.
REPO_ROOT = Path(__file__).resolve().parents[2]
# The bundled datasets (spec, data, feature module, generator), one folder each.
DATASETS_DIR = Path(__file__).resolve().parents[1] / "datasets"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HOMEWORTH_", extra="ignore")

    # Root of all local state (landing zone, lake, MLflow store, reports); kept out of git.
    home: Path = REPO_ROOT / ".state"
    # Where feeds drop each day's files: <landing_uri>/<YYYY-MM-DD>/*.csv|*.parquet.
    landing_uri: str = ""
    # The Parquet lake: raw/, validated/, quarantine/, features/, artifacts/ below it.
    lake_uri: str = ""
    # MLflow tracking and registry store; sqlite by default, http://... for a tracking server.
    mlflow_tracking_uri: str = ""
    # Where MLflow puts artifacts of the experiment it creates (ignored by a server that proxies them).
    mlflow_artifact_uri: str = ""
    # Evaluation reports (HTML), one per retrain run.
    reports_uri: str = ""
    # Name of the MLflow experiment and of the registered model.
    experiment_name: str = "homeworth-price-model"
    model_name: str = "homeworth-price-model"
    # The dataset spec (YAML) that names columns, types and roles.
    dataset_spec: Path = DATASETS_DIR / "king_county" / "spec.yaml"
    # Torch threads for training and scoring; 0 lets torch decide.
    torch_threads: int = Field(default=0, ge=0)
    # Comparable-sales features (the dataset module's COMPS): "full" (all of them), "area" (the market
    # index and per-zipcode, per-cell and neighbouring-cells trailing means from per-(area, day) sums:
    # linear in rows, memory one row per area and day, for histories of many millions of sales,
    # docs/out-of-core.md), "market" (only the county market index) or "off" (row-level features
    # only). The k-nearest search and rolling medians of "full" cost rows x nearby earlier sales.
    # true/false are read as full/off. A model records which it was trained with (its preprocessing).
    comps: Literal["full", "area", "market", "off"] = "full"
    # Promotion gate (tasks/registry/promote.py): paired bootstrap of the metric differences on the same test rows.
    gate_resamples: int = Field(default=1000, ge=100, le=100_000)
    gate_confidence: float = Field(default=0.95, gt=0.5, lt=1)
    gate_seed: int = Field(default=0, ge=0)
    # An inconclusive gate (the interval straddles 0) waits for a person in price_model_retrain
    # (Airflow human-in-the-loop task) instead of keeping the champion. Read when the DAG is parsed.
    promotion_approval: bool = False
    promotion_approval_timeout_hours: float = Field(default=24.0, gt=0)
    # Predict endpoint (tasks/serving/api.py): re-check the champion alias at most this often; largest batch.
    serving_alias_ttl_s: float = Field(default=10.0, ge=0)
    serving_max_batch: int = Field(default=1000, ge=1)
    # Feature drift (tasks/quality/drift.py): PSI above drift_threshold flags a feature. drift_action: "none" only
    # reports; "block_promotion" lets the promote step refuse a model trained on drifted data;
    # "trigger_retrain" makes sales_ingest's validate task compare the last drift_recent_days days of
    # validated sales with the champion's training data and emit an event on the `sales_drift` asset when a
    # feature is flagged (read when the DAG is parsed).
    drift_threshold: float = Field(default=0.2, gt=0)
    drift_action: Literal["none", "block_promotion", "trigger_retrain"] = "none"
    drift_recent_days: int = Field(default=56, ge=1, le=3650)
    # Failure notifications (tasks/core/notify.py): every failed task logs a summary; with an address (or a
    # comma-separated list) set, an SmtpNotifier also mails it (SMTP connection `smtp_default`). Read when
    # the DAG is parsed.
    notify_email: str | None = None
    # Hostile input (docs/security.md). Bearer tokens for the predict endpoint, comma-separated; empty means
    # no auth, which the standalone server accepts only on a loopback address.
    api_tokens: str = ""
    # Largest request body the endpoint parses (MiB); larger bodies get 413 before parsing.
    max_request_mb: float = Field(default=1.0, gt=0)
    # Largest landing file (MiB, on disk; Parquet is also capped decompressed at ten times this).
    max_landing_file_mb: float = Field(default=512.0, gt=0)
    # Longest bulk date range a trigger form accepts for ingest and scoring (days; default ten years).
    max_bulk_days: int = Field(default=3653, ge=1)
    # Features modules a model's preprocessing may name besides the deployed spec's (comma-separated).
    preprocessing_allowlist: str = ""
    # Scale-out (docs/production.md). The Celery queue that `train` and the tuning trials are routed to.
    training_queue: str = "default"
    # Lightning devices ("1", "2", "auto"), strategy ("auto", "ddp", ...) and nodes for `train`.
    train_devices: str = "1"
    train_strategy: str = "auto"
    train_num_nodes: int = Field(default=1, ge=1)
    # An s3:// lake's credentials and endpoint (tasks/core/objectstore.py): this Airflow connection's when
    # set (login/password, extra region_name, endpoint_url), else the standard AWS_* variables.
    aws_conn_id: str = ""

    @field_validator("comps", mode="before")
    @classmethod
    def _comps_bool(cls, v: object) -> object:
        flags = {"true": "full", "1": "full", "yes": "full", "on": "full", "false": "off", "0": "off", "no": "off"}
        if isinstance(v, bool):
            return "full" if v else "off"
        return flags.get(v.strip().lower(), v.strip().lower()) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _fill_defaults(self) -> "Settings":
        home = self.home.resolve()
        self.home = home
        if not self.landing_uri:
            self.landing_uri = str(home / "landing")
        if not self.lake_uri:
            self.lake_uri = str(home / "lake")
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
        if not self.mlflow_artifact_uri:
            self.mlflow_artifact_uri = (home / "mlflow" / "artifacts").as_uri()
        if not self.reports_uri:
            self.reports_uri = str(home / "reports")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
