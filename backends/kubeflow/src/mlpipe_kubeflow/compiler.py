"""From the mlpipe IR to a KFP v2 pipeline spec, without kfp.

Two phases. :func:`plan` turns the IR and the backend's options into a
:class:`PipelinePlan`: names, images, parameters, edges and per-task settings,
every refusal raised here. :func:`spec_documents` turns the plan into the
PipelineSpec (and the kfp-kubernetes PlatformSpec) as the JSON dicts kfp's
compiler would produce for one *container component* per step (no kfp in the
user's image, no Python source in the spec), and :func:`write_spec` writes
them as kfp does: the same header comment, the same YAML, byte for byte.

kfp is not imported on this path. Building the same spec through
``dsl.pipeline`` and ``dsl.container_component`` costs about a second of
imports and grows quadratically with the number of steps (32.8 s of a 38.9 s
compile at 5,000 steps); :func:`build` still does it that way, and the tests
compare the two outputs byte for byte and load the spec with kfp's loader.

Every task runs ``python -m mlpipe.runtime`` with the store URL and the IR's
digest as constants and the run id from the run parameter ``mlpipe_run_id``,
which ``submit`` sets to mlpipe's run id. A run started from the KFP UI or a
schedule keeps its default, the placeholder text, and the task falls back to
KFP's run UUID (``{{$.pipeline_job_uuid}}``, resolved by KFP >= 2.5 only); data moves through
the store by content address, never through KFP. The only KFP output of a
task is a small JSON record (status, cache key) for the UI.

What lives elsewhere: YAML text (``yamlout.py``), talking to the API server
(``client.py``), executing the spec with kfp.local (``local_runner.py``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import json
import math
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mlpipe.errors import UnsupportedFeatureError
from mlpipe.extend import memory_bytes
from mlpipe.ir import ArtifactKind, ParamSpec, PipelineIR, StepSpec
from mlpipe_kubeflow.control import (
    ITEM_INPUT,
    ITEMS_OUTPUT,
    RECORDS_INPUT,
    WHEN_OUTPUT,
    Layout,
    TaskWiring,
    channel,
    group_documents,
    outer_input,
    plan_layout,
)
from mlpipe_kubeflow.naming import BACKEND, check_parameter_budget, pipeline_name, task_names
from mlpipe_kubeflow.options import ENV_NAME, KubeflowOptions, StepOverrides, Toleration

__all__ = [
    "ARTIFACT_SCHEMA_VERSION",
    "DEFAULT_IMAGE",
    "ENGINE_RUN_ID_INPUT",
    "EXECUTOR_INPUT_PLACEHOLDER",
    "RECORD_OUTPUT",
    "RUN_ID_INPUT",
    "ParamPlan",
    "PipelinePlan",
    "TaskPlan",
    "build",
    "plan",
    "prune",
    "spec_documents",
    "spec_header",
    "task_specs",
    "write_spec",
]

DEFAULT_IMAGE = "mlpipe-runtime:latest"
RUN_ID_INPUT = "mlpipe_run_id"  # a pipeline parameter: mlpipe's run id, set by submit
ENGINE_RUN_ID_INPUT = "mlpipe_engine_run_id"  # each task's engine run id (a placeholder), used when the first is empty
RECORD_OUTPUT = "mlpipe_record"
_RESERVED = (RUN_ID_INPUT, ENGINE_RUN_ID_INPUT, RECORD_OUTPUT)
_PY_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}
_KFP_MEMORY_SUFFIXES = ("E", "Ei", "P", "Pi", "T", "Ti", "G", "Gi", "M", "Mi", "K", "Ki", "")
_INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
RUN_ID_PLACEHOLDER = "{{$.pipeline_job_uuid}}"  # kfp's dsl.PIPELINE_JOB_ID_PLACEHOLDER
EXECUTOR_INPUT_PLACEHOLDER = "{{$}}"  # kfp's dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER: the task's ExecutorInput
ARTIFACT_SCHEMA_VERSION = "0.0.1"  # of kfp's system.* artifact types
KFP_SDK_VERSION = "2.17.3"  # the kfp whose compiler output the spec reproduces, when kfp is not installed


@dataclass(frozen=True)
class ParamPlan:
    """A pipeline parameter as KFP declares it. ``json`` kinds travel as JSON text in a string parameter."""

    name: str
    kind: str
    required: bool
    default: Any

    @property
    def py_type(self) -> type:
        return _PY_TYPES.get(self.kind, str)

    def to_kfp(self, value: Any) -> Any:
        """A validated mlpipe value as KFP's argument for this parameter."""
        if self.kind == "json":
            return json.dumps(value, sort_keys=True)
        if self.kind in ("list", "dict"):
            return json.loads(json.dumps(value))  # tuples and other JSON-able containers as plain JSON
        return value


