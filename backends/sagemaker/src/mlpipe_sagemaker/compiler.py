"""From the IR to a SageMaker pipeline definition, emitted with the standard library.

One ``Processing`` step per mlpipe step, each running
``python -m mlpipe.runtime --store URL --ir DIGEST --run-id <execution id>
--step NAME --backend sagemaker --cache <parameter> --param name=<parameter> ...``
in the step's image. Data never passes through SageMaker: the runtime reads
its inputs from, and writes its outputs and records to, the mlpipe store, so
``DependsOn`` carries the whole graph and no step has ProcessingInputs or
ProcessingOutputs.

The dictionary is built in exactly the key order the SageMaker Python SDK
(3.27) emits and serialised the way its ``Pipeline.definition()`` does
(``json.dumps`` with default separators, no key sorting), so the text is
byte-identical to the SDK's for the same pipeline; the tests prove it for
every golden pipeline. Nothing here imports the SDK (about 1 GB installed and
6 s to import) or talks to AWS. Validation of the result lives in
:mod:`mlpipe_sagemaker.validate`; AWS calls in :mod:`mlpipe_sagemaker.backend`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlpipe.errors import UnsupportedFeatureError
from mlpipe.ir import ConditionSpec, ParamSpec, PipelineIR, StepSpec
from mlpipe_sagemaker.instances import choose_instance_type
from mlpipe_sagemaker.options import SageMakerOptions

__all__ = [
    "CACHE_PARAMETER",
    "EXECUTION_ID",
    "MAX_RUNTIME_SECONDS",
    "METRICS_OUTPUT",
    "build_definition",
    "dumps",
    "encode_value",
    "parameter_type",
    "sagemaker_pipeline_name",
]

VERSION = "2020-12-01"
EXECUTION_ID: dict[str, Any] = {"Get": "Execution.PipelineExecutionId"}
# "cache" is reserved by mlpipe (no pipeline parameter may use it), so it cannot collide.
CACHE_PARAMETER = "cache"
# ProcessingStoppingCondition.MaxRuntimeInSeconds is 1..777600 in the API reference.
MAX_RUNTIME_SECONDS = 777_600
# Room for the runtime to load inputs, write the failure record after an in-process
# timeout, and upload outputs before SageMaker kills the job.
RUNTIME_GRACE_SECONDS = 300
_MAX_RETRY_DELAY = 60  # mlpipe.executor caps its backoff between attempts at 60 s
_TYPES = {"int": "Integer", "float": "Float", "bool": "Boolean", "str": "String"}
WHEN_OUTPUT = "mlpipe-when"
METRICS_OUTPUT = "mlpipe-metrics"


@dataclass(frozen=True)
class _PropertyFile:
    """A small JSON file the runtime writes for SageMaker: a ProcessingOutput uploads it, a PropertyFile names it."""

    name: str  # the OutputName and the PropertyFileName
    flag: str  # the runtime's option that writes it
    folder: str  # uploaded to <store>/runs/<execution id>/<folder>/<step>/
    file: str

    @property
    def local_path(self) -> str:
        return f"/opt/ml/processing/{self.name}"


# A tested step writes its mp.when results ({"mlpipe_when_0": true, ...}); a ConditionStep reads them with JsonGet.
_WHEN = _PropertyFile(WHEN_OUTPUT, "--when-json", "when", "when.json")
# A step with pydantic (Metrics) outputs writes their numbers ({"output": {"accuracy": 0.9}}), shown as the step's
# property file, which a ConditionStep or a ModelStep's metrics can read with JsonGet (path "output.accuracy").
_METRICS = _PropertyFile(METRICS_OUTPUT, "--metrics-json", "metrics", "metrics.json")


def dumps(definition: Mapping[str, Any]) -> str:
    """The definition as SageMaker's SDK would write it (``Pipeline.definition()``)."""
    return json.dumps(definition)


def sagemaker_pipeline_name(ir: PipelineIR, options: SageMakerOptions) -> str:
    """The SageMaker pipeline name: the option, or the mlpipe name made safe."""
    if options.pipeline_name:
        return options.pipeline_name
    return re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9-]", "-", ir.name)).strip("-") or "mlpipe"


def parameter_type(spec: ParamSpec) -> str:
    """SageMaker's type for a pipeline parameter: lists, dicts and JSON travel as a String of JSON."""
    return _TYPES.get(spec.kind, "String")


