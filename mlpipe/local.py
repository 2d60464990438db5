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

import queue
import threading
import time
import typing
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mlpipe.backend import Backend, Capabilities
from mlpipe.code import resolve as resolve_code
from mlpipe.errors import BackendError, CorruptObjectError, MlpipeError, ObjectNotFoundError
from mlpipe.executor import StepExecutor, UpstreamCorrupted
from mlpipe.fingerprint import fingerprint
from mlpipe.ir import PipelineIR, StepSpec
from mlpipe.mapping import branch_not_taken, collect_items, item_specs, items_failed
from mlpipe.metadata import open_index
from mlpipe.progress import REPORTER, Reporter
from mlpipe.provenance import provenance
from mlpipe.records import RunRecord, RunState, StepOutcome
from mlpipe.run import Run, StepRun
from mlpipe.store import ArtifactStore, ObjectInfo
from mlpipe.tracking import for_run as tracking_for_run

if TYPE_CHECKING:
    from mlpipe.handles import BackendOptions, RunHandle, RunStatus

__all__ = ["LocalBackend", "LocalOptions", "StoreRepairWarning"]

_MAX_REPAIRS = 3


class StoreRepairWarning(UserWarning):
    """A corrupted object was found and recomputed."""


#: Steps running at once unless ``max_workers`` says otherwise.
DEFAULT_MAX_WORKERS = 32
#: With steps waiting, the local scheduler doubles its worker threads when the process used less than half
#: a core over this long (its steps sleep or wait on I/O) ...
_RAMP = 0.01
#: ... or when every worker's current step has run this long (native code that releases the GIL runs in parallel).
_RAMP_BUSY = 0.05

if TYPE_CHECKING:

    class LocalOptions(BackendOptions):
        max_workers: int


_options_model: list[type[BackendOptions]] = []


def _local_options() -> type[LocalOptions]:
    """The options model of the local backend, made on first use (it is pydantic; a default run needs none)."""
    if not _options_model:
        from pydantic import Field

        from mlpipe.handles import BackendOptions

        class LocalOptions(BackendOptions):
            """Options of the local backend.

            Attributes:
                max_workers: Most steps running at once (threads).
            """

            max_workers: int = Field(default=DEFAULT_MAX_WORKERS, ge=1, le=1024)

        LocalOptions.__module__, LocalOptions.__qualname__ = __name__, "LocalOptions"
        _options_model.append(LocalOptions)
    return _options_model[0]  # type: ignore[return-value]


class _OptionsModel:
    """``LocalBackend.Options``: the model, made when first asked for."""

    def __get__(self, obj: object, owner: type | None = None) -> type[LocalOptions]:
        return _local_options()


def __getattr__(name: str) -> Any:
    if name == "LocalOptions":
        return _local_options()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LocalBackend(Backend):
    """Runs pipelines in this process. ``resources`` are accepted and recorded, not enforced."""

    name = "local"
    capabilities = Capabilities(
        parallel=True, resources=True, retries=True, timeouts=True, gates=True, conditions=True, map=True
    )
    Options = _OptionsModel()  # type: ignore[assignment]

    def __init__(self, options: Mapping[str, Any] | BackendOptions | None = None, *, image: str | None = None) -> None:
        super().__init__(options, image=image)
        self._active: dict[str, tuple[threading.Thread, threading.Event, dict[str, Any]]] = {}

    @property
    def max_workers(self) -> int:
        options = self._options
        return DEFAULT_MAX_WORKERS if options is None else int(options.max_workers)  # type: ignore[attr-defined]

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
        from mlpipe.handles import RunHandle

        return RunHandle(backend=self.name, run_id=run_id, pipeline=ir.name, store=store.url)

    def status(self, handle: RunHandle) -> RunStatus:
        from mlpipe.handles import RunStatus

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
        with store.group_commit():  # records and cache entries published in batches, durably (mlpipe.commit)
            return _LocalRun(self, ir, store, params, run_id, cache, cancel).execute()


