"""Names and sizes KFP accepts: DNS-1123 task names, pipeline names, the parameter budget.

kfp sanitises names itself but renames collisions silently (``train-model``,
``train-model-2``) and never truncates; mlpipe sanitises with the same rule,
refuses collisions and over-long names, and keeps the original step name as
the task's display name. Pure functions, no kfp import.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from mlpipe.errors import UnsupportedFeatureError

__all__ = ["MAX_NAME", "check_parameter_budget", "k8s_name", "pipeline_name", "task_names"]

BACKEND = "kubeflow"
MAX_NAME = 63  # a DNS-1123 label; KFP puts task names into pod labels
ARG_MAX_BYTES = 131_072  # Linux MAX_ARG_STRLEN: the longest single argv element
_PIPELINE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")


def k8s_name(name: str) -> str:
    """The name kfp gives a component or task (``kfp.dsl.utils.maybe_rename_for_k8s``), without its fallback."""
    return re.sub("-+", "-", re.sub("[^-0-9a-z]+", "-", name.lower())).strip("-")


def task_names(steps: Iterable[str]) -> dict[str, str]:
    """Step name → KFP task name.

    Raises:
        UnsupportedFeatureError: a name has no usable characters, is too long, or
            two steps sanitise to the same task name.
    """
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    for step in steps:
        name = k8s_name(step)
        if not name:
            raise UnsupportedFeatureError(
                f"step {step!r}: its name has no letters or digits KFP can use in a task name; "
                "rename it with step.with_options(name=...)",
                backend=BACKEND,
                step=step,
                option="name",
            )
        if len(name) > MAX_NAME:
            raise UnsupportedFeatureError(
                f"step {step!r}: its KFP task name {name!r} has {len(name)} characters, more than the "
                f"{MAX_NAME} of a Kubernetes label; give it a shorter name with step.with_options(name=...)",
                backend=BACKEND,
                step=step,
                option="name",
            )
        if name in owner:
            raise UnsupportedFeatureError(
                f"steps {owner[name]!r} and {step!r} both become the KFP task {name!r} (KFP names are lower-case "
                "letters, digits and '-'); rename one with step.with_options(name=...)",
                backend=BACKEND,
                step=step,
                option="name",
            )
        owner[name] = step
        out[step] = name
    return out


def pipeline_name(name: str) -> str:
    """The KFP pipeline name for an mlpipe pipeline name.

    Raises:
        UnsupportedFeatureError: nothing valid is left after sanitising.
    """
    sanitised = k8s_name(name)
    if not _PIPELINE_NAME.match(sanitised):
        raise UnsupportedFeatureError(
            f"pipeline {name!r}: KFP needs a pipeline name of 1 to 128 lower-case letters, digits and '-' "
            f"(got {sanitised!r} after sanitising); name it with @mp.pipeline(name=...)",
            backend=BACKEND,
            pipeline=name,
            option="name",
        )
    return sanitised


def check_parameter_budget(pipeline: str, values: Mapping[str, Any], budget: int, what: str) -> None:
    """Refuse parameters whose JSON together exceeds what KFP's API server accepts.

    Raises:
        UnsupportedFeatureError: names the largest parameter and the way out.
    """
    sizes = {name: len(json.dumps(value, separators=(",", ":"))) for name, value in values.items()}
    for name, value in values.items():
        # Each value becomes one container argument (--param name=value): Linux caps one argument at 128 KiB,
        # whatever the API server allows.
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        size = len(f"{name}={text}".encode())
        if size > ARG_MAX_BYTES:
            raise UnsupportedFeatureError(
                f"pipeline {pipeline!r}: parameter {name!r} takes {size:,} bytes as a task argument; each "
                f"parameter reaches its task as one command-line argument, which Linux limits to "
                f"{ARG_MAX_BYTES:,} bytes. Pass large data as a step output instead (a step that loads or builds it)",
                backend=BACKEND,
                pipeline=pipeline,
                option="max_parameter_bytes",
                argument=name,
            )
    total = len(json.dumps(dict(values), separators=(",", ":")))
    if total <= budget:
        return
    largest = max(sizes, key=lambda n: sizes[n])
    raise UnsupportedFeatureError(
        f"pipeline {pipeline!r}: the {what} take {total:,} bytes of JSON, over KFP's parameter budget of "
        f"{budget:,} bytes (the largest is {largest!r} with {sizes[largest]:,}). KFP passes parameters through its "
        "API server and Kubernetes objects; pass large data as a step output instead (a step that loads or builds "
        "it), or raise max_parameter_bytes in the profile if your server's MAX_PARAMETER_BYTES allows more",
        backend=BACKEND,
        pipeline=pipeline,
        option="max_parameter_bytes",
        argument=largest,
    )