def encode_value(spec: ParamSpec, value: Any) -> str:
    """A parameter value as the text SageMaker passes and :func:`mlpipe.runtime.decode_param` reads."""
    if spec.kind == "str":
        if not isinstance(value, str):
            raise UnsupportedFeatureError(
                f"parameter {spec.name!r}: a str parameter needs a string value on SageMaker, got {value!r}",
                backend="sagemaker",
                argument=spec.name,
            )
        return value
    if spec.kind == "bool":
        return "true" if value else "false"
    if spec.kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return repr(float(value))
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _default(spec: ParamSpec) -> Any:
    """The DefaultValue as typed JSON for the definition (omitted for required parameters)."""
    if spec.default is None:
        if spec.kind in ("str", "bool"):
            raise UnsupportedFeatureError(
                f"parameter {spec.name!r} defaults to None, which a SageMaker {parameter_type(spec)} parameter "
                "cannot hold; give it a real default or make it required",
                backend="sagemaker",
                argument=spec.name,
            )
        return "null"
    kind = parameter_type(spec)
    if kind == "Integer":
        return int(spec.default)
    if kind == "Float":
        return float(spec.default)
    if kind == "Boolean":
        return bool(spec.default)
    return encode_value(spec, spec.default)


def _parameters(ir: PipelineIR) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for spec in ir.params:
        kind = "String" if spec.default is None and not spec.required else parameter_type(spec)
        entry: dict[str, Any] = {"Name": spec.name, "Type": kind}
        if not spec.required:
            entry["DefaultValue"] = _default(spec)
        out.append(entry)
    out.append({"Name": CACHE_PARAMETER, "Type": "String", "DefaultValue": "true"})
    return out


def _join(*values: Any) -> dict[str, Any]:
    return {"Std:Join": {"On": "", "Values": list(values)}}


def container_arguments(
    ir: PipelineIR,
    spec: StepSpec,
    store_url: str,
    ir_digest: str,
    storage_options: str | None = None,
    tested: bool | None = None,
    pruned: Mapping[str, str] | None = None,
) -> list[Any]:
    """The runtime's command line for one step, with SageMaker expressions where values vary per run.

    ``storage_options`` is the JSON of the store's options the job needs (an endpoint; never credentials).
    ``pruned``: upstream cache hits left out of the definition (step → key), read by key (``--cached``).
    """
    args: list[Any] = [
        "--store", store_url,
        "--ir", ir_digest,
        "--run-id", EXECUTION_ID,
        "--step", spec.name,
        "--backend", "sagemaker",
        "--cache", {"Get": f"Parameters.{CACHE_PARAMETER}"},
    ]  # fmt: skip
    if storage_options:
        args += ["--storage-options", storage_options]
    for up in dict.fromkeys(spec.upstream):
        if pruned and up in pruned:
            args += ["--cached", f"{up}={pruned[up]}"]
    for param in ir.params:
        args += ["--param", _join(f"{param.name}=", {"Get": f"Parameters.{param.name}"})]
    for pf in property_files(spec, store_url, spec.name in ir.published_tests() if tested is None else tested):
        args += [pf.flag, f"{pf.local_path}/{pf.file}"]
    return args


def property_files(spec: StepSpec, store_url: str, tested: bool) -> list[_PropertyFile]:
    """The step's property files, in the order the definition lists them: its mp.when results, its metrics."""
    return [pf for pf, wanted in ((_WHEN, tested), (_METRICS, reports_metrics(spec, store_url))) if wanted]


def reports_metrics(spec: StepSpec, store_url: str) -> bool:
    """Whether the step gets the ``mlpipe-metrics`` property file: it has a pydantic output and the store is on S3.

    SageMaker uploads a job's outputs to S3 only, so with any other store the
    metrics stay in the mlpipe store alone.
    """
    return store_url.startswith("s3://") and any(out.artifact == "Metrics" for out in spec.outputs)


def job_output(spec: StepSpec, store_url: str, pf: _PropertyFile) -> dict[str, Any]:
    """The ProcessingOutput uploading a property file to ``<store>/runs/<execution id>/<folder>/<step>`` at the end."""
    uri = {"Std:Join": {"On": "/", "Values": [f"{store_url.rstrip('/')}/runs", EXECUTION_ID, pf.folder, spec.name]}}
    return {"OutputName": pf.name, "S3Output": {"S3Uri": uri, "LocalPath": pf.local_path, "S3UploadMode": "EndOfJob"}}


