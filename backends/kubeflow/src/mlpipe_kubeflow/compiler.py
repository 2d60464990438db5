"""From the mlpipe IR to a KFP v2 pipeline spec.

Two phases. :func:`plan` turns the IR and the backend's options into a
:class:`PipelinePlan`: names, images, parameters, edges and per-task settings,
every refusal raised here, before kfp is imported. :func:`write_spec` builds
one *container component* per step from a generated signature (no kfp in the
user's image, no Python source in the spec) and lets kfp's own compiler write
the YAML, so the spec is exactly what kfp would produce by hand.

Every task runs ``python -m mlpipe.runtime`` with the store URL and the IR's
digest as constants and the KFP job id as ``--run-id``; data moves through
the store by content address, never through KFP. The only KFP output of a
task is a small JSON record (status, cache key) for the UI.

What lives elsewhere: talking to the API server (``client.py``), executing the
spec with kfp.local (``local_runner.py``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mlpipe.errors import UnsupportedFeatureError
from mlpipe.extend import memory_bytes
from mlpipe.ir import ParamSpec, PipelineIR, StepSpec
from mlpipe_kubeflow.naming import BACKEND, check_parameter_budget, pipeline_name, task_names
from mlpipe_kubeflow.options import ENV_NAME, KubeflowOptions, StepOverrides, Toleration

__all__ = [
    "DEFAULT_IMAGE",
    "RECORD_OUTPUT",
    "RUN_ID_INPUT",
    "ParamPlan",
    "PipelinePlan",
    "TaskPlan",
    "build",
    "plan",
    "write_spec",
]

DEFAULT_IMAGE = "mlpipe-runtime:latest"
RUN_ID_INPUT = "mlpipe_run_id"
RECORD_OUTPUT = "mlpipe_record"
_RESERVED = (RUN_ID_INPUT, RECORD_OUTPUT)
_PY_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}
_KFP_MEMORY_SUFFIXES = ("E", "Ei", "P", "Pi", "T", "Ti", "G", "Gi", "M", "Mi", "K", "Ki", "")
_INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"


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

    def param(self, name: str) -> ParamPlan:
        return next(p for p in self.params if p.name == name)

    def arguments(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """KFP run arguments for validated mlpipe parameter values."""
        return {p.name: p.to_kfp(values[p.name]) for p in self.params if p.name in values}

    def runtime_args(self, task: TaskPlan) -> list[str]:
        """The constant part of the task's ``python -m mlpipe.runtime`` arguments."""
        args = ["--store", self.store, "--ir", self.ir_digest, "--step", task.step, "--backend", BACKEND]
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
    suffix = text[len(number):]
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
            raise _refuse(spec.name, option, f"{option}={value!r} needs the node label {key}={value}, but the "
                          f"profile's node_selector asks for {key}={selector[key]}; drop one of them")
        selector[key] = value
    return tuple(sorted(selector.items()))


def _secrets(options: KubeflowOptions, extra: StepOverrides) -> dict[str, dict[str, str]]:
    merged = {name: dict(mapping) for name, mapping in options.secrets_as_env.items()}
    for name, mapping in extra.secrets_as_env.items():
        merged.setdefault(name, {}).update(mapping)
    return merged


def _env(spec: StepSpec, options: KubeflowOptions, extra: StepOverrides,
         secrets: dict[str, dict[str, str]]) -> tuple[tuple[str, str], ...]:
    bad = [k for k in spec.env if not ENV_NAME.match(k)]
    if bad:
        raise _refuse(spec.name, "env", f"environment variable name(s) {bad} are not valid in Kubernetes")
    env = {**options.env, **spec.env, **extra.env}  # profile-wide < the step's code < the profile's step entry
    from_secrets = {var for mapping in secrets.values() for var in mapping.values()}
    clash = sorted(from_secrets & set(env))
    if clash:
        raise _refuse(spec.name, "env", f"{clash} would be set both as plain env and from a secret "
                      "(profile option secrets_as_env); keep one")
    return tuple(env.items())


def _task(spec: StepSpec, name: str, names: Mapping[str, str], image: str | None,
          options: KubeflowOptions) -> TaskPlan:
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
    )


def _param(spec: ParamSpec) -> ParamPlan:
    default = spec.default
    if spec.kind == "json" and not spec.required:
        default = json.dumps(default, sort_keys=True)
    return ParamPlan(name=spec.name, kind=spec.kind, required=spec.required, default=default)


def plan(ir: PipelineIR, options: KubeflowOptions, *, store: str, ir_digest: str, image: str | None = None,
         cache: bool = True) -> PipelinePlan:
    """Decide and check everything the KFP spec will say.

    Raises:
        UnsupportedFeatureError: what KFP cannot express, naming the step and option.
    """
    kfp_name = pipeline_name(ir.name)
    for p in ir.params:
        if p.name in _RESERVED:
            raise UnsupportedFeatureError(
                f"pipeline {ir.name!r}: the parameter name {p.name!r} is used by mlpipe's KFP tasks; rename it",
                backend=BACKEND, pipeline=ir.name, argument=p.name, option="params",
            )
    check_parameter_budget(ir.name, {p.name: p.default for p in ir.params if not p.required},
                           options.max_parameter_bytes, "parameter defaults")
    names = task_names(s.name for s in ir.steps)
    unknown = sorted(set(options.steps) - set(names))
    if unknown:
        raise UnsupportedFeatureError(
            f"pipeline {ir.name!r}: the profile option steps names {unknown}, which are not steps of it; "
            f"its steps are {list(names)}",
            backend=BACKEND, pipeline=ir.name, option="steps",
        )
    tasks = tuple(_task(s, names[s.name], names, image, options) for s in ir.steps)
    # The first task to run writes the run's record, parameters included (the run may have been started from the
    # KFP UI, not through mlpipe), so tasks without upstream receive every parameter; the rest only their own.
    everything = tuple(p.name for p in ir.params)
    tasks = tuple(
        replace(t, params=(*t.params, *(p for p in everything if p not in t.params))) if not t.after else t
        for t in tasks
    )
    return PipelinePlan(
        name=kfp_name,
        display_name=ir.name,
        store=store,
        ir_digest=ir_digest,
        cache=cache,
        params=tuple(_param(p) for p in ir.params),
        tasks=tasks,
        options=options,
    )


