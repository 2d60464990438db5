"""The pyfunc wrapper for models without an MLflow flavor. Imports mlflow: load it only to log or serve."""

from __future__ import annotations

from typing import Any

from mlflow.pyfunc import PythonModel  # type: ignore[attr-defined]

__all__ = ["ModelPredictor"]


class ModelPredictor(PythonModel):  # type: ignore[misc]
    """Serves any object with a ``predict`` method (or a callable) as an MLflow pyfunc model."""

    def __init__(self, model: Any) -> None:
        self.model = model

    # Unannotated on purpose: mlflow turns predict()'s type hints into an input schema, and the
    # input here is whatever the wrapped model accepts (mlflow says so in a UserWarning).
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        predict = getattr(self.model, "predict", None)
        if callable(predict):
            return predict(model_input)
        if callable(self.model):
            return self.model(model_input)
        raise TypeError(f"{type(self.model).__name__} has no predict() and is not callable")
