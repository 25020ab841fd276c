"""The homeworth price model as MLflow loads it: the code file of an MLflow "models from code" pyfunc.

``tasks.model.pyfunc.save_pyfunc`` names this file as the ``python_model``; MLflow copies it into every model
folder and runs it from there when the model is loaded (``mlflow.pyfunc.load_model``, ``mlflow models serve``),
so this file's folder is the model's: the bundle (``model.safetensors``, ``model_config.json``,
``preprocessing.json``) beside ``MLmodel``. Nothing is pickled.

Loading needs the homeworth package importable. A model whose features use comparable sales reads the history
of validated sales from the lake of the settings where it is loaded (``settings.lake_uri``, from
``HOMEWORTH_HOME`` / ``HOMEWORTH_LAKE_URI``) each time it predicts (re-read only when the lake's partitions
change), and uses only sales dated before each house, as batch scoring and the endpoint do.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel


class HomeworthPriceModel(PythonModel):
    """Prices for a pandas frame of houses (the spec's columns less target and split; extra columns ignored):
    a pandas frame with the id column(s) and ``predicted_<target>``, in the input's order."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.bundle = None
        self.config: dict = {}

    def load_context(self, context) -> None:
        from tasks.core.settings import get_settings
        from tasks.model.bundle import ModelBundle

        self.config = dict(context.model_config or {})
        self.bundle = ModelBundle.load(self.folder, lake_uri=get_settings().lake_uri)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from tasks.model.pyfunc import model_frame, prediction_column

        if not self.config:  # a model saved without a matching spec: the frame as given
            import polars as pl

            return pd.DataFrame({"prediction": self.bundle.predict(pl.from_pandas(model_input))})
        frame = model_frame(model_input, self.config)
        prices = self.bundle.predict(frame) if frame.height else []
        out = {c: frame[c].to_list() for c in self.config["ids"]}
        out[prediction_column(self.config["target"])] = pd.Series(prices, dtype="float64")
        return pd.DataFrame(out)


mlflow.models.set_model(HomeworthPriceModel(Path(__file__).resolve().parent))
