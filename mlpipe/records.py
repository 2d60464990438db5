"""The run record: its layout in the store and its whole lifecycle.

This module is the one owner of ``runs/<run_id>/``: opening a run
(``run.json``), recording each step's outcome, skipping what a failure
blocks, closing the run, and reading it back. Every backend — local, the
container runtime, Kubeflow, Vertex, SageMaker, plugins — goes through
:class:`RunRecord`; nothing else spells out a ``runs/...`` path. The compiled
pipeline a run points at (``pipelines/<digest>.json``) is stored here too.

Layout::

    runs/<id>/run.json               the run: status, params, backend, IR digest, times
    runs/<id>/steps/<step>.json      one step's record, written by the task that ran it
    runs/<id>/steps.json             the local backend's step records, batched
    runs/<id>/attempts/<step>/...    attempt markers of remote tasks (runtime)
    runs/<id>/reports/<step>.<out>.* report outputs copied under a readable name
    runs/<id>/tracking.json          where the run is tracked (MLflow parent run)
    pipelines/<digest>.json          the IR, by the SHA-256 of its canonical JSON

A remote task writes its step's record as its own file the moment it
finishes. The local backend runs many small steps in one process, where a file
per step would cost more than the step itself, so it buffers its records and
writes them together to ``steps.json`` (every two seconds and at the end of
the run). Readers merge both forms. Cache entries are written when their
step ends (inside a local run, published by :mod:`mlpipe.commit` within
milliseconds), so a killed run loses at most two seconds of history and only
the results of its last few milliseconds. ``run.json`` is published after
everything it refers to (:meth:`ArtifactStore.publish_json`).

What must not live here: scheduling, step execution, tracking (callers pass
skipped outcomes on to their tracking hooks themselves).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import warnings
import weakref
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mlpipe.errors import DamagedFileError, MlpipeError, ParameterError, RunNotFoundError, StoreError
from mlpipe.ir import PipelineIR, StepSpec

if TYPE_CHECKING:
    from mlpipe.metadata import Index
    from mlpipe.store import ArtifactStore, ObjectInfo

__all__ = [
    "RUN_TERMINAL",
    "DamagedRecordWarning",
    "RunRecord",
    "RunState",
    "StepOutcome",
    "StepStatus",
    "canonical_ir",
    "check_run_id",
    "ir_digest",
    "load_ir",
    "load_step_records",
    "run_ids",
    "run_path",
    "settled_ok",
    "skip_reason",
    "step_record",
    "write_ir",
]

#: A step's status in its record.
StepStatus = Literal["running", "succeeded", "failed", "skipped", "cancelled"]
#: A run's status in ``run.json`` (``interrupted`` is observed, never written: a process that died).
RunState = Literal["pending", "running", "succeeded", "failed", "cancelled", "interrupted"]
RUN_TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

FLUSH_SECONDS = 2.0


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_run_id(run_id: str, *, what: str = "run id") -> str:
    """``run_id`` if it is a valid run id (letters, digits, ``.``, ``_``, ``-``; no path), else ParameterError.

    Run ids become store paths, so one such as ``../../x`` must never reach the filesystem.
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise ParameterError(
            f"{what} {run_id!r} is not a run id: use letters, digits, '.', '_' and '-' (no '/' or '..'), "
            "such as 20261126-104526-143-cfd88c",
            argument="run_id",
        )
    return run_id


def run_ids(store: ArtifactStore) -> list[str]:
    """The ids of the runs recorded in ``store`` (sorted), ignoring entries of ``runs/`` that are no run id."""
    return [name for name in store.listdir("runs") if _RUN_ID.fullmatch(name) and ".." not in name]


def run_path(run_id: str, *parts: str) -> str:
    """The store path of a run's file: ``run_path(id, "steps", "a.json")`` → ``runs/<id>/steps/a.json``."""
    return "/".join(("runs", check_run_id(run_id), *parts))


# -- the compiled pipeline ----------------------------------------------------------------


_canonical: dict[int, tuple[weakref.ref[PipelineIR], str, bytes]] = {}


