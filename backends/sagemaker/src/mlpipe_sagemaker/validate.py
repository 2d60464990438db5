"""Checks on a SageMaker pipeline definition that neither the SDK nor the service makes early.

The SDK accepts a cycle, an undeclared parameter, a 300-character argument or
an Integer parameter used as an environment value; some of these fail only
at ``CreatePipeline`` on AWS, some only when the job starts, hours later. An
emulator (moto) accepts all of them. :func:`validate_definition` checks the
limits published in the SageMaker API reference and the pipeline definition
schema, and those found in the SDK's and other tools' issue trackers, and
raises :class:`DefinitionValidationError` naming the step, the field, what it
found and what is allowed.

Limits that depend on a run's parameter values (an argument built from a
parameter) are checked against the defaults here and against the submitted
values by the backend.
"""

from __future__ import annotations

import graphlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mlpipe.errors import UnsupportedFeatureError
from mlpipe_sagemaker.instances import INSTANCE_TYPE_RE
from mlpipe_sagemaker.options import ROLE_ARN_RE

__all__ = ["DefinitionValidationError", "LIMITS", "resolve_text", "validate_definition"]

STEP_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PARAMETER_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PIPELINE_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}$")
ENV_KEY_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,255}$")
PARAMETER_TYPES: dict[str, type | tuple[type, ...]] = {
    "String": str,
    "Integer": int,
    "Float": (int, float),
    "Boolean": bool,
}
RETRY_EXCEPTIONS = {
    "Step.SERVICE_FAULT",
    "Step.THROTTLING",
    "SageMaker.JOB_INTERNAL_ERROR",
    "SageMaker.CAPACITY_ERROR",
    "SageMaker.RESOURCE_LIMIT",
}
# What a 12-character execution id looks like, for measuring arguments that contain one.
_EXECUTION_ID_PLACEHOLDER = "x" * 12

LIMITS = {
    # The published pipeline schema and the API reference (CreatePipeline, CreateProcessingJob).
    "pipeline_name": 256,
    # CreatePipeline rejected longer names in practice (sagemaker-python-sdk #2933: "maximum allowed: 82").
    "pipeline_name_safe": 82,
    "definition_bytes": 1024 * 1024,
    "argument_chars": 256,  # per ContainerArguments item (sagemaker-python-sdk #5224, fondant #593)
    "arguments": 256,
    "entrypoint_items": 100,
    "environment_value_chars": 256,  # Processing jobs (ZenML splits longer values for this reason)
    "environment_entries": 100,
    "string_default_chars": 4096,
    "instance_count": 100,
    "volume_size_gb": 16384,
    "max_runtime_seconds": 777_600,
    "retry_attempts": 20,
    "image_uri_chars": 255,
}


class DefinitionValidationError(UnsupportedFeatureError):
    """The definition breaks a SageMaker rule. ``step`` and ``field`` say where."""


CONDITION_TYPES = frozenset(
    {"Equals", "GreaterThan", "GreaterThanOrEqualTo", "LessThan", "LessThanOrEqualTo", "In", "Not", "Or"}
)


def _fail(message: str, *, step: str | None = None, field: str | None = None) -> DefinitionValidationError:
    where = f"step {step!r}: " if step else ""
    return DefinitionValidationError(
        f"SageMaker pipeline: {where}{message}", backend="sagemaker", step=step, field=field
    )


def _walk_gets(value: Any) -> list[str]:
    """Every ``{"Get": ...}`` reference inside an expression."""
    found: list[str] = []
    if isinstance(value, dict):
        if "Get" in value and isinstance(value["Get"], str):
            found.append(value["Get"])
        for inner in value.values():
            found.extend(_walk_gets(inner))
    elif isinstance(value, list):
        for inner in value:
            found.extend(_walk_gets(inner))
    return found