@dataclass(frozen=True)
class TaskPlan:
    """One KFP task (and its component) for one mlpipe step."""

    step: str
    name: str
    image: str
    params: tuple[str, ...]
    after: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cpu: str | None = None
    memory: str | None = None
    gpus: int | None = None
    node_selector: tuple[tuple[str, str], ...] = ()
    retries: int = 0
    timeout: int | None = None
    caching: bool = False
    secrets_as_env: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    dag: str = ""  # the condition sub-DAG or loop holding the task ("" for the root DAG)
    tests: int = 0  # how many mp.when test results it publishes (BOOLEAN outputs mlpipe_when_<k>)
    role: str = ""  # a mapped step's three tasks: "items" (fan-out), "item" (in the loop), "collect" (fan-in)
    cached: tuple[tuple[str, str], ...] = ()  # (upstream step, cache key) of upstream steps pruned as cache hits

    @property
    def display(self) -> str:
        """The task's display name: the step's, and for a mapped step's tasks what each does."""
        return {"items": f"{self.step} (items)", "item": f"{self.step}[i]"}.get(self.role, self.step)

    artifacts: tuple[tuple[str, ArtifactKind], ...] = ()  # (output name, kind): typed output artifacts for the UI


@dataclass(frozen=True)
class PipelinePlan:
    """Everything the KFP spec says, decided and checked."""

    name: str
    display_name: str
    store: str
    ir_digest: str
    cache: bool
    params: tuple[ParamPlan, ...]
    tasks: tuple[TaskPlan, ...]
    options: KubeflowOptions = field(default_factory=KubeflowOptions)
    layout: Layout = field(default_factory=Layout)
    storage_options: str | None = None  # JSON of the store's options the tasks need, credentials left out

    def param(self, name: str) -> ParamPlan:
        return next(p for p in self.params if p.name == name)

    def arguments(self, values: Mapping[str, Any], run_id: str | None = None) -> dict[str, Any]:
        """KFP run arguments for validated mlpipe parameter values, and the run id the tasks record under.

        Without ``run_id`` (a schedule: every run it starts needs its own) the
        tasks use the engine's run id instead.
        """
        out = {p.name: p.to_kfp(values[p.name]) for p in self.params if p.name in values}
        if run_id is not None:
            out[RUN_ID_INPUT] = run_id
        return out

    def runtime_args(self, task: TaskPlan) -> list[str]:
        """The constant part of the task's ``python -m mlpipe.runtime`` arguments."""
        args = ["--store", self.store, "--ir", self.ir_digest, "--step", task.step, "--backend", BACKEND]
        if self.storage_options:
            args += ["--storage-options", self.storage_options]
        if task.role == "collect":
            args.append("--collect")
        for step, key in task.cached:
            args += ["--cached", f"{step}={key}"]
        return [*args, "--no-cache"] if not self.cache else args


def _refuse(step: str, option: str, message: str) -> UnsupportedFeatureError:
    return UnsupportedFeatureError(f"step {step!r}: {message}", backend=BACKEND, step=step, option=option)


def _cpu(step: str, cpu: float) -> str:
    millis = round(cpu * 1000)
    if abs(cpu * 1000 - millis) > 1e-6 or millis < 1:  # 0.1 * 1000 is 100.00000000000001, and that is fine
        raise _refuse(step, "resources.cpu", f"cpu={cpu:g} is finer than KFP's millicpu; use a multiple of 0.001")
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _memory(step: str, memory: str) -> str:
    text = memory.strip()
    number = text.rstrip("EPTGMKi")
    suffix = text[len(number) :]
    if number.isdigit() and suffix in _KFP_MEMORY_SUFFIXES:
        return text
    # KFP accepts whole numbers with a suffix only ("1.5Gi" is refused); bytes express anything.
    return str(memory_bytes(memory))


def _step_params(spec: StepSpec) -> tuple[str, ...]:
    seen: list[str] = []
    for inp in spec.inputs:
        if inp.source == "param" and inp.param is not None and inp.param not in seen:
            seen.append(inp.param)
    return tuple(seen)


def _node_selector(spec: StepSpec, options: KubeflowOptions, extra: StepOverrides) -> tuple[tuple[str, str], ...]:
    selector = {**options.node_selector, **extra.node_selector}
    wanted: list[tuple[str, str, str]] = []
    if spec.resources.get("accelerator"):
        wanted.append((options.accelerator_label, str(spec.resources["accelerator"]), "resources.accelerator"))
    if spec.resources.get("instance_type"):
        wanted.append((_INSTANCE_TYPE_LABEL, str(spec.resources["instance_type"]), "resources.instance_type"))
    for key, value, option in wanted:
        if key in selector and selector[key] != value:
            raise _refuse(
                spec.name,
                option,
                f"{option}={value!r} needs the node label {key}={value}, but the "
                f"profile's node_selector asks for {key}={selector[key]}; drop one of them",
            )
        selector[key] = value
    return tuple(sorted(selector.items()))


def _secrets(options: KubeflowOptions, extra: StepOverrides) -> dict[str, dict[str, str]]:
    merged = {name: dict(mapping) for name, mapping in options.secrets_as_env.items()}
    for name, mapping in extra.secrets_as_env.items():
        merged.setdefault(name, {}).update(mapping)
    return merged


def _env(
    spec: StepSpec, options: KubeflowOptions, extra: StepOverrides, secrets: dict[str, dict[str, str]]
) -> tuple[tuple[str, str], ...]:
    bad = [k for k in spec.env if not ENV_NAME.match(k)]
    if bad:
        raise _refuse(spec.name, "env", f"environment variable name(s) {bad} are not valid in Kubernetes")
    env = {**options.env, **spec.env, **extra.env}  # profile-wide < the step's code < the profile's step entry
    from_secrets = {var for mapping in secrets.values() for var in mapping.values()}
    clash = sorted(from_secrets & set(env))
    if clash:
        raise _refuse(
            spec.name,
            "env",
            f"{clash} would be set both as plain env and from a secret (profile option secrets_as_env); keep one",
        )
    return tuple(env.items())


