"""The backend plugin contract: :class:`Backend`, :class:`RunHandle`, :class:`Capabilities`.

A backend receives the IR (never user functions) and a store, and runs or
compiles the pipeline. Backends are found by name through the entry point
group ``mlpipe.backends`` and loaded on first use; the core knows only
``local`` by name. An instance can always be passed directly
(``pipeline.run(backend=MyBackend())``).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from mlpipe.errors import BackendError, ConfigError, UnsupportedFeatureError

if TYPE_CHECKING:
    from mlpipe.ir import PipelineIR
    from mlpipe.run import Run
    from mlpipe.store import ArtifactStore

__all__ = [
    "Backend",
    "BackendOptions",
    "Capabilities",
    "RunHandle",
    "RunStatus",
    "available_backends",
    "get_backend",
]

ENTRY_POINT_GROUP = "mlpipe.backends"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Capabilities:
    """What a backend can express. Asking for more fails at compile time.

    ``gates``: when a step declared with ``gate=True`` fails, the backend records
    every step downstream of it as ``skipped`` with the gate's reason (and the
    run as ``failed``), instead of leaving them pending.

    ``prune``: ``submit`` leaves the steps that are cache hits out of what it
    sends (:func:`mlpipe.planning.plan_run`), so they cost no task, and records
    them as cached; a fully cached run starts no task at all.
    """

    execute: bool = True
    parallel: bool = False
    map: bool = False
    conditions: bool = False
    resources: bool = False
    retries: bool = False
    timeouts: bool = False
    schedules: bool = False
    gates: bool = False
    prune: bool = False


class RunHandle(BaseModel):
    """A serialisable reference to a submitted run, enough to find it again later.

    Attributes:
        backend: Backend name.
        run_id: mlpipe's run id (records live under ``runs/<run_id>/`` in the store).
        pipeline: Pipeline name.
        store: Store URL.
        external_id: The backend's own id (KFP run id, Vertex job name, SageMaker execution ARN).
        url: A link to the run in the backend's UI, when there is one.
        data: Backend-specific extras.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    backend: str
    run_id: str
    pipeline: str
    store: str
    external_id: str | None = None
    url: str | None = None
    data: dict[str, Any] = {}

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> RunHandle:
        return cls.model_validate_json(text)


