"""The dataset spec: columns, their types and roles, landing formats, split, as a typed object.

A spec is YAML (see ``tasks/datasets/king_county/spec.yaml``). Everything generic in homeworth (ingest, coercion,
validation plumbing, features, training) reads column names from here, never from literals.
"""

from __future__ import annotations

import hashlib
import importlib
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Literal

import yaml
from pydantic import BaseModel, Field, PrivateAttr, model_validator

ColumnType = Literal["string", "int", "float", "date", "bool"]
Role = Literal["id", "event_time", "target", "numeric", "categorical", "split", "ignore"]
# What a column means to the comparable-sales stage, besides its role (a latitude is still a numeric input).
CompsRole = Literal["latitude", "longitude", "living_area", "location"]


def normalise_header(name: str) -> str:
    """The one normalisation under which a spec's column names and a file's headers are matched.

    Case-folded, a byte-order mark and surrounding whitespace removed; a spec may use either spelling
    and a file's own spelling is what stays on disk.
    """
    return name.replace("\ufeff", "").strip().casefold()


class ColumnSpec(BaseModel):
    type: ColumnType
    role: Role
    # A file lacking a required column fails the run; a missing optional column is filled with nulls.
    required: bool = True
    # Whether an empty value is accepted (the row is kept with a null there) or sends the row to quarantine.
    # Unset: as before ``nullable`` existed, an optional column accepts empty values and a required one does
    # not. ``required: true, nullable: true`` is "always present, sometimes empty".
    nullable: bool | None = None
    # strptime format for dates given as text (ISO dates always parse).
    format: str | None = None
    # The column's meaning to the comparable-sales stage (``tasks.features.comps``), if any.
    comps: CompsRole | None = None

    @property
    def accepts_null(self) -> bool:
        return self.nullable if self.nullable is not None else not self.required


class CsvSpec(BaseModel):
    separator: str = ","
    encoding: Literal["utf8", "utf8-lossy"] = "utf8"
    # Tokens that mean "no value" besides the empty cell (e.g. ``NA``), in nullable columns.
    na_values: list[str] = Field(default_factory=list)


class LandingSpec(BaseModel):
    formats: list[Literal["csv", "parquet"]] = ["csv", "parquet"]
    csv: CsvSpec = CsvSpec()


class SplitSpec(BaseModel):
    method: Literal["time", "random", "column"] = "time"
    # time: the last test_days of the window are test, the val_days before them validation.
    test_days: int = Field(default=88, gt=0)
    val_days: int = Field(default=59, gt=0)
    # random: seeded shuffle into these fractions.
    seed: int = 42
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    # column: the name of a column holding train / val / test.
    column: str | None = None


class PromotionBars(BaseModel):
    """The dataset's promotion bars (``tasks.registry.policy``). Unset absolute bars: none, the bars are relative.

    A run's ``max_mdape`` / ``min_ppe10`` Params, when set, win over these. Relative bars always apply: the
    new model must improve on the champion (``min_relative_improvement``), and its test mdape may exceed
    that of the gradient boosting trained in the same run by at most ``max_mdape_vs_boosting`` (a fraction
    of the boosting's mdape; null: the boosting is reported but not a bar).
    """

    max_mdape: float | None = Field(default=None, gt=0, le=1)
    min_ppe10: float | None = Field(default=None, ge=0, le=1)
    max_mdape_vs_boosting: float | None = Field(default=0.0, ge=0)


class DatasetSpec(BaseModel):
    name: str
    description: str = ""
    bundled_file: str | None = None
    features_module: str | None = None
    expectations_module: str | None = None
    landing: LandingSpec = LandingSpec()
    columns: dict[str, ColumnSpec]
    split: SplitSpec = SplitSpec()
    promotion: PromotionBars = PromotionBars()
    # Transform of the target the model fits when the spec has no features module (null: identity).
    target_transform: Literal["log", "identity"] | None = None
    # sha256 of the YAML text this spec came from, recorded in lineage and in the preprocessing artifact.
    source_hash: str = ""
    # The folder of the YAML file (``bundled_file`` is relative to it); not part of the spec's content.
    _source_dir: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_roles(self) -> "DatasetSpec":
        targets = self.by_role("target")
        if len(targets) != 1:
            raise ValueError(f"spec {self.name!r}: exactly one column must have role 'target', got {targets}")
        if len(self.by_role("event_time")) > 1:
            raise ValueError(f"spec {self.name!r}: at most one column may have role 'event_time'")
        if self.split.method == "time" and not self.event_time:
            raise ValueError(f"spec {self.name!r}: split method 'time' needs an event_time column")
        if self.split.method == "column" and self.split.column not in self.columns:
            raise ValueError(f"spec {self.name!r}: split column {self.split.column!r} is not a column")
        for meaning in ("latitude", "longitude", "living_area"):
            named = [n for n, c in self.columns.items() if c.comps == meaning]
            if len(named) > 1:
                raise ValueError(f"spec {self.name!r}: at most one column may have comps {meaning!r}, got {named}")
        return self

    def by_role(self, role: Role) -> list[str]:
        return [name for name, col in self.columns.items() if col.role == role]

    @property
    def target(self) -> str:
        return self.by_role("target")[0]

    @property
    def event_time(self) -> str | None:
        cols = self.by_role("event_time")
        return cols[0] if cols else None

    @property
    def id_columns(self) -> list[str]:
        return self.by_role("id")

    @property
    def required_columns(self) -> list[str]:
        return [name for name, col in self.columns.items() if col.required]

    @property
    def not_null_columns(self) -> list[str]:
        """Columns whose empty values send a row to quarantine (see ``ColumnSpec.accepts_null``)."""
        return [name for name, col in self.columns.items() if not col.accepts_null]

    def comps_columns(self, meaning: CompsRole) -> list[str]:
        """The columns with ``comps: meaning`` (one at most, but for ``location``)."""
        return [name for name, col in self.columns.items() if col.comps == meaning]

    def duplicate_key(self) -> tuple[list[str], bool]:
        """(columns, whole_row): rows equal on these columns are duplicates. With an ``id`` role, the id and
        the event time (the same sale recorded twice); without one, every spec column (a repeated row):
        a dataset without ids has no way to tell two sales on one day apart but by their values. With
        ``whole_row`` empty values compare equal (a repeated row repeats its gaps too)."""
        if self.id_columns:
            return self.id_columns + ([self.event_time] if self.event_time else []), False
        return list(self.columns), True

    def features_module_obj(self) -> ModuleType | None:
        return importlib.import_module(self.features_module) if self.features_module else None

    def expectations_module_obj(self) -> ModuleType | None:
        return importlib.import_module(self.expectations_module) if self.expectations_module else None

    def bundled_path(self) -> Path | None:
        """The bundled data file, relative to the spec's own folder."""
        if not self.bundled_file:
            return None
        return (self._source_dir or Path.cwd()) / self.bundled_file


def load_spec(path: str | Path) -> DatasetSpec:
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a dataset spec must be a YAML mapping")
    data["source_hash"] = hashlib.sha256(text.encode()).hexdigest()
    spec = DatasetSpec.model_validate(data)
    spec._source_dir = Path(path).resolve().parent
    return spec


@lru_cache(maxsize=8)
def _cached(path: str) -> DatasetSpec:
    return load_spec(path)


def get_spec(path: str | Path | None = None) -> DatasetSpec:
    """The spec named by the settings (or ``path``)."""
    from tasks.core.settings import get_settings

    return _cached(str(path or get_settings().dataset_spec))
