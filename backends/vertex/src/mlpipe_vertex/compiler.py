"""From the mlpipe IR to the KFP v2 spec Vertex runs, and to the PipelineJob request around it.

The Kubeflow backend's compiler does the work (:func:`mlpipe_kubeflow.compiler.plan`
decides names, parameters and per-task settings, refusing what KFP cannot
express; :func:`~mlpipe_kubeflow.compiler.spec_documents` builds the spec
kfp's compiler would write, without importing kfp).
This module adds what differs on Vertex, in three small steps:

1. Before planning: refuse what Vertex cannot do (an explicit ``instance_type``,
   an unknown accelerator, more than the largest machine) and resolve each
   step's accelerator to Vertex's enum name.
2. The plan's tasks drop the Kubernetes-only settings (node selectors, pod
   deadlines). A step's ``retries`` stay as the task's ``retryPolicy``, which
   Vertex documents (``set_retry``): it restarts a task whose container died;
   ``python -m mlpipe.runtime`` retries the step's code inside the task, and
   the attempts are counted once in the store. A step's ``timeout`` is
   enforced by the runtime on each attempt: neither the PipelineSpec
   (``PipelineTaskSpec`` has no deadline) nor the PipelineJob has a per-task
   timeout for a container task.
3. The spec is adjusted: resources as *limits* only (Vertex picks
   the machine from them), the accelerator type per executor, ``--backend
   vertex``, and the engine's run id (used by jobs that a schedule starts,
   which leave the ``mlpipe_run_id`` parameter at its default) taken from
   ``{{$.pipeline_job_name}}``, the job id, instead of KFP's run UUID.

:func:`job_request` builds the ``PipelineJob`` as the REST body (camelCase
JSON), so every field can be checked here before google-cloud-aiplatform is
imported; :func:`check_arguments` checks run parameters against the spec.
What lives elsewhere: the API calls (``client.py``), the run lifecycle (``backend.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from mlpipe_kubeflow import yamlout
from mlpipe_kubeflow.compiler import (
    ENGINE_RUN_ID_INPUT,
    RUN_ID_INPUT,
    PipelinePlan,
    plan,
    spec_documents,
    task_specs,
)
from mlpipe_kubeflow.options import KubeflowOptions

from mlpipe.errors import ParameterError, UnsupportedFeatureError
from mlpipe.extend import memory_bytes
from mlpipe.ir import PipelineIR
from mlpipe_vertex.naming import (
    BACKEND,
    DEFAULT_MAX_ACCELERATORS,
    MAX_ACCELERATORS,
    MAX_CPU,
    MAX_MEMORY_BYTES,
    accelerator_type,
)
from mlpipe_vertex.options import VertexOptions

__all__ = [
    "RUN_ID_PLACEHOLDER",
    "VertexPlan",
    "build_spec",
    "check_arguments",
    "job_request",
    "vertex_plan",
    "write_vertex_spec",
]

RUN_ID_PLACEHOLDER = "{{$.pipeline_job_name}}"
KFP_RUN_ID_PLACEHOLDER = "{{$.pipeline_job_uuid}}"
DEFAULT_ACCELERATOR = "NVIDIA_TESLA_T4"
_REQUESTS = ("cpuRequest", "memoryRequest", "resourceCpuRequest", "resourceMemoryRequest")
_FAILURE_POLICY = {"slow": "PIPELINE_FAILURE_POLICY_FAIL_SLOW", "fast": "PIPELINE_FAILURE_POLICY_FAIL_FAST"}
# Parameter values travel as google.protobuf.Value: numbers are doubles.
_EXACT_INT = 2**53


@dataclass(frozen=True)
class VertexPlan:
    """The Kubeflow plan plus what only Vertex needs: accelerator type and count per task."""

    kfp: PipelinePlan
    accelerators: Mapping[str, tuple[str, int]]


def _refuse(step: str, option: str, message: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(f"step {step!r}: {message}", backend=BACKEND, step=step, option=option)


def _check_resources(ir: PipelineIR) -> dict[str, tuple[str, int]]:
    """Refuse what no Vertex machine offers; step name → (accelerator type, count) for steps with gpus."""
    out: dict[str, tuple[str, int]] = {}
    for spec in ir.steps:
        res = spec.resources
        if res.get("instance_type"):
            raise _refuse(
                spec.name,
                "resources.instance_type",
                f"instance_type={res['instance_type']!r}: Vertex Pipelines chooses the machine type from "
                "the cpu, memory and accelerator limits of a task, so give those instead (a fixed machine "
                "type needs a custom training job, which mlpipe-vertex does not emit)",
            )
        if res.get("cpu") is not None and float(res["cpu"]) > MAX_CPU:
            raise _refuse(
                spec.name,
                "resources.cpu",
                f"cpu={res['cpu']:g} is more than the {MAX_CPU:g} vCPUs of the largest machine "
                "Vertex Pipelines runs a task on",
            )
        if res.get("memory"):
            size = memory_bytes(str(res["memory"]))
            if size > MAX_MEMORY_BYTES:
                raise _refuse(
                    spec.name,
                    "resources.memory",
                    f"memory={res['memory']!r} ({size / 1e9:.0f} GB) is more than the "
                    f"{MAX_MEMORY_BYTES // 10**9} GB of the largest machine Vertex Pipelines runs a task on",
                )
        if res.get("gpu"):
            kind = accelerator_type(spec.name, res.get("accelerator"), DEFAULT_ACCELERATOR)
            count = int(res["gpu"])
            most = MAX_ACCELERATORS.get(kind, DEFAULT_MAX_ACCELERATORS)
            if count > most:
                raise _refuse(spec.name, "resources.gpu", f"gpu={count}: no Vertex machine has more than {most} {kind}")
            out[spec.name] = (kind, count)
    return out


def kubeflow_options(options: VertexOptions) -> KubeflowOptions:
    """The Kubeflow options the shared compiler needs: caching, env, retries, parameter budget, map parallelism."""
    return KubeflowOptions(
        caching=options.caching,
        env=dict(options.env),
        retry_backoff=options.retry_backoff,
        retry_backoff_max=options.retry_backoff_max,
        max_parameter_bytes=options.max_parameter_bytes,
        map_parallelism=options.map_parallelism,
    )


def vertex_plan(
    ir: PipelineIR,
    options: VertexOptions,
    *,
    store: str,
    ir_digest: str,
    image: str | None = None,
    cache: bool = True,
    storage_options: str | None = None,
) -> VertexPlan:
    """Decide and check everything the Vertex spec will say.

    Raises:
        UnsupportedFeatureError: what KFP or Vertex cannot express, naming the step and option.
    """
    accelerators = _check_resources(ir)
    base = plan(
        ir,
        kubeflow_options(options),
        store=store,
        ir_digest=ir_digest,
        image=image,
        cache=cache,
        storage_options=storage_options,
    )
    # Kubernetes-only settings go (a pod deadline is one); retries stay as the task's retryPolicy.
    tasks = tuple(replace(t, node_selector=(), timeout=None) for t in base.tasks)
    by_task = {t.name: accelerators[t.step] for t in tasks if t.step in accelerators}
    return VertexPlan(kfp=replace(base, tasks=tasks), accelerators=by_task)


def _executor(spec: dict[str, Any], tasks: Mapping[str, Any], task: str) -> dict[str, Any]:
    component = tasks[task]["componentRef"]["name"]
    label = spec["components"][component]["executorLabel"]
    container: dict[str, Any] = spec["deploymentSpec"]["executors"][label]["container"]
    return container


def build_spec(vplan: VertexPlan) -> dict[str, Any]:
    """The pipeline spec (the ``pipelineSpec`` of a PipelineJob) as a dict."""
    spec, platform = spec_documents(vplan.kfp)
    if platform is not None:  # Kubernetes platform settings; Vertex has no use for them
        raise UnsupportedFeatureError(
            "vertex: the compiled spec carries Kubernetes platform settings", backend=BACKEND, option="platforms"
        )
    tasks = task_specs(spec)
    for task in vplan.kfp.tasks:
        container = _executor(spec, tasks, task.name)
        args = container["args"]
        for i, arg in enumerate(args[:-1]):
            if arg == "--backend":
                args[i + 1] = BACKEND
        resources = container.get("resources")
        if resources is not None:
            for key in _REQUESTS:
                resources.pop(key, None)
            if task.name in vplan.accelerators:
                kind, count = vplan.accelerators[task.name]
                resources["accelerator"] = {
                    "count": str(count),
                    "resourceCount": str(count),
                    "resourceType": kind,
                    "type": kind,
                }
        run_id = tasks[task.name]["inputs"]["parameters"][ENGINE_RUN_ID_INPUT]["runtimeValue"]
        if run_id.get("constant") != KFP_RUN_ID_PLACEHOLDER:  # the Kubeflow compiler changed its wiring
            raise UnsupportedFeatureError(
                f"vertex: unexpected run id input {run_id!r} in task {task.name!r}", backend=BACKEND, option="run_id"
            )
        run_id["constant"] = RUN_ID_PLACEHOLDER
    spec["root"]["inputDefinitions"]["parameters"][RUN_ID_INPUT]["defaultValue"] = RUN_ID_PLACEHOLDER
    spec["pipelineInfo"]["description"] = (
        f"mlpipe pipeline {vplan.kfp.display_name!r} for Vertex AI: every task runs python -m mlpipe.runtime"
    )
    return spec


def write_vertex_spec(spec: Mapping[str, Any], path: str) -> str:
    """Write the spec as YAML (what ``template_path=`` and the Vertex console accept)."""
    with open(path, "w") as f:
        yamlout.dump_all([spec], f)  # what yaml.safe_dump(spec, sort_keys=True) writes, in linear time
    return path


def _kind_ok(kind: str, value: Any) -> bool:
    if kind == "NUMBER_INTEGER":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "NUMBER_DOUBLE":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "STRING":
        return isinstance(value, str)
    if kind == "BOOLEAN":
        return isinstance(value, bool)
    if kind == "LIST":
        return isinstance(value, list)
    if kind == "STRUCT":
        return isinstance(value, dict)
    return False


def _inexact_ints(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) > _EXACT_INT
    if isinstance(value, list):
        return any(_inexact_ints(v) for v in value)
    if isinstance(value, dict):
        return any(_inexact_ints(v) for v in value.values())
    return False


def check_arguments(pipeline: str, spec: Mapping[str, Any], arguments: Mapping[str, Any]) -> None:
    """Check run parameter values against the spec's declared inputs: names, types, required ones.

    Raises:
        ParameterError: names the parameter, the declared type and the value's type.
    """
    declared: dict[str, Any] = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(arguments) - set(declared))
    if unknown:
        raise ParameterError(
            f"pipeline {pipeline!r}: parameter(s) {unknown} are not inputs of the Vertex spec "
            f"(inputs: {sorted(declared)})",
            pipeline=pipeline,
            argument=unknown[0],
        )
    for name, definition in declared.items():
        if name not in arguments:
            if not definition.get("isOptional"):
                raise ParameterError(
                    f"pipeline {pipeline!r}: parameter {name!r} is required", pipeline=pipeline, argument=name
                )
            continue
        kind, value = definition.get("parameterType", ""), arguments[name]
        if not _kind_ok(kind, value):
            raise ParameterError(
                f"pipeline {pipeline!r}: parameter {name!r} is declared {kind} in the Vertex spec, "
                f"got {type(value).__name__} {value!r}",
                pipeline=pipeline,
                argument=name,
            )
        if _inexact_ints(value):
            raise ParameterError(
                f"pipeline {pipeline!r}: parameter {name!r} holds an integer beyond ±2**53; Vertex passes "
                "parameters as doubles and would change it. Pass it as a string",
                pipeline=pipeline,
                argument=name,
            )


def job_request(
    spec: Mapping[str, Any],
    options: VertexOptions,
    *,
    display_name: str,
    pipeline_root: str,
    arguments: Mapping[str, Any],
    labels: Mapping[str, str],
) -> dict[str, Any]:
    """The PipelineJob as its REST body (camelCase), every job-level setting from the profile."""
    body: dict[str, Any] = {
        "displayName": display_name[:128],
        "pipelineSpec": spec,
        "labels": dict(labels),
        "runtimeConfig": {
            "gcsOutputDirectory": pipeline_root,
            "parameterValues": json.loads(json.dumps(dict(arguments))),
            "failurePolicy": _FAILURE_POLICY[options.failure_policy],
        },
    }
    if options.service_account:
        body["serviceAccount"] = options.service_account
    if options.network:
        body["network"] = options.network
    if options.encryption_spec_key_name:
        body["encryptionSpec"] = {"kmsKeyName": options.encryption_spec_key_name}
    return body