def max_runtime(spec: StepSpec) -> int | None:
    """MaxRuntimeInSeconds for a step with a timeout: every attempt, the backoff between them, and a grace.

    mlpipe retries a failing step inside the job and enforces ``timeout`` per
    attempt itself (writing a failure record), so SageMaker's limit must let
    all attempts finish; it is the backstop for a hung process.
    """
    if spec.timeout is None:
        return None
    seconds = math.ceil(spec.timeout * (spec.retries + 1)) + _MAX_RETRY_DELAY * spec.retries + RUNTIME_GRACE_SECONDS
    if seconds > MAX_RUNTIME_SECONDS:
        raise UnsupportedFeatureError(
            f"step {spec.name!r}: timeout={spec.timeout:g} s with retries={spec.retries} needs a Processing job of "
            f"{seconds} s, more than SageMaker's limit of {MAX_RUNTIME_SECONDS} s (9 days); lower the timeout or "
            "the retries",
            backend="sagemaker",
            step=spec.name,
        )
    return seconds


def retry_policies(spec: StepSpec) -> list[dict[str, Any]]:
    """SageMaker-side retries for a step with ``retries``: service faults, throttling and job-level failures.

    A failure of the step's own code is retried inside the job by the runtime
    (SageMaker never retries an algorithm error); these policies cover what
    happens around it: capacity, internal errors, throttling. SageMaker allows
    at most 20 attempts per policy, so more retries are capped there (the
    runtime still honours all of them).
    """
    if spec.retries <= 0:
        return []
    attempts = min(spec.retries, 20)
    return [
        {"BackoffRate": 2.0, "IntervalSeconds": 10, "MaxAttempts": attempts,
         "ExceptionType": ["Step.SERVICE_FAULT", "Step.THROTTLING"]},
        {"BackoffRate": 2.0, "IntervalSeconds": 60, "MaxAttempts": attempts,
         "ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR", "SageMaker.CAPACITY_ERROR", "SageMaker.RESOURCE_LIMIT"]},
    ]  # fmt: skip


def environment(spec: StepSpec, options: SageMakerOptions) -> dict[str, str]:
    """Every step's environment, sorted: unbuffered output (logs reach CloudWatch as they happen),
    the profile's ``environment``, then the step's own ``env=``."""
    env = {"PYTHONUNBUFFERED": "1", **options.environment, **spec.env}
    return dict(sorted(env.items()))


def step_image(spec: StepSpec, image: str | None) -> str:
    chosen = spec.image or image
    if not chosen:
        raise UnsupportedFeatureError(
            f"step {spec.name!r} has no image: SageMaker runs every step in a container image. Set `image` in the "
            "profile (an ECR URI such as 123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1.4) or "
            "@mp.step(image=...)",
            backend="sagemaker",
            step=spec.name,
        )
    return chosen


def build_step(
    ir: PipelineIR,
    spec: StepSpec,
    *,
    store_url: str,
    ir_digest: str,
    role: str,
    image: str | None,
    options: SageMakerOptions,
    storage_options: str | None = None,
    tested: bool | None = None,
    pruned: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One ``Processing`` step, keys in the SDK's order. ``tested``: whether an ``mp.when`` tests its output."""
    if tested is None:
        tested = spec.name in ir.published_tests()
    instance_type = choose_instance_type(
        spec.name, spec.resources, default=options.default_instance_type, overrides=options.instance_types
    )
    arguments: dict[str, Any] = {
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceType": instance_type,
                "InstanceCount": 1,
                "VolumeSizeInGB": options.volume_size_gb,
            }
        },
        "AppSpecification": {
            "ImageUri": step_image(spec, image),
            "ContainerArguments": container_arguments(ir, spec, store_url, ir_digest, storage_options, tested, pruned),
            "ContainerEntrypoint": [options.python, "-m", "mlpipe.runtime"],
        },
        "RoleArn": role,
    }
    files = property_files(spec, store_url, tested)
    if files:
        arguments["ProcessingOutputConfig"] = {"Outputs": [job_output(spec, store_url, pf) for pf in files]}
    arguments["Environment"] = environment(spec, options)
    seconds = max_runtime(spec)
    if seconds is not None:
        arguments["StoppingCondition"] = {"MaxRuntimeInSeconds": seconds}
    step: dict[str, Any] = {"Name": spec.name, "Type": "Processing", "Arguments": arguments}
    depends = [up for up in dict.fromkeys(spec.upstream) if not pruned or up not in pruned]
    if depends:
        step["DependsOn"] = depends
    policies = retry_policies(spec)
    if policies:
        step["RetryPolicies"] = policies
    # SageMaker's own step cache stays off: mlpipe's content-addressed cache decides (and is shared with
    # local runs), every step's arguments carry the execution id, and a SageMaker cache hit would skip the
    # runtime, leaving this run without the step's record that downstream steps read.
    step["CacheConfig"] = {"Enabled": False}
    if files:
        step["PropertyFiles"] = [
            {"PropertyFileName": pf.name, "OutputName": pf.name, "FilePath": pf.file} for pf in files
        ]
    return step


