"""The options of the Kubeflow backend: what a profile's ``options`` table may say.

Only validation lives here (pydantic, unknown keys rejected by
:class:`~mlpipe.backend.BackendOptions`); nothing imports kfp. How each option
reaches the compiled spec is the compiler's business, how it reaches the API
server the client's.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from mlpipe.extend import BackendOptions

__all__ = ["KubeflowOptions", "StepOverrides", "Toleration"]

# Kubernetes environment variable names (C_IDENTIFIER is what most images expect; k8s itself allows dots and dashes).
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
# A label key: optional DNS subdomain prefix, then a name of at most 63 characters.
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_CRON_FIELDS = (5, 6)


def _env_names(value: dict[str, str]) -> dict[str, str]:
    bad = [k for k in value if not ENV_NAME.match(k)]
    if bad:
        raise ValueError(f"invalid environment variable name(s) {bad}")
    return value


def _secret_env_names(value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    for secret, mapping in value.items():
        bad = [env for env in mapping.values() if not ENV_NAME.match(env)]
        if bad:
            raise ValueError(f"secret {secret!r}: invalid environment variable name(s) {bad}")
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    for key, label in value.items():
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(label):
            raise ValueError(f"{key}={label!r} is not a valid Kubernetes label")
    return value


EnvVars = Annotated[dict[str, str], AfterValidator(_env_names)]
SecretsAsEnv = Annotated[dict[str, dict[str, str]], AfterValidator(_secret_env_names)]
NodeLabels = Annotated[dict[str, str], AfterValidator(_labels)]


class Toleration(BaseModel):
    """A Kubernetes toleration added to every task's pod."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


