"""Run results: :class:`Run`, :class:`StepRun`, and finding past runs.

A :class:`Run` is read from the run's records (``runs/<id>/run.json`` and one
JSON per step in the store), so a run finished by any backend, on any
machine, looks the same. Outputs are loaded lazily from the store, verified.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from mlpipe.errors import MlpipeError, RunNotFoundError, StepFailedError
from mlpipe.records import load_step_records, run_path
from mlpipe.store import ArtifactStore, ObjectInfo, open_store

__all__ = ["Run", "StepRun", "get_run", "runs"]


@dataclass(frozen=True)
class StepRun:
    """One step of a run.

    Attributes:
        name: Step name in the pipeline.
        status: ``succeeded``, ``failed``, ``skipped``, ``running`` or ``pending``.
        cached: Whether the outputs were served from the cache.
        duration: Seconds from start to end (a hit takes well under a millisecond).
        outputs: Stored objects by output name.
        key: The cache key.
        source_run: For a hit, the run that computed the outputs.
        error: For a failure or a skip, why.
    """

    name: str
    status: str
    cached: bool = False
    duration: float = 0.0
    outputs: dict[str, ObjectInfo] = field(default_factory=dict)
    key: str | None = None
    source_run: str | None = None
    error: str | None = None
    traceback: str | None = None
    attempts: int = 0
    started: float | None = None
    record: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def reports(self) -> dict[str, str]:
        """Reports among the outputs (``HtmlReport``): output name to the report's file in the store."""
        return dict(self.record.get("reports") or {})

    @classmethod
    def from_record(cls, doc: dict[str, Any]) -> StepRun:
        outputs = {n: ObjectInfo(**i) for n, i in (doc.get("outputs") or {}).items()}
        # Records are stored as canonical (key-sorted) JSON; the declared order makes `output(step, 1)` stable.
        declared = [o[0] for o in (doc.get("components") or {}).get("outputs", [])]
        outputs = {n: outputs[n] for n in declared if n in outputs} | outputs
        return cls(
            name=doc["step"],
            status=doc["status"],
            cached=bool(doc.get("cached")),
            duration=float(doc.get("duration") or 0.0),
            outputs=outputs,
            key=doc.get("key"),
            source_run=doc.get("source_run"),
            error=doc.get("error"),
            traceback=doc.get("traceback"),
            attempts=int(doc.get("attempts") or 0),
            started=doc.get("started"),
            record=doc,
        )