def _task(spec: StepSpec, name: str, names: Mapping[str, str], image: str | None, options: KubeflowOptions) -> TaskPlan:
    resources = spec.resources
    cpu = _cpu(spec.name, float(resources["cpu"])) if resources.get("cpu") is not None else None
    memory = _memory(spec.name, str(resources["memory"])) if resources.get("memory") else None
    gpus = int(resources["gpu"]) if resources.get("gpu") else None
    unknown = sorted(set(resources) - {"cpu", "memory", "gpu", "accelerator", "instance_type"})
    if unknown:
        raise _refuse(spec.name, f"resources.{unknown[0]}", f"KFP has no equivalent of resources {unknown}")
    timeout = None
    if spec.timeout is not None:
        if spec.timeout <= 0:
            raise _refuse(spec.name, "timeout", f"timeout={spec.timeout:g} s: a KFP pod deadline must be positive")
        # The runtime enforces the exact timeout on each attempt, inside the pod. The pod deadline is the backstop
        # for a step that hangs where Python cannot stop it: it must leave room for every in-pod attempt and for
        # the pod's start-up (image pull, imports), or it would kill retries that are still allowed.
        timeout = math.ceil(spec.timeout * (spec.retries + 1)) + options.pod_startup_seconds
    extra = options.steps.get(spec.name, StepOverrides())
    secrets = _secrets(options, extra)
    return TaskPlan(
        step=spec.name,
        name=name,
        image=spec.image or image or DEFAULT_IMAGE,
        params=_step_params(spec),
        after=tuple(names[u] for u in spec.upstream),
        env=_env(spec, options, extra, secrets),
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        node_selector=_node_selector(spec, options, extra),
        retries=spec.retries,
        timeout=timeout,
        caching=options.caching and spec.cache,
        secrets_as_env=tuple((n, tuple(m.items())) for n, m in sorted(secrets.items())),
        tolerations=(*options.tolerations, *extra.tolerations),
        artifacts=tuple((out.name, out.artifact) for out in spec.outputs),
    )


# KFP resolves a placeholder only as a task's constant input, never in a parameter's default: this default reaches
# the task as the literal text, and the runtime then takes the engine's run id (ENGINE_RUN_ID_INPUT) instead.
_RUN_ID_PARAM = ParamPlan(name=RUN_ID_INPUT, kind="str", required=False, default=RUN_ID_PLACEHOLDER)


def _mapped(task: TaskPlan) -> tuple[TaskPlan, TaskPlan, TaskPlan]:
    """A mapped step's tasks: the fan-out, the loop's iteration, and the fan-in (which keeps the step's name)."""
    items, item = f"{task.name}-items", f"{task.name}-item"
    return (
        # the step's outputs, and so its artifacts, are the fan-in's
        replace(task, name=items, role="items", retries=0, timeout=None, caching=False, artifacts=()),
        replace(task, name=item, role="item", after=(items,), artifacts=()),
        replace(task, role="collect", after=(item,), params=(), retries=0, timeout=None, caching=False),
    )


def _param(spec: ParamSpec) -> ParamPlan:
    default = spec.default
    if spec.kind == "json" and not spec.required:
        default = json.dumps(default, sort_keys=True)
    return ParamPlan(name=spec.name, kind=spec.kind, required=spec.required, default=default)


def plan(
    ir: PipelineIR,
    options: KubeflowOptions,
    *,
    store: str,
    ir_digest: str,
    image: str | None = None,
    cache: bool = True,
    storage_options: str | None = None,
) -> PipelinePlan:
    """Decide and check everything the KFP spec will say.

    ``storage_options`` is the JSON the tasks pass to the store
    (:func:`mlpipe.extend.task_storage_options`: no credentials).

    Raises:
        UnsupportedFeatureError: what KFP cannot express, naming the step and option.
    """
    kfp_name = pipeline_name(ir.name)
    for p in ir.params:
        if p.name in _RESERVED:
            raise UnsupportedFeatureError(
                f"pipeline {ir.name!r}: the parameter name {p.name!r} is used by mlpipe's KFP tasks; rename it",
                backend=BACKEND,
                pipeline=ir.name,
                argument=p.name,
                option="params",
            )
    check_parameter_budget(
        ir.name,
        {p.name: p.default for p in ir.params if not p.required},
        options.max_parameter_bytes,
        "parameter defaults",
    )
    names = task_names(s.name for s in ir.steps)
    unknown = sorted(set(options.steps) - set(names))
    if unknown:
        raise UnsupportedFeatureError(
            f"pipeline {ir.name!r}: the profile option steps names {unknown}, which are not steps of it; "
            f"its steps are {list(names)}",
            backend=BACKEND,
            pipeline=ir.name,
            option="steps",
        )
    tasks = tuple(_task(s, names[s.name], names, image, options) for s in ir.steps)
    # The first task to run writes the run's record, parameters included (the run may have been started from the
    # KFP UI, not through mlpipe), so tasks without upstream receive every parameter; the rest only their own.
    everything = tuple(p.name for p in ir.params)
    tasks = tuple(
        replace(t, params=(*t.params, *(p for p in everything if p not in t.params))) if not t.after else t
        for t in tasks
    )
    parallelism = {
        s.name: (options.steps.get(s.name) or StepOverrides()).parallelism or options.map_parallelism
        for s in ir.steps
        if s.map_over
    }
    layout = plan_layout(ir, names, parallelism)
    if parallelism:
        tasks = tuple(part for t in tasks for part in (_mapped(t) if t.step in parallelism else (t,)))
    if layout.groups:
        dags, tests = dict(layout.task_group), dict(layout.tests)
        tasks = tuple(replace(t, dag=dags[t.name], tests=tests.get(t.name, 0)) for t in tasks)
    return PipelinePlan(
        name=kfp_name,
        display_name=ir.name,
        store=store,
        ir_digest=ir_digest,
        cache=cache,
        params=tuple(_param(p) for p in ir.params),
        tasks=tasks,
        options=options,
        layout=layout,
        storage_options=storage_options,
    )


