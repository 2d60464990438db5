"""From ``mp.Resources`` to a SageMaker Processing instance type.

The table lists the general-purpose (m5), compute (c5), memory (r5) and GPU
(g4dn, g5, p3) families that Processing jobs accept, ordered by on-demand
price (EC2 list prices in us-east-1, which SageMaker's per-family prices
follow). A step gets the cheapest instance that has at least the cores,
memory and GPUs it asks for; ``accelerator=`` narrows the GPU family. What
must not live here: anything about the definition's JSON (see
:mod:`mlpipe_sagemaker.compiler`).

Precedence, strongest first: the profile's ``instance_types`` entry for the
step, the step's ``Resources(instance_type=...)``, the mapping below, and for
a step that asks for nothing the profile's ``default_instance_type``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlpipe.errors import UnsupportedFeatureError

__all__ = ["INSTANCE_TABLE", "Instance", "choose_instance_type", "check_instance_type"]

INSTANCE_TYPE_RE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
_GIB = 1024**3


@dataclass(frozen=True)
class Instance:
    """One row of the mapping table."""

    type: str
    vcpu: int
    memory_gib: float
    gpu: int = 0
    accelerator: str | None = None
    usd_per_hour: float = 0.0  # only used to order the table; see the module docstring


_T4, _A10G, _V100 = "nvidia-tesla-t4", "nvidia-a10g", "nvidia-tesla-v100"

INSTANCE_TABLE: tuple[Instance, ...] = tuple(
    sorted(
        (
            Instance("ml.c5.large", 2, 4, usd_per_hour=0.085),
            Instance("ml.m5.large", 2, 8, usd_per_hour=0.096),
            Instance("ml.r5.large", 2, 16, usd_per_hour=0.126),
            Instance("ml.c5.xlarge", 4, 8, usd_per_hour=0.17),
            Instance("ml.m5.xlarge", 4, 16, usd_per_hour=0.192),
            Instance("ml.r5.xlarge", 4, 32, usd_per_hour=0.252),
            Instance("ml.c5.2xlarge", 8, 16, usd_per_hour=0.34),
            Instance("ml.m5.2xlarge", 8, 32, usd_per_hour=0.384),
            Instance("ml.r5.2xlarge", 8, 64, usd_per_hour=0.504),
            Instance("ml.c5.4xlarge", 16, 32, usd_per_hour=0.68),
            Instance("ml.m5.4xlarge", 16, 64, usd_per_hour=0.768),
            Instance("ml.r5.4xlarge", 16, 128, usd_per_hour=1.008),
            Instance("ml.c5.9xlarge", 36, 72, usd_per_hour=1.53),
            Instance("ml.m5.12xlarge", 48, 192, usd_per_hour=2.304),
            Instance("ml.r5.12xlarge", 48, 384, usd_per_hour=3.024),
            Instance("ml.c5.18xlarge", 72, 144, usd_per_hour=3.06),
            Instance("ml.m5.24xlarge", 96, 384, usd_per_hour=4.608),
            Instance("ml.r5.24xlarge", 96, 768, usd_per_hour=6.048),
            Instance("ml.g4dn.xlarge", 4, 16, 1, _T4, 0.526),
            Instance("ml.g4dn.2xlarge", 8, 32, 1, _T4, 0.752),
            Instance("ml.g5.xlarge", 4, 16, 1, _A10G, 1.006),
            Instance("ml.g4dn.4xlarge", 16, 64, 1, _T4, 1.204),
            Instance("ml.g5.2xlarge", 8, 32, 1, _A10G, 1.212),
            Instance("ml.g5.4xlarge", 16, 64, 1, _A10G, 1.624),
            Instance("ml.g4dn.8xlarge", 32, 128, 1, _T4, 2.176),
            Instance("ml.g5.8xlarge", 32, 128, 1, _A10G, 2.448),
            Instance("ml.p3.2xlarge", 8, 61, 1, _V100, 3.06),
            Instance("ml.g4dn.12xlarge", 48, 192, 4, _T4, 3.912),
            Instance("ml.g5.12xlarge", 48, 192, 4, _A10G, 5.672),
            Instance("ml.g5.24xlarge", 96, 384, 4, _A10G, 8.144),
            Instance("ml.p3.8xlarge", 32, 244, 4, _V100, 12.24),
            Instance("ml.g5.48xlarge", 192, 768, 8, _A10G, 16.288),
            Instance("ml.p3.16xlarge", 64, 488, 8, _V100, 24.48),
        ),
        key=lambda i: (i.usd_per_hour, i.type),
    )
)
ACCELERATORS = tuple(sorted({i.accelerator for i in INSTANCE_TABLE if i.accelerator}))


def check_instance_type(value: str, *, step: str | None = None, where: str = "instance type") -> str:
    """``value`` if it looks like a SageMaker instance type (``ml.m5.xlarge``), else a clear error."""
    if not INSTANCE_TYPE_RE.match(value):
        hint = f"; did you mean 'ml.{value}'?" if INSTANCE_TYPE_RE.match(f"ml.{value}") else ""
        target = f"step {step!r}: " if step else ""
        raise UnsupportedFeatureError(
            f"{target}{where} {value!r} is not a SageMaker instance type (expected the form 'ml.m5.xlarge'){hint}",
            backend="sagemaker",
            step=step,
        )
    return value


def choose_instance_type(
    step: str,
    resources: Mapping[str, Any],
    *,
    default: str = "ml.m5.large",
    overrides: Mapping[str, str] | None = None,
) -> str:
    """The instance type for one step (see the module docstring for the precedence).

    Raises:
        UnsupportedFeatureError: no instance in the table is big enough, or the
            accelerator is unknown; the message lists what would work.
    """
    if overrides and step in overrides:
        return check_instance_type(overrides[step], step=step, where="profile option instance_types")
    explicit = resources.get("instance_type")
    if explicit:
        return check_instance_type(str(explicit), step=step, where="Resources(instance_type=...)")
    cpu = resources.get("cpu")
    memory = resources.get("memory")
    gpu = int(resources.get("gpu") or 0)
    accelerator = resources.get("accelerator")
    if cpu is None and memory is None and not gpu:
        return check_instance_type(default, step=step, where="profile option default_instance_type")
    if accelerator is not None and accelerator not in ACCELERATORS:
        raise UnsupportedFeatureError(
            f"step {step!r}: accelerator {accelerator!r} has no SageMaker instance in mlpipe's table "
            f"(known: {', '.join(ACCELERATORS)}); name one with Resources(instance_type='ml.…')",
            backend="sagemaker",
            step=step,
        )
    need_memory = _memory_gib(memory) if memory is not None else 0.0
    for inst in INSTANCE_TABLE:
        if gpu and (inst.gpu < gpu or (accelerator is not None and inst.accelerator != accelerator)):
            continue
        if not gpu and inst.gpu:
            continue
        if inst.vcpu >= float(cpu or 0) and inst.memory_gib >= need_memory:
            return inst.type
    asked = ", ".join(f"{k}={resources[k]!r}" for k in ("cpu", "memory", "gpu", "accelerator") if resources.get(k))
    raise UnsupportedFeatureError(
        f"step {step!r}: no SageMaker instance in mlpipe's table fits Resources({asked}); the largest are "
        "ml.r5.24xlarge (96 vCPU, 768 GiB) and ml.p3.16xlarge (8 GPUs). Ask for less, or name an instance with "
        "Resources(instance_type='ml.…')",
        backend="sagemaker",
        step=step,
    )


def _memory_gib(memory: Any) -> float:
    from mlpipe.extend import memory_bytes

    return memory_bytes(str(memory)) / _GIB