def canonical_ir(ir: PipelineIR) -> tuple[str, bytes]:
    """The IR's digest (SHA-256) and canonical JSON, computed once per IR object.

    The memo holds IRs weakly: an entry goes when its IR is collected.
    """
    key = id(ir)
    hit = _canonical.get(key)
    if hit is not None and hit[0]() is ir:
        return hit[1], hit[2]
    from mlpipe.hashing import canonical_json, digest_bytes

    data = canonical_json(ir.to_dict()).encode()
    digest = digest_bytes(data)
    _canonical[key] = (weakref.ref(ir, lambda _ref: _canonical.pop(key, None)), digest, data)
    return digest, data


def ir_digest(ir: PipelineIR) -> str:
    """The IR's address: SHA-256 of its canonical JSON."""
    return canonical_ir(ir)[0]


def write_ir(store: ArtifactStore, ir: PipelineIR, *, ship: bool = True) -> str:
    """Store the IR and return its digest (what a task's ``--ir`` names).

    With ``ship`` (the default) the code of steps that cannot be imported
    (``__main__``, notebooks, closures) is stored with cloudpickle first and the
    IR that points at it is the one stored.
    """
    if ship:
        from mlpipe.code import ship as ship_code

        ir = ship_code(ir, store)
    digest, data = canonical_ir(ir)
    rel = f"pipelines/{digest}.json"
    if not store.has(rel):
        store.put_bytes(rel, data)
    return digest


_IR_DIGEST = re.compile(r"[0-9a-f]{64}")


def load_ir(store: ArtifactStore, digest: str) -> PipelineIR:
    """The IR stored under ``digest``, after checking that its bytes hash to it (SHA-256).

    The IR decides what code runs, so a document that does not match the
    digest the orchestrator passed is refused, never used.

    Raises:
        ParameterError: ``digest`` is not a SHA-256 hex digest (it could name a path outside the store).
        MlpipeError: it is not in the store (names the store and what to do).
        StoreError: the document does not hash to ``digest``.
    """
    if not isinstance(digest, str) or not _IR_DIGEST.fullmatch(digest):
        raise ParameterError(
            f"--ir {digest!r} is not a compiled pipeline digest (64 lower-case hex digits, the SHA-256 of the IR)",
            argument="ir",
        )
    rel = f"pipelines/{digest}.json"
    if not store.has(rel):
        raise MlpipeError(
            f"the compiled pipeline {digest[:12]}… is not in the store {store.url}: `mlpipe compile` writes no "
            "store, so upload it with `mlpipe compile FILE:PIPELINE --profile P --upload -o SPEC` (the profile "
            "whose store this task uses) or start the run with `mlpipe submit FILE:PIPELINE --profile P`",
        )
    data = store.get_bytes(rel)
    if hashlib.sha256(data).hexdigest() != digest:
        raise StoreError(
            f"{rel} in {store.url} does not hash to its name {digest[:12]}… (SHA-256): it was changed or damaged "
            "after it was submitted, and is not used. Submit the pipeline again",
            path=rel,
        )
    return PipelineIR.model_validate_json(data)


# -- step outcomes and records ------------------------------------------------------------


@dataclass
class StepOutcome:
    """What happened to one step call."""

    name: str
    status: str  # a StepStatus
    cached: bool = False
    key: str | None = None
    outputs: dict[str, ObjectInfo] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0
    attempts: int = 0
    error: str | None = None
    traceback: str | None = None
    source_run: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)
    branch_not_taken: bool = False  # skipped because a `mp.when` condition was false: not a failure

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.started)

    @classmethod
    def ended_now(cls, name: str, status: str, error: str | None) -> StepOutcome:
        """An outcome for a step that did not run (skipped, cancelled, or lost with its task)."""
        now = time.time()
        return cls(name, status, started=now, ended=now, error=error)


def skip_reason(failed: StepSpec, error: str | None) -> str:
    """Why a step downstream of the failed step ``failed`` was skipped, as every backend records it."""
    if not failed.gate:
        return f"skipped because upstream step {failed.name!r} did not succeed"
    first = (error or "").strip().splitlines()[0] if (error or "").strip() else "no reason given"
    return f"skipped because quality gate {failed.name!r} failed: {first}"