def prune(plan_: PipelinePlan, ir: PipelineIR, cached: Mapping[str, str]) -> PipelinePlan:
    """The plan without the tasks of the ``cached`` steps (cache hits: step → cache key).

    Their consumers read their outputs by cache key (``--cached STEP=KEY``)
    and no longer wait for them; a task left without upstream receives every
    parameter, as the first tasks do. Pipelines with ``mp.when`` blocks are
    not pruned (:meth:`mlpipe.extend.RunPlan.prunable` leaves them whole).
    """
    if not cached:
        return plan_
    if plan_.layout.groups:
        raise UnsupportedFeatureError(
            f"pipeline {ir.name!r}: steps under mp.when cannot be pruned from the spec",
            backend=BACKEND,
            pipeline=ir.name,
        )
    gone = {t.name for t in plan_.tasks if t.step in cached}
    everything = tuple(p.name for p in plan_.params)
    tasks: list[TaskPlan] = []
    for task in plan_.tasks:
        if task.step in cached:
            continue
        after = tuple(a for a in task.after if a not in gone)
        params = task.params if after else (*task.params, *(p for p in everything if p not in task.params))
        upstream = dict.fromkeys(ir.step(task.step).upstream)
        hits = tuple((up, cached[up]) for up in upstream if up in cached)
        tasks.append(replace(task, after=after, params=params, cached=hits))
    return replace(plan_, tasks=tuple(tasks))


# -- the spec, as kfp's compiler writes it ------------------------------------------------------

_IR_TYPES = {
    "int": "NUMBER_INTEGER",
    "float": "NUMBER_DOUBLE",
    "str": "STRING",
    "bool": "BOOLEAN",
    "list": "LIST",
    "dict": "STRUCT",
}
_COMMENT_TYPES = {
    "STRING": "str",
    "NUMBER_INTEGER": "int",
    "NUMBER_DOUBLE": "float",
    "LIST": "list",
    "STRUCT": "dict",
    "BOOLEAN": "bool",
}
# kfp's memory units (kfp.dsl.constants), in the order its converter tests the suffixes; "G" is the unit itself.
_MEMORY_UNITS = (
    ("E", 10**18),
    ("Ei", 1 << 60),
    ("P", 10**15),
    ("Pi", 1 << 50),
    ("T", 10**12),
    ("Ti", 1 << 40),
    ("G", 0),
    ("Gi", 1 << 30),
    ("M", 10**6),
    ("Mi", 1 << 20),
    ("K", 10**3),
    ("Ki", 1 << 10),
)
_GIGA = 10**9


def _ir_type(kind: str) -> str:
    return _IR_TYPES.get(kind, "STRING")


def _struct_value(value: Any) -> Any:
    """A value as it comes back from a ``google.protobuf.Value``: every number a double."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _struct_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_struct_value(v) for v in value]
    raise TypeError(f"not a JSON value: {value!r}")


def _cpu_number(cpu: str) -> float:
    return float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


def _memory_gb(memory: str) -> float:
    """kfp's legacy ``memoryLimit`` number (GB, as a double) for a validated quantity."""
    for suffix, unit in _MEMORY_UNITS:
        if memory.endswith(suffix) and memory[: -len(suffix)].isdigit():
            number = float(memory[: -len(suffix)])
            return number if unit == 0 else number * unit / _GIGA
    return float(memory) / _GIGA


def _seconds(duration: str) -> str:
    return f"{int(duration[:-1])}s"  # options allow whole seconds only ("30s"); protobuf writes a Duration so


def _sdk_version() -> str:
    from importlib import metadata

    try:
        return f"kfp-{metadata.version('kfp')}"
    except metadata.PackageNotFoundError:
        return f"kfp-{KFP_SDK_VERSION}"


