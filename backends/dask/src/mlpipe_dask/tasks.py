"""What runs on the Dask workers: one task per step, the run's driver, and the store probe.

A step's task gets only small references (store URL, IR digest, run id, step
name, parameters as text) and runs the step exactly as ``python -m
mlpipe.runtime`` does, through :func:`mlpipe.extend.execute_remote_step`: it
reads its inputs from the store, checks the shared cache, writes its outputs,
its cache entry and its record to the store, and returns a few words of
status. Data never travels through the scheduler.

The driver is itself a Dask task (fire-and-forget, seceded from the worker's
thread pool), so a submitted run goes on when the launching process exits. It
submits each step when its upstream steps have succeeded, records the steps a
failure blocks as skipped, notices a cancel request (a marker in the store),
and closes the run's record. If its worker dies, Dask starts it again on
another worker, and it picks the run up from the records in the store.

This module is imported by the workers; it must stay importable without a
client or a cluster.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from mlpipe.errors import MlpipeError
from mlpipe.extend import (
    TERMINAL,
    ArtifactStore,
    ObjectInfo,
    PipelineIR,
    RunRecord,
    RunState,
    StepOutcome,
    StepSpec,
    branch_not_taken,
    collect_items,
    decode_param,
    execute_remote_step,
    item_specs,
    items_failed,
    load_ir,
    load_step_records,
    memory_bytes,
    open_store,
    resolve_code,
    run_path,
    skip_reason,
    track_skipped,
)

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = [
    "CANCEL_CHECK_SECONDS",
    "Heartbeat",
    "cancel_marker",
    "collect_map",
    "drive",
    "driver_key",
    "driver_marker",
    "driver_state",
    "end_marker",
    "probe",
    "run_item",
    "run_step",
    "step_key",
    "task_resources",
]

CANCEL_CHECK_SECONDS = 0.5
"""How often a driver looks for a cancel request while steps run."""

_lock = threading.Lock()
_stores: dict[tuple[str, tuple[tuple[str, str], ...]], ArtifactStore] = {}
_irs: dict[str, PipelineIR] = {}


def step_key(run_id: str, step: str) -> str:
    """The Dask key of a step's task: unique in the cluster, the same when a restarted driver resubmits it.

    Dask keeps task durations per key prefix (the part before the first ``-<digits>``),
    and steals work from a busy worker only for tasks it expects to take a while: the
    prefix ``mlpipe.<step>`` lets it learn each step's duration across runs, instead
    of one average over fast and slow steps.
    """
    return f"mlpipe.{step}-{run_id}"


def driver_key(run_id: str) -> str:
    return f"mlpipe-run-{run_id}"


def cancel_marker(run_id: str) -> str:
    """Where a cancel request for a run is left in the store (any process can write it)."""
    return run_path(run_id, "dask-cancel.json")


def driver_marker(run_id: str) -> str:
    """Where the run's driver leaves its heartbeat: who it is (host, pid, worker) and when it last beat."""
    return run_path(run_id, "dask-driver.json")


def driver_state(key: str, dask_scheduler: Any = None) -> tuple[str | None, int]:
    """Run on the scheduler: the state of the task ``key`` (None if unknown) and how many workers it has."""
    if dask_scheduler is None:
        return None, 0
    task = dask_scheduler.tasks.get(key)
    return (None if task is None else str(task.state)), len(dask_scheduler.workers)


class Heartbeat:
    """Writes the driver's heartbeat every ``every`` seconds from a thread of its own, until stopped.

    A thread, so that a driver blocked in a gather or reading a large list
    still beats: a missing beat means the driver's process is gone.
    """

    def __init__(self, store: ArtifactStore, run_id: str, every: float) -> None:
        from distributed import get_worker

        self.store, self.rel, self.every = store, driver_marker(run_id), every
        self.doc = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "worker": str(get_worker().address),
            "started": time.time(),
            "every": every,
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"mlpipe-heartbeat-{run_id}", daemon=True)

    def beat(self) -> None:
        self.store.put_json(self.rel, {**self.doc, "beat": time.time()})

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.beat()
            except Exception:  # a store hiccup: the next beat tries again (a reader allows two missed beats)
                continue

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.every + 5)


