"""Experiment tracking: the backend-neutral hooks between a pipeline run and a tracking server.

A profile turns tracking on (``tracking_uri``, or ``MLFLOW_TRACKING_URI`` in
the environment). The launcher then opens a :class:`Tracker` for the run,
which records one *parent* run for the pipeline run before any step starts
and one *child* run per step, created with the parent's id passed explicitly
(so it is correct in worker threads and in remote containers alike). The
same :class:`RunTracking` object serves every step of the run:

- the local backend finds it by run id (:func:`for_run`) when it builds its
  :class:`~mlpipe.executor.StepExecutor`;
- ``python -m mlpipe.runtime`` joins the run from ``runs/<id>/tracking.json``
  in the store, written by the launcher, or from environment variables
  (:func:`join_run`).

While a step's function runs, the step's tracking handle is in a
:class:`~contextvars.ContextVar`, so :func:`log_metric` and :func:`log_params`
reach the step's child run from any thread the step runs in. Numeric fields of
pydantic outputs are logged as metrics of the step; pipeline parameters as
params of the parent.

This module owns the contract and the routing. It must not import mlflow or
any other tracking library: implementations live in
:mod:`mlpipe.integrations` and are imported only when a profile asks for them.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mlpipe.errors import MlpipeError, TrackingError

if TYPE_CHECKING:
    from mlpipe.config import Profile
    from mlpipe.ir import PipelineIR, StepSpec
    from mlpipe.records import StepOutcome
    from mlpipe.store import ArtifactStore

__all__ = [
    "ActiveStep",
    "RunTracking",
    "StepTracking",
    "Tracker",
    "RunScope",
    "TrackingWarning",
    "active_step",
    "for_run",
    "git_commit",
    "join_run",
    "log_metric",
    "log_metrics",
    "log_params",
    "output_metrics",
    "run_scope",
    "tracker_for_profile",
]

#: Env var that switches tracking off in a process whatever the profile or store says.
ENV_DISABLE = "MLPIPE_TRACKING"
#: Env var naming a tracking URI for remote tasks that reach the server by another address.
ENV_TRACKING_URI = "MLPIPE_MLFLOW_TRACKING_URI"
#: Env var carrying the parent run id to remote tasks (alternative to the store file).
ENV_PARENT_RUN_ID = "MLPIPE_MLFLOW_PARENT_RUN_ID"
#: Env var carrying the experiment id to remote tasks.
ENV_EXPERIMENT_ID = "MLPIPE_MLFLOW_EXPERIMENT_ID"


class TrackingWarning(UserWarning):
    """Recording a step in the tracking server failed; the pipeline's own results are unaffected."""


class StepTracking(ABC):
    """One step call's record in a tracker (an MLflow child run).

    Methods may be called from any thread. Implementations send each call to
    their own record explicitly (never to a "current run" global).
    """

    #: The tracker's id for this record (an MLflow run id).
    id: str

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None) -> None:
        """Record numeric metrics (``step`` is a training step or epoch, not a pipeline step)."""

    @abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record parameters (values are stringified by the tracker)."""

    @abstractmethod
    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the record."""

    def activate(self) -> AbstractContextManager[None]:
        """Make the tracking library's own API (``mlflow.log_metric``) target this record in this thread."""
        return nullcontext()