def resolve_text(value: Any, parameters: Mapping[str, Any], execution_id: str = _EXECUTION_ID_PLACEHOLDER) -> str:
    """An argument or environment value as text, with parameters and the execution id filled in.

    Used for measuring here and by the tests' harness to run a definition; it
    understands exactly what the compiler emits: strings, ``Get`` of
    ``Parameters.*`` and ``Execution.PipelineExecutionId``, and ``Std:Join``.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict) and "Get" in value:
        ref = value["Get"]
        if ref == "Execution.PipelineExecutionId":
            return execution_id
        if isinstance(ref, str) and ref.startswith("Parameters."):
            name = ref.split(".", 1)[1]
            if name not in parameters:
                raise KeyError(name)
            return resolve_text(parameters[name], parameters, execution_id)
        raise ValueError(f"unsupported reference {ref!r}")
    if isinstance(value, dict) and "Std:Join" in value:
        join = value["Std:Join"]
        return str(join["On"]).join(resolve_text(v, parameters, execution_id) for v in join["Values"])
    raise ValueError(f"unsupported expression {value!r}")


def _check_parameters(definition: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    declared: dict[str, dict[str, Any]] = {}
    for param in definition.get("Parameters") or []:
        name = param.get("Name", "")
        if not PARAMETER_NAME_RE.match(name):
            raise _fail(
                f"parameter name {name!r} must match {PARAMETER_NAME_RE.pattern} (1-64 letters, digits, '-' or '_')",
                field="Parameters",
            )
        if name in declared:
            raise _fail(f"parameter {name!r} is declared twice", field="Parameters")
        kind = param.get("Type")
        if kind not in PARAMETER_TYPES:
            raise _fail(
                f"parameter {name!r} has type {kind!r}; SageMaker has {', '.join(PARAMETER_TYPES)}", field="Parameters"
            )
        if "DefaultValue" in param:
            default: Any = param["DefaultValue"]
            expected = PARAMETER_TYPES[kind]
            if not isinstance(default, expected) or (kind != "Boolean" and isinstance(default, bool)):
                raise _fail(
                    f"parameter {name!r} of type {kind} has the default {default!r} ({type(default).__name__})",
                    field="Parameters",
                )
            if kind == "String" and len(str(default)) > LIMITS["string_default_chars"]:
                raise _fail(
                    f"parameter {name!r}: its default is {len(str(default))} characters, more than SageMaker's "
                    f"{LIMITS['string_default_chars']}",
                    field="Parameters",
                )
        declared[name] = param
    return declared


def _check_references(step: str, value: Any, declared: Mapping[str, Any], steps: set[str], field: str) -> None:
    for ref in _walk_gets(value):
        if ref.startswith("Parameters."):
            name = ref.split(".", 1)[1]
            if name not in declared:
                raise _fail(
                    f"{field} uses the parameter {name!r}, which the pipeline does not declare "
                    f"(declared: {', '.join(declared) or 'none'})",
                    step=step,
                    field=field,
                )
        elif ref.startswith("Steps."):
            target = ref.split(".", 2)[1]
            if target not in steps:
                raise _fail(f"{field} refers to the unknown step {target!r}", step=step, field=field)
        elif not ref.startswith("Execution."):
            raise _fail(f"{field} has a reference SageMaker does not know: {ref!r}", step=step, field=field)


def _defaults(declared: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    # A required parameter has no default; measure it as empty (its value is checked at submit).
    return {name: p.get("DefaultValue", "") for name, p in declared.items()}


def _check_text_limit(step: str, value: Any, defaults: Mapping[str, Any], limit: int, field: str) -> None:
    try:
        text = resolve_text(value, defaults)
    except (KeyError, ValueError):
        return  # a step property or a function only known at run time: nothing to measure here
    if len(text) > limit:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise _fail(
            f"{field} {shown!r} is {len(text)} characters (with the parameters' defaults); SageMaker allows "
            f"{limit}. Pass large values through the store (a step output), not as a parameter",
            step=step,
            field=field,
        )


def _check_environment(step: str, env: Any, declared: Mapping[str, Mapping[str, Any]]) -> None:
    if not isinstance(env, dict):
        raise _fail("Environment must be a mapping of names to strings", step=step, field="Environment")
    if len(env) > LIMITS["environment_entries"]:
        raise _fail(
            f"Environment has {len(env)} variables; SageMaker allows {LIMITS['environment_entries']}",
            step=step,
            field="Environment",
        )
    defaults = _defaults(declared)
    for key, value in env.items():
        if not ENV_KEY_RE.match(key):
            raise _fail(
                f"environment variable name {key!r} is not valid ({ENV_KEY_RE.pattern})", step=step, field="Environment"
            )
        if isinstance(value, dict) and set(value) == {"Get"} and str(value["Get"]).startswith("Parameters."):
            name = value["Get"].split(".", 1)[1]
            kind = declared.get(name, {}).get("Type")
            if kind != "String":
                raise _fail(
                    f"environment variable {key!r} is the {kind} parameter {name!r}; environment values "
                    "must be strings, so wrap it in Std:Join (the SDK's .to_string())",
                    step=step,
                    field="Environment",
                )
        elif not isinstance(value, str | dict):
            raise _fail(
                f"environment variable {key!r} is {value!r} ({type(value).__name__}); environment values "
                "must be strings",
                step=step,
                field="Environment",
            )
        _check_text_limit(step, value, defaults, LIMITS["environment_value_chars"], f"environment variable {key}")


def flatten(steps: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Every step of a definition, the steps inside ``Condition`` steps' IfSteps and ElseSteps included."""
    out: list[Mapping[str, Any]] = []
    for step in steps:
        out.append(step)
        if step.get("Type") == "Condition":
            args = step.get("Arguments") or {}
            out += flatten([*(args.get("IfSteps") or []), *(args.get("ElseSteps") or [])])
    return out


