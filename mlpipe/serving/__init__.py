"""Serving models over HTTP: ``mlpipe serve churn@champion`` (``pip install 'mlpipe[serve]'``).

A FastAPI application run by uvicorn answers ``POST /invocations`` in the
MLflow scoring protocol (``dataframe_split``, ``dataframe_records``,
``instances``, ``inputs``, or CSV) and ``GET /health``. It logs a sample of
the inputs and predictions into the mlpipe store, bounded in rows and files;
:func:`load_predictions` reads them back as the current data of a drift
check. With a deployment (:mod:`mlpipe.deploy`), it splits traffic between a
champion and a challenger, or mirrors it to a shadow.

Importing this package imports neither fastapi nor mlflow; starting a server does.
"""

from __future__ import annotations

from mlpipe.serving._log import LiveStats, PredictionLog, load_live_stats, load_predictions
from mlpipe.serving._model import LoadedModel, ModelLoadError, UnknownModelError, load_served_model, model_uri
from mlpipe.serving._protocol import BadRequest, parse_request, predictions_json
from mlpipe.serving._server import PortInUseError, Routing, ScoringServer, serving

__all__ = [
    "BadRequest",
    "LiveStats",
    "LoadedModel",
    "ModelLoadError",
    "PortInUseError",
    "PredictionLog",
    "Routing",
    "ScoringServer",
    "UnknownModelError",
    "load_live_stats",
    "load_predictions",
    "load_served_model",
    "model_uri",
    "parse_request",
    "predictions_json",
    "serving",
]