class Tracker(ABC):
    """A tracking backend for one pipeline run. Subclass it to add one.

    The launcher calls :meth:`check`, then :meth:`start_run` once before any
    step runs, and :meth:`end_run` when the run ends. A remote task calls
    :meth:`resume` with what :meth:`start_run` returned instead. Each step
    gets :meth:`start_step` (in the thread about to run it, or right before
    recording a cache hit) and :meth:`end_step`. Hooks are called with
    keyword arguments only, so they can grow arguments later.
    """

    name: ClassVar[str]

    def __init__(self, *, tracking_uri: str, experiment: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment

    @abstractmethod
    def check(self) -> None:
        """Fail fast, before the pipeline starts, if the server cannot be reached.

        Raises:
            TrackingError: naming the URI and what went wrong.
            MissingDependencyError: the tracking library is not installed.
        """

    @abstractmethod
    def start_run(
        self, *, run_id: str, pipeline: str, params: Mapping[str, Any], backend: str, tags: Mapping[str, str]
    ) -> dict[str, str]:
        """Create the parent record of a pipeline run.

        Returns:
            JSON-able strings a remote task passes to :meth:`resume` to join the run.
        """

    @abstractmethod
    def resume(self, *, info: Mapping[str, str]) -> None:
        """Join a parent record created by :meth:`start_run` in another process."""

    @abstractmethod
    def end_run(self, *, status: str, error: str | None = None) -> None:
        """Close the parent record with the run's final status (idempotent)."""

    @abstractmethod
    def start_step(self, *, step: str, tags: Mapping[str, str]) -> StepTracking:
        """Create the child record of one step call under the parent (explicitly, by id)."""

    @abstractmethod
    def end_step(self, handle: StepTracking, *, status: str, cached: bool, tags: Mapping[str, str]) -> None:
        """Close a step's record. For a cache hit nothing else was logged to it."""

    def environment(self) -> dict[str, str]:
        """Environment variables a remote task needs to join this run (informational)."""
        return {}


@dataclass
class ActiveStep:
    """The step whose function is running in this context, as seen by :func:`log_metric`."""

    run_id: str
    pipeline: str
    step: str
    key: str
    handle: StepTracking
    tracking: RunTracking
    inputs: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    returned: bool = False

    def input_digest(self, value: Any) -> str | None:
        """The store digest of ``value`` if it is one of the step's artifact inputs (matched by identity)."""
        for name, given in self.values.items():
            if given is value:
                inp = self.inputs.get(name) or {}
                digest = inp.get("digest")
                return digest if isinstance(digest, str) else None
        return None


_ACTIVE: ContextVar[ActiveStep | None] = ContextVar("mlpipe_active_step", default=None)
_RUNS: dict[str, RunTracking] = {}
_RUNS_LOCK = threading.Lock()


def active_step() -> ActiveStep | None:
    """The tracked step running in this context, or None (tracking off, or outside a step)."""
    return _ACTIVE.get()


def log_metric(key: str, value: float, *, step: int | None = None) -> None:
    """Log a metric to the running step's child run. Does nothing when tracking is off.

    Args:
        key: Metric name.
        value: A number.
        step: Training step or epoch, for metric histories.
    """
    log_metrics({key: value}, step=step)


def log_metrics(metrics: Mapping[str, float], *, step: int | None = None) -> None:
    """Log several metrics to the running step's child run. Does nothing when tracking is off."""
    current = _ACTIVE.get()
    if current is not None:
        current.handle.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_params(params: Mapping[str, Any]) -> None:
    """Log parameters to the running step's child run. Does nothing when tracking is off."""
    current = _ACTIVE.get()
    if current is not None:
        current.handle.log_params(params)


def output_metrics(spec: StepSpec, result: Any) -> dict[str, float]:
    """Numeric fields of the pydantic models a step returned, as metrics.

    A single output ``Metrics(accuracy=0.9)`` gives ``{"accuracy": 0.9}``;
    with several outputs the output's name prefixes the field
    (``"scores.accuracy"``). Booleans and non-finite values are left out.
    """
    from pydantic import BaseModel

    outputs = [o.name for o in spec.outputs]
    if not outputs:
        return {}
    if len(outputs) == 1 and not spec.namedtuple:
        pairs = [("", result)]
    elif isinstance(result, tuple) and len(result) == len(outputs):
        pairs = [(f"{name}.", value) for name, value in zip(outputs, result, strict=True)]
    else:
        return {}
    metrics: dict[str, float] = {}
    for prefix, value in pairs:
        if isinstance(value, BaseModel):
            for name, item in value:
                if isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item):
                    metrics[f"{prefix}{name}"] = float(item)
    return metrics


def _flag(value: bool) -> str:
    return "true" if value else "false"


