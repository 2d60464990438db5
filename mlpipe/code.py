"""Finding a step's function from its code reference, and shipping code to remote tasks.

In the launching process every compiled step's function is remembered by
(module, qualname, fingerprint), which also tells apart closures that share
a qualname. A remote task resolves the reference by import when the module is
importable, else by loading the cloudpickle the launcher stored for it, after
checking that the Python minor version matches (a pickled function only loads
safely on the version that pickled it).

A task that imported the step's code checks it with :func:`verify` before
running anything: the image may hold other code than the checkout the
pipeline was compiled from, and results computed from it must never be
stored under the compiled fingerprint's cache key.
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

__all__ = ["register", "resolve", "ship", "verify"]

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
        if not ref.pickle_sha256:
            raise DefinitionError(
                f"step {spec.name!r}: its shipped code {ref.pickle_digest[:12]}… carries no SHA-256 in the "
                "compiled pipeline, so it cannot be verified and is not unpickled; submit the pipeline again",
                step=spec.name,
            )
        fn = store.get_value(ref.pickle_digest, sha256=ref.pickle_sha256)
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


def verify(spec: StepSpec, fn: Callable[..., Any]) -> None:
    """Refuse to run code whose fingerprint is not the one the pipeline was compiled with.

    Code found by import (from a runtime image, or a checkout) is fingerprinted
    as it is here; the compiled function itself (this process) and pickled code
    (stored by content address when the run was submitted) are the compiled
    code by construction.

    Raises:
        DefinitionError: naming the function (``.step`` the step), both digests and what differs; the fix
            is to rebuild the image from the compiled code (or compile from the image's).
    """
    from mlpipe.fingerprint import fingerprint

    ref = spec.code
    if _live.get((ref.module, ref.qualname, spec.fingerprint)) is fn:
        return
    if ref.pickle_digest and not ref.importable:
        return
    found = fingerprint(fn)
    if found.digest == spec.fingerprint:
        return
    compiled = spec.code_manifest
    changes = [
        f"{label} {'is new' if label not in compiled else 'changed'}"
        for label, digest in sorted(found.manifest.items())
        if compiled.get(label) != digest
    ] + [f"{label} is no longer reached" for label in sorted(set(compiled) - set(found.manifest))]
    shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
    raise DefinitionError(
        f"the code this task imported ({ref.module}.{ref.qualname}) has fingerprint "
        f"{found.digest}, but the pipeline was compiled from fingerprint {spec.fingerprint} "
        f"({shown or 'the manifests differ'}). The image holds other code than the one the pipeline was compiled "
        "from: rebuild the image from the same checkout (`mlpipe image FILE:PIPELINE`) and push it, or compile "
        "again from the code in the image. Nothing was run or stored",
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
        sha = store.meta(info.digest)["sha256"]
        code = spec.code.model_copy(update={"pickle_digest": info.digest, "python": PY_VERSION, "pickle_sha256": sha})
        steps.append(spec.model_copy(update={"code": code}))
    return ir.model_copy(update={"steps": tuple(steps)})
