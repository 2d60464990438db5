"""The profile ``options`` of the SageMaker backend, validated (unknown keys are rejected)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from mlpipe.extend import BackendOptions

__all__ = ["ROLE_ARN_RE", "SageMakerOptions"]

ROLE_ARN_RE = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")


class SageMakerOptions(BackendOptions):
    """Options of the ``sagemaker`` backend (``options = {...}`` in a profile).

    Attributes:
        role: The execution role ARN the pipeline and its Processing jobs run as
            (needed to compile and submit).
        region: AWS region; default: boto3's (``AWS_DEFAULT_REGION``, ``~/.aws/config``).
        pipeline_name: SageMaker pipeline name; default: the mlpipe pipeline name
            with every character outside ``[A-Za-z0-9-]`` turned into ``-``.
        default_instance_type: Instance for steps that ask for no resources.
        instance_types: Step name → instance type, overriding everything else.
        volume_size_gb: EBS volume attached to each Processing job.
        python: The interpreter in the image that runs ``-m mlpipe.runtime``.
        environment: Extra environment variables for every step (a step's own
            ``env=`` wins).
        tags: Tags put on the SageMaker pipeline.
        max_parallel_steps: At most this many steps of one execution run at once.
        schedule_role: Role EventBridge Scheduler assumes to start the pipeline
            (needs ``sagemaker:StartPipelineExecution``); default: ``role``.
        endpoint_url: Override the AWS endpoint for SageMaker and Scheduler calls
            (emulators, VPC endpoints).
    """

    role: str | None = None
    region: str | None = None
    pipeline_name: str | None = None
    default_instance_type: str = "ml.m5.large"
    instance_types: dict[str, str] = Field(default_factory=dict)
    volume_size_gb: int = Field(default=30, ge=1, le=16384)
    python: str = "python"
    environment: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    max_parallel_steps: int | None = Field(default=None, ge=1)
    schedule_role: str | None = None
    endpoint_url: str | None = None

    @field_validator("role", "schedule_role")
    @classmethod
    def _role_arn(cls, value: str | None) -> str | None:
        if value is not None and not ROLE_ARN_RE.match(value):
            raise ValueError(
                f"{value!r} is not an IAM role ARN; give the full ARN, "
                "e.g. 'arn:aws:iam::123456789012:role/SageMakerRole' (a bare name would need an IAM call)"
            )
        return value