def _container(plan_: PipelinePlan, task: TaskPlan) -> dict[str, Any]:
    args = [
        *plan_.runtime_args(task),
        "--run-id",
        f"{{{{$.inputs.parameters['{RUN_ID_INPUT}']}}}}",
        "--engine-run-id",
        f"{{{{$.inputs.parameters['{ENGINE_RUN_ID_INPUT}']}}}}",
    ]
    for name in task.params:
        args += ["--param", json.dumps({"Concat": [f"{name}=", f"{{{{$.inputs.parameters['{name}']}}}}"]})]
    args += ["--output-file", f"{{{{$.outputs.parameters['{RECORD_OUTPUT}'].output_file}}}}"]
    for k in range(task.tests):
        args += ["--when-file", f"{{{{$.outputs.parameters['{WHEN_OUTPUT.format(k)}'].output_file}}}}"]
    if task.role == "items":
        args += ["--items-file", f"{{{{$.outputs.parameters['{ITEMS_OUTPUT}'].output_file}}}}"]
    elif task.role == "item":
        args += ["--item", f"{{{{$.inputs.parameters['{ITEM_INPUT}']}}}}"]
    if task.artifacts:
        args += ["--executor-input", EXECUTOR_INPUT_PLACEHOLDER]
    container: dict[str, Any] = {"args": args, "command": ["python", "-m", "mlpipe.runtime"], "image": task.image}
    if task.env:
        # protobuf leaves out empty strings: an empty value is written as a name alone
        container["env"] = [{"name": k, "value": v} if v else {"name": k} for k, v in dict(task.env).items()]
    resources: dict[str, Any] = {}
    if task.cpu is not None:
        number = _cpu_number(task.cpu)
        resources.update(resourceCpuLimit=task.cpu, resourceCpuRequest=task.cpu)
        if number:
            resources.update(cpuLimit=number, cpuRequest=number)
    if task.memory is not None:
        number = _memory_gb(task.memory)
        resources.update(resourceMemoryLimit=task.memory, resourceMemoryRequest=task.memory)
        if number:
            resources.update(memoryLimit=number, memoryRequest=number)
    if task.gpus:
        kind = plan_.options.gpu_resource
        resources["accelerator"] = {
            "count": str(task.gpus),
            "resourceCount": str(task.gpus),
            "resourceType": kind,
            "type": kind,
        }
    if resources:
        container["resources"] = resources
    return container


def _platform(task: TaskPlan, options: KubeflowOptions) -> dict[str, Any] | None:
    """The kfp-kubernetes executor config of a task, as ``kfp.kubernetes`` writes it; None without any."""
    config: dict[str, Any] = {}
    if task.timeout:
        config["activeDeadlineSeconds"] = str(task.timeout)  # an int64: a string in protobuf's JSON
    if task.node_selector:
        config["nodeSelector"] = {"labels": dict(task.node_selector)}
    if task.secrets_as_env:
        config["secretAsEnv"] = [
            _without_empty(
                {
                    "keyToEnv": [_without_empty({"envVar": env, "secretKey": key}) for key, env in mapping],
                    "optional": False,
                    "secretName": secret,
                    "secretNameParameter": {"runtimeValue": {"constant": secret}},
                }
            )
            for secret, mapping in task.secrets_as_env
        ]
    if task.tolerations:
        config["tolerations"] = [
            _without_empty(
                {
                    "key": tol.key,
                    "operator": tol.operator,
                    "value": tol.value,
                    "effect": tol.effect,
                    **({} if tol.toleration_seconds is None else {"tolerationSeconds": str(tol.toleration_seconds)}),
                }
            )
            for tol in task.tolerations
        ]
    if options.image_pull_policy:
        config["imagePullPolicy"] = options.image_pull_policy
    if options.image_pull_secrets:
        config["imagePullSecret"] = [
            _without_empty({"secretName": name, "secretNameParameter": {"runtimeValue": {"constant": name}}})
            for name in options.image_pull_secrets
        ]
    touched = bool(
        task.timeout
        or task.node_selector
        or task.secrets_as_env
        or task.tolerations
        or options.image_pull_policy
        or options.image_pull_secrets
    )
    return config if touched else None


def _without_empty(fields: dict[str, Any]) -> dict[str, Any]:
    """What protobuf's JSON keeps of a message: no unset fields, no empty strings or lists."""
    return {k: v for k, v in fields.items() if v is not None and v not in ("", [])}


def _task_spec(task: TaskPlan, options: KubeflowOptions, after: tuple[str, ...], layout: Layout) -> dict[str, Any]:
    outer = outer_input if task.dag else str
    parameters: dict[str, Any] = {name: {"componentInputParameter": outer(name)} for name in task.params}
    parameters[RUN_ID_INPUT] = {"componentInputParameter": outer(RUN_ID_INPUT)}
    parameters[ENGINE_RUN_ID_INPUT] = {"runtimeValue": {"constant": RUN_ID_PLACEHOLDER}}
    if task.role == "item":
        parameters[ITEM_INPUT] = {"componentInputParameter": f"{layout.group(task.dag).channel}-loop-item"}
    elif task.role == "collect":
        item = f"{task.name}-item"
        parameters[RECORDS_INPUT] = {
            "taskOutputParameter": {
                "outputParameterKey": channel(item, RECORD_OUTPUT),
                "producerTask": layout.dag_of(item),
            }
        }
    spec: dict[str, Any] = {
        "cachingOptions": {"enableCache": True} if task.caching else {},
        "componentRef": {"name": f"comp-{task.name}"},
        "inputs": {"parameters": parameters},
        "taskInfo": {"name": task.display},
    }
    if after:
        spec["dependentTasks"] = sorted(set(after))
    if task.retries:
        spec["retryPolicy"] = {
            "backoffDuration": _seconds(options.retry_backoff),
            "backoffFactor": 2.0,
            "backoffMaxDuration": _seconds(options.retry_backoff_max),
            "maxRetryCount": task.retries,
        }
    return spec


