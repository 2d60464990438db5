"""MLflow for mlpipe: run tracking, the model registry and promotion gates (``pip install 'mlpipe[mlflow]'``).

Turn tracking on with ``tracking_uri`` in a profile (or ``MLFLOW_TRACKING_URI``)::

    [profiles.dev]
    tracking_uri = "http://127.0.0.1:5000"
    experiment = "churn"            # default: mlpipe/<pipeline>

Each pipeline run becomes a parent MLflow run (pipeline parameters as params);
each step a child run created with the parent's id explicitly (correct with
parallel steps and in remote containers), tagged with mlpipe's run id,
pipeline, step, cache key, code fingerprint, cache hit, artifact addresses
and git commit. Numeric fields of pydantic outputs become metrics; a cache
hit is a child run that points at the run which computed the outputs.

Inside a step, :func:`mlpipe.log_metric` / :func:`mlpipe.log_params` and plain
``mlflow.log_*`` calls land in the step's child run; :func:`register_model`
and :func:`promote` work with the registry.

Importing this package does not import mlflow; the first tracked call does.
"""

from __future__ import annotations

from mlpipe.integrations.mlflow._registry import (
    BetterThanChampion,
    Candidate,
    Gate,
    GateResult,
    MetricThreshold,
    ModelVersionRef,
    Promotion,
    load_model,
    promote,
    register_model,
)
from mlpipe.integrations.mlflow._tracker import MlflowStep, MlflowTracker

__all__ = [
    "BetterThanChampion",
    "Candidate",
    "Gate",
    "GateResult",
    "MetricThreshold",
    "MlflowStep",
    "MlflowTracker",
    "ModelVersionRef",
    "Promotion",
    "load_model",
    "promote",
    "register_model",
]