class _LocalRun:
    """One run of the local backend: the scheduler's state and its steps.

    The scheduler keeps at most ``max_workers`` steps in flight and learns of
    finished ones through a queue, so a run costs time linear in its steps
    whatever the graph's width.
    """

    def __init__(
        self,
        backend: LocalBackend,
        ir: PipelineIR,
        store: ArtifactStore,
        params: Mapping[str, Any],
        run_id: str,
        cache: bool,
        cancel: threading.Event,
    ) -> None:
        self.backend, self.ir, self.store, self.params, self.cancel = backend, ir, store, params, cancel
        self.reporter = REPORTER.get() or Reporter()
        self.record = RunRecord.open(
            store,
            ir,
            run_id,
            backend=backend.name,
            params=params,
            index=open_index(store),
            batched=True,
            cache=cache,
            **provenance(),
        )
        self.executor = StepExecutor(self.record, ir.name, use_cache=cache, hooks=tracking_for_run(run_id))
        self.specs = {s.name: s for s in ir.steps}
        self.fns = {s.name: resolve_code(s, store) for s in ir.steps}
        self.packages = {s.name: fingerprint(self.fns[s.name]).packages for s in ir.steps}
        self.downstream = ir.downstream()
        self.waiting = {s.name: len(s.upstream) for s in ir.steps}
        self.consumers = {name: len(d) for name, d in self.downstream.items()}
        self.produced: dict[tuple[str, str], ObjectInfo] = {}
        self.memory: dict[str, Any] = {}
        self.outcomes: dict[str, StepOutcome] = {}
        self.repairs: dict[str, StepOutcome] = {}  # steps recomputed after their stored output went bad
        self.ready: deque[str] = deque(s.name for s in ir.steps if not s.upstream)
        self.items: dict[str, list[str]] = {}  # mapped step -> the names of its items, in order
        self.started: dict[str, float] = {}  # when each step began, so an interrupted one is recorded as such

    def execute(self) -> Run:
        self.reporter.run_started(self.record.run_id, self.ir.name, len(self.ir.steps))
        interrupted = False
        try:
            self._schedule()
        except KeyboardInterrupt:
            interrupted = True  # record the run as cancelled, then let Ctrl-C go on
            self.cancel.set()
        if not self.cancel.is_set():
            for name in self._bad_final_outputs():
                self._run_forced(name)
        run = self._close()
        if interrupted:
            raise KeyboardInterrupt
        return run

    def _schedule(self) -> None:
        """Run the ready steps: a chain inline, cache hits inline, the rest on as few worker threads as keep up.

        Workers take the next ready step themselves (no round trip through this
        thread per step). One worker starts first; while steps are waiting, the
        workers double (1, 2, 4, ... up to ``max_workers``) whenever the process
        used less than half a core for ``_RAMP`` (its steps sleep or wait on
        I/O) or every worker's current step has run ``_RAMP_BUSY``. Quick
        Python steps thus run on one thread (more only fight over the GIL: 32
        threads made a 5,000-wide graph of trivial steps 1.4x slower than a
        chain), while waiting or long steps soon have a thread each.
        """
        done: queue.SimpleQueue[tuple[str | None, StepOutcome | BaseException | None]] = queue.SimpleQueue()
        busy = 0  # workers running
        pool: ThreadPoolExecutor | None = None
        lock = threading.Lock()  # the ready queue, outcomes and the reporter, shared with the workers

        running: dict[str, float] = {}  # claimed step -> when (monotonic), until this thread sees its outcome

        def claim() -> str | None:
            with lock:
                if self.cancel.is_set() or not self.ready:
                    return None
                name = self.ready.popleft()
                self.started[name] = time.time()
                running[name] = time.monotonic()
                self.reporter.step_started(name)
                return name

        def work(name: str | None, call: Any) -> None:
            try:
                while name is not None:
                    done.put((name, self._run(name) if call is None else self._finish_call(name, call)))
                    name, call = claim(), None
            except BaseException as exc:  # re-raised in the scheduling thread
                done.put((name, exc))
            finally:
                done.put((None, None))  # this worker is idle

        grow = 1  # workers to start now
        window = (time.monotonic(), time.process_time())  # since when the process's CPU time is measured
        try:
            while self.ready or busy:
                if self.cancel.is_set():
                    break
                if len(self.ready) == 1 and not busy:  # a chain runs inline: no thread hand-off
                    name = self.ready.popleft()
                    self.started[name] = time.time()
                    self.reporter.step_started(name)
                    self._finish(self._run(name))
                    continue
                grow = max(grow, 0 if busy else 1)
                while grow and busy < self.backend.max_workers:
                    claimed = claim()
                    if claimed is None:
                        break
                    begun = self._begin(claimed)
                    if isinstance(begun, StepOutcome):  # a cache hit: a worker thread would only add a hand-off
                        with lock:
                            running.pop(claimed, None)
                            self._finish(begun)
                        continue
                    if pool is None:
                        pool = ThreadPoolExecutor(self.backend.max_workers, thread_name_prefix="mlpipe-step")
                    pool.submit(work, claimed, begun)
                    busy += 1
                    grow -= 1
                grow = 0
                if not busy:
                    continue
                waiting = bool(self.ready) and busy < self.backend.max_workers
                item: tuple[str | None, StepOutcome | BaseException | None] | None
                try:  # a timeout, so Ctrl-C and cancel() are seen while steps run
                    item = done.get(timeout=_RAMP if waiting else 0.5)
                except queue.Empty:
                    item = None
                now, cpu = time.monotonic(), time.process_time()
                if not waiting:
                    window = (now, cpu)
                elif now - window[0] >= _RAMP:
                    idle = cpu - window[1] < 0.5 * (now - window[0])  # the workers wait (I/O, sleep), not compute
                    with lock:
                        newest = max(running.values(), default=now)
                    if idle or now - newest > _RAMP_BUSY:  # or every worker is in a long step
                        grow = busy
                    window = (now, cpu)
                if item is None:
                    continue
                while True:
                    result = item[1]
                    if result is None:
                        busy -= 1
                    elif isinstance(result, BaseException):
                        raise result
                    else:
                        with lock:
                            running.pop(result.name, None)
                            self._finish(result)
                    try:
                        item = done.get_nowait()
                    except queue.Empty:
                        break
        except KeyboardInterrupt:
            self.cancel.set()  # before the pool shuts down: do not wait for running steps
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=not self.cancel.is_set())

    def _finish(self, outcome: StepOutcome) -> None:
        self.outcomes[outcome.name] = outcome
        self.reporter.step_finished(outcome.name, outcome.status, outcome.cached, outcome.duration, outcome.error)
        for up in set(self.specs[outcome.name].upstream):
            self.consumers[up] -= 1
        if outcome.status != "succeeded":
            dependents = self.record.skip_dependents(
                self.ir, outcome.name, outcome.error, done=self.outcomes, branch=outcome.branch_not_taken
            )
            for skipped in dependents:
                self.outcomes[skipped.name] = skipped
                if self.executor.hooks is not None:  # a child run says the step was skipped, and why
                    self.executor.hooks.step_done(self.specs[skipped.name], skipped)
                self.reporter.step_finished(skipped.name, "skipped", False, 0.0, skipped.error)
            return
        for out_name, info in outcome.outputs.items():
            self.produced[(outcome.name, out_name)] = info
        if self.consumers[outcome.name]:
            self.memory.update(outcome.values)
        for child in self.downstream[outcome.name]:
            self.waiting[child] -= 1
            if self.waiting[child] == 0:
                self.ready.append(child)

    def _execute_step(self, name: str, *, force: bool = False) -> StepOutcome:
        return self.executor.execute(
            self.specs[name], self.fns[name], self.params, self.produced, self.memory, force, self.packages[name]
        )

    def _begin(self, name: str) -> Any:
        """A plain step's cache lookup, here in the scheduling thread: its outcome if that settles it, else its call.

        None for a step with a condition or a map, which :meth:`_run` handles whole.
        """
        spec = self.specs[name]
        if spec.when or spec.map_over:
            return None
        return self.executor.begin(spec, self.fns[name], self.params, self.produced, packages=self.packages[name])

    def _finish_call(self, name: str, call: Any) -> StepOutcome:
        """Compute a step :meth:`_begin` started; an input found corrupted is repaired as in :meth:`_run`."""
        return self._repairing(name, lambda: self.executor.finish(call, self.memory))

    def _value(self, step: str, output: str) -> Any:
        info = self.produced[(step, output)]
        return self.memory[info.digest] if info.digest in self.memory else self.store.get_value(info.digest, info=info)

    def _branch_not_taken(self, name: str) -> StepOutcome | None:
        """The skipped outcome of a step whose ``mp.when`` condition is false (recorded), or None."""
        spec = self.specs[name]
        reason = branch_not_taken(spec, self._value)
        if reason is None:
            return None
        outcome = StepOutcome.ended_now(name, "skipped", reason)
        outcome.branch_not_taken = True
        self.record.record_outcome(self.ir.name, spec, outcome)
        if self.executor.hooks is not None:
            self.executor.hooks.step_done(spec, outcome)
        return outcome

    def _run(self, name: str) -> StepOutcome:
        if self.specs[name].when:
            skipped = self._branch_not_taken(name)
            if skipped is not None:
                return skipped
        if self.specs[name].map_over:
            return self._run_map(name)
        return self._repairing(name, lambda: self._execute_step(name))

    def _repairing(self, name: str, attempt: Callable[[], StepOutcome]) -> StepOutcome:
        """``attempt()``, and whenever an input turns out corrupted: recompute its producer, then run the step again."""
        for _attempt in range(_MAX_REPAIRS + 1):
            try:
                return attempt()
            except UpstreamCorrupted as bad:
                warnings.warn(
                    f"{bad}; recomputing step {bad.step!r} to repair the store before running {name!r}",
                    StoreRepairWarning,
                    stacklevel=2,
                )
                repaired = self._run_forced(bad.step)
                if repaired.status != "succeeded":
                    return repaired
                attempt = lambda: self._execute_step(name)  # noqa: E731
        raise BackendError(f"step {name!r}: inputs stayed corrupted after {_MAX_REPAIRS} repairs", step=name)

    def _run_map(self, name: str) -> StepOutcome:
        """Run every item of a mapped step (in parallel, each cached by its own key) and collect their outputs."""
        spec = self.specs[name]
        started = time.time()
        items = item_specs(spec, self.specs, self.params, self._value, self.items)
        if isinstance(items, str):
            error = f"step {name!r}: {items}"
            outcome = StepOutcome(name, "failed", started=started, ended=time.time(), error=error)
            self.record.record_outcome(self.ir.name, spec, outcome)
            return outcome
        fn, packages = self.fns[name], self.packages[name]

        def one(item: StepSpec) -> StepOutcome:
            return self.executor.execute(item, fn, self.params, self.produced, self.memory, packages=packages)

        outcomes: list[StepOutcome] = []
        for item in items:  # cache hits inline (a thread hand-off costs more than a hit) until one computes
            outcomes.append(one(item))
            if not outcomes[-1].cached:
                break
        rest = items[len(outcomes) :]
        if rest:
            with ThreadPoolExecutor(min(self.backend.max_workers, len(rest)), thread_name_prefix="mlpipe-item") as pool:
                outcomes.extend(pool.map(one, rest))
        self.items[name] = [o.name for o in outcomes]
        for o in outcomes:
            for out_name, info in o.outputs.items():
                self.produced[(o.name, out_name)] = info
        failed = [o for o in outcomes if o.status != "succeeded"]
        if failed:
            error = items_failed([(o.name, o.error) for o in failed], len(outcomes))
            outcome = StepOutcome(name, "failed", started=started, ended=time.time(), error=error)
        else:
            outcome = self._collect(name, spec, outcomes, started)
        self.record.record_outcome(self.ir.name, spec, outcome, {"map": {"items": [o.name for o in outcomes]}})
        return outcome

    def _collect(self, name: str, spec: StepSpec, outcomes: list[StepOutcome], started: float) -> StepOutcome:
        """The mapped step's output: the list of its items' outputs, stored once per distinct list of items."""
        returns = typing.get_type_hints(self.fns[name]).get("return", Any)
        values = {d: v for o in outcomes for d, v in o.values.items()}

        def read(info: ObjectInfo) -> Any:
            if info.digest in values:
                return values[info.digest]
            return self.store.get_value(info.digest, returns, info=info)

        outputs = [o.outputs["output"] for o in outcomes]
        collected = collect_items(self.store, self.ir.name, spec, self.record.run_id, outputs, read)
        return StepOutcome(
            name,
            "succeeded",
            cached=bool(outcomes) and all(o.cached for o in outcomes),
            outputs={"output": collected},
            started=started,
            ended=time.time(),
        )

    def _run_forced(self, name: str) -> StepOutcome:
        try:
            outcome = self._execute_step(name, force=True)
        except UpstreamCorrupted as bad:
            inner = self._run_forced(bad.step)
            if inner.status != "succeeded":
                return inner
            outcome = self._execute_step(name, force=True)
        if outcome.status == "succeeded":
            for out_name, info in outcome.outputs.items():
                self.produced[(name, out_name)] = info
            self.repairs[name] = outcome
        return outcome

    def _bad_final_outputs(self) -> list[str]:
        """Steps whose pipeline output was served from the cache but is corrupted or gone.

        A cache hit checks that its objects exist, without reading them; the
        pipeline's own outputs are about to be handed to the caller, so those
        are read back and verified once, and recomputed now if bad.
        """
        bad: list[str] = []
        for ref in self.ir.outputs:
            outcome = self.outcomes.get(ref.step)
            if outcome is None or not outcome.cached or outcome.status != "succeeded" or ref.step in self.repairs:
                continue
            info = outcome.outputs[ref.output]
            try:
                self.store.read_verified(info.digest, self.store.meta(info.digest))
            except (CorruptObjectError, ObjectNotFoundError) as exc:
                problem = "is corrupted"
                if not isinstance(exc, CorruptObjectError):
                    problem = "cannot be read (its sidecar or bytes are gone)"
                if ref.step not in bad:
                    warnings.warn(
                        f"pipeline output {ref.step}.{ref.output} ({info.digest[:12]}…) {problem}; "
                        f"recomputing step {ref.step!r}",
                        StoreRepairWarning,
                        stacklevel=5,
                    )
                    bad.append(ref.step)
        return bad

    def _close(self) -> Run:
        """Record steps that never ran, close the run record, and return the run."""
        outcomes = self.outcomes
        for name, repaired in self.repairs.items():
            if name in outcomes and outcomes[name].status == "succeeded":
                outcomes[name] = repaired  # the run's view matches the step's latest record
        for name, spec in self.specs.items():
            if name in outcomes:
                continue
            if name in self.started:  # it was running when the run was cancelled (Ctrl-C, cancel())
                outcome = StepOutcome(
                    name, "cancelled", started=self.started[name], ended=time.time(), error="cancelled while running"
                )
                self.reporter.step_finished(name, "cancelled", False, outcome.duration, outcome.error)
            else:
                outcome = StepOutcome.ended_now(name, "cancelled", "not run: the run was cancelled")
            outcomes[name] = outcome
            self.record.record_outcome(self.ir.name, spec, outcome)
        if self.items:  # items are listed after their mapped step
            order = self.record.doc.get("order") or []
            self.record.doc["order"] = [n for name in order for n in (name, *self.items.get(name, ()))]
        status: RunState | None = "cancelled" if self.cancel.is_set() else None
        doc = self.record.close(status)
        self.reporter.run_finished(self.record.run_id, doc["status"], doc["ended"] - doc["started"])
        steps = {
            name: StepRun.from_record(outcomes[name].record)
            if outcomes[name].record
            else StepRun(name=name, status=outcomes[name].status, error=outcomes[name].error)
            for name in self.specs
        }
        if self.items:  # mapped items, from their records, after their step
            records = self.record.steps()
            steps = {
                n: steps[n] if n in steps else StepRun.from_record(records[n])
                for n in doc["order"]
                if n in steps or n in records
            }
        return Run(doc, steps, self.store)
