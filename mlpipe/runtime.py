"""The container entrypoint: ``python -m mlpipe.runtime``, run once per step by every remote backend.

It reads the compiled pipeline (IR) from the store by content address, finds
the step, resolves the pipeline parameters it was given to their declared
types (orchestrators pass text; KFP turns ints inside lists and dicts into
floats, and the step's annotation wins), reads the upstream steps' records to
find their outputs, checks the shared cache, runs the step, stores the
outputs and writes the step's record, all through
:class:`~mlpipe.executor.StepExecutor`, exactly as the local backend does.
The orchestrator only orders tasks; data never passes through it.

Usage::

    python -m mlpipe.runtime --store URL --ir DIGEST --run-id ID --step NAME \
        [--engine-run-id ID] [--storage-options JSON] [--param name=value ...] [--backend NAME]
        [--no-cache | --cache true|false] [--cached STEP=KEY ...] [--output-file PATH] [--when-file PATH ...]
        [--executor-input JSON]

``--run-id`` is mlpipe's run id, passed by ``mlpipe submit`` as a run
parameter. A run started from an engine's UI or schedule leaves that
parameter at its default, an engine placeholder such as
``{{$.pipeline_job_uuid}}`` that no engine resolves inside a default; the run
id is then ``--engine-run-id``, which the engine resolves (KFP >= 2.5,
Vertex). An id that is still a placeholder there is refused: every such run
would share one record folder and one retry counter.

``--when-file`` (once per test in :meth:`PipelineIR.published_tests` for the
step, in that order) receives ``true`` or ``false``: whether the step's output
passes the test of an ``mp.when`` block, for the orchestrator's branch (KFP's
``triggerPolicy.condition`` reads it as a task output parameter).

With ``--executor-input`` (KFP's and Vertex's ``{{$}}``: the task's
ExecutorInput) the step's outputs are also declared to the engine as typed
artifacts, the way a KFP container component does it: the runtime writes
``executor_output.json`` at ``outputs.outputFile`` with, per output, the URI of
its object in the store (no copy) and its metadata (a ``system.Metrics``
output's numeric fields as the metrics). See :func:`executor_output`.

Exit status: 0 when the step succeeded (computed or served from the cache),
1 when it failed, 2 when the invocation itself is wrong.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from mlpipe.errors import MlpipeError, ParameterError, StepFailedError
from mlpipe.ir import ParamSpec, PipelineIR, StepSpec
from mlpipe.records import RunRecord, check_run_id, load_ir, run_path, write_ir
from mlpipe.store import ArtifactStore, ObjectInfo, open_store

__all__ = [
    "StoreAttempts",
    "choose_run_id",
    "decode_param",
    "execute_remote_step",
    "executor_output",
    "load_ir",
    "main",
    "metric_values",
    "publish_tests",
    "storage_options",
    "write_ir",
]

# URI schemes whose objects KFP's launcher uploads itself (backend/src/v2/component/launcher_v2.go,
# LocalPathForURI). It accepts such an output URI only under the run's own pipeline root
# (Config.KeyFromURI: "does not have expected bucket prefix", and the task fails), which the
# store's objects never are, so on Kubeflow the store URI of those goes into the metadata instead.
_LAUNCHER_UPLOADS = ("gs://", "s3://", "minio://", "oci://")


def decode_param(spec: ParamSpec, raw: str) -> Any:
    """Turn an orchestrator's text back into the parameter's JSON value by its declared kind."""
    if spec.kind == "str":
        return raw
    if spec.kind == "bool":
        lowered = raw.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ParameterError(f"parameter {spec.name!r}: expected a boolean, got {raw!r}", argument=spec.name)
    try:
        value = json.loads(raw)
    except ValueError:
        raise ParameterError(
            f"parameter {spec.name!r}: expected {spec.type} as JSON text, got {raw!r}", argument=spec.name
        ) from None
    if spec.kind == "int" and isinstance(value, float) and value.is_integer():
        value = int(value)
    return _integral_floats_to_int(value) if spec.kind in ("list", "dict", "json") else value


def _integral_floats_to_int(value: Any) -> Any:
    """KFP stores every number inside lists and dicts as a float; integral ones go back to int.

    The step's own annotation is applied afterwards (pydantic turns ``3`` back
    into ``3.0`` for ``list[float]``), so the declared type always wins.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_integral_floats_to_int(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral_floats_to_int(v) for k, v in value.items()}
    return value


