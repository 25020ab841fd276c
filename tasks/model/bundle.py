"""The saved model bundle: weights (safetensors, no pickle), configuration and preprocessing, all plain
files; :class:`ModelBundle` loads one and scores validated rows (features, preprocess, forward, decode).

A bundle folder is also an MLflow pyfunc model (``MLmodel``, "models from code": ``tasks/model/pyfunc.py``),
so MLflow's own tools load it too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import torch

from tasks.features.preprocessing import Preprocessing
from tasks.model.config import ModelConfig
from tasks.model.networks import TabularNet, build_net
from tasks.model.pyfunc import save_pyfunc
from tasks.model.tensors import to_tensors

WEIGHTS, CONFIG, PREPROCESSING = "model.safetensors", "model_config.json", "preprocessing.json"


def save_bundle(directory: Path, net: TabularNet, cfg: ModelConfig, prep: Preprocessing, spec=None,
                example: pl.DataFrame | None = None) -> None:
    """Write the bundle's files and its MLflow pyfunc model (``tasks.model.pyfunc.save_pyfunc``: signature from
    ``spec``, default the configured spec when the preprocessing was fitted on it; input example from
    ``example`` rows) into ``directory``."""
    from safetensors.torch import save_file

    save_pyfunc(directory, prep, spec, example)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(directory / WEIGHTS))
    (directory / CONFIG).write_text(cfg.model_dump_json(indent=2))
    (directory / PREPROCESSING).write_text(prep.model_dump_json(indent=2))


class ModelBundle:
    """A trained model ready to score validated rows: features (comps, derive), preprocess, forward, decode.

    A model whose preprocessing uses comparable sales needs the history of validated sales to score
    new rows: ``predict(df, history=...)`` takes it (a frame of validated sales, or a
    ``tasks.features.comps.LakeHistory``); without one it uses ``self.history``, else the validated
    partitions of the lake at ``lake_uri`` (re-read only when they change; the caller passes its
    settings' ``lake_uri``). Only sales dated before each row are used.
    """

    def __init__(self, net: TabularNet, cfg: ModelConfig, prep: Preprocessing, history=None,
                 lake_uri: str | None = None):
        self.net, self.cfg, self.prep, self.history = net.eval(), cfg, prep, history
        self.lake_uri = lake_uri

    @classmethod
    def load(cls, directory: str | Path, history=None, lake_uri: str | None = None) -> "ModelBundle":
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg = ModelConfig.model_validate_json((directory / CONFIG).read_text())
        prep = Preprocessing.model_validate_json((directory / PREPROCESSING).read_text())
        net = build_net(prep, cfg)
        net.load_state_dict(load_file(str(directory / WEIGHTS)))
        return cls(net, cfg, prep, history, lake_uri)

    def history_frame(self, history=None) -> pl.DataFrame | pl.LazyFrame | None:
        """The comps history to use: the argument, ``self.history``, or the lake at ``self.lake_uri``."""
        if self.prep.comps is None:
            return None
        h = history if history is not None else self.history
        if h is None:
            if self.lake_uri is None:
                raise ValueError("this model's features need the history of validated sales (comparable sales): "
                                 "pass history, or lake_uri when loading the bundle")
            from tasks.features.comps import lake_history

            h = lake_history(self.lake_uri, self.prep.comps)
        return h.frame() if hasattr(h, "frame") else h

    def features(self, df: pl.DataFrame, history=None) -> pl.DataFrame:
        """Every input column for validated rows: comparable sales (if the model uses them), then derive."""
        h = self.history_frame(history)
        if h is not None and not isinstance(h, pl.LazyFrame) and h.height == 0:
            h = pl.DataFrame(schema=df.select(self.prep.comps.input_columns(with_target=True)).schema)
        return self.prep.features(df, h).collect()

    def predict_features(self, df: pl.DataFrame) -> np.ndarray:
        """Prices for rows that already carry the derived features."""
        x_num, x_cat = to_tensors(self.prep, df, with_target=False)
        out = []
        with torch.inference_mode():
            for i in range(0, len(x_num), 8192):
                out.append(self.net(x_num[i : i + 8192], x_cat[i : i + 8192]).numpy())
        z = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        return self.prep.decode_rows(z, df)

    def predict(self, df: pl.DataFrame, history=None) -> np.ndarray:
        """Prices for validated rows (the spec's columns, typed); ``history``: see the class doc."""
        return self.predict_features(self.features(df, history))

    def describe(self) -> dict:
        return json.loads(self.cfg.model_dump_json())
