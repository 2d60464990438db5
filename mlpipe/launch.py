"""The launcher: from a compiled pipeline, a profile and parameter values to a backend call.

It takes the IR and validated parameter values (never a Pipeline object),
resolves the profile (backend, store, options), asks the backend to refuse
what it cannot express *before* anything runs, creates the run id, opens the
run's tracking, and saves the handle of a submitted run so ``mlpipe runs
show`` can find it again. The backend opens and closes the run's record.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlpipe.backend import Backend, get_backend
from mlpipe.config import Profile, load_profile
from mlpipe.errors import StoreError
from mlpipe.records import RunRecord
from mlpipe.store import ArtifactStore, open_store
from mlpipe.tracking import run_scope

if TYPE_CHECKING:
    from mlpipe.handles import RunHandle
    from mlpipe.ir import PipelineIR
    from mlpipe.run import Run

__all__ = [
    "CompiledSpec",
    "compile_pipeline",
    "compile_spec",
    "new_run_id",
    "profile_store",
    "resolve",
    "run_pipeline",
    "save_handle",
    "submit_pipeline",
]


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
    return prof, instance, profile_store(prof)


def profile_store(prof: Profile) -> ArtifactStore:
    """The profile's store; a local one is created now, so a store that cannot be names itself and the profile.

    Raises:
        StoreError: ``cannot create store '/sys/x' (profile 'prod'): operation not permitted``.
    """
    store = open_store(prof.store, prof.storage_options)
    if store.is_local:
        try:
            os.makedirs(store.url, exist_ok=True)
        except OSError as exc:
            reason = (exc.strerror or type(exc).__name__).lower()
            where = f" in {prof.source}" if prof.source else " (the default; set it in mlpipe.toml)"
            raise StoreError(
                f"cannot create store {prof.store!r} (profile {prof.name!r}): {reason}; "
                f"give the profile a writable store directory{where}"
            ) from None
    return store


def _prepare(
    ir: PipelineIR, profile: str | None, backend: str | Backend | None
) -> tuple[Profile, Backend, ArtifactStore, str]:
    prof, instance, store = resolve(profile, backend)
    instance.check(ir)
    return prof, instance, store, new_run_id()


def run_pipeline(
    ir: PipelineIR,
    values: Mapping[str, Any],
    *,
    profile: str | None = None,
    backend: str | Backend | None = None,
    cache: bool = True,
) -> Run:
    """Run the compiled pipeline ``ir`` with validated parameter ``values`` and wait for its end."""
    prof, instance, store, run_id = _prepare(ir, profile, backend)
    with run_scope(prof, ir, store, run_id=run_id, params=values, backend=instance.name) as tracked:
        run = instance.run(ir, store, params=values, run_id=run_id, cache=cache)
        tracked.status, tracked.error = run.status, run.error
    return run


def submit_pipeline(
    ir: PipelineIR,
    values: Mapping[str, Any],
    *,
    profile: str | None = None,
    backend: str | Backend | None = None,
    cache: bool = True,
) -> RunHandle:
    """Submit the compiled pipeline ``ir`` with validated parameter ``values``; return the run's handle."""
    prof, instance, store, run_id = _prepare(ir, profile, backend)
    with run_scope(prof, ir, store, run_id=run_id, params=values, backend=instance.name, detached=True):
        handle = instance.submit(ir, store, params=values, run_id=run_id, cache=cache)
    save_handle(store, handle)
    return handle


@dataclass(frozen=True)
class CompiledSpec:
    """What :func:`compile_spec` wrote: the file, the digest of the IR its tasks load, why a cluster could not run it.

    Attributes:
        path: The spec file.
        ir_digest: The IR digest the spec's tasks pass as ``--ir`` (with shipped code, as submit stores it).
        warnings: One sentence per reason the spec cannot run on a cluster (a local store, a placeholder image).
        uploaded: How many documents ``upload`` added to the store (0 when not asked or all were there).
    """

    path: str
    ir_digest: str
    warnings: tuple[str, ...]
    uploaded: int | None


def compile_spec(
    ir: PipelineIR, backend: str | Backend, path: str, *, profile: str | None = None, upload: bool = False
) -> CompiledSpec:
    """Write ``backend``'s compiled form of ``ir`` to ``path`` (options and image from ``profile``).

    A pure function of the pipeline and the profile: the store is not opened
    and no credentials are needed. What the tasks load from the store (the IR
    by its digest, shipped code) is staged in memory and uploaded only with
    ``upload`` (``mlpipe compile --upload``); ``submit`` uploads it too.
    """
    from mlpipe.staging import StagedStore, portability_warnings

    prof = load_profile(profile)
    if isinstance(backend, Backend):
        instance = backend
    else:
        instance = get_backend(backend, prof.options if backend == prof.backend else {}, image=prof.image)
    instance.check(ir)
    staged = StagedStore(prof.store, prof.storage_options)
    try:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        written = instance.compile(ir, path, store=staged)
        digests = [rel[len("pipelines/") : -len(".json")] for rel in staged.staged() if rel.startswith("pipelines/")]
        uploaded = staged.upload() if upload else None
    finally:
        staged.discard()
    images = {s.name: s.image or instance.image for s in ir.steps}
    warnings = portability_warnings(staged.url, staged.is_local, images, instance.name)
    return CompiledSpec(written, digests[0] if len(digests) == 1 else "", tuple(warnings), uploaded)


def compile_pipeline(
    ir: PipelineIR, backend: str | Backend, path: str, *, profile: str | None = None, upload: bool = False
) -> str:
    """:func:`compile_spec`, returning the path written."""
    return compile_spec(ir, backend, path, profile=profile, upload=upload).path


def save_handle(store: ArtifactStore, handle: RunHandle) -> None:
    """Record a submitted run's handle in the store and the local index."""
    from mlpipe.metadata import open_index

    RunRecord.save_handle(
        store, handle.run_id, handle.pipeline, handle.backend, handle.model_dump(mode="json"), index=open_index(store)
    )