def step_record(
    run_id: str, pipeline: str, spec: StepSpec, outcome: StepOutcome, components: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The JSON record of a step call, as written to ``runs/<id>/steps/<name>.json``."""
    doc: dict[str, Any] = {
        "run_id": run_id,
        "pipeline": pipeline,
        "step": spec.name,
        "status": outcome.status,
        "cached": outcome.cached,
        "key": outcome.key,
        "started": outcome.started,
        "ended": outcome.ended,
        "duration": outcome.duration,
        "attempts": outcome.attempts,
        "outputs": {n: i.to_dict() for n, i in outcome.outputs.items()},
        "code": {"module": spec.code.module, "qualname": spec.code.qualname, "fingerprint": spec.fingerprint},
        "cache_option": spec.cache,
    }
    if components is not None:
        doc["components"] = dict(components)
    if outcome.source_run:
        doc["source_run"] = outcome.source_run
    if outcome.error:
        doc["error"] = outcome.error
    if outcome.traceback:
        doc["traceback"] = outcome.traceback
    if outcome.reports:
        doc["reports"] = outcome.reports
    if outcome.branch_not_taken:
        doc["branch"] = "not taken"
    return doc


class DamagedRecordWarning(UserWarning):
    """A step record file is damaged and was skipped (its steps show as not recorded)."""


def settled_ok(record: Mapping[str, Any] | None) -> bool:
    """Whether a step's record lets its run succeed: it succeeded, or its branch was not taken."""
    if not record:
        return False
    return record.get("status") == "succeeded" or (
        record.get("status") == "skipped" and record.get("branch") == "not taken"
    )


def load_step_records(store: ArtifactStore, run_id: str, *, batched: bool = True) -> dict[str, dict[str, Any]]:
    """Every step record of a run, from the batched file and the per-step files.

    A damaged file (truncated, not JSON) is skipped with a
    :class:`DamagedRecordWarning` naming it, so one bad record never hides the
    rest of the run from ``runs show``, ``index --rebuild`` or ``cache gc``.
    """
    records: dict[str, dict[str, Any]] = {}
    batched_file = run_path(run_id, "steps.json")
    if batched and store.has(batched_file):
        try:
            found = store.get_json(batched_file)
            if not isinstance(found, dict):
                raise DamagedFileError(
                    f"{batched_file} in {store.url} is damaged (not a JSON object)", path=batched_file
                )
            records.update({k: v for k, v in found.items() if isinstance(v, dict)})
        except DamagedFileError as exc:
            warnings.warn(str(exc), DamagedRecordWarning, stacklevel=2)
    for name in store.listdir(run_path(run_id, "steps")):
        if name.endswith(".json") and ".tmp-" not in name:
            rel = run_path(run_id, "steps", name)
            try:
                doc = store.get_json(rel)
                records[doc["step"]] = doc
            except (DamagedFileError, KeyError, TypeError) as exc:
                warnings.warn(f"{rel}: {exc}", DamagedRecordWarning, stacklevel=2)
    return records


# -- the run ------------------------------------------------------------------------------

_locks: dict[tuple[str, str], threading.RLock] = {}
_locks_guard = threading.Lock()


def _run_lock(store: ArtifactStore, run_id: str) -> threading.RLock:
    """The lock serialising this process's read-modify-writes of one run's ``run.json``."""
    key = (store.url, run_id)
    with _locks_guard:
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = threading.RLock()
        return lock


class RunRecord:
    """One run's record in the store, from :meth:`open` to :meth:`close`.

    Thread-safe: the local backend records steps from its worker threads.

    Args:
        store: The store holding the run.
        doc: The run document (``run.json``) as last written or read.
        index: The metadata index to keep in step (None: store only).
        batched: Buffer step records into ``steps.json`` (one process runs every step).
    """

    def __init__(
        self, store: ArtifactStore, doc: dict[str, Any], *, index: Index | None = None, batched: bool = False
    ) -> None:
        self.store = store
        self.doc = doc
        self.index = index
        self.batched = batched
        self._buffer: dict[str, dict[str, Any]] = {}
        self._dirty = False
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    @property
    def run_id(self) -> str:
        return str(self.doc["id"])

    @property
    def status(self) -> str:
        return str(self.doc.get("status"))

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        store: ArtifactStore,
        ir: PipelineIR,
        run_id: str,
        *,
        backend: str,
        params: Mapping[str, Any],
        status: RunState = "running",
        ir_digest: str | None = None,
        index: Index | None = None,
        batched: bool = False,
        **extra: Any,
    ) -> RunRecord:
        """Write a new run's ``run.json`` and return its record.

        ``ir_digest`` names the stored IR the run's tasks read (from
        :func:`write_ir`); without it the IR is stored as it is. ``extra`` keys
        (``cache``, ``host``, a backend's own section) go into the document.
        """
        digest = ir_digest or write_ir(store, ir, ship=False)
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
            "ir": digest,
            "store": store.url,
            **extra,
        }
        record = cls(store, doc, index=index, batched=batched)
        record.write()
        return record

    @classmethod
    def load(cls, store: ArtifactStore, run_id: str, *, index: Index | None = None) -> RunRecord:
        """The record of an existing run.

        Raises:
            RunNotFoundError: the store has no such run.
        """
        rel = run_path(run_id, "run.json")
        if not store.has(rel):
            raise RunNotFoundError(f"no run {run_id!r} in the store {store.url}", run_id=run_id)
        return cls(store, store.get_json(rel), index=index)

    @classmethod
    def join(
        cls,
        store: ArtifactStore,
        ir: PipelineIR,
        run_id: str,
        *,
        ir_digest: str,
        backend: str,
        params: Mapping[str, Any],
        **extra: Any,
    ) -> RunRecord:
        """The record of a run a remote task belongs to, opened by the first task when no launcher did."""
        try:
            return cls.load(store, run_id)
        except RunNotFoundError:
            return cls.open(store, ir, run_id, backend=backend, params=params, ir_digest=ir_digest, **extra)

    @staticmethod
    def exists(store: ArtifactStore, run_id: str) -> bool:
        return store.has(run_path(run_id, "run.json"))

    # -- the run document -----------------------------------------------------------------
    def write(self) -> None:
        """Write ``run.json`` as it is now (and index it).

        The launcher adds the run's handle to ``run.json`` once the backend's
        ``submit`` returns (:meth:`save_handle`), possibly while a background
        thread of this process closes the run: both go through this method,
        under one lock per run, and the handle already on disk is kept.
        """
        rel = run_path(self.run_id, "run.json")
        with _run_lock(self.store, self.run_id):
            if "handle" not in self.doc and self.store.has(rel):
                on_disk = self.store.get_json(rel).get("handle")
                if on_disk is not None:
                    self.doc["handle"] = on_disk
            self.store.publish_json(rel, self.doc)  # after the records and cache entries it refers to
        if self.index is not None:
            self.index.record_run(self.doc)

    @classmethod
    def save_handle(
        cls,
        store: ArtifactStore,
        run_id: str,
        pipeline: str,
        backend: str,
        handle: Mapping[str, Any],
        *,
        index: Index | None = None,
    ) -> RunRecord:
        """Add a submitted run's handle to its ``run.json`` (a ``pending`` record when the backend wrote none)."""
        with _run_lock(store, run_id):
            if cls.exists(store, run_id):
                record = cls.load(store, run_id, index=index)
            else:  # the backend records the run under another id, or not at all
                doc = {
                    "id": run_id,
                    "pipeline": pipeline,
                    "status": "pending",
                    "backend": backend,
                    "started": time.time(),
                    "ended": None,
                }
                record = cls(store, doc, index=index)
            record.doc["handle"] = dict(handle)
            record.write()
        return record

    def update(self, **fields: Any) -> None:
        """Set fields of ``run.json`` and write it."""
        self.doc.update(fields)
        self.write()

    def reload(self) -> dict[str, Any]:
        """Read ``run.json`` again (another process may have written it) and return it."""
        self.doc = self.store.get_json(run_path(self.run_id, "run.json"))
        return self.doc

    # -- steps ----------------------------------------------------------------------------
    def record_step(self, doc: dict[str, Any], *, new_entry: dict[str, Any] | None = None) -> None:
        """Write one step's record (built with :func:`step_record`) to the store and the index."""
        if not self.batched:
            self.store.put_json(run_path(self.run_id, "steps", f"{doc['step']}.json"), doc)
        else:
            with self._lock:
                self._buffer[doc["step"]] = doc
                self._dirty = True
                due = time.monotonic() - self._last_flush > FLUSH_SECONDS
            if due:
                self.flush()
        if self.index is not None:
            self.index.record_step(doc, new_entry)

    def record_outcome(
        self, pipeline: str, spec: StepSpec, outcome: StepOutcome, components: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record a step's outcome; the record is also kept in ``outcome.record``."""
        outcome.record = step_record(self.run_id, pipeline, spec, outcome, components)
        self.record_step(outcome.record)
        return outcome.record

    def flush(self) -> None:
        """Write buffered step records (batched runs)."""
        with self._lock:
            if not self._dirty:
                return
            self.store.put_json(run_path(self.run_id, "steps.json"), self._buffer)
            self._dirty = False
            self._last_flush = time.monotonic()

    def steps(self) -> dict[str, dict[str, Any]]:
        """Every step record of the run written so far (store and buffer)."""
        # A batched record's buffer holds everything its steps.json does: read only the per-step files.
        records = load_step_records(self.store, self.run_id, batched=not self.batched)
        with self._lock:
            records.update(self._buffer)
        return records

    def skip_dependents(
        self, ir: PipelineIR, failed: str, error: str | None, *, done: Container[str] = (), branch: bool = False
    ) -> list[StepOutcome]:
        """Record every step downstream of the failed step ``failed`` as skipped, with the reason.

        Steps in ``done`` (already finished or recorded) are left alone, and so
        are their descendants reached only through them. Returns the new
        outcomes, in the order they were recorded.
        """
        reason = (error or "skipped: its branch was not taken") if branch else skip_reason(ir.step(failed), error)
        downstream = ir.downstream()
        skipped: list[StepOutcome] = []
        seen: set[str] = set()
        stack = list(downstream.get(failed, []))
        while stack:
            name = stack.pop()
            if name in done or name in seen:
                continue
            seen.add(name)
            outcome = StepOutcome.ended_now(name, "skipped", reason)
            outcome.branch_not_taken = branch
            self.record_outcome(ir.name, ir.step(name), outcome)
            skipped.append(outcome)
            stack.extend(downstream[name])
        return skipped

    def settle(
        self,
        ir: PipelineIR,
        *,
        lost: Mapping[str, str] | None = None,
        engine_error: str | None = None,
        cancelled: bool = False,
        not_run: str | None = "not run",
    ) -> list[StepOutcome]:
        """Give every step without a record one, once an engine is done with the run.

        A remote engine's tasks record their own steps; what no task writes is
        the fate of steps whose task never ran or died before it could write.
        ``lost`` maps steps the engine reports failed to its reason (their
        container never started). ``engine_error``, when no task recorded a
        failure, is charged to the first step without a record: it is the one
        whose task died. Steps downstream of a failure are skipped with
        :func:`skip_reason` (a quality gate's own message); any other step
        without a record is skipped with ``not_run`` (or as cancelled), or left
        without a record when ``not_run`` is None (the engine may still report it).
        Returns the skipped outcomes, for the caller's tracking.
        """
        records = self.steps()
        lost = dict(lost or {})
        orphan = engine_error if not any(r.get("status") == "failed" for r in records.values()) else None
        failures: dict[str, str | None] = {
            n: r.get("error") for n, r in records.items() if r.get("status") != "succeeded"
        }
        skipped: list[StepOutcome] = []
        for spec in ir.steps:  # topological order: an upstream's fate is known before its consumers'
            if spec.name in records:
                continue
            blocked = [u for u in spec.upstream if u in failures]
            error: str | None = None
            item_names: list[str] = []
            not_taken = self._branch_not_taken(spec, records) if spec.when and spec.name not in lost else None
            if spec.name in lost:
                error = lost[spec.name]
            elif spec.map_over and (failed_items := _failed_items(spec.name, records)):
                error, item_names = failed_items
            elif orphan and not blocked and not cancelled and not_taken is None:
                error, orphan = f"the task failed without writing its record (see its log): {orphan}", None
            branch = False
            if error is not None:
                outcome = StepOutcome.ended_now(spec.name, "failed", error)
            else:
                if not_taken is not None:
                    reason, branch = not_taken, True
                elif blocked:
                    first = blocked[0]
                    if (records.get(first) or {}).get("status") == "skipped":  # inherit the cause, as local does
                        reason = failures[first] or skip_reason(ir.step(first), None)
                        branch = (records.get(first) or {}).get("branch") == "not taken"
                    else:
                        reason = skip_reason(ir.step(first), failures[first])
                elif cancelled:
                    reason = "not run: the run was cancelled"
                elif not_run is None:
                    continue
                else:
                    reason = not_run
                outcome = StepOutcome.ended_now(spec.name, "skipped", reason)
                outcome.branch_not_taken = branch
                skipped.append(outcome)
            components = {"map": {"items": item_names}} if item_names else None
            records[spec.name] = self.record_outcome(ir.name, spec, outcome, components)
            failures[spec.name] = outcome.error
        return skipped

    def _branch_not_taken(self, spec: StepSpec, records: Mapping[str, Mapping[str, Any]]) -> str | None:
        """Why ``spec`` was not run when one of its ``mp.when`` conditions is false, read from the store; else None.

        The orchestrator never starts a step in a branch not taken (KFP skips the
        condition's sub-DAG), so the run's record learns it here, from the value
        the condition's step stored, tested as the local backend tests it.
        """
        for condition in spec.when:
            record = records.get(condition.step) or {}
            info = (record.get("outputs") or {}).get(condition.output)
            if record.get("status") != "succeeded" or info is None:
                return None  # not decidable: the step upstream did not succeed (its fate is inherited instead)
            from mlpipe.store import ObjectInfo

            try:
                found = ObjectInfo(**info)
                holds = condition.holds(self.store.get_value(found.digest, info=found))
            except (MlpipeError, KeyError, AttributeError, TypeError):
                return None
            if not holds:
                return condition.not_taken()
        return None

    # -- closing --------------------------------------------------------------------------
    def close(self, status: RunState | None = None, *, error: str | None = None) -> dict[str, Any]:
        """End the run: write its final status, end time and error, and return the document.

        With no ``status``, it follows from the step records: ``succeeded``
        when every step of the run succeeded, else ``failed``. With no
        ``error``, a failed run's error lists its failed steps.
        """
        self.flush()
        records = self.steps()
        order = _with_items(self.doc.get("order") or list(records), records)
        self.doc["order"] = order
        if status is None:
            status = "succeeded" if all(settled_ok(records.get(name)) for name in order) else "failed"
        failed = [n for n in order if (records.get(n) or {}).get("status") == "failed"]
        if error is None and failed:
            error = "; ".join(f"step {n!r} failed: {records[n].get('error')}" for n in failed)
        self.doc.update(status=status, ended=time.time())
        if error:
            self.doc["error"] = error
        if self.index is not None:
            self.index.flush()
        self.write()
        if status in RUN_TERMINAL:
            from mlpipe.ledger import seal_run

            seal_run(self.store, self.run_id, self.doc, self.steps())  # the tamper-evident chain of closed runs
        return self.doc

    def close_once(self, status: RunState, *, error: str | None = None) -> bool:
        """Close the run unless ``run.json`` already records an end; True when this call closed it."""
        if RunRecord.exists(self.store, self.run_id):
            self.reload()
        if self.doc.get("status") in RUN_TERMINAL and self.doc.get("ended"):
            return False
        self.close(status, error=error)
        return True


def _with_items(order: list[str], records: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``order`` with each mapped step's items (``train[0]``...) after it, from its record, unless listed already."""
    listed = set(order)
    out: list[str] = []
    for name in order:
        out.append(name)
        mapped = ((records.get(name) or {}).get("components") or {}).get("map") or {}
        out += [item for item in mapped.get("items") or () if item not in listed and item in records]
    return out


def _failed_items(step: str, records: Mapping[str, Mapping[str, Any]]) -> tuple[str, list[str]] | None:
    """A mapped step's error when its fan-in never ran because items failed (``mapping.items_failed``'s wording)."""
    items = sorted(
        (int(name[len(step) + 1 : -1]), name, r)
        for name, r in records.items()
        if name.startswith(f"{step}[") and name.endswith("]") and name[len(step) + 1 : -1].isdigit()
    )
    failed = [(name, r.get("error")) for _, name, r in items if r.get("status") != "succeeded"]
    if not failed:
        return None
    error = f"{len(failed)} of {len(items)} items failed; {failed[0][0]}: {failed[0][1]}"
    return error, [name for _, name, _ in items]