def _check_condition(step: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]], names: set[str]) -> None:
    """A Condition step as mlpipe emits it: Equals over a JsonGet of a known step's property file."""
    name = step["Name"]
    conditions = (step.get("Arguments") or {}).get("Conditions") or []
    if not conditions:
        raise _fail("the Condition step has no conditions", step=name, field="Conditions")
    for condition in conditions:
        if condition.get("Type") not in CONDITION_TYPES:
            raise _fail(
                f"condition type {condition.get('Type')!r} is not one SageMaker knows", step=name, field="Conditions"
            )
        _check_references(name, condition, declared, names, "Conditions")


def _check_step(step: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]], names: set[str]) -> None:
    name = step["Name"]
    if step.get("Type") == "Condition":
        _check_condition(step, declared, names)
        return
    if step.get("Type") != "Processing":
        raise _fail(f"type {step.get('Type')!r} is not a Processing step", step=name, field="Type")
    args = step.get("Arguments") or {}
    cluster = (args.get("ProcessingResources") or {}).get("ClusterConfig") or {}
    itype = cluster.get("InstanceType")
    if not isinstance(itype, str) or not INSTANCE_TYPE_RE.match(itype):
        raise _fail(
            f"instance type {itype!r} is not a SageMaker instance type (e.g. 'ml.m5.xlarge')",
            step=name,
            field="InstanceType",
        )
    count = cluster.get("InstanceCount")
    if not isinstance(count, int) or not 1 <= count <= LIMITS["instance_count"]:
        raise _fail(f"instance count {count!r} must be 1..{LIMITS['instance_count']}", step=name, field="InstanceCount")
    volume = cluster.get("VolumeSizeInGB")
    if not isinstance(volume, int) or not 1 <= volume <= LIMITS["volume_size_gb"]:
        raise _fail(
            f"volume size {volume!r} GB must be 1..{LIMITS['volume_size_gb']}", step=name, field="VolumeSizeInGB"
        )
    app = args.get("AppSpecification") or {}
    image = app.get("ImageUri")
    if not isinstance(image, str) or not image or len(image) > LIMITS["image_uri_chars"]:
        raise _fail(
            f"image URI {image!r} must be a non-empty string of at most {LIMITS['image_uri_chars']} characters",
            step=name,
            field="ImageUri",
        )
    role = args.get("RoleArn")
    if not isinstance(role, str) or not ROLE_ARN_RE.match(role):
        raise _fail(f"role {role!r} is not an IAM role ARN", step=name, field="RoleArn")
    entrypoint = app.get("ContainerEntrypoint") or []
    if len(entrypoint) > LIMITS["entrypoint_items"]:
        raise _fail(
            f"the entrypoint has {len(entrypoint)} items; SageMaker allows {LIMITS['entrypoint_items']}",
            step=name,
            field="ContainerEntrypoint",
        )
    arguments = app.get("ContainerArguments") or []
    if len(arguments) > LIMITS["arguments"]:
        raise _fail(
            f"the container has {len(arguments)} arguments; SageMaker allows {LIMITS['arguments']} "
            "(too many pipeline parameters?)",
            step=name,
            field="ContainerArguments",
        )
    defaults = _defaults(declared)
    for field, items in (("ContainerEntrypoint", entrypoint), ("ContainerArguments", arguments)):
        for item in items:
            _check_references(name, item, declared, names, field)
            _check_text_limit(name, item, defaults, LIMITS["argument_chars"], "container argument")
    _check_references(name, args.get("Environment") or {}, declared, names, "Environment")
    _check_environment(name, args.get("Environment") or {}, declared)
    stop = args.get("StoppingCondition")
    if stop is not None:
        seconds = stop.get("MaxRuntimeInSeconds")
        if not isinstance(seconds, int) or not 1 <= seconds <= LIMITS["max_runtime_seconds"]:
            raise _fail(
                f"MaxRuntimeInSeconds {seconds!r} must be 1..{LIMITS['max_runtime_seconds']}",
                step=name,
                field="StoppingCondition",
            )
    for policy in step.get("RetryPolicies") or []:
        attempts = policy.get("MaxAttempts")
        if not isinstance(attempts, int) or not 1 <= attempts <= LIMITS["retry_attempts"]:
            raise _fail(
                f"retry MaxAttempts {attempts!r} must be 1..{LIMITS['retry_attempts']}",
                step=name,
                field="RetryPolicies",
            )
        unknown = sorted(set(policy.get("ExceptionType") or []) - RETRY_EXCEPTIONS)
        if unknown or not policy.get("ExceptionType"):
            raise _fail(
                f"retry policy exception types {unknown or '(none)'} are not SageMaker's "
                f"({', '.join(sorted(RETRY_EXCEPTIONS))})",
                step=name,
                field="RetryPolicies",
            )