class RunTracking:
    """Everything a pipeline run needs from its tracker, called by the executor.

    The two executor hooks are :meth:`wrap` (around a step's function, before
    it is called) and :meth:`step_done` (after a step is recorded, computed,
    failed or served from the cache). Neither ever raises: a tracking failure
    becomes a :class:`TrackingWarning` and the run continues.

    Args:
        tracker: The tracker, already started or resumed.
        run_id: The mlpipe run id.
        pipeline: The pipeline's name.
        store_url: The store's URL, for artifact addresses in tags.
        detached: True when no launcher waits for the run (submit, remote
            tasks): the last step to finish closes the parent run.
        ir: The compiled pipeline (needed when ``detached``).
        store: The store (needed when ``detached``, to read the step records).
    """

    def __init__(
        self,
        tracker: Tracker,
        *,
        run_id: str,
        pipeline: str,
        store_url: str,
        detached: bool = False,
        ir: PipelineIR | None = None,
        store: ArtifactStore | None = None,
    ) -> None:
        self.tracker = tracker
        self.run_id = run_id
        self.pipeline = pipeline
        self.store_url = store_url.rstrip("/")
        self.detached = detached
        self.ir = ir
        self.store = store
        self._steps: dict[str, ActiveStep] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._succeeded: set[str] = set()

    # -- executor hooks ---------------------------------------------------------------
    def wrap(
        self, spec: StepSpec, fn: Callable[..., Any], key: str, components: Mapping[str, Any]
    ) -> Callable[..., Any]:
        """``fn`` wrapped so that, in whichever thread calls it, the step's child run is active."""
        inputs = dict(components.get("inputs") or {})

        @functools.wraps(fn)
        def tracked(**values: Any) -> Any:
            state = self._start(spec, key, inputs)
            if state is None:
                return fn(**values)
            state.values = values
            token = _ACTIVE.set(state)
            try:
                with self._guard(spec.name, "activate", state.handle.activate()):
                    result = fn(**values)
            finally:
                _ACTIVE.reset(token)
            state.result, state.returned = result, True
            return result

        return tracked

    def step_done(self, spec: StepSpec, outcome: StepOutcome) -> None:
        """Record the end of a step call (computed, failed or a cache hit)."""
        try:
            self._step_done(spec, outcome)
        except Exception as exc:  # the tracker's client may raise anything; the run's results stand
            _warn(f"step {spec.name!r}: recording it in {self.tracker.name} failed: {type(exc).__name__}: {exc}")

    # -- internals --------------------------------------------------------------------
    def _start(self, spec: StepSpec, key: str, inputs: dict[str, Any]) -> ActiveStep | None:
        with self._lock:
            state = self._steps.get(spec.name)
        if state is not None and state.key == key:
            return state  # a retry reuses the child run
        try:
            handle = self.tracker.start_step(step=spec.name, tags=self._step_tags(spec, key, inputs, cached=False))
        except Exception as exc:  # never fail a step because the tracker is unreachable
            _warn(f"step {spec.name!r}: starting its {self.tracker.name} run failed: {type(exc).__name__}: {exc}")
            return None
        params = {n: i.get("value") for n, i in inputs.items() if i.get("kind") == "value"}
        if params:
            try:
                handle.log_params(params)
            except Exception as exc:  # e.g. a value too long for the server; the run goes on
                _warn(f"step {spec.name!r}: logging its parameters failed: {type(exc).__name__}: {exc}")
        state = ActiveStep(self.run_id, self.pipeline, spec.name, key, handle, self, inputs)
        with self._lock:
            self._steps[spec.name] = state
        return state

    def _step_done(self, spec: StepSpec, outcome: StepOutcome) -> None:
        with self._lock:
            state = self._steps.pop(spec.name, None)
        components = outcome.record.get("components") or {}
        inputs = dict(components.get("inputs") or {})
        tags = self._step_tags(spec, outcome.key or "", inputs, cached=outcome.cached)
        tags["mlpipe.status"] = outcome.status
        tags["mlpipe.attempts"] = str(outcome.attempts)
        for name, info in outcome.outputs.items():
            tags[f"mlpipe.output.{name}"] = f"{self.store_url}/objects/{info.digest[:2]}/{info.digest}"
        if outcome.cached:
            tags["mlpipe.cached_from_run_id"] = outcome.source_run or ""
        if outcome.error:
            tags["mlpipe.error"] = outcome.error[:4000]
        if state is None:
            handle = self.tracker.start_step(step=spec.name, tags=tags)
        else:
            handle = state.handle
            if outcome.status == "succeeded" and state.returned:
                metrics = output_metrics(spec, state.result)
                if metrics:
                    handle.log_metrics(metrics)
        self.tracker.end_step(handle, status=outcome.status, cached=outcome.cached, tags=tags)
        if self.detached:
            self._maybe_close(outcome)

    def _step_tags(self, spec: StepSpec, key: str, inputs: Mapping[str, Any], *, cached: bool) -> dict[str, str]:
        tags = {
            "mlpipe.run_id": self.run_id,
            "mlpipe.pipeline": self.pipeline,
            "mlpipe.step": spec.name,
            "mlpipe.cache_key": key,
            "mlpipe.code_fingerprint": spec.fingerprint,
            "mlpipe.code": f"{spec.code.module}:{spec.code.qualname}",
            "mlpipe.cache_hit": _flag(cached),
        }
        for name, inp in inputs.items():
            if inp.get("kind") == "artifact":
                tags[f"mlpipe.input.{name}"] = f"{self.store_url}/objects/{inp['digest'][:2]}/{inp['digest']}"
        return tags

    def _maybe_close(self, outcome: StepOutcome) -> None:
        """Detached runs: a failed step fails the parent; the last step to succeed finishes it."""
        if self._closed:
            return
        if outcome.status == "failed":
            self.close("failed", outcome.error)
            return
        if self.ir is None or self.store is None or outcome.status != "succeeded":
            return
        with self._lock:
            self._succeeded.add(outcome.name)
            missing = [s.name for s in self.ir.steps if s.name not in self._succeeded]
        if missing:
            from mlpipe.records import load_step_records

            records = load_step_records(self.store, self.run_id)
            if any((records.get(name) or {}).get("status") != "succeeded" for name in missing):
                return
        self.close("succeeded")

    def close(self, status: str, error: str | None = None) -> None:
        """End the parent run (once) and forget this run."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with _RUNS_LOCK:
            if _RUNS.get(self.run_id) is self:
                del _RUNS[self.run_id]
        try:
            self.tracker.end_run(status=status, error=error)
        except Exception as exc:  # the run's own results stand
            _warn(f"run {self.run_id}: closing its {self.tracker.name} run failed: {type(exc).__name__}: {exc}")

    @contextmanager
    def _guard(self, step: str, what: str, cm: AbstractContextManager[None]) -> Iterator[None]:
        """Enter ``cm``; if entering or leaving it fails, warn and run the body anyway."""
        try:
            cm.__enter__()
        except Exception as exc:
            _warn(f"step {step!r}: {what} in {self.tracker.name} failed: {type(exc).__name__}: {exc}")
            yield
            return
        try:
            yield
        except BaseException as exc:
            try:
                cm.__exit__(type(exc), exc, exc.__traceback__)
            except Exception as inner:
                _warn(f"step {step!r}: leaving {self.tracker.name} run failed: {type(inner).__name__}: {inner}")
            raise
        try:
            cm.__exit__(None, None, None)
        except Exception as exc:
            _warn(f"step {step!r}: leaving {self.tracker.name} run failed: {type(exc).__name__}: {exc}")


def _warn(message: str) -> None:
    warnings.warn(message, TrackingWarning, stacklevel=3)


# -- opening a tracker ----------------------------------------------------------------------


def _load_tracker_class(name: str) -> type[Tracker]:
    """The tracker class under ``name``: built in (``mlflow``) or from the ``mlpipe.trackers`` entry point group."""
    from mlpipe.plugins import TRACKERS

    cls: type[Tracker] = TRACKERS.load(name, Tracker)
    return cls


def _disabled() -> bool:
    return os.environ.get(ENV_DISABLE, "").strip().lower() in ("0", "off", "false", "no")


def tracker_for_profile(profile: Profile) -> Tracker | None:
    """The tracker a profile asks for (``tracking_uri``, else ``MLFLOW_TRACKING_URI``), or None."""
    if _disabled():
        return None
    uri = profile.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if not uri:
        return None
    cls = _load_tracker_class("mlflow")
    return cls(tracking_uri=uri, experiment=profile.experiment)


def git_commit(directory: str | None = None) -> str | None:
    """The commit checked out in ``directory`` (``MLPIPE_GIT_COMMIT`` wins), or None outside a repository."""
    override = os.environ.get("MLPIPE_GIT_COMMIT")
    if override:
        return override
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=directory or os.getcwd(),
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) >= 7 else None


@dataclass
class RunScope:
    """What :func:`run_scope` yields: set ``status`` (and ``error``) before leaving the block."""

    tracking: RunTracking | None = None
    status: str | None = None
    error: str | None = None


def _tracking_doc_path(run_id: str) -> str:
    from mlpipe.records import run_path

    return run_path(run_id, "tracking.json")


@contextmanager
def run_scope(
    profile: Profile,
    ir: PipelineIR,
    store: ArtifactStore,
    *,
    run_id: str,
    params: Mapping[str, Any],
    backend: str,
    detached: bool = False,
) -> Iterator[RunScope]:
    """Track one pipeline run for the duration of the block, if the profile turns tracking on.

    Before the block: the tracker checks the server (a clear error naming
    the URI, before anything runs), creates the parent run, writes
    ``runs/<id>/tracking.json`` for remote tasks, and registers the run so
    executors in this process find it. After the block: the parent is closed
    with ``scope.status`` (``failed`` if the block raised), unless
    ``detached`` (then the last step closes it).

    Raises:
        TrackingError: the tracking server cannot be reached.
    """
    scope = RunScope()
    tracker = tracker_for_profile(profile)
    if tracker is None:
        yield scope
        return
    tracker.check()
    tags = {"mlpipe.run_id": run_id, "mlpipe.pipeline": ir.name, "mlpipe.backend": backend, "mlpipe.store": store.url}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["mlpipe.git_commit"] = commit
    try:
        info = tracker.start_run(run_id=run_id, pipeline=ir.name, params=params, backend=backend, tags=tags)
    except MlpipeError:
        raise
    except Exception as exc:  # the tracking library's own errors, translated at the boundary
        raise TrackingError(
            f"creating the {tracker.name} run for pipeline {ir.name!r} at {tracker.tracking_uri} failed: "
            f"{type(exc).__name__}: {exc}",
            uri=tracker.tracking_uri,
            run_id=run_id,
        ) from exc
    tracking = RunTracking(
        tracker, run_id=run_id, pipeline=ir.name, store_url=store.url, detached=detached, ir=ir, store=store
    )
    store.put_json(_tracking_doc_path(run_id), {"tracker": tracker.name, "info": info})
    with _RUNS_LOCK:
        _RUNS[run_id] = tracking
    scope.tracking = tracking
    try:
        yield scope
    except BaseException as exc:
        tracking.close("cancelled" if isinstance(exc, KeyboardInterrupt) else "failed", f"{type(exc).__name__}: {exc}")
        raise
    if not detached:
        tracking.close(scope.status or "succeeded", scope.error)


def for_run(run_id: str) -> RunTracking | None:
    """The tracking of a run launched in this process, or None."""
    if not _RUNS:
        return None
    with _RUNS_LOCK:
        return _RUNS.get(run_id)


def tracking_link(store: ArtifactStore, run_id: str) -> str | None:
    """Where a tracked run lives in its tracker, for ``mlpipe runs show``; None when it was not tracked.

    For MLflow over HTTP: the parent run's page in the MLflow UI. For other
    tracking URIs (sqlite, files): the run id, experiment and URI.
    """
    rel = _tracking_doc_path(run_id)
    if not store.has(rel):
        return None
    doc = store.get_json(rel)
    info = doc.get("info") or {}
    name, uri = doc.get("tracker", "tracker"), str(info.get("tracking_uri", ""))
    parent, experiment = info.get("parent_run_id"), info.get("experiment_id")
    if not parent:
        return f"{name} at {uri}" if uri else name
    if name == "mlflow" and experiment and uri.startswith(("http://", "https://")):
        return f"mlflow run {parent}  {uri.rstrip('/')}/#/experiments/{experiment}/runs/{parent}"
    where = f" (experiment {experiment})" if experiment else ""
    return f"{name} run {parent}{where}" + (f" at {uri}" if uri else "")


def track_skipped(store: ArtifactStore, run_id: str, ir: PipelineIR, outcomes: Sequence[StepOutcome]) -> None:
    """Give steps a remote backend recorded as skipped their child runs, as the local backend does.

    No task ran for them, so nothing else would log them; the backend calls
    this when it closes the run. Does nothing for an untracked run.
    """
    if not outcomes or _disabled():
        return
    joined_here = for_run(run_id) is None
    try:
        tracking = join_run(store, run_id, ir)
    except Exception as exc:  # the run's records are what matters; tracking is best effort here
        _warn(f"run {run_id}: recording its skipped steps in the tracker failed: {type(exc).__name__}: {exc}")
        return
    if tracking is None:
        return
    try:
        for outcome in outcomes:
            tracking.step_done(ir.step(outcome.name), outcome)
    finally:
        if joined_here:
            with _RUNS_LOCK:
                _RUNS.pop(run_id, None)


def join_run(store: ArtifactStore, run_id: str, ir: PipelineIR) -> RunTracking | None:
    """In a remote task: join the run's tracking from the environment or ``runs/<id>/tracking.json``.

    ``MLPIPE_TRACKING=off`` switches it off; ``MLPIPE_MLFLOW_PARENT_RUN_ID``
    (with ``MLPIPE_MLFLOW_TRACKING_URI`` or ``MLFLOW_TRACKING_URI``, and
    ``MLPIPE_MLFLOW_EXPERIMENT_ID``) joins without reading the store, and
    overrides what the store says.
    """
    if _disabled():
        return None
    found = for_run(run_id)
    if found is not None:
        return found
    doc: dict[str, Any] | None = None
    if os.environ.get(ENV_PARENT_RUN_ID):
        doc = {"tracker": "mlflow", "info": {}}
    else:
        rel = _tracking_doc_path(run_id)
        if not store.has(rel):
            return None
        doc = store.get_json(rel)
    info = dict(doc.get("info") or {})
    env = {
        "parent_run_id": os.environ.get(ENV_PARENT_RUN_ID),
        "tracking_uri": os.environ.get(ENV_TRACKING_URI)
        or (os.environ.get("MLFLOW_TRACKING_URI") if os.environ.get(ENV_PARENT_RUN_ID) else None),
        "experiment_id": os.environ.get(ENV_EXPERIMENT_ID),
    }
    info.update({k: v for k, v in env.items() if v})
    if not info.get("tracking_uri") or not info.get("parent_run_id"):
        raise TrackingError(
            f"run {run_id}: tracking is on but the tracking URI or parent run id is missing; set "
            f"{ENV_TRACKING_URI} and {ENV_PARENT_RUN_ID} in the task's environment, or {ENV_DISABLE}=off",
            run_id=run_id,
        )
    cls = _load_tracker_class(str(doc.get("tracker") or "mlflow"))
    tracker = cls(tracking_uri=info["tracking_uri"])
    tracker.resume(info=info)
    tracking = RunTracking(
        tracker, run_id=run_id, pipeline=ir.name, store_url=store.url, detached=True, ir=ir, store=store
    )
    with _RUNS_LOCK:
        _RUNS[run_id] = tracking
    return tracking
