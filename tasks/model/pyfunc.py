"""Every saved model bundle is also an MLflow pyfunc model: ``MLmodel`` beside the bundle's own files.

:func:`save_pyfunc` writes, into a bundle folder, what MLflow needs to load it with its own tools
(``mlflow.pyfunc.load_model``, ``mlflow models serve``, ``spark_udf``): the ``MLmodel`` file, the code file
``pyfunc_model.py`` ("models from code": MLflow runs it at load time, nothing is pickled), the signature and an
input example from the dataset spec (its columns minus the target and the split), the pip requirements of
the environment that saved it. The bundle's ``model.safetensors``, ``model_config.json`` and
``preprocessing.json`` stay as they are; the pyfunc reads them at load time (``ModelBundle.load``).

What the pyfunc needs where it is loaded: the homeworth package importable (``tasks``, with the dataset's
feature module), and, for a model whose features use comparable sales, the lake of validated sales at the
configured ``settings.lake_uri`` (``HOMEWORTH_HOME`` / ``HOMEWORTH_LAKE_URI``): it reads the history from there
when it predicts, as ``ModelBundle`` does. See docs/mlflow.md.
"""

from __future__ import annotations

import logging
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from tasks.core.spec import DatasetSpec
    from tasks.features.preprocessing import Preprocessing

log = logging.getLogger(__name__)

CODE_FILE = Path(__file__).with_name("pyfunc_model.py")  # copied into every model folder by MLflow
MLFLOW_TYPES = {"string": "string", "int": "long", "float": "double", "date": "datetime", "bool": "boolean"}
REQUIREMENTS = ("mlflow", "torch", "polars", "pyarrow", "pandas", "numpy", "safetensors", "pydantic",
                "pydantic-settings", "pyyaml")


def input_columns(spec: DatasetSpec) -> list[str]:
    """The columns a house carries for the model: the spec's columns less the target and the split."""
    return [name for name, cs in spec.columns.items() if cs.role not in ("target", "split")]


def matching_spec(prep: Preprocessing) -> DatasetSpec | None:
    """The configured dataset spec when the preprocessing was fitted on it (same YAML hash), else None."""
    from tasks.core.spec import get_spec

    spec = get_spec()
    return spec if spec.source_hash == prep.spec_sha256 else None


def model_config(prep: Preprocessing, spec: DatasetSpec | None) -> dict[str, Any] | None:
    """What the pyfunc records in ``MLmodel`` (``model_config``) to type its input: every column with its spec
    type, the target, the id columns and the input columns. Without a matching spec, a model with no feature
    module and no comparable sales takes its preprocessing's columns (numeric as float, categorical as string);
    any other model: None (no signature, the input passed through untyped)."""
    if spec is not None:
        return {"dataset": spec.name, "target": spec.target, "ids": spec.id_columns, "inputs": input_columns(spec),
                "columns": {name: cs.type for name, cs in spec.columns.items()},
                "required": [c for c in input_columns(spec) if spec.columns[c].required]}
    if prep.features_module is None and prep.comps is None:
        from tasks.features.preprocessing import null_indicator_columns

        derived = set(null_indicator_columns(prep.null_indicators))  # added by the model, not an input
        cols = {**{s.name: "float" for s in prep.numeric},
                **{v.name: "string" for v in prep.categorical if v.name not in derived}}
        return {"dataset": prep.dataset, "target": prep.target, "ids": [], "inputs": list(cols),
                "columns": {**cols, prep.target: "float"}, "required": list(cols)}
    log.warning("preprocessing of dataset %r (spec sha256 %s) does not match the configured spec and derives its "
                "features: its MLflow model has no signature", prep.dataset, prep.spec_sha256)
    return None


def signature(config: dict[str, Any]):
    """The MLflow signature: the input columns with their types (required as the spec says), out the prices."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    required = set(config["required"])
    inputs = Schema([ColSpec(MLFLOW_TYPES[config["columns"][c]], c, required=c in required) for c in config["inputs"]])
    outputs = Schema([*(ColSpec("string", c) for c in config["ids"]),
                      ColSpec("double", prediction_column(config["target"]))])
    return ModelSignature(inputs=inputs, outputs=outputs)


def prediction_column(target: str) -> str:
    return f"predicted_{target}"


def requirements() -> list[str]:
    """The pinned versions of what the pyfunc imports, as installed here (homeworth itself is not on PyPI)."""
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return out


def save_pyfunc(directory: Path, prep: Preprocessing, spec: DatasetSpec | None = None,
                example: pl.DataFrame | None = None) -> None:
    """Write the MLflow model files of the bundle in ``directory`` (created if needed): saved first in an
    attempt-unique folder beside it, then moved in. ``spec``: the dataset spec the preprocessing was fitted on
    (default: the configured one, when it matches); ``example``: a few houses for the input example (the
    input columns are kept)."""
    import mlflow

    spec = spec if spec is not None else matching_spec(prep)
    config = model_config(prep, spec)
    directory.mkdir(parents=True, exist_ok=True)
    input_example = None
    if config is not None and example is not None and example.height:
        input_example = example.select([c for c in config["inputs"] if c in example.columns]).head(3).to_pandas()
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.mlflow-") as tmp:
        path = Path(tmp) / "model"
        mlflow.pyfunc.save_model(str(path), python_model=str(CODE_FILE), model_config=config or {},
                                 signature=signature(config) if config else None, input_example=input_example,
                                 pip_requirements=requirements())
        for f in sorted(path.iterdir()):
            os.replace(f, directory / f.name)


def model_frame(model_input, config: dict[str, Any]) -> pl.DataFrame:
    """The frame ``ModelBundle.predict`` takes, from a pandas (or Polars) frame of houses: every spec column with
    its type, the target null (as ``tasks.serving.score.model_frame`` builds it for batch scoring and the
    endpoint). A missing input column, or a value that is not of its column's type, raises naming both."""
    from tasks.ingest.landing import POLARS_TYPES

    df = model_input if isinstance(model_input, pl.DataFrame) else pl.from_pandas(model_input)
    missing = [c for c in config.get("required", []) if c not in df.columns]
    if missing:
        raise ValueError(f"houses lack the column(s) {missing}; the model takes {config['inputs']}")
    out = []
    for name, typ in config["columns"].items():
        dtype = POLARS_TYPES[typ]
        if name == config["target"] or name not in df.columns:
            out.append(pl.Series(name, [None] * df.height, dtype=dtype))
            continue
        col = df[name]
        if col.dtype == pl.String and typ == "date":  # ISO text; MLflow's signature turns it into datetimes
            col = col.str.to_date(strict=False)
        cast = col.cast(dtype, strict=False)
        bad = col.filter(cast.is_null() & col.is_not_null())
        if bad.len():
            raise ValueError(f"column {name!r}: value {bad[0]!r} is not of type {typ}")
        out.append(cast.alias(name))
    return pl.DataFrame(out)