def end_marker(run_id: str) -> str:
    """Where the driver leaves the run's end (status, end time, error), next to run.json."""
    return run_path(run_id, "dask-end.json")


def task_resources(spec: StepSpec) -> dict[str, float]:
    """The Dask worker resources a step's task asks for: ``cpu``, ``memory`` (bytes), ``gpu``."""
    wanted: dict[str, float] = {}
    res = spec.resources
    if res.get("cpu"):
        wanted["cpu"] = float(res["cpu"])
    if res.get("memory"):
        wanted["memory"] = float(memory_bytes(str(res["memory"])))
    if res.get("gpu"):
        wanted["gpu"] = float(res["gpu"])
    return wanted


def _store(url: str, storage_options: dict[str, Any]) -> ArtifactStore:
    """One store object per URL in a worker process (its metadata cache is content-addressed, so safe)."""
    key = (url, tuple(sorted((k, repr(v)) for k, v in storage_options.items())))
    with _lock:
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = open_store(url, storage_options or None)
        return store


def _ir(store: ArtifactStore, digest: str) -> PipelineIR:
    """The compiled pipeline by digest, read once per worker process (it is content-addressed)."""
    with _lock:
        found = _irs.get(digest)
    if found is None:
        found = load_ir(store, digest)
        with _lock:
            _irs[digest] = found
    return found


def probe(url: str, storage_options: dict[str, Any], rel: str) -> dict[str, Any]:
    """Run on every worker before a run starts: can it read ``rel`` (just written by the launcher)?"""
    where = {"host": socket.gethostname(), "pid": os.getpid(), "python": "{}.{}".format(*sys.version_info[:2])}
    try:
        store = open_store(url, storage_options or None)
        if not store.has(rel):
            return {**where, "error": f"{rel} is not there (this worker sees another filesystem or bucket)"}
    except Exception as exc:  # fsspec and the cloud SDKs raise anything: report it, the launcher refuses
        return {**where, "error": f"{type(exc).__name__}: {exc}"}
    return {**where, "error": None}


def _record(store: ArtifactStore, run_id: str, step: str) -> dict[str, Any]:
    rel = run_path(run_id, "steps", f"{step}.json")
    return store.get_json(rel) if store.has(rel) else {}


def _value_of(store: ArtifactStore, run_id: str) -> Any:
    """Reads an upstream step's output from its record and the store (what ``mp.when`` and ``map`` need)."""

    def value_of(step: str, output: str) -> Any:
        info = ObjectInfo(**_record(store, run_id, step)["outputs"][output])
        return store.get_value(info.digest, info=info)

    return value_of


def _blocked(ir: PipelineIR, upstream: dict[str, dict[str, Any]] | None) -> tuple[str, bool] | None:
    """The reason a step is skipped because an upstream step did not succeed, and whether it is a branch not taken."""
    for name, result in (upstream or {}).items():
        if result.get("status") != "succeeded":
            if result["status"] == "skipped":
                return str(result["error"]), bool(result.get("branch"))
            return skip_reason(ir.step(name), result["error"]), False
    return None


def _skipped(
    store: ArtifactStore, ir: PipelineIR, task: dict[str, Any], reason: str, branch: bool, started: float
) -> dict[str, Any]:
    outcome = StepOutcome(task["step"], "skipped", started=started, ended=time.time(), error=reason)
    outcome.branch_not_taken = branch
    RunRecord.load(store, task["run_id"]).record_outcome(ir.name, ir.step(task["step"]), outcome)
    return {"status": "skipped", "error": reason, "branch": branch, "recorded": True, "started": started}


