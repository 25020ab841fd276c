"""Typed run parameters, shared by the DAGs' trigger forms and the task code.

Light on purpose (pydantic only): DAG files import this at parse time to build their ``Params``
from the same fields, defaults and bounds the tasks validate with, so the two cannot drift apart.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

# Shared by the retrain and tuning forms.
WindowDays = Annotated[int, Field(ge=30, le=36500,
                                  description="Training window: days of validated sales before the run's interval end.")]


class RetrainParams(BaseModel):
    """Parameters of ``price_model_retrain`` (shown in the Airflow UI trigger form)."""

    window_days: WindowDays = 730
    max_epochs: int = Field(default=60, ge=1, le=1000, description="Upper bound on training epochs (early stopping "
                            "on validation RMSE of ln(price) usually stops sooner).")
    seed: int = Field(default=42, ge=0, description="Seed for weight initialisation and batch shuffling.")
    model_family: Literal["tabm", "mlp_plr", "mlp"] = Field(
        default="tabm", description="tabm: an ensemble of MLPs sharing most weights (TabM, BatchEnsemble adapters) "
        "over periodic embeddings; mlp_plr: MLP with periodic embeddings of numeric features; mlp: plain MLP. "
        "A value other than the default overrides the tuned configuration.")
    use_tuned_config: bool = Field(
        default=True, description="Start from the best configuration price_model_tune recorded for this dataset, "
        "if any; model family, max epochs and seed override it when set to a value other than their default.")
    refit_on_val: bool = Field(
        default=True, description="After early stopping on the validation split chose the number of epochs, train "
        "again from scratch on train + validation for that many epochs (the model then knows the latest sales "
        "before the test period); the evaluation's gradient boosting does the same. Skipped when the training split "
        "is streamed (over 2M rows) or the time cap would not allow it.")
    min_relative_improvement: float = Field(
        default=0.01, ge=0, le=1, description="Promote only if test mdape improves on the champion's by this fraction.")
    max_mdape: float = Field(default=0.15, gt=0, le=1, description="Absolute bar: test median APE at most this.")
    min_ppe10: float = Field(default=0.40, ge=0, le=1, description="Absolute bar: test share within 10% at least this.")
    force_promotion: bool = Field(default=False, description="Promote even if the gate says no (the reason is recorded).")


class TuneParams(BaseModel):
    """Parameters of ``price_model_tune`` (shown in the Airflow UI trigger form)."""

    window_days: WindowDays = 730
    n_trials: int = Field(default=8, ge=1, le=64, description="Configurations to train (trial 0 is the current "
                          "default configuration; the others are drawn from the search space).")
    seed: int = Field(default=0, ge=0, description="Seed of the sampler: the same seed draws the same trials.")
    max_epochs: int = Field(default=60, ge=1, le=1000, description="Upper bound on each trial's training epochs.")
    max_time_s: int = Field(default=210, ge=1, le=86400, description="Wall-clock cap on each trial's training, "
                            "seconds; the best configuration keeps it, so a retrain with it stays as short.")
    families: list[Literal["tabm", "mlp_plr", "mlp"]] = Field(
        default=["tabm", "mlp_plr"], min_length=1, description="Model families the sampler draws from.")


class IngestParams(BaseModel):
    """Parameters of ``sales_ingest``: empty for scheduled runs; a date range for a bulk load."""

    from_date: date | None = Field(default=None, description="Bulk load: first day (YYYY-MM-DD). Empty: the run's "
                                   "data interval.")
    to_date: date | None = Field(default=None, description="Bulk load: last day, inclusive (YYYY-MM-DD).")


def airflow_params(model: type[BaseModel]) -> dict[str, Any]:
    """``{name: Param(...)}`` for a DAG, from a pydantic model's JSON schema (types, bounds, enums, docs)."""
    from airflow.sdk import Param

    schema = model.model_json_schema()
    out = {}
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        default = prop.pop("default", None)
        prop.pop("title", None)
        if "anyOf" in prop:  # Optional[X]: JSON schema null or X
            types = [p for p in prop.pop("anyOf")]
            prop["type"] = [t["type"] for t in types]
            fmt = next((t.get("format") for t in types if t.get("format")), None)
            if fmt:
                prop["format"] = fmt
        if "enum" not in prop and "$ref" in prop:
            ref = schema["$defs"][prop.pop("$ref").split("/")[-1]]
            prop.update({k: v for k, v in ref.items() if k in ("enum", "type")})
        out[name] = Param(default, title=name.replace("_", " "), **prop)
    return out


def interval_days(start: datetime | date | None, end: datetime | date | None, params: IngestParams) -> tuple[date, date]:
    """[first day, day after the last) of an ingest run: the Params' range if given, else the data interval."""
    if params.from_date or params.to_date:
        if not (params.from_date and params.to_date) or params.to_date < params.from_date:
            raise ValueError(f"from_date and to_date must both be set, in order; got {params.from_date}, {params.to_date}")
        from datetime import timedelta

        return params.from_date, params.to_date + timedelta(days=1)
    if start is None or end is None:
        raise ValueError("this run has no data interval (triggered without a logical date): "
                         "give from_date and to_date, or a logical date")
    start_d = start.date() if isinstance(start, datetime) else start
    end_d = end.date() if isinstance(end, datetime) else end
    return start_d, max(end_d, start_d)
