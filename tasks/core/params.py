"""Typed run parameters, shared by the DAGs' trigger forms and the task code.

Light on purpose (pydantic only): DAG files import this at parse time to build their ``Params``
from the same fields, defaults and bounds the tasks validate with, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
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


# Plausible dates for a bulk range (sales, listings): a form refuses others when it is submitted (the Param's
# pattern) and the task refuses them again at its first line (check_date_range), before writing anything.
EARLIEST_DATE, LATEST_DATE = date(1900, 1, 1), date(2200, 12, 31)
DATE_PATTERN = r"^(19\d\d|2[01]\d\d|2200)-\d\d-\d\d$"
BulkDate = Annotated[date | None, Field(ge=EARLIEST_DATE, le=LATEST_DATE, json_schema_extra={"pattern": DATE_PATTERN})]


class IngestParams(BaseModel):
    """Parameters of ``sales_ingest`` (and ``listings_score``): empty for scheduled runs; a date range for a
    bulk load, of dates between 1900-01-01 and 2200-12-31 and at most ``HOMEWORTH_MAX_BULK_DAYS`` days."""

    from_date: BulkDate = Field(default=None, description="Bulk load: first day (YYYY-MM-DD, 1900..2200). Empty: "
                                "the run's data interval. The range may span at most HOMEWORTH_MAX_BULK_DAYS days "
                                "(default ten years).")
    to_date: BulkDate = Field(default=None, description="Bulk load: last day, inclusive (YYYY-MM-DD, 1900..2200).")


class DateRangeRefused(ValueError):
    """A run's date range out of bounds: the same range fails again, so a retry cannot help."""


@contextmanager
def no_retry_on_refusal() -> Iterator[None]:
    """In a task: a :class:`DateRangeRefused` fails the task at once (``AirflowFailException``), without the
    retries meant for transient faults; the failure callbacks still run."""
    try:
        yield
    except DateRangeRefused as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from exc


def check_date_range(start: date, end: date, max_days: int | None = None) -> None:
    """Refuse a range [start, end) outside 1900..2200 or longer than ``max_days`` days (default: the settings'
    ``max_bulk_days``). Called at the first line of a task that writes one partition per day, so a range
    such as 0001-01-01.. is refused before a single partition is written."""
    if max_days is None:
        from tasks.core.settings import get_settings

        max_days = get_settings().max_bulk_days
    last = end - timedelta(days=1) if end > start else start
    if start < EARLIEST_DATE or last > LATEST_DATE:
        raise DateRangeRefused(f"date range {start}..{last} is outside the plausible dates "
                               f"{EARLIEST_DATE}..{LATEST_DATE}; nothing was written")
    days = (end - start).days
    if days > max_days:
        raise DateRangeRefused(f"date range {start}..{last} spans {days} days, more than the {max_days} a run may "
                               "cover (HOMEWORTH_MAX_BULK_DAYS); split it into several runs, or raise the setting; "
                               "nothing was written")


def airflow_params(model: type[BaseModel]) -> dict[str, Any]:
    """``{name: Param(...)}`` for a DAG, from a pydantic model's JSON schema (types, bounds, enums, docs)."""
    from airflow.sdk import Param

    schema = model.model_json_schema()
    out = {}
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        default = prop.pop("default", None)
        prop.pop("title", None)
        if "anyOf" in prop:  # Optional[X]: JSON schema null or X (the constraints of X apply to X's values)
            types = [p for p in prop.pop("anyOf")]
            prop["type"] = [t["type"] for t in types]
            for t in types:
                prop.update({k: v for k, v in t.items() if k != "type"})
        if "enum" not in prop and "$ref" in prop:
            ref = schema["$defs"][prop.pop("$ref").split("/")[-1]]
            prop.update({k: v for k, v in ref.items() if k in ("enum", "type")})
        out[name] = Param(default, title=name.replace("_", " "), **prop)
    return out


def interval_days(start: datetime | date | None, end: datetime | date | None, params: IngestParams,
                  max_days: int | None = None) -> tuple[date, date]:
    """[first day, day after the last) of an ingest or scoring run: the Params' range if given, else the data
    interval; either is checked by :func:`check_date_range` (``max_days``: default the settings')."""
    if params.from_date or params.to_date:
        if not (params.from_date and params.to_date) or params.to_date < params.from_date:
            raise ValueError(f"from_date and to_date must both be set, in order; got {params.from_date}, {params.to_date}")
        first, stop = params.from_date, params.to_date + timedelta(days=1)
    elif start is None or end is None:
        raise ValueError("this run has no data interval (triggered without a logical date): "
                         "give from_date and to_date, or a logical date")
    else:
        first = start.date() if isinstance(start, datetime) else start
        stop = max(end.date() if isinstance(end, datetime) else end, first)
    check_date_range(first, stop, max_days)
    return first, stop
