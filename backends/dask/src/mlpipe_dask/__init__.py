"""mlpipe-dask: the Dask backend for mlpipe.

Installed, it registers the backend ``dask`` in the entry point group
``mlpipe.backends``; a profile with ``backend = "dask"`` selects it. Importing
this package does not import dask or distributed; the backend imports them
when it connects to (or starts) a cluster.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mlpipe_dask.backend import DaskBackend
    from mlpipe_dask.options import DaskOptions

__all__ = ["DaskBackend", "DaskOptions", "__version__"]

_LAZY = {"DaskBackend": "mlpipe_dask.backend", "DaskOptions": "mlpipe_dask.options"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mlpipe_dask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
