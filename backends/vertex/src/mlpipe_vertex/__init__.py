"""mlpipe-vertex: the Vertex AI Pipelines backend for mlpipe.

Installed, it registers the backend ``vertex`` in the entry point group
``mlpipe.backends``; a profile with ``backend = "vertex"`` and a ``gs://``
store selects it. Importing this package imports neither kfp nor
google-cloud-aiplatform; the backend imports kfp when it compiles and the
generated ``google.cloud.aiplatform_v1`` client when it first talks to Vertex.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mlpipe_vertex.backend import JobRequest, VertexBackend
    from mlpipe_vertex.options import VertexOptions

__all__ = ["JobRequest", "VertexBackend", "VertexOptions", "__version__"]

_LAZY = {
    "JobRequest": "mlpipe_vertex.backend",
    "VertexBackend": "mlpipe_vertex.backend",
    "VertexOptions": "mlpipe_vertex.options",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlpipe_vertex' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
