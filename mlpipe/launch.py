"""The launcher: from a pipeline, a profile and parameters to a backend call.

It resolves the profile (backend, store, options), validates parameters and
builds the IR *before* anything runs, asks the backend to refuse what it
cannot express, creates the run id and the initial run record, and saves the
handle of a submitted run so ``mlpipe runs show`` can find it again.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mlpipe.backend import Backend, RunHandle, get_backend
from mlpipe.config import Profile, load_profile
from mlpipe.store import ArtifactStore, open_store
from mlpipe.tracking import run_scope

if TYPE_CHECKING:
    from mlpipe.ir import PipelineIR
    from mlpipe.pipeline import Pipeline
    from mlpipe.run import Run

__all__ = ["compile_pipeline", "new_run_id", "resolve", "run_pipeline", "submit_pipeline"]


def new_run_id() -> str:
    """A run id that sorts by start time, to the millisecond: ``20261126-074301-123-3f9a1c``."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return f"{stamp}-{int(now % 1 * 1000):03d}-{secrets.token_hex(3)}"


def resolve(profile: str | None, backend: str | Backend | None) -> tuple[Profile, Backend, ArtifactStore]:
    """The profile, a configured backend instance, and the store for a call."""
    prof = load_profile(profile)
    if isinstance(backend, Backend):
        instance = backend
    else:
        name = backend or prof.backend
        options = prof.options if name == prof.backend else {}
        instance = get_backend(name, options, image=prof.image)
    return prof, instance, open_store(prof.store, prof.storage_options)


def run_pipeline(
    pipeline: Pipeline,
    params: Mapping[str, Any],
    *,
    profile: str | None = None,
    backend: str | Backend | None = None,
    cache: bool = True,
) -> Run:
    values = pipeline.validate_params(params)
    ir = pipeline.ir
    prof, instance, store = resolve(profile, backend)
    instance.check(ir)
    run_id = new_run_id()
    with run_scope(prof, ir, store, run_id=run_id, params=values, backend=instance.name) as tracked:
        run = instance.run(ir, store, params=values, run_id=run_id, cache=cache)
        tracked.status, tracked.error = run.status, run.error
    return run


def submit_pipeline(
    pipeline: Pipeline,
    params: Mapping[str, Any],
    *,
    profile: str | None = None,
    backend: str | Backend | None = None,
    cache: bool = True,
) -> RunHandle:
    values = pipeline.validate_params(params)
    ir = pipeline.ir
    prof, instance, store = resolve(profile, backend)
    instance.check(ir)
    run_id = new_run_id()
    with run_scope(prof, ir, store, run_id=run_id, params=values, backend=instance.name, detached=True):
        handle = instance.submit(ir, store, params=values, run_id=run_id, cache=cache)
    save_handle(store, handle)
    return handle


def compile_pipeline(pipeline: Pipeline, backend: str | Backend, path: str, *, profile: str | None = None) -> str:
    ir = pipeline.ir
    if isinstance(backend, str) and profile is not None:
        prof = load_profile(profile)
        instance = get_backend(backend, prof.options if backend == prof.backend else {}, image=prof.image)
        store = open_store(prof.store, prof.storage_options)
    else:
        prof, instance, store = resolve(profile, backend)
    instance.check(ir)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return instance.compile(ir, path, store=store)


def save_handle(store: ArtifactStore, handle: RunHandle) -> None:
    """Record a submitted run's handle in the store and the local index."""
    from mlpipe.metadata import open_index

    rel = f"runs/{handle.run_id}/run.json"
    doc: dict[str, Any] = (
        store.get_json(rel)
        if store.has(rel)
        else {
            "id": handle.run_id,
            "pipeline": handle.pipeline,
            "status": "pending",
            "backend": handle.backend,
            "started": time.time(),
            "ended": None,
        }
    )
    doc["handle"] = handle.model_dump(mode="json")
    store.put_json(rel, doc)
    open_index(store).record_run(doc)


def write_run_doc(
    store: ArtifactStore,
    ir: PipelineIR,
    run_id: str,
    backend: str,
    params: Mapping[str, Any],
    status: str,
    **extra: Any,
) -> dict[str, Any]:
    """Write the run's record (``runs/<id>/run.json``) and return it."""
    ir_digest, ir_json = _ir_bytes(ir)
    rel = f"pipelines/{ir_digest}.json"
    if not store.has(rel):
        store.put_bytes(rel, ir_json)
    doc: dict[str, Any] = {
        "id": run_id,
        "pipeline": ir.name,
        "status": status,
        "backend": backend,
        "params": dict(params),
        "started": time.time(),
        "ended": None,
        "order": [s.name for s in ir.steps],
        "outputs": [o.to_dict() for o in ir.outputs],
        "ir": ir_digest,
        "store": store.url,
        **extra,
    }
    store.put_json(f"runs/{run_id}/run.json", doc)
    return doc


_ir_cache: dict[int, tuple[PipelineIR, str, bytes]] = {}


def _ir_bytes(ir: PipelineIR) -> tuple[str, bytes]:
    """Canonical JSON of the IR and its digest, computed once per IR object."""
    from mlpipe.hashing import canonical_json, digest_bytes

    hit = _ir_cache.get(id(ir))
    if hit is not None and hit[0] is ir:
        return hit[1], hit[2]
    data = canonical_json(ir.to_dict()).encode()
    digest = digest_bytes(data)
    _ir_cache[id(ir)] = (ir, digest, data)
    return digest, data
