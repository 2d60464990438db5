"""The options of the Vertex backend: what a profile's ``options`` table may say.

Only validation lives here (pydantic, unknown keys rejected by
:class:`~mlpipe.extend.BackendOptions`); the rules themselves (regions,
labels, resource names) are in ``naming.py`` so the compiler and the tests
use the same ones. Nothing here imports google-cloud-aiplatform.
"""

from __future__ import annotations

import re
from typing import Literal

from mlpipe_kubeflow.options import ENV_NAME
from pydantic import Field, field_validator, model_validator

from mlpipe.extend import BackendOptions
from mlpipe_vertex.naming import check_labels, check_region

__all__ = ["VertexOptions"]

_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_SERVICE_ACCOUNT = re.compile(r"^[a-z0-9][-a-z0-9._]*@[-a-z0-9.]+\.[a-z]+$")
_NETWORK = re.compile(r"^projects/\d+/global/networks/[a-z]([-a-z0-9]*[a-z0-9])?$")
_KMS_KEY = re.compile(r"^projects/[^/]+/locations/([^/]+)/keyRings/[^/]+/cryptoKeys/[^/]+$")
_CRON_FIELDS = 5


class VertexOptions(BackendOptions):
    """Options of the ``vertex`` backend (the profile's ``options`` table).

    Attributes:
        mode: ``"vertex"`` submits a PipelineJob to Vertex AI; ``"local"``
            executes the same compiled spec on this machine with kfp.local
            (through the Kubeflow backend's adapter), so you test exactly the
            spec you submit, against the same ``gs://`` store.
        project: Google Cloud project id that owns the jobs (required to submit).
        location: Vertex region of the jobs, e.g. ``"europe-west4"``. The
            store's bucket must be in this region (Vertex refuses others).
        service_account: Email of the service account the tasks run as
            (``None``: the project's Compute Engine default service account).
        network: VPC to peer with, ``projects/<project number>/global/networks/<name>``.
        labels: Labels on every job (lower-case keys and values, at most 63 characters).
            mlpipe adds ``mlpipe-pipeline``, and ``mlpipe-run`` on single jobs.
        encryption_spec_key_name: Cloud KMS key (CMEK) that protects the job
            and its sub-resources; it must be in ``location``.
        pipeline_root: ``gs://`` URI where Vertex keeps its own task outputs
            (mlpipe's data stays in the store). Default: ``<store>/vertex``.
        display_name: Display name of the jobs; ``{pipeline}`` and ``{run_id}`` are filled in.
        caching: Vertex's own per-task caching. Off by default: mlpipe's cache
            (in the store) is keyed on the code a step reaches, Vertex's is not.
            Set per task in the spec, never as a job-wide override.
        failure_policy: ``"slow"`` (Vertex's default: independent tasks go on
            after a failure) or ``"fast"`` (no new tasks after one fails).
        env: Environment variables set in every task.
        retry_backoff: First delay before Vertex retries a failed task of a step with
            ``retries`` (``"30s"``); it doubles each time.
        retry_backoff_max: Longest delay between two of those retries.
        schedule: A five-field cron expression; submitting creates a Vertex
            schedule instead of one job.
        schedule_timezone: IANA time zone of the schedule, e.g. ``"Europe/Berlin"`` (default UTC).
        schedule_max_concurrency: Most scheduled jobs running at once.
        schedule_max_runs: Stop the schedule after this many jobs (``None``: never).
        schedule_allow_queueing: Queue a scheduled job when the concurrency limit is reached
            (instead of skipping it).
        api_endpoint: The Vertex API endpoint; default ``<location>-aiplatform.googleapis.com``.
            ``http://127.0.0.1:PORT`` talks to a local fake (REST transport only).
        transport: ``"rest"`` (the tested path) or ``"grpc"``.
        credentials: ``"default"`` uses Application Default Credentials;
            ``"anonymous"`` sends none (for a local fake or emulator only).
        max_parameter_bytes: Budget for the JSON of all run parameters together.
        wait_timeout: Seconds ``run()`` waits for a job before giving up (``None``: no limit).
        poll_interval: Longest pause between two state requests while waiting
            (Vertex allows 600 resource requests a minute per project and region).
        map_parallelism: Most items of a mapped step (``step.map``) running at once,
            the ParallelFor's ``parallelismLimit``.
    """

    mode: Literal["vertex", "local"] = "vertex"
    project: str | None = None
    location: str = "us-central1"
    service_account: str | None = None
    network: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    encryption_spec_key_name: str | None = None
    pipeline_root: str | None = None
    display_name: str = "{pipeline}"
    caching: bool = False
    failure_policy: Literal["slow", "fast"] = "slow"
    env: dict[str, str] = Field(default_factory=dict)
    retry_backoff: str = "30s"
    retry_backoff_max: str = "3600s"
    schedule: str | None = None
    schedule_timezone: str | None = None
    schedule_max_concurrency: int = Field(default=1, ge=1)
    schedule_max_runs: int | None = Field(default=None, ge=1)
    schedule_allow_queueing: bool = False
    api_endpoint: str | None = None
    transport: Literal["rest", "grpc"] = "rest"
    credentials: Literal["default", "anonymous"] = "default"
    max_parameter_bytes: int = Field(default=1_000_000, gt=0)
    wait_timeout: float | None = Field(default=None, gt=0)
    poll_interval: float = Field(default=10.0, gt=0)
    map_parallelism: int = Field(default=10, ge=1)

    @field_validator("retry_backoff", "retry_backoff_max")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not re.fullmatch(r"\d+s", value):
            raise ValueError(f"{value!r}: give whole seconds, such as '30s'")
        return value

    @field_validator("project")
    @classmethod
    def _project(cls, value: str | None) -> str | None:
        if value is not None and not _PROJECT.match(value):
            raise ValueError(
                f"{value!r} is not a Google Cloud project id (6 to 30 lower-case letters, digits and "
                "'-', starting with a letter); use the id, not the display name or number"
            )
        return value

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        check_region(value)
        return value

    @field_validator("service_account")
    @classmethod
    def _service_account(cls, value: str | None) -> str | None:
        if value is not None and not _SERVICE_ACCOUNT.match(value):
            raise ValueError(f"{value!r} is not a service account email (name@project.iam.gserviceaccount.com)")
        return value

    @field_validator("network")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        if value is not None and not _NETWORK.match(value):
            raise ValueError(f"{value!r}: expected projects/<project number>/global/networks/<name>")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        check_labels(value)
        return value

    @field_validator("pipeline_root")
    @classmethod
    def _root(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"gs://[a-z0-9][-a-z0-9_.]{1,221}[a-z0-9](/.*)?", value):
            raise ValueError(f"{value!r}: Vertex needs a gs://bucket/path pipeline root")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not ENV_NAME.match(k)]
        if bad:
            raise ValueError(f"invalid environment variable name(s) {bad}")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        fields = value.split()
        if fields and fields[0].startswith(("TZ=", "CRON_TZ=")):
            raise ValueError("put the time zone in schedule_timezone, not in the cron expression")
        if len(fields) != _CRON_FIELDS:
            raise ValueError(f"expected a cron expression of 5 fields (minute hour day month weekday), got {value!r}")
        return " ".join(fields)

    @field_validator("schedule_timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone such as 'Europe/Berlin'") from None
        return value

    @model_validator(mode="after")
    def _key_in_location(self) -> VertexOptions:
        key = self.encryption_spec_key_name
        if key is not None:
            match = _KMS_KEY.match(key)
            if not match:
                raise ValueError(
                    f"encryption_spec_key_name {key!r}: expected "
                    "projects/<p>/locations/<l>/keyRings/<ring>/cryptoKeys/<key>"
                )
            if match.group(1) != self.location:
                raise ValueError(
                    f"encryption_spec_key_name is in {match.group(1)!r}, but the jobs run in "
                    f"{self.location!r}; Vertex needs the key in the job's region"
                )
        if self.api_endpoint is not None and self.api_endpoint.startswith("http://") and self.transport != "rest":
            raise ValueError('an http:// api_endpoint needs transport = "rest"')
        return self

    @property
    def cron(self) -> str | None:
        """The schedule as Vertex wants it, time zone prefixed (``TZ=Europe/Berlin 0 3 * * *``)."""
        if self.schedule is None:
            return None
        return f"TZ={self.schedule_timezone} {self.schedule}" if self.schedule_timezone else self.schedule

    @property
    def endpoint(self) -> str:
        return self.api_endpoint or f"{self.location}-aiplatform.googleapis.com"