class StepOverrides(BaseModel):
    """Per-step additions from the profile (``options.steps.<step name>``), on top of the options for every task.

    Attributes:
        env: Environment variables; they win over the step's own ``env=`` and the profile's ``env``.
        secrets_as_env: ``{secret_name: {secret_key: ENV_VAR}}`` for this step only.
        node_selector: Node labels for this step only (for example a GPU pool).
        tolerations: Tolerations for this step only.
        parallelism: For a mapped step (``step.map``), most items running at once
            (the ParallelFor's ``parallelismLimit``); default ``map_parallelism``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: EnvVars = Field(default_factory=dict)
    secrets_as_env: SecretsAsEnv = Field(default_factory=dict)
    node_selector: NodeLabels = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    parallelism: int | None = Field(default=None, ge=1)


class KubeflowOptions(BackendOptions):
    """Options of the ``kubeflow`` backend (the profile's ``options`` table).

    Attributes:
        mode: ``"cluster"`` submits to a KFP API server with ``kfp.Client``;
            ``"local"`` executes the compiled spec on this machine with
            ``kfp.local`` (no Docker, no cluster), so you test exactly what you
            will submit.
        host: KFP API endpoint, e.g. ``"https://kfp.example.com/pipeline"``.
            ``None`` lets ``kfp.Client`` find it (``KF_PIPELINES_ENDPOINT``, in-cluster config).
        namespace: Kubernetes namespace of a multi-user deployment.
        existing_token: Bearer token for a protected deployment (``kfp.Client(existing_token=...)``), e.g. an
            OIDC id token behind Istio/Dex. Prefer ``existing_token_env`` to keep it out of mlpipe.toml.
        existing_token_env: Name of an environment variable holding that token (read when submitting).
        cookies: Cookie header sent with every request (``"authservice_session=..."``), for Dex session auth.
        ssl_ca_cert: Path of a CA bundle for an ``https://`` host signed by a private CA.
        experiment: Experiment the runs are filed under (created when missing).
        run_name: Display name of submitted runs; ``{pipeline}`` and ``{run_id}``
            are filled in.
        service_account: Kubernetes service account the run's pods use.
        pipeline_root: KFP's pipeline root (where KFP keeps its own artifacts; mlpipe's data stays in the store).
        caching: KFP's own task caching. Off by default: mlpipe's cache is keyed
            on the code the step reaches as well as its inputs, which KFP's is not,
            so a KFP cache hit could serve a result computed by older code.
        env: Environment variables set in every task.
        secrets_as_env: ``{secret_name: {secret_key: ENV_VAR}}`` for every task.
        node_selector: Node labels every task's pod must match.
        tolerations: Tolerations added to every task's pod.
        steps: Per-step additions, by step name: ``{train = {node_selector = {pool = "gpu"}}}``
            (see :class:`StepOverrides`).
        image_pull_policy: ``Always``, ``IfNotPresent`` or ``Never``.
        image_pull_secrets: Names of secrets used to pull the step images.
        retry_backoff: First delay between KFP retries of a task (``"30s"``); doubles each time.
        retry_backoff_max: Longest delay between KFP retries of a task.
        gpu_resource: The extended resource that counts accelerators (``nvidia.com/gpu``, ``amd.com/gpu``).
        accelerator_label: Node label that ``Resources(accelerator=...)`` selects on.
        schedule: A cron expression; submitting creates a recurring run instead
            of a single one. Five fields (minute first) or KFP's six (seconds first).
        schedule_max_concurrency: Most scheduled runs at once.
        schedule_catchup: Whether missed scheduled runs are started later.
        max_parameter_bytes: Budget for the JSON of all run parameters together;
            KFP's API server refuses more than 10,000 bytes by default
            (``MAX_PARAMETER_BYTES`` on the server raises it).
        wait_timeout: Seconds ``run()`` waits for a cluster run before giving up (``None``: no limit).
        pod_startup_seconds: Added to a step's ``timeout`` (times its attempts) for the
            pod's deadline, to cover image pull and start-up.
        shared_filesystem: Submit with a store that is a path on this machine, because
            the cluster's pods mount the same filesystem at the same path (NFS, a
            shared volume). Off by default: normally a path store means the pods
            cannot see the data, and submitting is refused.
        map_parallelism: Most items of a mapped step running at once (the
            ParallelFor's ``parallelismLimit``), unless the step's entry in ``steps`` says.
    """

    mode: Literal["cluster", "local"] = "cluster"
    host: str | None = None
    namespace: str | None = None
    existing_token: str | None = Field(default=None, repr=False)
    existing_token_env: str | None = None
    cookies: str | None = Field(default=None, repr=False)
    ssl_ca_cert: str | None = None
    experiment: str = "mlpipe"
    run_name: str = "{pipeline}-{run_id}"
    service_account: str | None = None
    pipeline_root: str | None = None
    caching: bool = False
    env: EnvVars = Field(default_factory=dict)
    secrets_as_env: SecretsAsEnv = Field(default_factory=dict)
    node_selector: NodeLabels = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    steps: dict[str, StepOverrides] = Field(default_factory=dict)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    image_pull_secrets: list[str] = Field(default_factory=list)
    retry_backoff: str = "30s"
    retry_backoff_max: str = "3600s"
    gpu_resource: str = "nvidia.com/gpu"
    accelerator_label: str = "cloud.google.com/gke-accelerator"
    schedule: str | None = None
    schedule_max_concurrency: int = Field(default=1, ge=1)
    schedule_catchup: bool = False
    max_parameter_bytes: int = Field(default=10_000, gt=0)
    wait_timeout: float | None = Field(default=None, gt=0)
    pod_startup_seconds: int = Field(default=300, ge=0)
    shared_filesystem: bool = False
    map_parallelism: int = Field(default=10, ge=1)

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, value: str) -> str:
        try:
            value.format(pipeline="p", run_id="r")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"run_name may use {{pipeline}} and {{run_id}} only: {exc!r}") from None
        return value

    @field_validator("retry_backoff", "retry_backoff_max")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not re.fullmatch(r"\d+s", value):
            raise ValueError(f"expected whole seconds such as '30s', got {value!r}")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        fields = value.split()
        if len(fields) not in _CRON_FIELDS:
            raise ValueError(f"expected a cron expression of 5 or 6 fields, got {value!r}")
        return " ".join(fields)

    @property
    def kfp_cron(self) -> str | None:
        """The schedule in KFP's six-field form (seconds first)."""
        if self.schedule is None:
            return None
        fields = self.schedule.split()
        return " ".join(["0", *fields]) if len(fields) == 5 else self.schedule
