"""Talking to Vertex AI through the generated ``google.cloud.aiplatform_v1`` clients.

Only the GAPIC ``PipelineServiceClient`` and ``ScheduleServiceClient`` are
used, never the high-level ``google.cloud.aiplatform.PipelineJob``: that one
takes about 8 s to import, keeps global state (``aiplatform.init``), and its
``submit()`` probes, and may create, the pipeline-root bucket and grant it
IAM roles as a side effect. ``aiplatform_v1`` is imported on first use (about
2.5 s), so ``import mlpipe_vertex`` and compile-time checks stay fast.

Foreign exceptions (``google.api_core.exceptions``, ``google.auth``'s, and the
transport's ``OSError``) are translated here into
:class:`~mlpipe.errors.BackendError` naming the operation, the endpoint and,
for the usual causes, the fix.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from mlpipe.errors import BackendError
from mlpipe_vertex.naming import BACKEND
from mlpipe_vertex.options import VertexOptions

__all__ = [
    "STATES",
    "cancel_job",
    "create_job",
    "create_schedule",
    "job_state",
    "pause_schedule",
    "pipeline_client",
    "schedule_client",
]

# aiplatform_v1.PipelineState → mlpipe's states.
STATES = {
    "PIPELINE_STATE_UNSPECIFIED": "pending",
    "PIPELINE_STATE_QUEUED": "pending",
    "PIPELINE_STATE_PENDING": "pending",
    "PIPELINE_STATE_RUNNING": "running",
    "PIPELINE_STATE_PAUSED": "running",
    "PIPELINE_STATE_CANCELLING": "running",
    "PIPELINE_STATE_SUCCEEDED": "succeeded",
    "PIPELINE_STATE_FAILED": "failed",
    "PIPELINE_STATE_CANCELLED": "cancelled",
}

_HINTS = {
    "PermissionDenied": "the caller needs roles/aiplatform.user on the project and roles/iam.serviceAccountUser "
    "on the job's service account (see docs/backends/vertex.md)",
    "Unauthenticated": "run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS",
    "DefaultCredentialsError": "run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS",
    "FailedPrecondition": "a common cause is a pipeline-root bucket outside the job's region; Vertex needs a "
    "regional bucket in the same region",
    "ResourceExhausted": "the project's Vertex quota (60 job submissions or 600 requests a minute per region) "
    "is used up; wait and retry",
}


def _foreign() -> tuple[type[BaseException], ...]:
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions

    # requests' errors (REST transport) are OSErrors.
    return (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError, OSError)


@contextlib.contextmanager
def translated(options: VertexOptions, what: str, **context: Any) -> Iterator[None]:
    """Turn the client's exceptions into a BackendError with the operation, endpoint and a fix."""
    try:
        yield
    except _foreign() as exc:
        kind = type(exc).__name__
        hint = _HINTS.get(kind)
        raise BackendError(
            f"vertex: {what} at {options.endpoint} failed: {kind}: {exc}" + (f". Fix: {hint}" if hint else ""),
            backend=BACKEND,
            endpoint=options.endpoint,
            reason=kind,
            **context,
        ) from exc


def _client_kwargs(options: VertexOptions) -> dict[str, Any]:
    from google.api_core.client_options import ClientOptions

    kwargs: dict[str, Any] = {
        "client_options": ClientOptions(api_endpoint=options.endpoint),
        "transport": options.transport,
    }
    if options.credentials == "anonymous":
        from google.auth.credentials import AnonymousCredentials

        kwargs["credentials"] = AnonymousCredentials()  # type: ignore[no-untyped-call]
    return kwargs


def pipeline_client(options: VertexOptions) -> Any:
    """A ``PipelineServiceClient`` for the profile's endpoint, transport and credentials."""
    with translated(options, "creating the pipeline client"):
        from google.cloud.aiplatform_v1 import PipelineServiceClient

        return PipelineServiceClient(**_client_kwargs(options))


def schedule_client(options: VertexOptions) -> Any:
    """A ``ScheduleServiceClient`` for the profile's endpoint, transport and credentials."""
    with translated(options, "creating the schedule client"):
        from google.cloud.aiplatform_v1 import ScheduleServiceClient

        return ScheduleServiceClient(**_client_kwargs(options))


def _job(body: Mapping[str, Any]) -> Any:
    from google.cloud.aiplatform_v1 import PipelineJob

    # from_json refuses unknown fields, so a misspelt key fails here, not on the server.
    return PipelineJob.from_json(json.dumps(body))


def create_job(options: VertexOptions, parent: str, body: Mapping[str, Any], job_id: str) -> tuple[str, str]:
    """Create the PipelineJob; its resource name and mlpipe's state of it."""
    client = pipeline_client(options)
    with translated(options, f"creating pipeline job {job_id}", job_id=job_id):
        created = client.create_pipeline_job(parent=parent, pipeline_job=_job(body), pipeline_job_id=job_id)
    return str(created.name), STATES.get(created.state.name, "pending")


def job_state(options: VertexOptions, name: str) -> tuple[str, str | None]:
    """mlpipe's state of a PipelineJob and the service's error message, if any."""
    client = pipeline_client(options)
    with translated(options, f"reading pipeline job {name}", job=name):
        job = client.get_pipeline_job(name=name)
    state = STATES.get(job.state.name, "running")  # a state this client does not know yet is not an end
    message = job.error.message if job.error and job.error.message else None
    return state, message


def cancel_job(options: VertexOptions, name: str) -> None:
    """Ask Vertex to cancel a job (the caller checks that it has not ended)."""
    client = pipeline_client(options)
    with translated(options, f"cancelling pipeline job {name}", job=name):
        client.cancel_pipeline_job(name=name)


def create_schedule(options: VertexOptions, parent: str, body: Mapping[str, Any], display_name: str) -> str:
    """A Vertex schedule that creates the PipelineJob ``body`` on the profile's cron; its resource name."""
    from google.cloud.aiplatform_v1 import Schedule

    schedule: dict[str, Any] = {
        "displayName": display_name[:128],
        "cron": options.cron,
        "maxConcurrentRunCount": str(options.schedule_max_concurrency),
        "allowQueueing": options.schedule_allow_queueing,
        "createPipelineJobRequest": {"parent": parent, "pipelineJob": dict(body)},
    }
    if options.schedule_max_runs is not None:
        schedule["maxRunCount"] = str(options.schedule_max_runs)
    client = schedule_client(options)
    with translated(options, f"creating schedule {display_name!r}"):
        created = client.create_schedule(parent=parent, schedule=Schedule.from_json(json.dumps(schedule)))
    return str(created.name)


def pause_schedule(options: VertexOptions, name: str) -> None:
    """Stop a schedule from creating jobs; a paused or completed schedule is left alone."""
    client = schedule_client(options)
    with translated(options, f"pausing schedule {name}"):
        if client.get_schedule(name=name).state.name in ("PAUSED", "COMPLETED"):
            return
        client.pause_schedule(name=name)