def choose_run_id(run_id: str, engine_run_id: str | None) -> str:
    """The run id a task records under: ``run_id`` unless it is empty or an unresolved placeholder.

    Raises:
        ParameterError: neither is a run id (an engine too old to resolve its placeholder).
    """
    if run_id and not _placeholder(run_id):
        return run_id
    if engine_run_id and not _placeholder(engine_run_id):
        return engine_run_id
    raise ParameterError(
        f"--run-id is {run_id!r} and --engine-run-id {engine_run_id!r}: the engine did not resolve its run id "
        "placeholder (KFP resolves {{$.pipeline_job_uuid}} from 2.5 on). Start the run with `mlpipe submit`, "
        "or set the run parameter mlpipe_run_id to a unique id when starting it from the UI",
        argument="run_id",
    )


def storage_options(from_spec: str | None, from_env: str | None) -> dict[str, Any] | None:
    """The store's fsspec options: the spec's (``--storage-options``), updated by ``MLPIPE_STORAGE_OPTIONS``.

    The spec carries what is safe to write down (an endpoint); the task's
    environment, set from the cluster's secrets, may add credentials.

    Raises:
        ParameterError: either is not a JSON object.
    """
    merged: dict[str, Any] = {}
    for where, text in (("--storage-options", from_spec), ("MLPIPE_STORAGE_OPTIONS", from_env)):
        if not text:
            continue
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ParameterError(f'{where} must be a JSON object such as \'{{"endpoint_url": "http://minio:9000"}}\'')
        merged.update(value)
    return merged or None


def _placeholder(value: str) -> bool:
    return value.startswith("{{$") and value.endswith("}}")


def _upstream(
    store: ArtifactStore, run_id: str, spec: StepSpec, cached: Mapping[str, str] | None = None
) -> dict[tuple[str, str], ObjectInfo]:
    """The outputs of ``spec``'s upstream steps: from their records in the run, or by cache key for the
    steps ``cached`` names (left out of the submitted spec as cache hits, ``--cached STEP=KEY``)."""
    from mlpipe.cache import lookup

    produced: dict[tuple[str, str], ObjectInfo] = {}
    for up in spec.upstream:
        if cached and up in cached:
            entry = lookup(store, cached[up])
            if entry is None:
                raise StepFailedError(
                    f"step {spec.name!r} of run {run_id}: upstream step {up!r} was left out of the submitted spec "
                    f"as a cache hit (key {cached[up][:16]}…), but its cache entry or one of its objects is gone "
                    f"from {store.url} (`mlpipe cache gc`?); submit the run again",
                    step=spec.name,
                    run_id=run_id,
                )
            for name, info in entry.outputs.items():
                produced[(up, name)] = ObjectInfo(**info)
            continue
        rel = run_path(run_id, "steps", f"{up}.json")
        if not store.has(rel):
            raise StepFailedError(
                f"step {spec.name!r} of run {run_id}: upstream step {up!r} has no record in {store.url}; "
                "it has not run, or ran against another store",
                step=spec.name,
                run_id=run_id,
            )
        record = store.get_json(rel)
        if record.get("status") != "succeeded":
            raise StepFailedError(
                f"step {spec.name!r} of run {run_id}: upstream step {up!r} {record.get('status')}",
                step=spec.name,
                run_id=run_id,
            )
        for name, info in record["outputs"].items():
            produced[(up, name)] = ObjectInfo(**info)
    return produced


