"""Runs of a compiled spec executed by kfp.local in a background thread of this process.

Shared by every backend that runs KFP specs locally (``mode = "local"``):
Kubeflow, and Vertex AI, which compiles to the same spec. It owns the
threads, their cancel events and states, the run record pointing at the
stored IR, and reading a run's state back from the store.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import Any

from mlpipe.errors import BackendError, MlpipeError, UnsupportedFeatureError
from mlpipe.extend import (
    ArtifactStore,
    Run,
    RunHandle,
    RunRecord,
    RunStatus,
    load_ir,
    open_index,
    reporter,
    track_skipped,
)
from mlpipe.ir import PipelineIR

__all__ = [
    "LOCAL_STOPPED",
    "LOG_NAME",
    "LocalRuns",
    "close_after_engine",
    "close_succeeded",
    "execute_locally",
    "refuse_in_local_mode",
    "step_states",
]

#: kfp.local's own output for a run, in the run's folder of the store.
LOG_NAME = "kfp-local.log"

LOCAL_STOPPED = "not run: kfp.local stops a pipeline at its first failed task"


class LocalRuns:
    """The local runs one backend instance started with :meth:`start`."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._runs: dict[str, tuple[threading.Thread, threading.Event, dict[str, Any]]] = {}

    def start(
        self, ir: PipelineIR, store: ArtifactStore, run_id: str, execute: Callable[[threading.Event], Run]
    ) -> RunHandle:
        """Run ``execute(cancel_event)`` in a daemon thread; return the run's handle at once."""
        cancel = threading.Event()
        state: dict[str, Any] = {"status": "running"}

        def target() -> None:
            try:
                state["status"] = execute(cancel).status
            except BaseException as exc:  # surfaced through status()
                state["status"], state["error"] = "failed", f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=target, name=f"mlpipe-{self.backend}-local-{run_id}", daemon=True)
        self._runs[run_id] = (thread, cancel, state)
        thread.start()
        return RunHandle(backend=self.backend, run_id=run_id, pipeline=ir.name, store=store.url, data={"mode": "local"})

    def status(self, handle: RunHandle) -> RunStatus | None:
        """The state of a local run: from this process when it started here, else from the store.

        None for a handle that is not a local run.
        """
        active = self._runs.get(handle.run_id)
        if active is not None:
            return RunStatus(state=active[2]["status"], message=active[2].get("error"))
        if handle.data.get("mode") != "local":
            return None
        try:
            return RunStatus(state=Run.load(handle.store, handle.run_id).status, steps=step_states(handle))
        except MlpipeError as exc:
            raise BackendError(
                f"{self.backend}: local run {handle.run_id} is unknown here: {exc}", backend=self.backend
            ) from exc

    def cancel(self, handle: RunHandle) -> bool:
        """Ask a local run to stop. True when the handle is a local run (nothing else to do)."""
        active = self._runs.get(handle.run_id)
        if active is not None:
            active[1].set()
            return True
        return handle.data.get("mode") == "local"


def refuse_in_local_mode(
    backend: str, store: ArtifactStore, *, schedule: str | None, schedule_message: str, store_hint: str
) -> None:
    """What ``mode = "local"`` cannot do: a schedule, and an in-memory store the task processes cannot see."""
    if schedule:
        raise UnsupportedFeatureError(f"{backend}: {schedule_message}", backend=backend, option="schedule")
    if store.url.startswith("memory://"):
        raise UnsupportedFeatureError(
            f'{backend}: mode = "local" runs each step in its own process, which cannot see the in-memory '
            f"store {store.url}; {store_hint}",
            backend=backend,
            option="store",
        )


def execute_locally(
    store: ArtifactStore,
    ir: PipelineIR,
    record: RunRecord,
    write: Callable[[str], str],
    arguments: Mapping[str, Any],
    cancel: threading.Event,
) -> Run:
    """Run a compiled spec with kfp.local and close the run's records.

    ``record`` is the run's record, already opened; ``write(directory)``
    writes the spec into a temporary directory and returns its path.
    kfp.local's own log goes to ``runs/<id>/kfp-local.log`` in the store
    (written as it runs when the store is a directory), not to stdout; the
    run's progress goes to the reporter ``mlpipe run`` installs.
    """
    from mlpipe_kubeflow.local_runner import execute_spec

    run_id = record.run_id
    report = reporter()
    report.run_started(run_id, ir.name, len(ir.steps))
    log_rel = f"runs/{run_id}/{LOG_NAME}"
    root = store.local_root()
    with tempfile.TemporaryDirectory(prefix=f"mlpipe-{record.doc['backend']}-") as tmp:
        log_path = os.path.join(root, log_rel) if root is not None else os.path.join(tmp, LOG_NAME)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        try:
            with open(log_path, "w", encoding="utf-8") as log:
                error = execute_spec(write(tmp), dict(arguments), run_id, cancel=cancel, log=log)
        finally:
            if root is None and os.path.exists(log_path):
                with open(log_path, "rb") as f:
                    store.put_bytes(log_rel, f.read())
    close_after_engine(store, ir, record, engine_error=error, cancelled=cancel.is_set())
    open_index(store).sync_run(store, run_id)
    run = Run.load(store, run_id)
    for step in run.steps.values():
        report.step_finished(step.name, step.status, step.cached, step.duration, step.error)
    report.note(f"kfp.local's log: {log_path if root is not None else f'{store.url}/{log_rel}'}")
    report.run_finished(run_id, run.status, run.duration)
    return run


def close_after_engine(
    store: ArtifactStore,
    ir: PipelineIR,
    record: RunRecord,
    *,
    engine_error: str | None = None,
    cancelled: bool = False,
    not_run: str = LOCAL_STOPPED,
) -> dict[str, Any]:
    """Complete a run's records once KFP is done with it: missing steps, their tracking, status, end time.

    Steps downstream of a failure never start, and kfp.local also stops
    before independent ones; each gets a ``skipped`` record saying why
    (``not_run`` when no upstream failed). A task that failed before the
    runtime could write its record (an image without the step's module, a pod
    killed for memory) is recorded ``failed`` with KFP's message.
    """
    skipped = record.settle(ir, engine_error=engine_error, cancelled=cancelled, not_run=not_run)
    track_skipped(store, record.run_id, ir, skipped)
    record.reload()
    return record.close("cancelled" if cancelled else None)


def close_succeeded(store: ArtifactStore, record: RunRecord, ir: PipelineIR | None = None) -> bool:
    """Close a run the engine reports succeeded, after recording the steps of the branches it did not take.

    KFP never starts the tasks of a condition sub-DAG whose condition is
    false, so no task records them; :meth:`RunRecord.settle` records each
    ``skipped`` with the condition, read from the store. True when this call closed the run.
    """
    if record.reload().get("ended"):
        return False  # closed already (an earlier status() call)
    if ir is None:
        ir = load_ir(store, str(record.doc["ir"]))
    if any(s.when for s in ir.steps):
        skipped = record.settle(ir, not_run=None)
        track_skipped(store, record.run_id, ir, skipped)
    return record.close_once("succeeded")


def step_states(handle: RunHandle) -> dict[str, str]:
    """Each step's status as recorded in the store ({} when the store cannot be read)."""
    try:
        return {name: step.status for name, step in Run.load(handle.store, handle.run_id).steps.items()}
    except (MlpipeError, OSError):
        return {}
