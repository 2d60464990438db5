"""Before a run is sent: which steps are cache hits, and why the others will run.

:func:`plan_run` computes each step's cache key the way the executor does
(:func:`mlpipe.cache.components_for` and :func:`mlpipe.cache.cache_key`, with
the same parameter values), in dependency order: a step whose data inputs all
come from hits has a known key, and is a hit when the store holds its entry
with every object. A step downstream of one that will run has no key yet.
The reasons use the wording of ``mlpipe cache explain``.

Remote backends (Kubeflow, Vertex, SageMaker) prune the hits from the spec
they submit (:meth:`RunPlan.prunable`): a pruned step costs no pod or job,
its consumers read its outputs from the store by its cache key
(``python -m mlpipe.runtime --cached STEP=KEY``), and the run records it as
cached (:func:`record_cached`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mlpipe.cache import artifact_input, cache_key, components_for, diff_components, lookup, param_input
from mlpipe.ir import PipelineIR, StepSpec
from mlpipe.records import RunRecord, StepOutcome
from mlpipe.store import ArtifactStore, ObjectInfo

__all__ = ["RunPlan", "StepPlan", "close_cached_run", "miss_reason", "plan_run", "record_cached"]


@dataclass(frozen=True)
class StepPlan:
    """One step's verdict before the run: ``hit`` (served from the cache) or ``run``, and why."""

    step: str
    verdict: Literal["hit", "run"]
    reason: str
    key: str | None = None
    source_run: str | None = None
    outputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    differences: tuple[str, ...] = ()
    closest: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"step": self.step, "verdict": self.verdict, "reason": self.reason, "key": self.key}
        if self.source_run:
            doc["source_run"] = self.source_run
        if self.outputs:
            doc["outputs"] = {name: dict(info) for name, info in self.outputs.items()}
        if self.differences:
            doc["differences"] = list(self.differences)
        if self.closest is not None:
            doc["closest"] = {k: self.closest.get(k) for k in ("run_id", "key", "created")}
        return doc


@dataclass(frozen=True)
class RunPlan:
    """The verdicts of every step of a pipeline, in the pipeline's order."""

    pipeline: str
    steps: tuple[StepPlan, ...]
    cache: bool = True

    def step(self, name: str) -> StepPlan:
        return next(s for s in self.steps if s.step == name)

    @property
    def hits(self) -> tuple[str, ...]:
        return tuple(s.step for s in self.steps if s.verdict == "hit")

    def prunable(self, ir: PipelineIR) -> dict[str, str]:
        """The hits a compiled spec may leave out, each with its cache key (what ``--cached STEP=KEY`` says).

        A pipeline with ``mp.when`` blocks or mapped steps is submitted whole:
        its condition groups and fan-outs are built over every task.
        """
        if any(s.when or s.map_over for s in ir.steps):
            return {}
        return {s.step: str(s.key) for s in self.steps if s.verdict == "hit"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "cache": self.cache,
            "hits": list(self.hits),
            "run": [s.step for s in self.steps if s.verdict == "run"],
            "steps": [s.to_dict() for s in self.steps],
        }


def _hit(spec: StepSpec, key: str, store: ArtifactStore) -> StepPlan | None:
    entry = lookup(store, key)
    if entry is None:
        return None
    return StepPlan(
        spec.name,
        "hit",
        f"served from the cache entry written by run {entry.run_id}",
        key=key,
        source_run=entry.run_id,
        outputs=entry.outputs,
    )


def miss_reason(
    store: ArtifactStore, pipeline: str, step: str, key: str, components: Mapping[str, Any], before: float
) -> tuple[str, Mapping[str, Any] | None, list[Any]]:
    """Why a step with these key ``components`` has no usable entry: the reason, the closest entry, the differences.

    The closest earlier entry of the same step (fewest differing components,
    then the newest) from the store's index, as ``mlpipe cache explain`` says it.
    """
    from mlpipe.metadata import open_index

    index = open_index(store)
    candidates = [e for e in index.entries_for(pipeline, step) if e["created"] < before]
    same = [e for e in candidates if e["key"] == key]
    if same:
        return (
            f"an entry with the same key (from run {same[0]['run_id']}) existed but its objects were "
            "missing or corrupted, so the step is recomputed",
            same[0],
            [],
        )
    if not candidates:
        return f"no earlier cache entry for step {step!r} of pipeline {pipeline!r}: first computation", None, []
    scored = []
    for i, entry in enumerate(candidates):  # newest first
        diffs = diff_components(entry["components"], dict(components))
        scored.append((len(diffs), i, entry, diffs))
    _n, _i, closest, diffs = min(scored, key=lambda t: (t[0], t[1]))
    return f"{len(diffs)} component{'s' if len(diffs) != 1 else ''} of the cache key changed", closest, diffs