class StoreAttempts:
    """Counts one step's attempts in the store, so retries by the orchestrator do not multiply them.

    Kubeflow and Vertex retry a failed task (``retryPolicy``), SageMaker a failed job
    (``RetryPolicies``), and the runtime retries the step's code inside the task. Each
    attempt leaves a marker under ``runs/<run>/attempts/<step>/`` before it starts, so
    a retried task knows how many attempts the run has already spent, including one
    whose container was killed mid-attempt (out of memory, eviction).
    Other steps (run in this task to repair a corrupted input) are not counted.
    """

    def __init__(self, store: ArtifactStore, run_id: str, step: str) -> None:
        self.store, self.run_id, self.step = store, run_id, step
        self._dir = run_path(run_id, "attempts", step)

    def used(self, step: str) -> tuple[int, str | None]:
        if step != self.step:
            return 0, None
        count = len([name for name in self.store.listdir(self._dir) if name.endswith(".json")])
        if not count:
            return 0, None
        rel = run_path(self.run_id, "steps", f"{step}.json")
        record = self.store.get_json(rel) if self.store.has(rel) else {}
        error = record.get("error") if record.get("status") == "failed" else None
        if error and " already ran " in error and "Last error: " in error:  # an earlier refusal: keep its cause
            error = error.rsplit("Last error: ", 1)[1]
        return count, error or "the task ended during the attempt (killed, out of memory or evicted)"

    def started(self, step: str, attempt: int) -> None:
        if step == self.step:
            host, pid = socket.gethostname(), os.getpid()
            marker = {"attempt": attempt, "host": host, "pid": pid, "started": time.time()}
            self.store.put_json(f"{self._dir}/{attempt}-{host}-{pid}.json", marker)


def execute_remote_step(
    store: ArtifactStore,
    ir: PipelineIR,
    ir_digest: str,
    run_id: str,
    step: str,
    raw_params: dict[str, str],
    *,
    backend: str = "remote",
    cache: bool = True,
    item: StepSpec | None = None,
    cached: Mapping[str, str] | None = None,
) -> Any:
    """Run one step of a run as a remote task does. Returns the :class:`StepOutcome`.

    ``item``: one item of the mapped step ``step`` (``<step>[i]``, from
    :func:`mlpipe.mapping.item_specs`), run and recorded under its own name.
    ``cached``: upstream step → cache key, for upstream steps left out of the
    submitted spec as cache hits (their outputs are read through their entries).
    """
    from mlpipe.code import resolve, verify
    from mlpipe.executor import StepExecutor, UpstreamCorrupted
    from mlpipe.fingerprint import fingerprint
    from mlpipe.tracking import join_run

    check_run_id(run_id, what="--run-id")
    if step not in {s.name for s in ir.steps}:
        raise ParameterError(
            f"--step {step!r}: pipeline {ir.name!r} has no step {step!r}; its steps: {[s.name for s in ir.steps]}",
            argument="step",
        )
    spec = ir.step(step)
    if item is not None and (not spec.map_over or not item.name.startswith(f"{step}[")):
        raise ParameterError(f"{item.name!r} is not an item of the mapped step {step!r}", argument="step")
    params = decoded_params(ir, spec, raw_params)
    verify(spec, resolve(spec, store))  # before anything is written: a stale image leaves no trace in the store
    record = RunRecord.join(store, ir, run_id, ir_digest=ir_digest, backend=backend, params=params, cache=cache)
    executor = StepExecutor(
        record,
        ir.name,
        use_cache=cache,
        attempts=StoreAttempts(store, run_id, item.name if item is not None else step),
        hooks=join_run(store, run_id, ir),  # the run's parent run in the tracking server, if any
    )

    def run(target: StepSpec, force: bool, depth: int = 0) -> Any:
        fn = resolve(target, store)
        verify(target, fn)  # also for a step run here to repair a corrupted input
        produced = _upstream(store, run_id, target, cached)
        typed = _as_declared(target, fn, params)
        try:
            return executor.execute(target, fn, typed, produced, force=force, packages=fingerprint(fn).packages)
        except UpstreamCorrupted as bad:
            if depth >= 3:
                raise
            print(f"mlpipe: {bad}; recomputing step {bad.step!r} to repair the store", file=sys.stderr)
            repaired = run(ir.step(bad.step), True, depth + 1)
            if repaired.status != "succeeded":
                raise StepFailedError(f"repairing step {bad.step!r} failed: {repaired.error}", step=bad.step) from None
            return run(target, force, depth + 1)

    return run(item if item is not None else spec, False)


