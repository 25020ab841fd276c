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
from tasks.model.tensors import FeatureMatrices

WEIGHTS, CONFIG, PREPROCESSING = "model.safetensors", "model_config.json", "preprocessing.json"
SCORE_ROWS = 8  # rows per forward pass when scoring (ModelBundle.forward; docs/serving.md)


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

    With the lake as history the comparable sales come from its index (``tasks.features.comps_index``: tables
    built once per lake state, checked against the plan), the network's inputs from ``FeatureMatrices`` and the
    forward pass runs in fixed passes of ``SCORE_ROWS`` (docs/serving.md, "Where the time goes").
    """

    def __init__(self, net: TabularNet, cfg: ModelConfig, prep: Preprocessing, history=None,
                 lake_uri: str | None = None):
        self.net, self.cfg, self.prep, self.history = net.eval(), cfg, prep, history
        self.lake_uri = lake_uri
        self.matrices = FeatureMatrices(prep)  # the network's inputs without a Polars plan per call
        self.index_ttl_s = 10.0  # how often the endpoint's path checks the lake for new partitions

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

    def comps_index(self, fresh: bool = True):
        """The comparable-sales index (``tasks.features.comps_index``) of the lake's validated sales, or None when
        the history is given (argument or ``self.history``) or the configuration has none: the plan is used.
        ``fresh``: the lake's partitions are listed now and a changed lake is indexed before answering (batch
        scoring); else at most every ``index_ttl_s`` seconds, rebuilt in the background (the endpoint)."""
        if self.prep.comps is None or self.history is not None or self.lake_uri is None:
            return None
        from tasks.features.comps_index import lake_index

        lake = lake_index(self.lake_uri, self.prep.comps)
        if lake is None:
            return None
        lake.ttl_s = self.index_ttl_s
        return lake.get(fresh=fresh)

    def features(self, df: pl.DataFrame, history=None, fresh: bool = True) -> pl.DataFrame:
        """Every input column for validated rows: comparable sales (if the model uses them), then derive.

        With the lake as history, the comps come from its index (the same values as the plan, checked when it
        is built: ``tasks.features.comps_index``); batch scoring, MLflow's pyfunc and the endpoint all go this way.
        """
        index = self.comps_index(fresh) if history is None else None
        if index is not None:
            return self.prep.derive(index.comps(df).lazy()).collect()
        h = self.history_frame(history)
        if h is not None and not isinstance(h, pl.LazyFrame) and h.height == 0:
            h = pl.DataFrame(schema=df.select(self.prep.comps.input_columns(with_target=True)).schema)
        return self.prep.features(df, h).collect()

    def predict_features(self, df: pl.DataFrame) -> np.ndarray:
        """Prices for rows that already carry the derived features."""
        x_num, x_cat = self.matrices.tensors(df)
        return self.matrices.decode(self.forward(x_num, x_cat), df)

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> np.ndarray:
        """The network's outputs, in passes of exactly ``SCORE_ROWS`` rows (the last one padded with zeros) into one
        preallocated array. A matrix product's rounding depends on how many rows it multiplies (one row takes
        another kernel than 8), so a fixed pass size is what makes a house's price the same whether it comes alone
        to the endpoint or among a million listings in batch scoring."""
        n, b = len(x_num), SCORE_ROWS
        z = np.empty(n, dtype=np.float32)
        full = n - n % b
        with torch.inference_mode():
            for i in range(0, full, b):
                z[i : i + b] = self.net(x_num[i : i + b], x_cat[i : i + b]).numpy()
            if full < n:
                pad_num, pad_cat = x_num.new_zeros((b, x_num.shape[1])), x_cat.new_zeros((b, x_cat.shape[1]))
                pad_num[: n - full], pad_cat[: n - full] = x_num[full:], x_cat[full:]
                z[full:] = self.net(pad_num, pad_cat).numpy()[: n - full]
        return z

    def predict(self, df: pl.DataFrame, history=None, fresh: bool = True) -> np.ndarray:
        """Prices for validated rows (the spec's columns, typed); ``history`` and ``fresh``: see the class doc and
        :meth:`comps_index`."""
        return self.predict_features(self.features(df, history, fresh))

    def warm(self) -> None:
        """Build the comps index now (and run the network once), so the first request after a champion swap is
        as fast as the others (``tasks.serving.champion`` calls it before swapping)."""
        self.comps_index(fresh=True)

    def describe(self) -> dict:
        return json.loads(self.cfg.model_dump_json())