class Run:
    """A pipeline run: status, steps and outputs.

    Attributes:
        id: The run id (sortable by start time).
        pipeline: Pipeline name.
        status: ``succeeded``, ``failed``, ``running``, ``pending`` or ``cancelled``.
        steps: :class:`StepRun` by step name, in execution order.
        params: The validated parameters.
        store: The store holding the run's records and outputs.
    """

    def __init__(self, doc: dict[str, Any], steps: dict[str, StepRun], store: ArtifactStore) -> None:
        self.doc = doc
        self.id: str = doc["id"]
        self.pipeline: str = doc["pipeline"]
        self.status: str = observed_status(doc)
        self.params: dict[str, Any] = doc.get("params", {})
        self.backend: str = doc.get("backend", "local")
        self.started: float | None = doc.get("started")
        self.ended: float | None = doc.get("ended")
        self.error: str | None = doc.get("error")
        self.steps = steps
        self.store = store

    def __repr__(self) -> str:
        return f"<Run {self.id} {self.pipeline} {self.status}>"

    def _repr_html_(self) -> str:
        """The run for notebooks: status, duration, and the graph coloured by each step's status and cache hit."""
        import html

        from mlpipe.graphview import StepState, legend, svg
        from mlpipe.records import load_ir

        states = {n: StepState.from_record(s.record or {"status": s.status}) for n, s in self.steps.items()}
        hits = sum(1 for s in self.steps.values() if s.cached)
        head = (
            f"<b>run {html.escape(self.id)}</b>: pipeline {html.escape(self.pipeline)}, "
            f"<b>{html.escape(self.status)}</b>, {len(self.steps)} steps ({hits} cache hits), {self.duration:.2f} s"
        )
        if self.error:
            head += f'<br><span style="color:#cf222e">{html.escape(self.error)}</span>'
        try:
            graph = svg(load_ir(self.store, self.doc["ir"]), states)
        except (KeyError, MlpipeError):  # a run recorded without its IR (a remote backend that did not ship it)
            graph = ""
        return f'<div class="mlpipe-run">{head}{legend(states)}{graph}</div>'

    @property
    def duration(self) -> float:
        return max(0.0, (self.ended or 0.0) - (self.started or 0.0))

    @property
    def outputs_ref(self) -> list[tuple[str, str]]:
        return [(o["step"], o["output"]) for o in self.doc.get("outputs", [])]

    def output(self, step: str, name: str | int | None = None) -> Any:
        """Load an output of a step from the store (hash verified).

        Args:
            step: Step name.
            name: Output name (``"train_df"``) or index (``0``); may be omitted
                when the step has one output.

        Raises:
            KeyError: no such step or output (names the ones there are).
            StepFailedError: the step did not succeed, so it has no outputs.
        """
        if step not in self.steps:
            raise KeyError(f"run {self.id} has no step {step!r}; steps: {list(self.steps)}")
        step_run = self.steps[step]
        if step_run.status != "succeeded":
            raise StepFailedError(
                f"step {step!r} of run {self.id} {step_run.status}, so it has no outputs"
                + (f": {step_run.error}" if step_run.error else ""),
                step=step,
                run_id=self.id,
            )
        outputs = step_run.outputs
        if name is None:
            if len(outputs) != 1:
                raise KeyError(
                    f"step {step!r} has {len(outputs)} outputs; name one: {list(outputs)}"
                    if outputs
                    else f"step {step!r} has no outputs"
                )
            info = next(iter(outputs.values()))
        elif isinstance(name, int):
            try:
                info = list(outputs.values())[name]
            except IndexError:
                raise KeyError(f"step {step!r} has {len(outputs)} outputs; index {name} is out of range") from None
        else:
            if name not in outputs:
                raise KeyError(f"step {step!r} has no output {name!r}; outputs: {list(outputs)}")
            info = outputs[name]
        return self.store.get_value(info.digest, info=info)

    def raise_for_status(self) -> Run:
        """Raise :class:`StepFailedError` if the run did not succeed; return self otherwise."""
        if self.status != "succeeded":
            failed = [s for s in self.steps.values() if s.status == "failed"]
            detail = "; ".join(f"{s.name}: {s.error}" for s in failed) or (self.error or self.status)
            raise StepFailedError(f"run {self.id} of {self.pipeline!r} {self.status}: {detail}", run_id=self.id)
        return self

    @classmethod
    def load(cls, store: ArtifactStore | str, run_id: str) -> Run:
        """Read a run from the store's records (any backend, any machine)."""
        store = open_store(store)
        rel = run_path(run_id, "run.json")
        if not store.has(rel):
            raise RunNotFoundError(f"no run {run_id!r} in the store {store.url}", run_id=run_id)
        doc = store.get_json(rel)
        steps: dict[str, StepRun] = {}
        records = load_step_records(store, run_id)
        for name in doc.get("order", list(records)):
            if name in records:
                steps[name] = StepRun.from_record(records[name])
            else:
                steps[name] = StepRun(name=name, status="pending")
        return cls(doc, steps, store)


def observed_status(doc: dict[str, Any]) -> str:
    """The recorded status, except that a local run whose process died shows as ``interrupted``."""
    status: str = doc["status"]
    pid, host = doc.get("pid"), doc.get("host")
    if status == "running" and isinstance(pid, int) and host == socket.gethostname() and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "interrupted"
        except PermissionError:  # alive, owned by someone else
            return status
    return status


def runs(store: str | ArtifactStore | None = None, limit: int = 50, pipeline: str | None = None) -> list[Run]:
    """Recent runs recorded in the store's index, newest first."""
    from mlpipe.metadata import open_index

    st = open_store(store if store is not None else _default_store())
    index = open_index(st)
    out = []
    for doc in index.runs(limit=limit, pipeline=pipeline):
        steps = {d["step"]: StepRun.from_record(d) for d in index.steps(doc["id"])}
        ordered = {n: steps[n] for n in doc.get("order", []) if n in steps} or steps
        out.append(Run(doc, ordered, st))
    return out


def get_run(run_id: str, store: str | ArtifactStore | None = None) -> Run:
    """One run by id (a unique prefix is enough), from the index or, failing that, the store."""
    from mlpipe.metadata import open_index

    st = open_store(store if store is not None else _default_store())
    index = open_index(st)
    doc = index.run(run_id)
    if doc is not None and doc["id"] != run_id:
        matches = index.run_ids(run_id)
        if len(matches) > 1:
            more = ", ..." if len(matches) > 5 else ""
            raise RunNotFoundError(
                f"run id prefix {run_id!r} is ambiguous in {st.url}: it matches {', '.join(matches[:5])}{more}; "
                "give more of the id",
                run_id=run_id,
            )
    full_id = doc["id"] if doc else run_id
    return Run.load(st, full_id)


def _default_store() -> str:
    from mlpipe.config import load_profile

    return load_profile(None).store