def run_step(task: dict[str, Any], upstream: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run one step of a run on this worker; return its status (the record is in the store).

    ``upstream`` holds the results of the step's upstream tasks (Dask passes
    them in when they finish: a few words each, never data). When one did not
    succeed, the step is recorded ``skipped`` with the reason the local backend
    gives, naming the step that failed (or, after a branch not taken, that
    branch's reason: a skip that does not fail the run). A step under
    ``mp.when`` whose condition is false is skipped, branch not taken.
    """
    started = time.time()
    store = _store(task["store"], task["storage_options"])
    try:
        ir = _ir(store, task["ir"])
        blocked = _blocked(ir, upstream)
        if blocked is not None:
            return _skipped(store, ir, task, blocked[0], blocked[1], started)
        spec = ir.step(task["step"])
        if spec.when:
            reason = branch_not_taken(spec, _value_of(store, task["run_id"]))
            if reason is not None:
                return _skipped(store, ir, task, reason, True, started)
        outcome = execute_remote_step(
            store,
            ir,
            task["ir"],
            task["run_id"],
            task["step"],
            task["params"],
            backend="dask",
            cache=task["cache"],
        )
    except MlpipeError as exc:  # the step could not even start (its code, an upstream record): no record yet
        return {"status": "failed", "error": str(exc), "recorded": False, "started": started}
    return {
        "status": outcome.status,
        "cached": outcome.cached,
        "error": outcome.error,
        "recorded": True,
        "started": started,
    }


def run_item(task: dict[str, Any], item: StepSpec) -> dict[str, Any]:
    """Run one item (``<step>[i]``) of a mapped step on this worker, cached by its own key as locally."""
    started = time.time()
    store = _store(task["store"], task["storage_options"])
    ir = _ir(store, task["ir"])
    try:
        outcome = execute_remote_step(
            store,
            ir,
            task["ir"],
            task["run_id"],
            task["step"],
            task["params"],
            backend="dask",
            cache=task["cache"],
            item=item,
        )
    except MlpipeError as exc:
        error = str(exc)
        failed = StepOutcome(item.name, "failed", started=started, ended=time.time(), error=error)
        RunRecord.load(store, task["run_id"]).record_outcome(ir.name, item, failed)
        return {"name": item.name, "status": "failed", "error": error, "cached": False, "outputs": {}}
    outputs = {name: info.to_dict() for name, info in outcome.outputs.items()}
    return {
        "name": item.name,
        "status": outcome.status,
        "error": outcome.error,
        "cached": outcome.cached,
        "outputs": outputs,
    }


def collect_map(task: dict[str, Any], items: list[dict[str, Any]], started: float) -> dict[str, Any]:
    """The fan-in of a mapped step: record it with the list of its items' outputs (or its items' failure)."""
    import typing

    store = _store(task["store"], task["storage_options"])
    ir = _ir(store, task["ir"])
    spec = ir.step(task["step"])
    names = [r["name"] for r in items]
    failed = [(r["name"], r["error"]) for r in items if r["status"] != "succeeded"]
    if failed:
        error = items_failed(failed, len(items))
        outcome = StepOutcome(spec.name, "failed", started=started, ended=time.time(), error=error)
    else:
        returns = typing.get_type_hints(resolve_code(spec, store)).get("return", Any)

        def read(info: ObjectInfo) -> Any:
            return store.get_value(info.digest, returns, info=info)

        outputs = [ObjectInfo(**r["outputs"]["output"]) for r in items]
        collected = collect_items(store, ir.name, spec, task["run_id"], outputs, read)
        cached = bool(items) and all(r["cached"] for r in items)
        outcome = StepOutcome(
            spec.name, "succeeded", cached=cached, outputs={"output": collected}, started=started, ended=time.time()
        )
    RunRecord.load(store, task["run_id"]).record_outcome(ir.name, spec, outcome, {"map": {"items": names}})
    return {
        "status": outcome.status,
        "cached": outcome.cached,
        "error": outcome.error,
        "recorded": True,
        "started": started,
        "items": names,
    }


def drive(ref: dict[str, Any]) -> str:
    """The run's driver, a long-running task on the cluster. Returns the run's final status."""
    from distributed import worker_client

    store = _store(ref["store"], ref["storage_options"])
    ir = _ir(store, ref["ir"])
    with Heartbeat(store, ref["run_id"], float(ref.get("heartbeat", 5.0))), worker_client() as client:
        return _Driver(client, store, ir, ref).run()


class _Driver:
    def __init__(self, client: Client, store: ArtifactStore, ir: PipelineIR, ref: dict[str, Any]) -> None:
        self.client, self.store, self.ir, self.ref = client, store, ir, ref
        self.run_id: str = ref["run_id"]
        self.specs = {s.name: s for s in ir.steps}
        self.downstream = ir.downstream()
        self.states: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.running: dict[str, Future] = {}
        self.names: dict[str, str] = {}  # task key -> step
        self.done: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self.records = RunRecord.load(store, self.run_id)
        self.skipped: list[StepOutcome] = []
        self.items: dict[str, list[str]] = {}  # mapped step -> its items' names, in order
        self.branch: set[str] = set()  # steps skipped because their branch was not taken (not a failure)
        self.cancelled = False
        self._checked = time.monotonic()

    def run(self) -> str:
        doc = self.records.reload()
        if doc.get("status") in TERMINAL:  # a driver restarted after the run was closed
            return str(doc["status"])
        self._resume()
        try:
            self._loop()
        finally:
            if self.running:  # cancelled, or this driver failed: nothing of this run may keep running
                self.client.cancel(list(self.running.values()), force=True)
        return self._close()

    def _resume(self) -> None:
        """Take over what an earlier driver of this run (on a worker that died) finished."""
        for name, record in load_step_records(self.store, self.run_id).items():
            if name in self.specs and record.get("status") in ("succeeded", "failed", "skipped"):
                self.states[name] = str(record["status"])
                if record.get("error"):
                    self.errors[name] = str(record["error"])
                if record.get("branch") == "not taken":
                    self.branch.add(name)
                items = (record.get("components") or {}).get("map", {}).get("items")
                if items is not None:
                    self.items[name] = list(items)
        for spec in self.ir.steps:
            if self.states.get(spec.name) == "failed":
                self._skip_after(spec.name)

    def _loop(self) -> None:
        self._submit_ready()
        while any(self._watched(self.specs[name]) for name in self.running):
            wait = max(0.0, CANCEL_CHECK_SECONDS - (time.monotonic() - self._checked))
            try:
                future: Future | None = self.done.get(timeout=wait)
            except queue.Empty:
                future = None
            if time.monotonic() - self._checked >= CANCEL_CHECK_SECONDS:
                self._checked = time.monotonic()
                if self.store.has(cancel_marker(self.run_id)):
                    self.cancelled = True
                    return
            if future is not None:
                self._collect()
                self._submit_ready()
        if self.running:  # the ancestors of finished steps: done, or about to be
            from distributed import wait as wait_for

            wait_for(list(self.running.values()))
            self._collect()

    def _watched(self, spec: StepSpec) -> bool:
        """Whether this driver must hear at once that the step is done: it ends a branch, or feeds a fan-out.

        Any other step is an ancestor of a watched one, so its outcome is
        collected with it, in one gather (a chain of 100 steps costs this
        driver one wake-up, not 100).
        """
        consumers = self.downstream[spec.name]
        return not consumers or not all(self._chained(self.specs[c]) for c in consumers)

    def _chained(self, spec: StepSpec) -> bool:
        """Whether the step's task depends on its upstream tasks in Dask (else this driver submits it when ready).

        Dask runs a task where its dependencies' results are, so the consumers
        of one step would all queue on that step's worker. A step that is the
        only consumer of each of its upstream steps (a chain, a join) is handed
        to Dask with them, and the scheduler starts it the moment they finish,
        without a round trip through this driver; the consumers of a step with
        several (a fan-out) are submitted here once it is done, so Dask spreads
        them over the workers.
        """
        return not spec.map_over and all(len(self.downstream[up]) == 1 for up in spec.upstream)

    def _submit_ready(self) -> None:
        submitted = []
        for spec in self.ir.steps:  # topological order: upstream steps are submitted first
            name = spec.name
            if name in self.states or name in self.running:
                continue
            if self._chained(spec):
                if not all(up in self.states or up in self.running for up in spec.upstream):
                    continue
            elif not all(up in self.states for up in spec.upstream):
                continue
            task = {
                "store": self.ref["store"],
                "storage_options": self.ref["storage_options"],
                "ir": self.ref["ir"],
                "run_id": self.run_id,
                "step": name,
                "params": self.ref["params"],
                "cache": self.ref["cache"],
            }
            key = step_key(self.run_id, name)
            if spec.map_over and all(self.states[up] == "succeeded" for up in spec.upstream):
                future = self._fan_out(spec, task, key)
                if future is None:  # decided here: a branch not taken, or items that cannot be built
                    continue
            else:
                upstream = {
                    up: self.running.get(up)
                    or {"status": self.states[up], "error": self.errors.get(up), "branch": up in self.branch}
                    for up in spec.upstream
                }
                future = self.client.submit(
                    run_step, task, upstream, key=key, resources=task_resources(spec) or None, pure=False
                )
            self.names[key] = name
            self.running[name] = future
            submitted.append(future)
        for future in submitted:
            if self._watched(self.specs[self.names[future.key]]):
                future.add_done_callback(self.done.put)

    def _fan_out(self, spec: StepSpec, task: dict[str, Any], key: str) -> Future | None:
        """Submit one task per item of a mapped step, and its fan-in; None when the step ends here.

        The items are built as the local backend builds them (same names, same
        cache keys), from the upstream outputs in the store; each item is a
        task Dask places on any worker, and the fan-in task waits for them all.
        """
        started = time.time()
        value_of = _value_of(self.store, self.run_id)
        reason = branch_not_taken(spec, value_of) if spec.when else None
        items: list[StepSpec] | str = []
        if reason is None:
            items = item_specs(spec, self.specs, _decoded(self.ir, spec, self.ref["params"]), value_of, self.items)
        if reason is not None or isinstance(items, str):
            status = "skipped" if reason is not None else "failed"
            error = reason if reason is not None else f"step {spec.name!r}: {items}"
            outcome = StepOutcome(spec.name, status, started=started, ended=time.time(), error=error)
            outcome.branch_not_taken = reason is not None
            self.records.record_outcome(self.ir.name, spec, outcome)
            self.states[spec.name], self.errors[spec.name] = status, error
            if reason is not None:
                self.branch.add(spec.name)
                self.skipped.append(outcome)
            return None
        resources = task_resources(spec) or None
        futures = [
            self.client.submit(run_item, task, item, key=f"{key}-{i}", resources=resources, pure=False)
            for i, item in enumerate(items)
        ]
        return self.client.submit(collect_map, task, futures, started, key=key, pure=False)

    def _collect(self) -> None:
        """Record the outcome of every finished task: one gather for all results, upstream steps first."""
        finished = {name: f for name, f in self.running.items() if f.done()}
        if not finished:
            return
        for name in finished:
            del self.running[name]
        ok = [name for name, f in finished.items() if f.status == "finished"]
        results = dict(zip(ok, self.client.gather([finished[name] for name in ok]), strict=True)) if ok else {}
        for spec in self.ir.steps:  # topological order: an upstream's fate is known before its consumers'
            if spec.name in finished:
                self._finished(spec, results.get(spec.name), finished[spec.name])

    def _finished(self, spec: StepSpec, result: dict[str, Any] | None, future: Future) -> None:
        name = spec.name
        if result is None:  # the task failed: a worker died too often, code that cannot unpickle, or upstream
            blocked = [up for up in spec.upstream if self.states.get(up) not in (None, "succeeded")]
            if blocked:  # Dask passes an upstream task's error on to its dependents
                result = {"status": "skipped", "error": self._skip_reason(blocked[0]), "recorded": False}
            else:
                error = _task_error(name, future.exception()) if future.status == "error" else "task cancelled"
                result = {"status": "failed", "error": error, "recorded": False}
        status = str(result["status"])
        outcome = StepOutcome.ended_now(name, status, result["error"])
        outcome.started = result.get("started", outcome.started)
        if not result.get("recorded"):
            self.records.record_outcome(self.ir.name, spec, outcome)
        if status == "skipped":
            self.skipped.append(outcome)
            if result.get("branch"):
                self.branch.add(name)
        if result.get("items") is not None:
            self.items[name] = list(result["items"])
        self.states[name] = status
        if result.get("error"):
            self.errors[name] = str(result["error"])

    def _skip_reason(self, up: str) -> str:
        if self.states[up] == "skipped":
            return self.errors[up]
        return skip_reason(self.specs[up], self.errors.get(up))

    def _skip_after(self, failed: str) -> None:
        """Record every step downstream of ``failed`` as skipped, with the reason the local backend gives."""
        for outcome in self.records.skip_dependents(self.ir, failed, self.errors.get(failed), done=self.states):
            self.states[outcome.name] = "skipped"
            self.errors[outcome.name] = outcome.error or ""
            self.skipped.append(outcome)

    def _close(self) -> str:
        if self.cancelled:
            for spec in self.ir.steps:
                if spec.name not in self.states:
                    outcome = StepOutcome.ended_now(spec.name, "cancelled", "run cancelled")
                    self.records.record_outcome(self.ir.name, spec, outcome)
                    self.states[spec.name] = "cancelled"
        track_skipped(self.store, self.run_id, self.ir, self.skipped)
        status: RunState = "succeeded"
        if self.cancelled:
            status = "cancelled"
        elif any(self.states.get(name) != "succeeded" and name not in self.branch for name in self.specs):
            status = "failed"
        self.records.reload()
        if self.items:  # items are listed after their mapped step, as on the local backend
            order = self.records.doc.get("order") or []
            self.records.doc["order"] = [n for name in order for n in (name, *self.items.get(name, ()))]
        doc = self.records.close(status)
        # Written once, never rewritten: the launcher saves the run's handle into run.json (another process,
        # so RunRecord's lock cannot order the two) and its read-modify-write could put back "running".
        self.store.put_json(end_marker(self.run_id), {k: doc.get(k) for k in ("status", "ended", "error")})
        return status


def _decoded(ir: PipelineIR, spec: StepSpec, raw: dict[str, str]) -> dict[str, Any]:
    """The pipeline parameters a mapped step maps over, decoded from the runtime's text."""
    names = {inp.param for inp in spec.inputs if inp.source == "param" and inp.name in spec.map_over}
    return {p.name: decode_param(p, raw[p.name]) if p.name in raw else p.default for p in ir.params if p.name in names}


def _task_error(step: str, exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "KilledWorker":
        return (
            f"the Dask workers running step {step!r} kept dying (killed, out of memory, or lost): {exc}. Dask gives "
            "up on a task after `distributed.scheduler.allowed-failures` worker deaths; give the workers more memory"
        )
    if isinstance(exc, ModuleNotFoundError | ImportError):
        return (
            f"a Dask worker could not import what step {step!r} needs: {name}: {exc}. Install the pipeline's "
            "package, mlpipe and mlpipe-dask on every worker"
        )
    return f"the Dask task of step {step!r} failed: {name}: {exc}"
