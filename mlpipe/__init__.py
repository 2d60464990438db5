"""mlpipe: typed Python functions as ML pipelines, run locally or on Kubeflow, Vertex AI and SageMaker.

This module is the facade. It imports only the step and pipeline definitions
(which need nothing heavy); everything else is loaded on first attribute
access, so ``import mlpipe`` stays fast and never imports pandas, pyarrow,
kfp, sagemaker, google-cloud-aiplatform or mlflow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlpipe._version import __version__
from mlpipe.errors import MlpipeError
from mlpipe.pipeline import Pipeline, pipeline
from mlpipe.step import Resources, Step, step
from mlpipe.trace import unmapped, when

if TYPE_CHECKING:
    from mlpipe.backend import Backend, BackendOptions, Capabilities, RunHandle, RunStatus
    from mlpipe.config import Profile
    from mlpipe.files import Directory, File
    from mlpipe.ir import PipelineIR
    from mlpipe.materializers import Materializer, register_materializer
    from mlpipe.run import Run, StepRun, get_run, runs
    from mlpipe.store import ArtifactStore
    from mlpipe.tracking import log_metric, log_metrics, log_params

__all__ = [
    "ArtifactStore",
    "Backend",
    "BackendOptions",
    "Capabilities",
    "Directory",
    "File",
    "Materializer",
    "MlpipeError",
    "Pipeline",
    "PipelineIR",
    "Profile",
    "Resources",
    "Run",
    "RunHandle",
    "RunStatus",
    "Step",
    "StepRun",
    "__version__",
    "get_run",
    "log_metric",
    "log_metrics",
    "log_params",
    "pipeline",
    "register_materializer",
    "runs",
    "step",
    "unmapped",
    "when",
]

_LAZY = {
    "ArtifactStore": "mlpipe.store",
    "Backend": "mlpipe.backend",
    "BackendOptions": "mlpipe.backend",
    "Capabilities": "mlpipe.backend",
    "Directory": "mlpipe.files",
    "File": "mlpipe.files",
    "Materializer": "mlpipe.materializers",
    "PipelineIR": "mlpipe.ir",
    "Profile": "mlpipe.config",
    "Run": "mlpipe.run",
    "RunHandle": "mlpipe.backend",
    "RunStatus": "mlpipe.backend",
    "StepRun": "mlpipe.run",
    "get_run": "mlpipe.run",
    "log_metric": "mlpipe.tracking",
    "log_metrics": "mlpipe.tracking",
    "log_params": "mlpipe.tracking",
    "register_materializer": "mlpipe.materializers",
    "runs": "mlpipe.run",
}


# Subpackages reachable as ``mp.<name>`` and imported on first access (they need extras).
_SUBPACKAGES = {"quality": "mlpipe.quality"}


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(_SUBPACKAGES[name])  # the import binds it in globals()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlpipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
