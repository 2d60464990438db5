"""mlpipe-kubeflow: the Kubeflow Pipelines backend for mlpipe.

Installed, it registers the backend ``kubeflow`` in the entry point group
``mlpipe.backends``; a profile with ``backend = "kubeflow"`` selects it.
Importing this package does not import kfp (about a second); the backend
imports it when it compiles, runs or submits.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mlpipe_kubeflow.backend import KubeflowBackend
    from mlpipe_kubeflow.options import KubeflowOptions, StepOverrides, Toleration

__all__ = ["KubeflowBackend", "KubeflowOptions", "StepOverrides", "Toleration", "__version__"]

_LAZY = {
    "KubeflowBackend": "mlpipe_kubeflow.backend",
    "KubeflowOptions": "mlpipe_kubeflow.options",
    "StepOverrides": "mlpipe_kubeflow.options",
    "Toleration": "mlpipe_kubeflow.options",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlpipe_kubeflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