def decoded_params(ir: PipelineIR, spec: StepSpec, raw_params: Mapping[str, str]) -> dict[str, Any]:
    """The run's parameters from an orchestrator's text, defaults filled in; a missing one the step needs is refused."""
    declared = {p.name: p for p in ir.params}
    unknown = sorted(set(raw_params) - set(declared))
    if unknown:
        raise ParameterError(f"pipeline {ir.name!r} has no parameter {', '.join(unknown)}")
    params: dict[str, Any] = {}
    for name, p in declared.items():
        if name in raw_params:
            params[name] = decode_param(p, raw_params[name])
        elif not p.required:
            params[name] = p.default
        elif any(i.source == "param" and i.param == name for i in spec.inputs):
            raise ParameterError(f"pipeline {ir.name!r}: parameter {name!r} is required", argument=name)
    return params


def _as_declared(spec: StepSpec, fn: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The step's parameters validated against its annotations, as the local backend's values are.

    Orchestrators render numbers their own way (KFP's launcher passes the float
    ``2.0`` as ``2``, and every number inside a list or dict as a float), and the
    cache key is computed from these values: without this, ``scale: float = 2``
    would be a cache miss against a local run. A value that does not validate is
    left as it is, for the executor to report with the step's context.
    """
    import typing

    from mlpipe.typecheck import validate

    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: the executor reports them
        return params
    typed = dict(params)
    for inp in spec.inputs:
        if inp.source == "param" and inp.param in typed and inp.name in hints:
            try:
                typed[inp.param] = validate(hints[inp.name], typed[inp.param])
            except ValueError:
                pass
    return typed


def metric_values(document: Any, prefix: str = "") -> dict[str, float]:
    """The numbers in a stored pydantic value, as KFP metrics: nested fields joined with dots, booleans left out."""
    found: dict[str, float] = {}
    for key, value in metric_tree(document).items():
        if isinstance(value, dict):
            found.update(metric_values(value, f"{prefix}{key}."))
        else:
            found[f"{prefix}{key}"] = value
    return found


def metric_tree(document: Any) -> dict[str, Any]:
    """The numbers in a stored pydantic value, nested as in the value (no booleans, text or non-finite numbers)."""
    found: dict[str, Any] = {}
    if isinstance(document, dict):
        for key, value in document.items():
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, (int, float)):
                if math.isfinite(value):
                    found[key] = value
            elif isinstance(value, dict):
                inner = metric_tree(value)
                if inner:
                    found[key] = inner
    return found


def metrics_document(store: ArtifactStore, spec: StepSpec, outputs: Mapping[str, ObjectInfo]) -> dict[str, Any]:
    """``{output: {metric: number, ...}}`` for each of the step's ``Metrics`` outputs (pydantic values).

    SageMaker reads it as a property file: ``JsonGet`` with the path ``output.accuracy``.
    """
    kinds = {out.name: out.artifact for out in spec.outputs}
    return {
        name: metric_tree(json.loads(bytes(store.read_verified(info.digest))))
        for name, info in outputs.items()
        if kinds.get(name) == "Metrics"
    }


def executor_output(
    store: ArtifactStore,
    spec: StepSpec,
    outputs: dict[str, ObjectInfo],
    executor_input: dict[str, Any],
    *,
    run_id: str,
    backend: str,
    cached: bool,
) -> dict[str, Any]:
    """KFP's ExecutorOutput for a step's stored outputs: one artifact per output the task declares.

    The same document ``kfp.dsl.executor.Executor.write_executor_output`` writes
    (``artifacts.<output>.artifacts[0]`` with ``name``, ``uri`` and ``metadata``);
    the engine merges it into the artifacts it created for the task. The URI is
    the object in the store (``<store>/objects/<ab>/<digest>``), not a copy,
    except on Kubeflow for a ``gs://``, ``s3://`` or ``minio://`` store, whose
    launcher refuses such a URI outside the run's root: there the artifact keeps
    KFP's URI (nothing is written there) and ``metadata.store_uri`` names the object.
    """
    declared = executor_input.get("outputs", {}).get("artifacts", {})
    kinds = {out.name: out.artifact for out in spec.outputs}
    artifacts: dict[str, Any] = {}
    for name, info in outputs.items():
        if name not in declared or name not in kinds:
            continue
        uri = f"{store.url}/{ArtifactStore.object_path(info.digest)}"
        listed = declared[name].get("artifacts") or [{}]
        entry: dict[str, Any] = {"name": listed[0].get("name", "")}
        if backend == "kubeflow" and uri.startswith(_LAUNCHER_UPLOADS):
            entry["uri"] = ""
        else:
            entry["uri"] = uri
        if kinds[name] == "Metrics":
            metadata: dict[str, Any] = metric_values(json.loads(bytes(store.read_verified(info.digest))))
        else:
            metadata = {
                "digest": info.digest,
                "size": info.size,
                "materializer": info.materializer,
                "type": info.type,
                "step": spec.name,
                "run_id": run_id,
                "cached": cached,
            }
        if not entry["uri"]:
            metadata["store_uri"] = uri
        entry["metadata"] = metadata
        artifacts[name] = {"artifacts": [entry]}
    return {"artifacts": artifacts} if artifacts else {}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlpipe.runtime", description="Run one mlpipe step.")
    parser.add_argument("--store", required=True, help="Store URL shared by all tasks")
    parser.add_argument("--ir", required=True, help="Digest of the compiled pipeline in the store")
    parser.add_argument("--run-id", required=True, help="mlpipe's run id; empty or a placeholder: --engine-run-id")
    parser.add_argument("--engine-run-id", help="The engine's run id, used when --run-id is not set")
    parser.add_argument("--step", required=True)
    parser.add_argument(
        "--storage-options",
        help="JSON of fsspec options for the store (an endpoint, a region; no credentials); "
        "MLPIPE_STORAGE_OPTIONS in the environment adds to them",
    )
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--cached",
        action="append",
        default=[],
        metavar="STEP=KEY",
        help="An upstream step left out of the spec as a cache hit: read its outputs by this cache key",
    )
    parser.add_argument("--backend", default=os.environ.get("MLPIPE_BACKEND", "remote"))
    parser.add_argument("--no-cache", action="store_true")
    # The value form lets an orchestrator decide per run from a compiled definition
    # (a SageMaker pipeline parameter cannot add or drop a flag, only fill in a value).
    parser.add_argument(
        "--cache", choices=("true", "false"), type=str.lower, default="true", help="false is the same as --no-cache"
    )
    parser.add_argument("--output-file", help="Write the step's status and cache key here (orchestrator output)")
    parser.add_argument(
        "--when-file",
        action="append",
        default=[],
        metavar="PATH",
        help="Write true/false here: the step's output against each mp.when test on it, in the IR's order",
    )
    parser.add_argument(
        "--when-json",
        metavar="PATH",
        help='Write {"mlpipe_when_<k>": true|false} here: every mp.when test on the step\'s output (SageMaker)',
    )
    parser.add_argument(
        "--metrics-json",
        metavar="PATH",
        help="Write {output: {metric: number}} here for the step's pydantic (Metrics) outputs (SageMaker)",
    )
    # A mapped step as three tasks (how KFP runs step.map): the fan-out, each item, the fan-in.
    mapped = parser.add_mutually_exclusive_group()
    mapped.add_argument("--items-file", metavar="PATH", help="Mapped step: write the JSON list of item indices here")
    mapped.add_argument("--item", metavar="I", help="Mapped step: run item I only, recorded as <step>[I]")
    mapped.add_argument("--collect", action="store_true", help="Mapped step: record it with its items' outputs")
    parser.add_argument(
        "--executor-input",
        help="KFP's ExecutorInput (JSON): declare the step's outputs to the engine as typed artifacts",
    )
    return parser


def remote_items(
    store: ArtifactStore, ir: PipelineIR, run_id: str, step: str, params: Mapping[str, Any]
) -> list[StepSpec] | str:
    """The items of the mapped step ``step`` in a remote task (or why there are none), as the local backend builds them.

    Upstream values come from the upstream steps' records in the store; the
    items of a mapped upstream step from its record (``components.map.items``).
    """
    from mlpipe.mapping import item_specs

    spec = ir.step(step)
    records: dict[str, dict[str, Any]] = {}

    def record(name: str) -> dict[str, Any]:
        if name not in records:
            records[name] = store.get_json(run_path(run_id, "steps", f"{name}.json"))
        return records[name]

    def value_of(up: str, output: str) -> Any:
        info = ObjectInfo(**record(up)["outputs"][output])
        return store.get_value(info.digest, info=info)

    items = {u: list(record(u)["components"]["map"]["items"]) for u in spec.upstream if ir.step(u).map_over}
    return item_specs(spec, {s.name: s for s in ir.steps}, params, value_of, items)


def collect_remote(store: ArtifactStore, ir: PipelineIR, record: RunRecord, step: str, items: list[StepSpec]) -> Any:
    """The fan-in task of a mapped step: record it with the list of its items' outputs (or their failure).

    Returns the step's :class:`StepOutcome`.
    """
    import typing

    from mlpipe.code import resolve
    from mlpipe.mapping import collect_items, items_failed
    from mlpipe.records import StepOutcome

    spec = ir.step(step)
    started = time.time()
    names = [item.name for item in items]
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        rel = run_path(record.run_id, "steps", f"{name}.json")
        found[name] = store.get_json(rel) if store.has(rel) else {"status": "missing", "error": "it has no record"}
    failed = [(n, r.get("error")) for n, r in found.items() if r.get("status") != "succeeded"]
    if failed:
        outcome = StepOutcome(
            step, "failed", started=started, ended=time.time(), error=items_failed(failed, len(names))
        )
    else:
        returns = typing.get_type_hints(resolve(spec, store)).get("return", Any)

        def read(info: ObjectInfo) -> Any:
            return store.get_value(info.digest, returns, info=info)

        outputs = [ObjectInfo(**found[n]["outputs"]["output"]) for n in names]
        collected = collect_items(store, ir.name, spec, record.run_id, outputs, read)
        cached = bool(names) and all(found[n].get("cached") for n in names)
        outcome = StepOutcome(
            step, "succeeded", cached=cached, outputs={"output": collected}, started=started, ended=time.time()
        )
    record.record_outcome(ir.name, spec, outcome, {"map": {"items": names}})
    return outcome


def _mapped_task(args: argparse.Namespace, store: ArtifactStore, ir: PipelineIR, raw: dict[str, str]) -> Any:
    """A mapped step's fan-out, item or fan-in task: the outcome to report, or an exit code."""
    from mlpipe.records import StepOutcome

    spec = ir.step(args.step) if args.step in {s.name for s in ir.steps} else None
    if spec is None or not spec.map_over:
        raise ParameterError(f"--step {args.step!r} is not a mapped step of pipeline {ir.name!r}", argument="step")
    cache = not args.no_cache and args.cache == "true"
    params = decoded_params(ir, spec, raw)
    record = RunRecord.join(store, ir, args.run_id, ir_digest=args.ir, backend=args.backend, params=params, cache=cache)
    items = remote_items(store, ir, args.run_id, args.step, params)
    if isinstance(items, str):
        outcome = StepOutcome.ended_now(args.step, "failed", f"step {args.step!r}: {items}")
        record.record_outcome(ir.name, spec, outcome)
        return outcome
    if args.items_file:
        _write_text(args.items_file, json.dumps(list(range(len(items)))))
        print(f"mlpipe.runtime: step {args.step!r} maps over {len(items)} item(s)", file=sys.stderr)
        return 0
    if args.collect:
        return collect_remote(store, ir, record, args.step, items)
    try:
        index = int(float(args.item))  # an engine may render the loop's integer item as 2.0
    except ValueError:
        raise ParameterError(f"--item expects an item index, got {args.item!r}", argument="item") from None
    if not 0 <= index < len(items):
        raise ParameterError(f"--item {index}: step {args.step!r} has {len(items)} item(s)", argument="item")
    return execute_remote_step(
        store, ir, args.ir, args.run_id, args.step, raw, backend=args.backend, cache=cache, item=items[index]
    )


def publish_tests(store: ArtifactStore, ir: PipelineIR, step: str, outputs: dict[str, ObjectInfo]) -> list[bool]:
    """Each ``mp.when`` test on the step's outputs (:meth:`PipelineIR.published_tests`), tested as local tests it."""
    results = []
    for test in ir.published_tests().get(step, ()):
        info = outputs[test.output]
        results.append(test.holds(store.get_value(info.digest, info=info)))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    raw: dict[str, str] = {}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"mlpipe.runtime: --param expects NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        raw[name] = value
    executor_input: dict[str, Any] | None = None
    if args.executor_input is not None:
        try:
            executor_input = json.loads(args.executor_input)
            if not isinstance(executor_input, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            print(f"mlpipe.runtime: --executor-input expects KFP's ExecutorInput as JSON: {exc}", file=sys.stderr)
            return 2
    cached: dict[str, str] = {}
    for item in args.cached:
        name, sep, key = item.partition("=")
        if not sep or not name or len(key) != 64:
            print(
                f"mlpipe.runtime: --cached expects STEP=KEY with a 64-character cache key, got {item!r}",
                file=sys.stderr,
            )
            return 2
        cached[name] = key
    try:
        args.run_id = choose_run_id(args.run_id, args.engine_run_id)
        store = open_store(args.store, storage_options(args.storage_options, os.environ.get("MLPIPE_STORAGE_OPTIONS")))
        ir = load_ir(store, args.ir)
        if args.items_file or args.item is not None or args.collect:
            outcome = _mapped_task(args, store, ir, raw)
            if isinstance(outcome, int):
                return outcome
        else:
            outcome = execute_remote_step(
                store,
                ir,
                args.ir,
                args.run_id,
                args.step,
                raw,
                backend=args.backend,
                cache=not args.no_cache and args.cache == "true",
                cached=cached,
            )
    except MlpipeError as exc:
        print(f"mlpipe.runtime: step {args.step!r}: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.when_file and outcome.status == "succeeded":
        try:
            results = publish_tests(store, ir, args.step, outcome.outputs)
        except MlpipeError as exc:
            print(f"mlpipe.runtime: step {args.step!r}: cannot test its output for mp.when: {exc}", file=sys.stderr)
            return exc.exit_code
        if len(results) != len(args.when_file):
            print(
                f"mlpipe.runtime: step {args.step!r}: {len(args.when_file)} --when-file given, but the pipeline "
                f"tests this step's outputs {len(results)} time(s); recompile the spec",
                file=sys.stderr,
            )
            return 2
        for path, result in zip(args.when_file, results, strict=True):
            _write_text(path, "true" if result else "false")
    if args.when_json and outcome.status == "succeeded":
        try:
            results = publish_tests(store, ir, args.step, outcome.outputs)
        except MlpipeError as exc:
            print(f"mlpipe.runtime: step {args.step!r}: cannot test its output for mp.when: {exc}", file=sys.stderr)
            return exc.exit_code
        _write_text(args.when_json, json.dumps({f"mlpipe_when_{k}": r for k, r in enumerate(results)}))
    if args.metrics_json and outcome.status == "succeeded":
        _write_text(args.metrics_json, json.dumps(metrics_document(store, ir.step(args.step), outcome.outputs)))
    label = "cached" if outcome.cached else outcome.status
    print(
        f"mlpipe.runtime: step {args.step!r} of run {args.run_id}: {label} in {outcome.duration:.3f} s", file=sys.stderr
    )
    if outcome.status != "succeeded":
        print(outcome.traceback or outcome.error or "", file=sys.stderr)
    if args.output_file:
        _write_text(
            args.output_file, json.dumps({"status": outcome.status, "key": outcome.key, "cached": outcome.cached})
        )
    if executor_input is not None and outcome.status == "succeeded":
        path = executor_input.get("outputs", {}).get("outputFile")
        document = executor_output(
            store,
            ir.step(args.step),
            outcome.outputs,
            executor_input,
            run_id=args.run_id,
            backend=args.backend,
            cached=outcome.cached,
        )
        if path and document:
            _write_text(path, json.dumps(document))
    return 0 if outcome.status == "succeeded" else 1


def _write_text(path: str, text: str) -> None:
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