class RunStatus(BaseModel):
    """A backend's view of a run's state. ``state`` is one of pending, running, succeeded, failed, cancelled."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    state: str
    message: str | None = None
    steps: dict[str, str] = {}

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


class BackendOptions(BaseModel):
    """Base of a backend's options model. Unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Backend(ABC):
    """A place where pipelines run. Subclass it to add one.

    Subclasses set ``name``, ``capabilities`` and ``Options`` (a
    :class:`BackendOptions` subclass validating the profile's ``options``).
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    Options: ClassVar[type[BackendOptions]] = BackendOptions

    def __init__(self, options: Mapping[str, Any] | BackendOptions | None = None, *, image: str | None = None) -> None:
        self.image = image
        if isinstance(options, BackendOptions):
            self.options = options
        elif not options:
            self.options = self.Options.model_construct()  # all defaults: nothing to validate
        else:
            try:
                self.options = self.Options(**dict(options or {}))
            except ValidationError as exc:
                valid = ", ".join(self.Options.model_fields) or "(none)"
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
                raise ConfigError(
                    f"invalid options for backend {self.name!r}: {problems}. Valid options: {valid}",
                    backend=self.name,
                ) from None

    @abstractmethod
    def submit(
        self,
        ir: PipelineIR,
        store: ArtifactStore,
        *,
        params: Mapping[str, Any],
        run_id: str,
        cache: bool = True,
    ) -> RunHandle:
        """Start a run of ``ir`` and return at once with a handle.

        Preconditions: ``params`` are validated and complete; ``run_id`` is new.
        The backend writes the run's records under ``runs/<run_id>/`` in ``store``
        (directly or through ``python -m mlpipe.runtime`` in each task).

        Raises:
            UnsupportedFeatureError: the pipeline asks for what the backend lacks.
            BackendError: the backend refused or could not be reached.
        """

    @abstractmethod
    def status(self, handle: RunHandle) -> RunStatus:
        """The current state of a submitted run. Never blocks for long."""

    @abstractmethod
    def cancel(self, handle: RunHandle) -> None:
        """Ask the backend to stop the run. Idempotent: cancelling a finished run is a no-op."""

    def compile(self, ir: PipelineIR, path: str, *, store: ArtifactStore | None = None) -> str:
        """Write the backend's native form of the pipeline to ``path``.

        Raises:
            UnsupportedFeatureError: if this backend has nothing to compile to.
        """
        raise UnsupportedFeatureError(f"backend {self.name!r} has no compiled form", backend=self.name)

    def check(self, ir: PipelineIR) -> None:
        """Refuse, before anything runs, what the backend cannot express."""
        caps = self.capabilities
        for spec in ir.steps:
            if spec.resources and not caps.resources:
                raise UnsupportedFeatureError(
                    f"backend {self.name!r} cannot honour resources= on step {spec.name!r}",
                    backend=self.name,
                    step=spec.name,
                )
            if spec.retries and not caps.retries:
                raise UnsupportedFeatureError(
                    f"backend {self.name!r} cannot retry step {spec.name!r} (retries={spec.retries})",
                    backend=self.name,
                    step=spec.name,
                )
            if spec.timeout and not caps.timeouts:
                raise UnsupportedFeatureError(
                    f"backend {self.name!r} cannot enforce timeout= on step {spec.name!r}",
                    backend=self.name,
                    step=spec.name,
                )
            if spec.map_over and not caps.map:
                raise UnsupportedFeatureError(
                    f"backend {self.name!r} cannot run step {spec.name!r}, a fan-out ({spec.name}.map over "
                    f"{', '.join(spec.map_over)}): it has no 'map' capability. Run this pipeline on a backend that "
                    "has it (local does), or loop inside a step",
                    backend=self.name,
                    step=spec.name,
                )
            if spec.when and not caps.conditions:
                raise UnsupportedFeatureError(
                    f"backend {self.name!r} cannot run step {spec.name!r} under `mp.when({spec.when[0].describe()})`: "
                    "it has no 'conditions' capability, and running the step anyway would be wrong. Run this "
                    "pipeline on a backend that has it (local does), or decide inside a step",
                    backend=self.name,
                    step=spec.name,
                )
            if spec.gate and not caps.gates:
                raise UnsupportedFeatureError(
                    f"backend {self.name!r} cannot run quality gate {spec.name!r}: it does not record the steps "
                    "after a failed gate as skipped. Run this pipeline on a backend with the 'gates' capability "
                    "(local does), or drop gate=True from the step",
                    backend=self.name,
                    step=spec.name,
                )

    def wait(self, handle: RunHandle, *, timeout: float | None = None, poll: float = 2.0) -> RunStatus:
        """Poll :meth:`status` until the run ends (or ``timeout`` seconds pass)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(0.2, poll)
        while True:
            status = self.status(handle)
            if status.done:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise BackendError(
                    f"run {handle.run_id} on {self.name} still {status.state} after {timeout:g} s",
                    run_id=handle.run_id,
                )
            time.sleep(delay)
            delay = min(delay * 1.5, poll)

    def run(
        self,
        ir: PipelineIR,
        store: ArtifactStore,
        *,
        params: Mapping[str, Any],
        run_id: str,
        cache: bool = True,
    ) -> Run:
        """Submit and wait; return the finished run as recorded in the store."""
        from mlpipe.run import Run

        handle = self.submit(ir, store, params=params, run_id=run_id, cache=cache)
        self.wait(handle)
        return Run.load(store, handle.run_id)


def get_backend_class(name: str) -> type[Backend]:
    """The backend class registered under ``name`` (the built-in ``local``, or an entry point).

    Raises:
        BackendNotFoundError: nothing is installed under that name (lists what is; "did you mean").
        BackendError: two distributions claim the name, or the target is not a Backend.
        MissingDependencyError: the plugin failed to import (names what to install).
    """
    from mlpipe.plugins import BACKENDS

    cls: type[Backend] = BACKENDS.load(name, Backend)
    return cls


def get_backend(name: str, options: Mapping[str, Any] | None = None, *, image: str | None = None) -> Backend:
    """An instance of the backend ``name`` with validated ``options``."""
    return get_backend_class(name)(options, image=image)


def available_backends() -> dict[str, str]:
    """Installed backends: name → where it comes from (distribution and target)."""
    from mlpipe.plugins import BACKENDS

    return BACKENDS.available()