def validate_definition(definition: Mapping[str, Any], *, pipeline_name: str | None = None) -> None:
    """Check a definition against SageMaker's rules; raise :class:`DefinitionValidationError` on the first problem.

    Checks: the pipeline name (pattern, length), step names
    (``^[A-Za-z0-9_-]{1,64}$``, unique), parameters (names, types, defaults),
    that every reference points at a declared parameter or an existing step,
    ``DependsOn`` (known steps, no cycles), argument and environment lengths
    (measured with the parameters' defaults), environment values being
    strings (a non-String parameter must be wrapped in ``Std:Join``),
    instance type, count, volume, role ARN, image URI, max runtime, retry
    policies and the total size (1 MiB inline).
    """
    if pipeline_name is not None:
        if not PIPELINE_NAME_RE.match(pipeline_name):
            raise _fail(
                f"pipeline name {pipeline_name!r} must be letters, digits and single '-' between them, "
                "starting and ending with a letter or digit; set options.pipeline_name",
                field="PipelineName",
            )
        if len(pipeline_name) > LIMITS["pipeline_name_safe"]:
            raise _fail(
                f"pipeline name {pipeline_name!r} is {len(pipeline_name)} characters; CreatePipeline rejects "
                f"more than {LIMITS['pipeline_name_safe']}; set options.pipeline_name",
                field="PipelineName",
            )
    declared = _check_parameters(definition)
    steps: Sequence[Mapping[str, Any]] = flatten(definition.get("Steps") or [])
    if not steps:
        raise _fail("the pipeline has no steps", field="Steps")
    names: set[str] = set()
    for step in steps:
        name = step.get("Name")
        if not isinstance(name, str) or not STEP_NAME_RE.match(name):
            raise _fail(
                f"step name {name!r} must match {STEP_NAME_RE.pattern} (1-64 letters, digits, '-' or '_'); "
                "rename it with step.with_options(name=...)",
                step=name if isinstance(name, str) else None,
                field="Name",
            )
        if name in names:
            raise _fail("the step name is used twice", step=name, field="Name")
        names.add(name)
    graph: dict[str, list[str]] = {}
    for step in steps:
        name = step["Name"]
        depends = list(step.get("DependsOn") or [])
        for dep in depends:
            if dep not in names:
                raise _fail(f"DependsOn names the unknown step {dep!r}", step=name, field="DependsOn")
            if dep == name:
                raise _fail("the step depends on itself", step=name, field="DependsOn")
        graph[name] = depends
        _check_step(step, declared, names)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        cycle = list(exc.args[1])
        raise _fail(
            f"the steps form a cycle: {' -> '.join(reversed(cycle))}", step=cycle[0], field="DependsOn"
        ) from None
    size = len(json.dumps(definition).encode())
    if size > LIMITS["definition_bytes"]:
        raise _fail(
            f"the definition is {size} bytes; CreatePipeline takes at most {LIMITS['definition_bytes']} "
            "inline (fewer parameters or steps)",
            field="PipelineDefinition",
        )
