"""The pyfunc wrapper for models without an MLflow flavor. Imports mlflow: load it only to log or serve."""

from __future__ import annotations

from typing import Any

from mlflow.pyfunc import PythonModel  # type: ignore[attr-defined]

__all__ = ["ModelPredictor"]


class ModelPredictor(PythonModel):  # type: ignore[misc]
    """Serves any object with a ``predict`` method (or a callable) as an MLflow pyfunc model."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        predict = getattr(self.model, "predict", None)
        if callable(predict):
            return predict(model_input)
        if callable(self.model):
            return self.model(model_input)
        raise TypeError(f"{type(self.model).__name__} has no predict() and is not callable")