def plan_run(
    ir: PipelineIR, store: ArtifactStore, params: Mapping[str, Any], *, cache: bool = True, explain: bool = True
) -> RunPlan:
    """Each step's verdict for a run of ``ir`` with validated ``params`` against ``store``; nothing is written.

    ``explain=False`` leaves out the closest-entry search (what ``submit``
    needs is only hit or not).
    """
    steps: list[StepPlan] = []
    by_name: dict[str, StepPlan] = {}
    now = time.time()
    for spec in ir.steps:
        verdict = _plan_step(ir, spec, store, params, by_name, cache=cache, explain=explain, now=now)
        steps.append(verdict)
        by_name[spec.name] = verdict
    return RunPlan(ir.name, tuple(steps), cache=cache)


def _plan_step(
    ir: PipelineIR,
    spec: StepSpec,
    store: ArtifactStore,
    params: Mapping[str, Any],
    done: Mapping[str, StepPlan],
    *,
    cache: bool,
    explain: bool,
    now: float,
) -> StepPlan:
    if not cache:
        return StepPlan(spec.name, "run", "the run is started with --no-cache / cache=False")
    if not spec.cache:
        return StepPlan(spec.name, "run", "the step is declared with cache=False")
    if spec.map_over:
        return StepPlan(spec.name, "run", f"it maps over {', '.join(spec.map_over)}: its items are keyed as it runs")
    if spec.when:
        return StepPlan(spec.name, "run", f"it runs under mp.when({spec.when[0].describe()}), decided as the run goes")
    inputs: dict[str, dict[str, Any]] = {}
    for inp in spec.inputs:
        if inp.source == "step":
            assert inp.step is not None and inp.output is not None
            upstream = done[inp.step]
            if upstream.verdict != "hit":
                return StepPlan(
                    spec.name, "run", f"upstream step {inp.step!r} will run, so its inputs are not known yet"
                )
            info = upstream.outputs[inp.output]
            inputs[inp.name] = artifact_input(str(info["digest"]), inp.step, inp.output)
        elif inp.source == "param":
            assert inp.param is not None
            declared = ir.param(inp.param)
            if inp.param not in params and declared.required:
                return StepPlan(spec.name, "run", f"parameter {inp.param!r} is not given, so its key is not known")
            # as the runtime does: a parameter left out takes its declared default
            inputs[inp.name] = param_input(params.get(inp.param, declared.default))
        else:
            inputs[inp.name] = param_input(inp.value)
    components = components_for(spec, inputs)
    key = cache_key(components)
    hit = _hit(spec, key, store)
    if hit is not None:
        return hit
    if not explain:
        return StepPlan(spec.name, "run", "no cache entry for its key", key=key)
    reason, closest, diffs = miss_reason(store, ir.name, spec.name, key, components, now)
    return StepPlan(spec.name, "run", reason, key=key, differences=tuple(str(d) for d in diffs), closest=closest)


def record_cached(record: RunRecord, ir: PipelineIR, plan: RunPlan, steps: frozenset[str]) -> None:
    """Record ``steps`` (hits of ``plan``) as served from the cache in ``record``'s run, as the executor would."""
    now = time.time()
    for spec in ir.steps:
        if spec.name not in steps:
            continue
        verdict = plan.step(spec.name)
        outcome = StepOutcome(
            spec.name,
            "succeeded",
            cached=True,
            key=verdict.key,
            outputs={name: ObjectInfo(**dict(info)) for name, info in verdict.outputs.items()},
            started=now,
            ended=now,
            source_run=verdict.source_run,
        )
        record.record_outcome(ir.name, spec, outcome)
    record.flush()


def close_cached_run(
    store: ArtifactStore,
    ir: PipelineIR,
    run_id: str,
    plan: RunPlan,
    *,
    backend: str,
    params: Mapping[str, Any],
    ir_digest: str,
    cache: bool,
    **extra: Any,
) -> RunRecord:
    """A run whose every step is a cache hit: recorded and closed as succeeded, no task started."""
    from mlpipe.metadata import open_index

    record = RunRecord.open(
        store,
        ir,
        run_id,
        backend=backend,
        params=params,
        ir_digest=ir_digest,
        index=open_index(store),
        cache=cache,
        **extra,
    )
    record_cached(record, ir, plan, frozenset(plan.hits))
    record.close_once("succeeded")
    return record
