"""What Vertex AI accepts, checked on this machine: job ids, labels, regions, accelerators, machine ceilings.

Pure functions and constants, no google-cloud import. The lists mirror
google-cloud-aiplatform 2.7 (``constants/base.py`` regions, the
``AcceleratorType`` enum); a test compares them with the installed package, so
a newer release that adds a region or accelerator fails loudly instead of
being refused here. Everything the service decides on its own (quota, which
machine type a set of limits becomes, IAM) stays unverified until a job runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from mlpipe.errors import UnsupportedFeatureError

__all__ = [
    "ACCELERATORS",
    "BACKEND",
    "MAX_ACCELERATORS",
    "MAX_CPU",
    "MAX_JOB_ID",
    "MAX_MEMORY_BYTES",
    "REGIONS",
    "accelerator_type",
    "check_labels",
    "check_region",
    "job_id",
    "label_value",
]

BACKEND = "vertex"
MAX_JOB_ID = 128
_JOB_ID = re.compile(r"^[a-z][-a-z0-9]{0,127}$")

# google-cloud-aiplatform 2.7.0, google/cloud/aiplatform/constants/base.py SUPPORTED_REGIONS, without "global"
# (a pipeline job runs in one region).
REGIONS = frozenset(
    {
        "africa-south1",
        "asia-east1",
        "asia-east2",
        "asia-northeast1",
        "asia-northeast2",
        "asia-northeast3",
        "asia-south1",
        "asia-south2",
        "asia-southeast1",
        "asia-southeast2",
        "australia-southeast1",
        "australia-southeast2",
        "europe-central2",
        "europe-north1",
        "europe-north2",
        "europe-southwest1",
        "europe-west1",
        "europe-west2",
        "europe-west3",
        "europe-west4",
        "europe-west6",
        "europe-west8",
        "europe-west9",
        "europe-west12",
        "me-central1",
        "me-central2",
        "me-west1",
        "northamerica-northeast1",
        "northamerica-northeast2",
        "southamerica-east1",
        "southamerica-west1",
        "us-central1",
        "us-east1",
        "us-east4",
        "us-east5",
        "us-east7",
        "us-south1",
        "us-west1",
        "us-west2",
        "us-west3",
        "us-west4",
        "us-west8",
    }
)

# google.cloud.aiplatform_v1.AcceleratorType (2.7.0), without UNSPECIFIED.
ACCELERATORS = frozenset(
    {
        "NVIDIA_TESLA_K80",
        "NVIDIA_TESLA_P100",
        "NVIDIA_TESLA_V100",
        "NVIDIA_TESLA_P4",
        "NVIDIA_TESLA_T4",
        "NVIDIA_TESLA_A100",
        "NVIDIA_A100_80GB",
        "NVIDIA_L4",
        "NVIDIA_H100_80GB",
        "NVIDIA_H100_MEGA_80GB",
        "NVIDIA_H200_141GB",
        "NVIDIA_B200",
        "NVIDIA_GB200",
        "NVIDIA_RTX_PRO_6000",
        "TPU_V2",
        "TPU_V3",
        "TPU_V4_POD",
        "TPU_V5_LITEPOD",
    }
)
# The largest machines Vertex Pipelines picks from for a container task
# (cloud.google.com/vertex-ai/docs/pipelines/machine-types): 96 vCPUs, 624 GB;
# A2 machines carry up to 16 A100s, the other GPU machine families up to 8.
MAX_CPU = 96.0
MAX_MEMORY_BYTES = 624 * 10**9
MAX_ACCELERATORS: Mapping[str, int] = {"NVIDIA_TESLA_A100": 16}
DEFAULT_MAX_ACCELERATORS = 8
_MAX_LABELS = 64
_RESERVED_LABELS = frozenset({"vertex-ai-pipelines-run-billing-id"})
_LABEL_MAX = 63


def check_region(location: str) -> None:
    """Refuse a location that is not a Vertex AI region.

    Raises:
        ValueError: names the closest spelling when there is one.
    """
    if location in REGIONS:
        return
    close = sorted(r for r in REGIONS if r.split("-")[0] == location.split("-", maxsplit=1)[0])[:6]
    hint = f"; {location.split('-', maxsplit=1)[0]}-* regions: {', '.join(close)}" if close else ""
    raise ValueError(
        f"{location!r} is not a Vertex AI Pipelines region (a region such as 'us-central1' or "
        f"'europe-west4', not a zone or multi-region){hint}"
    )


def _label_chars_ok(text: str) -> bool:
    # Lower-case letters, digits, '_' and '-'; international letters without case are allowed too.
    return all(ch.isdigit() or ch in "-_" or (ch.isalpha() and not ch.isupper()) for ch in text)


def check_labels(labels: Mapping[str, str]) -> None:
    """Refuse labels Vertex would reject: syntax, length, count, reserved keys.

    Raises:
        ValueError: names the label and the rule.
    """
    if len(labels) > _MAX_LABELS:
        raise ValueError(f"{len(labels)} labels; Vertex allows at most {_MAX_LABELS} per job")
    for key, value in labels.items():
        if not isinstance(value, str):
            raise ValueError(f"label {key!r}: the value must be a string, got {type(value).__name__}")
        if key in _RESERVED_LABELS:
            raise ValueError(f"label {key!r} is reserved by Vertex AI Pipelines (it overwrites it)")
        if not key or len(key) > _LABEL_MAX or not (key[0].isalpha() and not key[0].isupper()):
            raise ValueError(f"label key {key!r}: 1 to {_LABEL_MAX} characters, starting with a lower-case letter")
        if len(value) > _LABEL_MAX:
            raise ValueError(f"label {key!r}: the value has {len(value)} characters, more than {_LABEL_MAX}")
        for text in (key, value):
            if not _label_chars_ok(text):
                raise ValueError(f"label {key}={value!r}: only lower-case letters, digits, '_' and '-' are allowed")


def label_value(text: str) -> str:
    """Any text as a valid label value (lower-cased, other characters as '-', at most 63)."""
    out = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-")
    return out[:_LABEL_MAX].rstrip("-")


def job_id(pipeline: str, run_id: str) -> str:
    """The PipelineJob id for a run: ``<pipeline>-<run id>``, lower-case, starting with a letter, at most 128.

    The pipeline part is shortened (never the run part, which makes it unique)
    and prefixed with ``mlpipe-`` when the name does not start with a letter,
    so any pipeline name gives a valid id.

    Raises:
        UnsupportedFeatureError: the run id itself cannot be part of a job id
            (it is created by mlpipe, so this is a bug, not a user error).
    """
    run = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", run_id.lower())).strip("-")
    base = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", pipeline.lower())).strip("-")
    if not base[:1].isalpha():
        base = f"mlpipe-{base}".rstrip("-")
    room = MAX_JOB_ID - len(run) - 1
    base = base[: max(room, 0)].rstrip("-")
    candidate = f"{base}-{run}" if base else run
    if not _JOB_ID.match(candidate):
        raise UnsupportedFeatureError(
            f"pipeline {pipeline!r}: run id {run_id!r} gives the job id {candidate!r}, which Vertex refuses "
            f"(lower-case letters, digits and '-', starting with a letter, at most {MAX_JOB_ID})",
            backend=BACKEND,
            pipeline=pipeline,
            option="run_id",
        )
    return candidate


def accelerator_type(step: str, accelerator: str | None, default: str) -> str:
    """The Vertex accelerator enum name for ``Resources(accelerator=...)`` (``nvidia-tesla-t4`` → ``NVIDIA_TESLA_T4``).

    Raises:
        UnsupportedFeatureError: the type is not one Vertex knows; lists them.
    """
    name = (accelerator or default).strip().upper().replace("-", "_")
    if name not in ACCELERATORS:
        raise UnsupportedFeatureError(
            f"step {step!r}: accelerator {accelerator or default!r} is not a Vertex accelerator type; "
            f"use one of {', '.join(sorted(ACCELERATORS))} (case and '-'/'_' do not matter)",
            backend=BACKEND,
            step=step,
            option="resources.accelerator",
        )
    return name