def condition_step(
    name: str, test: ConditionSpec, index: int, if_steps: list[Any], else_steps: list[Any]
) -> dict[str, Any]:
    """A ``Condition`` step: the tested step's published result ``mlpipe_when_<index>`` is true (IfSteps) or not."""
    return {
        "Name": name,
        "Type": "Condition",
        "Arguments": {
            "Conditions": [
                {
                    "Type": "Equals",
                    "LeftValue": {
                        "Std:JsonGet": {
                            "PropertyFile": {"Get": f"Steps.{test.step}.PropertyFiles.{WHEN_OUTPUT}"},
                            "Path": f"mlpipe_when_{index}",
                        }
                    },
                    "RightValue": True,
                }
            ],
            "IfSteps": if_steps,
            "ElseSteps": else_steps,
        },
        "DependsOn": [test.step],
    }


def arrange(ir: PipelineIR, built: Mapping[str, Any]) -> list[Any]:
    """The steps with every ``mp.when`` block inside a ``Condition`` step (``c`` and ``~c`` share one).

    Each level lists its steps in the IR's order, a condition step where the
    first step of its blocks is; blocks inside blocks nest. Condition steps
    are named ``when-1``, ``when-2``... in that order.
    """
    tests = ir.published_tests()
    counter = [0]
    taken = {s.name for s in ir.steps}

    def level(specs: list[StepSpec], depth: int) -> list[Any]:
        out: list[Any] = []
        groups: dict[ConditionSpec, tuple[list[StepSpec], list[StepSpec]]] = {}
        for spec in specs:
            if len(spec.when) == depth:
                out.append(built[spec.name])
                continue
            condition = spec.when[depth]
            test = condition.test()
            if test not in groups:
                groups[test] = ([], [])
                out.append(test)  # the condition step goes here, built below
            groups[test][1 if condition.negate else 0].append(spec)
        for i, item in enumerate(out):
            if isinstance(item, ConditionSpec):
                counter[0] += 1
                name = f"when-{counter[0]}"
                if name in taken:
                    raise UnsupportedFeatureError(
                        f"step {name!r}: its name is the name of a Condition step of this pipeline; rename the step",
                        backend="sagemaker",
                        step=name,
                    )
                if_specs, else_specs = groups[item]
                index = tests[item.step].index(item)
                out[i] = condition_step(name, item, index, level(if_specs, depth + 1), level(else_specs, depth + 1))
        return out

    return level(list(ir.steps), 0)


def build_definition(
    ir: PipelineIR,
    *,
    store_url: str,
    ir_digest: str,
    role: str,
    image: str | None,
    options: SageMakerOptions,
    storage_options: str | None = None,
    pruned: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The whole pipeline definition as a dict (serialise it with :func:`dumps`).

    ``pruned``: steps that are cache hits (step → key), left out; their consumers read them by key.
    """
    if any(s.when for s in ir.steps) and not store_url.startswith("s3://"):
        raise UnsupportedFeatureError(
            f"pipeline {ir.name!r} has mp.when blocks, and SageMaker reads a tested step's result from a file the "
            f"job uploads to S3: the store must be an s3:// URL, not {store_url}",
            backend="sagemaker",
            option="store",
        )
    published = ir.published_tests()
    steps = {
        spec.name: build_step(
            ir,
            spec,
            store_url=store_url,
            ir_digest=ir_digest,
            role=role,
            image=image,
            options=options,
            storage_options=storage_options,
            tested=spec.name in published,
            pruned=pruned,
        )
        for spec in ir.steps
        if not pruned or spec.name not in pruned
    }
    return {
        "Version": VERSION,
        "Metadata": {},
        "Parameters": _parameters(ir),
        # No SageMaker Experiment/Trial per execution: runs are tracked in the mlpipe store.
        "PipelineExperimentConfig": None,
        "MlflowConfig": None,
        "Steps": arrange(ir, steps) if any(s.when for s in ir.steps) else list(steps.values()),
    }