# -- kfp ----------------------------------------------------------------------------------------


def _component(plan_: PipelinePlan, task: TaskPlan) -> Any:
    """A container component whose signature is generated: the step's parameters, the run id, the record."""
    from kfp import dsl

    P = inspect.Parameter
    names = [*task.params, RUN_ID_INPUT, RECORD_OUTPUT]
    signature = [P(n, P.POSITIONAL_OR_KEYWORD, annotation=plan_.param(n).py_type) for n in task.params]
    signature.append(P(RUN_ID_INPUT, P.POSITIONAL_OR_KEYWORD, annotation=str))
    signature.append(P(RECORD_OUTPUT, P.POSITIONAL_OR_KEYWORD, annotation=dsl.OutputPath(str)))
    constant = plan_.runtime_args(task)

    def body(*placeholders: Any) -> Any:
        ph = dict(zip(names, placeholders, strict=True))
        args: list[Any] = [*constant, "--run-id", ph[RUN_ID_INPUT]]
        for name in task.params:
            args += ["--param", dsl.ConcatPlaceholder([f"{name}=", ph[name]])]
        args += ["--output-file", ph[RECORD_OUTPUT]]
        return dsl.ContainerSpec(image=task.image, command=["python", "-m", "mlpipe.runtime"], args=args)

    body.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
    body.__name__ = body.__qualname__ = task.name
    body.__doc__ = f"mlpipe step {task.step!r}"
    return dsl.container_component(body)


def _configure(kfp_task: Any, task: TaskPlan, options: KubeflowOptions) -> None:
    from kfp import kubernetes

    kfp_task.set_display_name(task.step)
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
        kfp_task.set_retry(num_retries=task.retries, backoff_duration=options.retry_backoff, backoff_factor=2.0,
                           backoff_max_duration=options.retry_backoff_max)
    if task.timeout is not None:
        kubernetes.set_timeout(kfp_task, task.timeout)
    for key, value in task.node_selector:
        kubernetes.add_node_selector(kfp_task, key, value)
    for secret, mapping in task.secrets_as_env:
        kubernetes.use_secret_as_env(kfp_task, secret_name=secret, secret_key_to_env=dict(mapping))
    for tol in task.tolerations:
        kubernetes.add_toleration(kfp_task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect,
                                  toleration_seconds=tol.toleration_seconds)
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
    """The kfp pipeline object (a ``GraphComponent``) for a plan."""
    with _memoized_k8s_names():
        return _build(plan_)


def _build(plan_: PipelinePlan) -> Callable[..., Any]:
    from kfp import dsl

    components = {t.name: _component(plan_, t) for t in plan_.tasks}
    # Python signatures put required parameters first; kfp passes the channels in signature order.
    ordered = sorted(plan_.params, key=lambda p: not p.required)
    pnames = [p.name for p in ordered]

    def body(*channels: Any) -> None:
        by_name = dict(zip(pnames, channels, strict=True))
        tasks: dict[str, Any] = {}
        for task in plan_.tasks:
            kwargs = {n: by_name[n] for n in task.params}
            kwargs[RUN_ID_INPUT] = dsl.PIPELINE_JOB_ID_PLACEHOLDER
            kfp_task = components[task.name](**kwargs)
            _configure(kfp_task, task, plan_.options)
            if task.after:
                kfp_task.after(*(tasks[a] for a in task.after))
            tasks[task.name] = kfp_task

    P = inspect.Parameter
    body.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        P(p.name, P.POSITIONAL_OR_KEYWORD, annotation=p.py_type,
          **({} if p.required else {"default": p.default}))
        for p in ordered
    ])
    body.__name__ = body.__qualname__ = plan_.name.replace("-", "_")
    return dsl.pipeline(body, name=plan_.name, display_name=plan_.display_name,  # type: ignore[no-any-return]
                        description=f"mlpipe pipeline {plan_.display_name!r}: every task runs python -m mlpipe.runtime")


def write_spec(plan_: PipelinePlan, path: str) -> str:
    """Build the plan with kfp and write the YAML spec to ``path``, byte for byte what kfp's compiler writes.

    ``kfp.compiler.Compiler().compile`` serialises with PyYAML's pure-Python
    emitter (about 3 s for 1,000 steps); this writes the same documents, the
    same header comment and the same key order with libyaml's emitter when
    PyYAML has it. ``tests/backends/kubeflow/test_kfp_compile.py`` checks the
    result equals kfp's own output.
    """
    import yaml  # type: ignore[import-untyped]
    from google.protobuf import json_format
    from kfp.compiler import pipeline_spec_builder

    pipeline: Any = build(plan_)
    spec = json_format.MessageToDict(pipeline.pipeline_spec)
    documents = [spec]
    if len(pipeline.platform_spec.platforms) > 0:
        documents.append(json_format.MessageToDict(pipeline.platform_spec))
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    with open(path, "w") as f:
        f.write(pipeline_spec_builder.extract_comments_from_pipeline_spec(spec, pipeline.description))
        yaml.dump_all(documents, f, Dumper=dumper, sort_keys=True)
    return path
