"""The local backend: runs a pipeline on this machine, independent steps in parallel.

Steps run in a thread pool (numpy, pandas, scikit-learn and I/O release the
GIL; a 1 → 16 → 1 fan-out of sleeping steps takes one sleep, not sixteen).
When only one step is ready and nothing else runs, it runs inline in the
scheduling thread, which keeps a linear pipeline free of thread hand-offs. A
failed step marks every step downstream of it ``skipped`` while independent
branches finish. An input found corrupted is repaired by recomputing the step
that produced it, with a :class:`StoreRepairWarning`; so is a pipeline output
served from the cache, which is read back and verified before the run returns.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from pydantic import Field

from mlpipe.backend import Backend, BackendOptions, Capabilities, RunHandle, RunStatus
from mlpipe.code import resolve as resolve_code
from mlpipe.errors import BackendError, CorruptObjectError, MlpipeError, ObjectNotFoundError
from mlpipe.executor import StepExecutor, StepOutcome, UpstreamCorrupted, skip_reason, step_record
from mlpipe.fingerprint import fingerprint
from mlpipe.ir import PipelineIR, StepSpec
from mlpipe.launch import write_run_doc
from mlpipe.metadata import open_index
from mlpipe.progress import REPORTER, Reporter
from mlpipe.records import RunRecords
from mlpipe.run import Run, StepRun
from mlpipe.store import ArtifactStore, ObjectInfo

__all__ = ["LocalBackend", "LocalOptions", "StoreRepairWarning"]

_MAX_REPAIRS = 3


class StoreRepairWarning(UserWarning):
    """A corrupted object was found and recomputed."""


class LocalOptions(BackendOptions):
    """Options of the local backend.

    Attributes:
        max_workers: Most steps running at once (threads).
    """

    max_workers: int = Field(default=32, ge=1, le=1024)


class LocalBackend(Backend):
    """Runs pipelines in this process. ``resources`` are accepted and recorded, not enforced."""

    name = "local"
    capabilities = Capabilities(parallel=True, resources=True, retries=True, timeouts=True, gates=True)
    Options = LocalOptions

    def __init__(self, options: Mapping[str, Any] | BackendOptions | None = None, *, image: str | None = None) -> None:
        super().__init__(options, image=image)
        self._active: dict[str, tuple[threading.Thread, threading.Event, dict[str, Any]]] = {}

    @property
    def max_workers(self) -> int:
        assert isinstance(self.options, LocalOptions)
        return self.options.max_workers

    def submit(
        self, ir: PipelineIR, store: ArtifactStore, *, params: Mapping[str, Any], run_id: str, cache: bool = True
    ) -> RunHandle:
        """Start the run in a background thread and return at once."""
        cancel = threading.Event()
        state: dict[str, Any] = {"status": "pending"}
        reporter = REPORTER.get()

        def target() -> None:
            token = REPORTER.set(reporter)
            try:
                state["run"] = self._execute(ir, store, params, run_id, cache, cancel)
                state["status"] = state["run"].status
            except BaseException as exc:  # surfaced through status()
                state["status"], state["error"] = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                REPORTER.reset(token)

        thread = threading.Thread(target=target, name=f"mlpipe-run-{run_id}", daemon=True)
        self._active[run_id] = (thread, cancel, state)
        state["status"] = "running"
        thread.start()
        return RunHandle(backend=self.name, run_id=run_id, pipeline=ir.name, store=store.url)

    def status(self, handle: RunHandle) -> RunStatus:
        active = self._active.get(handle.run_id)
        if active is not None:
            _thread, _cancel, state = active
            return RunStatus(state=state["status"], message=state.get("error"))
        try:
            run = Run.load(handle.store, handle.run_id)
        except MlpipeError as exc:
            raise BackendError(f"run {handle.run_id} is not known to this process or store: {exc}") from exc
        return RunStatus(state=run.status, steps={n: s.status for n, s in run.steps.items()})

    def cancel(self, handle: RunHandle) -> None:
        active = self._active.get(handle.run_id)
        if active is not None:
            active[1].set()

    def run(
        self, ir: PipelineIR, store: ArtifactStore, *, params: Mapping[str, Any], run_id: str, cache: bool = True
    ) -> Run:
        """Run in the calling thread (so Ctrl-C reaches it) and return the finished run."""
        return self._execute(ir, store, params, run_id, cache, threading.Event())

    # -- the scheduler -----------------------------------------------------------------
    def _execute(
        self,
        ir: PipelineIR,
        store: ArtifactStore,
        params: Mapping[str, Any],
        run_id: str,
        cache: bool,
        cancel: threading.Event,
    ) -> Run:
        reporter = REPORTER.get() or Reporter()
        index = open_index(store)
        doc = write_run_doc(
            store, ir, run_id, self.name, params, "running", cache=cache, host=socket.gethostname(), pid=os.getpid()
        )
        index.record_run(doc)
        reporter.run_started(run_id, ir.name, len(ir.steps))
        records = RunRecords(store, run_id, batched=True)
        executor = StepExecutor(store, index, run_id, ir.name, use_cache=cache, records=records)
        specs = {s.name: s for s in ir.steps}
        fns = {s.name: resolve_code(s, store) for s in ir.steps}
        packages = {s.name: fingerprint(fns[s.name]).packages for s in ir.steps}
        downstream = ir.downstream()
        waiting = {s.name: len(s.upstream) for s in ir.steps}
        consumers = {name: len(d) for name, d in downstream.items()}
        produced: dict[tuple[str, str], ObjectInfo] = {}
        memory: dict[str, Any] = {}
        outcomes: dict[str, StepOutcome] = {}
        repairs: dict[str, StepOutcome] = {}  # steps recomputed after their stored output went bad
        ready = [s.name for s in ir.steps if not s.upstream]
        running: dict[Future[StepOutcome], str] = {}
        pool: ThreadPoolExecutor | None = None

        def work(name: str) -> StepOutcome:
            return self._run_step(executor, specs, fns, packages, params, produced, memory, name, repairs)

        def finish(outcome: StepOutcome) -> None:
            outcomes[outcome.name] = outcome
            reporter.step_finished(outcome.name, outcome.status, outcome.cached, outcome.duration, outcome.error)
            spec = specs[outcome.name]
            for up in set(spec.upstream):
                consumers[up] -= 1
            if outcome.status == "succeeded":
                for out_name, info in outcome.outputs.items():
                    produced[(outcome.name, out_name)] = info
                if consumers[outcome.name]:
                    memory.update(outcome.values)
                for child in downstream[outcome.name]:
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        ready.append(child)
            else:
                self._skip_descendants(executor, specs, downstream, outcome.name, outcomes, reporter)

        interrupted = False
        try:
            while ready or running:
                if cancel.is_set():
                    break
                if len(ready) == 1 and not running:
                    name = ready.pop()
                    reporter.step_started(name)
                    finish(work(name))
                    continue
                if ready:
                    if pool is None:
                        pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="mlpipe-step")
                    while ready:
                        name = ready.pop(0)
                        reporter.step_started(name)
                        running[pool.submit(work, name)] = name
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    running.pop(future)
                    finish(future.result())
        except KeyboardInterrupt:
            interrupted = True  # record the run as cancelled, then let Ctrl-C go on
            cancel.set()
        finally:
            if pool is not None:
                pool.shutdown(wait=not cancel.is_set())

        if not cancel.is_set():
            for name in self._bad_final_outputs(ir, store, outcomes, repairs):
                self._run_step_forced(executor, specs, fns, packages, params, produced, memory, name, repairs)
        for name, repaired in repairs.items():
            if name in outcomes and outcomes[name].status == "succeeded":
                outcomes[name] = repaired  # the run's view matches the step's latest record
        for name, spec in specs.items():
            if name not in outcomes:
                outcome = StepOutcome(name, "cancelled", started=time.time(), ended=time.time(), error="run cancelled")
                outcome.record = step_record(run_id, ir.name, spec, outcome, None)
                records.write(outcome.record)
                outcomes[name] = outcome
        failed = [o for o in outcomes.values() if o.status == "failed"]
        status = (
            "cancelled"
            if cancel.is_set()
            else ("failed" if failed or any(o.status != "succeeded" for o in outcomes.values()) else "succeeded")
        )
        doc.update(status=status, ended=time.time())
        if failed:
            doc["error"] = "; ".join(f"step {o.name!r} failed: {o.error}" for o in failed)
        records.flush()
        store.put_json(f"runs/{run_id}/run.json", doc)
        index.flush()
        index.record_run(doc)
        reporter.run_finished(run_id, status, doc["ended"] - doc["started"])
        steps = {
            name: StepRun.from_record(outcomes[name].record)
            if outcomes[name].record
            else StepRun(name=name, status=outcomes[name].status, error=outcomes[name].error)
            for name in specs
        }
        if interrupted:
            raise KeyboardInterrupt
        return Run(doc, steps, store)

    def _run_step(
        self,
        executor: StepExecutor,
        specs: dict[str, StepSpec],
        fns: dict[str, Any],
        packages: dict[str, frozenset[str]],
        params: Mapping[str, Any],
        produced: dict[tuple[str, str], ObjectInfo],
        memory: dict[str, Any],
        name: str,
        repairs: dict[str, StepOutcome],
    ) -> StepOutcome:
        spec = specs[name]
        for _attempt in range(_MAX_REPAIRS + 1):
            try:
                return executor.execute(spec, fns[name], params, produced, memory, packages=packages[name])
            except UpstreamCorrupted as bad:
                warnings.warn(
                    f"{bad}; recomputing step {bad.step!r} to repair the store before running {name!r}",
                    StoreRepairWarning,
                    stacklevel=2,
                )
                repaired = self._run_step_forced(
                    executor, specs, fns, packages, params, produced, memory, bad.step, repairs
                )
                if repaired.status != "succeeded":
                    return repaired
        raise BackendError(f"step {name!r}: inputs stayed corrupted after {_MAX_REPAIRS} repairs", step=name)

    @staticmethod
    def _bad_final_outputs(
        ir: PipelineIR, store: ArtifactStore, outcomes: dict[str, StepOutcome], repairs: dict[str, StepOutcome]
    ) -> list[str]:
        """Steps whose pipeline output was served from the cache but is corrupted or gone.

        A cache hit checks that its objects exist, without reading them; the
        pipeline's own outputs are about to be handed to the caller, so those
        are read back and verified once, and recomputed now if bad.
        """
        bad: list[str] = []
        for ref in ir.outputs:
            outcome = outcomes.get(ref.step)
            if outcome is None or not outcome.cached or outcome.status != "succeeded" or ref.step in repairs:
                continue
            info = outcome.outputs[ref.output]
            try:
                store.read_verified(info.digest, store.meta(info.digest))
            except (CorruptObjectError, ObjectNotFoundError) as exc:
                problem = "is corrupted"
                if not isinstance(exc, CorruptObjectError):
                    problem = "cannot be read (its sidecar or bytes are gone)"
                if ref.step not in bad:
                    warnings.warn(
                        f"pipeline output {ref.step}.{ref.output} ({info.digest[:12]}…) {problem}; "
                        f"recomputing step {ref.step!r}",
                        StoreRepairWarning,
                        stacklevel=4,
                    )
                    bad.append(ref.step)
        return bad

    def _run_step_forced(
        self,
        executor: StepExecutor,
        specs: dict[str, StepSpec],
        fns: dict[str, Any],
        packages: dict[str, frozenset[str]],
        params: Mapping[str, Any],
        produced: dict[tuple[str, str], ObjectInfo],
        memory: dict[str, Any],
        name: str,
        repairs: dict[str, StepOutcome],
    ) -> StepOutcome:
        spec = specs[name]
        try:
            outcome = executor.execute(spec, fns[name], params, produced, memory, force=True, packages=packages[name])
        except UpstreamCorrupted as bad:
            inner = self._run_step_forced(executor, specs, fns, packages, params, produced, memory, bad.step, repairs)
            if inner.status != "succeeded":
                return inner
            outcome = executor.execute(spec, fns[name], params, produced, memory, force=True, packages=packages[name])
        if outcome.status == "succeeded":
            for out_name, info in outcome.outputs.items():
                produced[(name, out_name)] = info
            repairs[name] = outcome
        return outcome

    def _skip_descendants(
        self,
        executor: StepExecutor,
        specs: dict[str, StepSpec],
        downstream: dict[str, list[str]],
        failed: str,
        outcomes: dict[str, StepOutcome],
        reporter: Reporter,
    ) -> None:
        reason = skip_reason(specs[failed], outcomes[failed].error)
        stack = list(downstream[failed])
        while stack:
            name = stack.pop()
            if name in outcomes:
                continue
            now = time.time()
            outcome = StepOutcome(
                name,
                "skipped",
                started=now,
                ended=now,
                error=reason,
            )
            outcome.record = step_record(executor.run_id, executor.pipeline, specs[name], outcome, None)
            executor.records.write(outcome.record)
            if executor.index is not None:
                executor.index.record_step(outcome.record)
            outcomes[name] = outcome
            if executor.tracking is not None:  # a child run says the step was skipped, and why
                executor.tracking.step_done(specs[name], outcome)
            reporter.step_finished(name, "skipped", False, 0.0, outcome.error)
            stack.extend(downstream[name])
