"""Finding a step's function from its code reference, and shipping code to remote tasks.

In the launching process every compiled step's function is remembered by
(module, qualname, fingerprint), which also tells apart closures that share
a qualname. A remote task resolves the reference by import when the module is
importable, else by loading the cloudpickle the launcher stored for it, after
checking that the Python minor version matches (a pickled function only loads
safely on the version that pickled it).
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from typing import Any

from mlpipe.errors import DefinitionError
from mlpipe.ir import PipelineIR, StepSpec
from mlpipe.materializers import PY_VERSION, CloudpickleMaterializer
from mlpipe.store import ArtifactStore

__all__ = ["register", "resolve", "ship"]

_live: dict[tuple[str, str, str], Callable[..., Any]] = {}
_lock = threading.Lock()


def register(fn: Callable[..., Any], module: str, qualname: str, fingerprint: str) -> None:
    """Remember a compiled step's function in this process."""
    with _lock:
        _live[(module, qualname, fingerprint)] = fn


def resolve(spec: StepSpec, store: ArtifactStore | None = None) -> Callable[..., Any]:
    """The plain function of a step.

    Raises:
        DefinitionError: the code cannot be found, or was pickled by another Python.
    """
    ref = spec.code
    live = _live.get((ref.module, ref.qualname, spec.fingerprint))
    if live is not None:
        return live
    if ref.pickle_digest and store is not None:
        if ref.python and ref.python != PY_VERSION:
            raise DefinitionError(
                f"step {spec.name!r}: its code was pickled by Python {ref.python} but this runtime is Python "
                f"{PY_VERSION}. Build the image on Python {ref.python}, or move the step into an importable "
                "module so it travels by import path",
                step=spec.name,
            )
        fn = store.get_value(ref.pickle_digest)
        return getattr(fn, "fn", fn)  # type: ignore[no-any-return]
    if ref.importable:
        try:
            obj: Any = importlib.import_module(ref.module)
            for part in ref.qualname.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise DefinitionError(
                f"step {spec.name!r}: cannot import {ref.module}.{ref.qualname}: {exc}. Make sure the module is "
                f"on PYTHONPATH in this environment (sys.path: {sys.path[:4]}...)",
                step=spec.name,
            ) from exc
        return getattr(obj, "fn", obj)  # type: ignore[no-any-return]
    raise DefinitionError(
        f"step {spec.name!r}: the code of {ref.module}.{ref.qualname} is not importable and was not shipped "
        "to the store; submit through mlpipe (which pickles it) or define the step in an importable module",
        step=spec.name,
    )


def ship(ir: PipelineIR, store: ArtifactStore) -> PipelineIR:
    """A copy of ``ir`` in which every non-importable step's code is pickled into ``store``."""
    steps = []
    pickler = CloudpickleMaterializer()
    for spec in ir.steps:
        if spec.code.importable or spec.code.pickle_digest:
            steps.append(spec)
            continue
        fn = resolve(spec)
        info = store.put_value(fn, pickler)
        code = spec.code.model_copy(update={"pickle_digest": info.digest, "python": PY_VERSION})
        steps.append(spec.model_copy(update={"code": code}))
    return ir.model_copy(update={"steps": tuple(steps)})