def _root_inputs(params: tuple[ParamPlan, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in (*params, _RUN_ID_PARAM):
        definition: dict[str, Any] = {"parameterType": _ir_type(p.kind)}
        if not p.required:
            definition["isOptional"] = True
            if p.default is not None:
                definition["defaultValue"] = _struct_value(
                    json.loads(json.dumps(p.default)) if p.kind in ("list", "dict") else p.default
                )
        out[p.name] = definition
    return out


def spec_documents(plan_: PipelinePlan) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The PipelineSpec and, when a task has Kubernetes settings, the PlatformSpec, as protobuf-JSON dicts.

    They equal ``json_format.MessageToDict`` of what kfp's compiler builds for
    :func:`build` (every dict and list a fresh object, so a caller may change them).
    """
    components: dict[str, Any] = {}
    executors: dict[str, Any] = {}
    platform: dict[str, Any] = {}
    groups, dags = _groups(plan_)
    components.update(groups)
    for task in plan_.tasks:
        inputs = {name: {"parameterType": _ir_type(plan_.param(name).kind)} for name in task.params}
        inputs[RUN_ID_INPUT] = {"parameterType": "STRING"}
        inputs[ENGINE_RUN_ID_INPUT] = {"parameterType": "STRING"}
        outputs = {RECORD_OUTPUT: {"parameterType": "STRING"}}
        outputs.update({WHEN_OUTPUT.format(k): {"parameterType": "BOOLEAN"} for k in range(task.tests)})
        if task.role == "items":
            outputs[ITEMS_OUTPUT] = {"parameterType": "LIST"}
        elif task.role == "item":
            inputs[ITEM_INPUT] = {"parameterType": "NUMBER_INTEGER"}
        elif task.role == "collect":
            inputs[RECORDS_INPUT] = {"parameterType": "LIST"}
        declared: dict[str, Any] = {"parameters": outputs}
        if task.artifacts:
            declared = {"artifacts": {name: _artifact_type(kind) for name, kind in task.artifacts}, **declared}
        components[f"comp-{task.name}"] = {
            "executorLabel": f"exec-{task.name}",
            "inputDefinitions": {"parameters": inputs},
            "outputDefinitions": declared,
        }
        executors[f"exec-{task.name}"] = {"container": _container(plan_, task)}
        # kfp moves a dependency on a task outside the task's sub-DAG to the sub-DAG's own task,
        # and one on a task inside a sibling sub-DAG to that sub-DAG
        layout = plan_.layout
        after = tuple({m for a in task.after if (m := layout.member_in(task.dag, a)) is not None})
        dags.setdefault(task.dag, {})[task.name] = _task_spec(task, plan_.options, after, layout)
        config = _platform(task, plan_.options)
        if config is not None:
            platform[f"exec-{task.name}"] = config
    for group in plan_.layout.groups:
        components[f"comp-{group.name}"]["dag"]["tasks"] = dags.get(group.name, {})
    root: dict[str, Any] = {
        "dag": {"tasks": dags.get("", {})},
        "inputDefinitions": {"parameters": _root_inputs(plan_.params)},
    }
    spec = {
        "components": components,
        "deploymentSpec": {"executors": executors},
        "pipelineInfo": {"description": _description(plan_), "displayName": plan_.display_name, "name": plan_.name},
        "root": root,
        "schemaVersion": "2.1.0",
        "sdkVersion": _sdk_version(),
    }
    if not platform:
        return spec, None
    return spec, {"platforms": {"kubernetes": {"deploymentSpec": {"executors": platform}}}}


def _groups(plan_: PipelinePlan) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    if not plan_.layout.groups:
        return {}, {}
    # every task reads the run id parameter, so every sub-DAG passes it down
    wiring = [TaskWiring(t.name, t.dag, (*t.params, RUN_ID_INPUT), t.after) for t in plan_.tasks]
    types = {p.name: _ir_type(p.kind) for p in (*plan_.params, _RUN_ID_PARAM)}
    return group_documents(plan_.layout, wiring, types)


def task_specs(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of a compiled spec, by name: the root DAG's and those inside condition sub-DAGs."""
    found: dict[str, dict[str, Any]] = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        if "dag" in component:
            found.update(component["dag"]["tasks"])
    return found


def _artifact_type(kind: ArtifactKind) -> dict[str, Any]:
    return {"artifactType": {"schemaTitle": f"system.{kind}", "schemaVersion": ARTIFACT_SCHEMA_VERSION}}


def _description(plan_: PipelinePlan) -> str:
    return f"mlpipe pipeline {plan_.display_name!r}: every task runs python -m mlpipe.runtime"


def spec_header(spec: Mapping[str, Any]) -> str:
    """The comment kfp's compiler writes above a spec (name, description, inputs with defaults)."""
    lines = ["# PIPELINE DEFINITION", f"# Name: {spec['pipelineInfo']['name']}"]
    description = spec["pipelineInfo"].get("description", "")
    if description:
        lines.append("# Description: " + "\n#              ".join(description.splitlines()))
    root = spec["root"]
    for section, heading in (("inputDefinitions", "# Inputs:"), ("outputDefinitions", "# Outputs:")):
        if section not in root:
            continue
        lines.append(heading)
        entries: list[tuple[str, str]] = []
        for name, body in root[section].get("parameters", {}).items():
            text = f"#    {name}: {_COMMENT_TYPES[body['parameterType']]}"
            if "defaultValue" in body:
                default = body["defaultValue"]
                text += f" [Default: {_comment(default)}]"
            entries.append((name, text))
        for name, body in root[section].get("artifacts", {}).items():
            entries.append((name, f"#    {name}: {body['artifactType']['schemaTitle']}"))
        lines += [text for _, text in sorted(entries, key=lambda e: e[0])]
    return "\n".join(lines) + "\n"


def _comment(default: Any) -> str:
    return f"'{default}'" if isinstance(default, str) else str(default)


# -- the same pipeline through kfp's DSL (the reference; imports kfp) ---------------------------


def _component(plan_: PipelinePlan, task: TaskPlan) -> Any:
    """A container component whose signature is generated: the step's parameters, the run id, the record."""
    from kfp import dsl

    P = inspect.Parameter
    tests = [WHEN_OUTPUT.format(k) for k in range(task.tests)]
    names = [*task.params, RUN_ID_INPUT, ENGINE_RUN_ID_INPUT, RECORD_OUTPUT, *tests]
    signature = [P(n, P.POSITIONAL_OR_KEYWORD, annotation=plan_.param(n).py_type) for n in task.params]
    signature.append(P(RUN_ID_INPUT, P.POSITIONAL_OR_KEYWORD, annotation=str))
    signature.append(P(ENGINE_RUN_ID_INPUT, P.POSITIONAL_OR_KEYWORD, annotation=str))
    signature.append(P(RECORD_OUTPUT, P.POSITIONAL_OR_KEYWORD, annotation=dsl.OutputPath(str)))
    signature += [P(n, P.POSITIONAL_OR_KEYWORD, annotation=dsl.OutputPath(bool)) for n in tests]
    role = {
        "items": (ITEMS_OUTPUT, dsl.OutputPath(typing.List[int])),  # noqa: UP006 (kfp reads typing.List)
        "item": (ITEM_INPUT, int),
        "collect": (RECORDS_INPUT, list),
    }.get(task.role)
    if role is not None:
        names.append(role[0])
        signature.append(P(role[0], P.POSITIONAL_OR_KEYWORD, annotation=role[1]))
    for name, kind in task.artifacts:
        names.append(name)
        signature.append(P(name, P.POSITIONAL_OR_KEYWORD, annotation=dsl.Output[getattr(dsl, kind)]))
    constant = plan_.runtime_args(task)

    def body(*placeholders: Any) -> Any:
        ph = dict(zip(names, placeholders, strict=True))
        args: list[Any] = [*constant, "--run-id", ph[RUN_ID_INPUT], "--engine-run-id", ph[ENGINE_RUN_ID_INPUT]]
        for name in task.params:
            args += ["--param", dsl.ConcatPlaceholder([f"{name}=", ph[name]])]
        args += ["--output-file", ph[RECORD_OUTPUT]]
        for name in tests:
            args += ["--when-file", ph[name]]
        if task.role == "items":
            args += ["--items-file", ph[ITEMS_OUTPUT]]
        elif task.role == "item":
            args += ["--item", ph[ITEM_INPUT]]
        if task.artifacts:
            args += ["--executor-input", dsl.PIPELINE_TASK_EXECUTOR_INPUT_PLACEHOLDER]
        return dsl.ContainerSpec(image=task.image, command=["python", "-m", "mlpipe.runtime"], args=args)

    body.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    body.__name__ = body.__qualname__ = task.name
    body.__doc__ = f"mlpipe step {task.step!r}"
    return dsl.container_component(body)


def _configure(kfp_task: Any, task: TaskPlan, options: KubeflowOptions) -> None:
    from kfp import kubernetes

    kfp_task.set_display_name(task.display)
    kfp_task.set_caching_options(enable_caching=task.caching)
    for key, value in task.env:
        kfp_task.set_env_variable(key, value)
    if task.cpu is not None:
        kfp_task.set_cpu_request(task.cpu).set_cpu_limit(task.cpu)
    if task.memory is not None:
        kfp_task.set_memory_request(task.memory).set_memory_limit(task.memory)
    if task.gpus:
        kfp_task.set_accelerator_type(options.gpu_resource).set_accelerator_limit(task.gpus)
    if task.retries:
        kfp_task.set_retry(
            num_retries=task.retries,
            backoff_duration=options.retry_backoff,
            backoff_factor=2.0,
            backoff_max_duration=options.retry_backoff_max,
        )
    if task.timeout is not None:
        kubernetes.set_timeout(kfp_task, task.timeout)
    for key, value in task.node_selector:
        kubernetes.add_node_selector(kfp_task, key, value)
    for secret, mapping in task.secrets_as_env:
        kubernetes.use_secret_as_env(kfp_task, secret_name=secret, secret_key_to_env=dict(mapping))
    for tol in task.tolerations:
        kubernetes.add_toleration(
            kfp_task,
            key=tol.key,
            operator=tol.operator,
            value=tol.value,
            effect=tol.effect,
            toleration_seconds=tol.toleration_seconds,
        )
    if options.image_pull_policy:
        kubernetes.set_image_pull_policy(kfp_task, options.image_pull_policy)
    if options.image_pull_secrets:
        kubernetes.set_image_pull_secrets(kfp_task, list(options.image_pull_secrets))


@contextlib.contextmanager
def _memoized_k8s_names() -> Iterator[None]:
    """Memoize kfp's name sanitiser while a pipeline is built.

    kfp's spec builder re-sanitises the name of every task in the DAG once per
    task (``pipeline_spec_builder.build_spec_by_group``), a million regex calls
    for 1,000 steps, most of the build time. The function is pure, so caching
    it cannot change the output (the golden tests compare against kfp's own
    compiler); it is restored afterwards.
    """
    from kfp.dsl import utils

    original = utils.maybe_rename_for_k8s
    utils.maybe_rename_for_k8s = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        utils.maybe_rename_for_k8s = original


def build(plan_: PipelinePlan) -> Callable[..., Any]:
    """The plan built with kfp's DSL: a ``GraphComponent`` to use inside a kfp pipeline.

    Compiling it with ``kfp.compiler.Compiler`` gives what :func:`write_spec`
    writes (the tests check this byte for byte); it imports kfp and takes
    time quadratic in the number of steps, so compiling does not use it.
    """
    with _memoized_k8s_names():
        return _build(plan_)


def _build(plan_: PipelinePlan) -> Callable[..., Any]:
    from kfp import dsl

    components = {t.name: _component(plan_, t) for t in plan_.tasks}
    # Python signatures put required parameters first; kfp passes the channels in signature order.
    ordered = sorted((*plan_.params, _RUN_ID_PARAM), key=lambda p: not p.required)
    pnames = [p.name for p in ordered]

    by_task = {t.name: t for t in plan_.tasks}
    members = dict(plan_.layout.members) or {"": tuple(by_task)}

    def body(*channels: Any) -> None:
        by_name = dict(zip(pnames, channels, strict=True))
        tasks: dict[str, Any] = {}
        loop_items: dict[str, Any] = {}

        def emit(dag: str) -> None:  # a DAG's members in the plan's order, so kfp numbers groups as the plan does
            for member in members[dag]:
                if member not in by_task:
                    group = plan_.layout.group(member)
                    source = tasks[group.producer].outputs[group.output]
                    if group.loop:
                        with dsl.ParallelFor(items=source, parallelism=group.parallelism) as item:
                            loop_items[member] = item
                            emit(member)
                    else:
                        with dsl.If(source == group.expected):
                            emit(member)
                    continue
                task = by_task[member]
                kwargs = {n: by_name[n] for n in task.params}
                kwargs[RUN_ID_INPUT] = by_name[RUN_ID_INPUT]
                kwargs[ENGINE_RUN_ID_INPUT] = RUN_ID_PLACEHOLDER
                if task.role == "item":
                    kwargs[ITEM_INPUT] = loop_items[task.dag]
                elif task.role == "collect":
                    kwargs[RECORDS_INPUT] = dsl.Collected(tasks[f"{task.name}-item"].outputs[RECORD_OUTPUT])
                kfp_task = components[task.name](**kwargs)
                _configure(kfp_task, task, plan_.options)
                if task.after:
                    kfp_task.after(*(tasks[a] for a in task.after))
                tasks[task.name] = kfp_task

        emit("")

    P = inspect.Parameter
    body.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            P(p.name, P.POSITIONAL_OR_KEYWORD, annotation=p.py_type, **({} if p.required else {"default": p.default}))
            for p in ordered
        ]
    )
    body.__name__ = body.__qualname__ = plan_.name.replace("-", "_")
    return dsl.pipeline(  # type: ignore[no-any-return]
        body,
        name=plan_.name,
        display_name=plan_.display_name,
        description=_description(plan_),
    )


def write_spec(plan_: PipelinePlan, path: str) -> str:
    """Write the plan's KFP spec (YAML) to ``path``: byte for byte what ``kfp.compiler.Compiler`` writes for it.

    No kfp import: :func:`spec_documents` builds the documents and
    :mod:`mlpipe_kubeflow.yamlout` writes them as PyYAML would.
    ``tests/backends/kubeflow/test_kfp_compile.py`` compares the file with
    kfp's own compiler output for :func:`build`.
    """
    from mlpipe_kubeflow import yamlout

    with _gc_paused():
        spec, platform = spec_documents(plan_)
        text = spec_header(spec) + "".join(
            yamlout.dumps(d) if i == 0 else "---\n" + yamlout.dumps(d)
            for i, d in enumerate([spec] if platform is None else [spec, platform])
        )
    with open(path, "w") as f:
        f.write(text)
    return path


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a spec is built: tens of thousands of acyclic dicts, nothing to free,
    and each full collection would rescan every object of the process (a quarter of the compile at 5,000 steps)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
