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

from mlpipe.errors import BackendError, ConfigError, UnsupportedFeatureError

if TYPE_CHECKING:
    from mlpipe.handles import BackendOptions, RunHandle, RunStatus
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
_MODELS = frozenset({"BackendOptions", "RunHandle", "RunStatus"})


def __getattr__(name: str) -> Any:
    """``RunHandle``, ``RunStatus`` and ``BackendOptions`` (pydantic models), imported on first use."""
    if name in _MODELS:
        from mlpipe import handles

        return getattr(handles, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


class _BaseOptions:
    """``Backend.Options`` when a backend sets none: :class:`BackendOptions`, imported when first asked for."""

    def __get__(self, obj: object, owner: type | None = None) -> type[BackendOptions]:
        from mlpipe.handles import BackendOptions

        return BackendOptions


class Backend(ABC):
    """A place where pipelines run. Subclass it to add one.

    Subclasses set ``name``, ``capabilities`` and ``Options`` (a
    :class:`BackendOptions` subclass validating the profile's ``options``).
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: The options model (a :class:`BackendOptions` subclass); the base's when a backend sets none.
    Options: ClassVar[type[BackendOptions]] = _BaseOptions()  # type: ignore[assignment]

    def __init__(self, options: Mapping[str, Any] | BackendOptions | None = None, *, image: str | None = None) -> None:
        self.image = image
        self._options: BackendOptions | None = None  # None: all defaults, built on first use (no pydantic before)
        if options is None or (isinstance(options, Mapping) and not options):
            return
        if not isinstance(options, Mapping):
            self._options = options
            return
        from pydantic import ValidationError

        try:
            self._options = self._options_model()(**dict(options))
        except ValidationError as exc:
            valid = ", ".join(self._options_model().model_fields) or "(none)"
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(
                f"invalid options for backend {self.name!r}: {problems}. Valid options: {valid}",
                backend=self.name,
            ) from None

    @classmethod
    def _options_model(cls) -> type[BackendOptions]:
        return cls.Options

    @property
    def options(self) -> BackendOptions:
        """The validated options (the defaults when none were given)."""
        if self._options is None:
            self._options = self._options_model().model_construct()  # all defaults: nothing to validate
        return self._options

    @options.setter
    def options(self, value: BackendOptions) -> None:
        self._options = value

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
