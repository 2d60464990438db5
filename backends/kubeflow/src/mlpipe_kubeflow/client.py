"""Talking to a KFP API server through ``kfp.Client``: create runs and recurring runs, read state, terminate.

Foreign exceptions (the generated API client's ``ApiException``, urllib3's
connection errors, kfp's ``ValueError`` for a bad reply) are translated here
into :class:`~mlpipe.errors.BackendError` with the host and the operation.
kfp's own chatter (a ``FutureWarning`` from the constructor, "Run details"
links printed to stdout) is kept out of the user's output; the backend
returns the link in the handle instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from mlpipe.errors import BackendError, ConfigError
from mlpipe_kubeflow.options import KubeflowOptions

__all__ = [
    "KFP_STATES",
    "Submitted",
    "connect",
    "create_recurring_run",
    "create_run",
    "disable_schedule",
    "run_state",
    "terminate",
]

# KFP v2beta1 run states → mlpipe's.
KFP_STATES = {
    "RUNTIME_STATE_UNSPECIFIED": "pending",
    "PENDING": "pending",
    "RUNNING": "running",
    "PAUSED": "running",
    "CANCELING": "running",
    "SUCCEEDED": "succeeded",
    "SKIPPED": "succeeded",
    "FAILED": "failed",
    "CANCELED": "cancelled",
}


@dataclass(frozen=True)
class Submitted:
    """What the API server answered to a submission."""

    external_id: str
    url: str | None
    experiment_id: str | None = None
    recurring: bool = False


def _foreign() -> tuple[type[BaseException], ...]:
    import urllib3.exceptions
    from kfp_server_api.exceptions import OpenApiException  # type: ignore[import-untyped]

    return (OpenApiException, urllib3.exceptions.HTTPError, OSError, ValueError)


@contextlib.contextmanager
def _translated(options: KubeflowOptions, what: str) -> Iterator[None]:
    where = options.host or "the KFP endpoint from KF_PIPELINES_ENDPOINT / in-cluster config"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    except _foreign() as exc:
        raise BackendError(
            f"kubeflow: {what} at {where} failed: {type(exc).__name__}: {exc}", backend="kubeflow", host=options.host
        ) from exc


def auth_arguments(options: KubeflowOptions) -> dict[str, Any]:
    """``kfp.Client`` keyword arguments for a protected multi-user deployment (token, cookies, CA bundle).

    Raises:
        ConfigError: ``existing_token_env`` names an unset variable, or ``ssl_ca_cert`` is not a file.
    """
    token = options.existing_token
    if options.existing_token_env:
        token = os.environ.get(options.existing_token_env) or None
        if token is None:
            raise ConfigError(
                f"kubeflow: options.existing_token_env names {options.existing_token_env}, which is not set; "
                "export it with the deployment's bearer token (for example an OIDC id token)",
                backend="kubeflow",
            )
    if options.ssl_ca_cert and not os.path.isfile(options.ssl_ca_cert):
        raise ConfigError(
            f"kubeflow: options.ssl_ca_cert {options.ssl_ca_cert!r} is not a file; give the path of the CA bundle "
            "that signed the API server's certificate",
            backend="kubeflow",
        )
    out: dict[str, Any] = {}
    if token:
        out["existing_token"] = token
    if options.cookies:
        out["cookies"] = options.cookies
    if options.ssl_ca_cert:
        out["ssl_ca_cert"] = options.ssl_ca_cert
    return out


def connect(options: KubeflowOptions) -> Any:
    """A ``kfp.Client`` for the profile's host and namespace, with its token, cookies and CA bundle."""
    from kfp import Client

    auth = auth_arguments(options)
    with _translated(options, "connecting"), warnings.catch_warnings():
        # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later versions": noise for every user.
        warnings.filterwarnings("ignore", category=FutureWarning, message="This client only works")
        return Client(host=options.host, namespace=options.namespace, **auth)


def _run_url(options: KubeflowOptions, run_id: str, kind: str = "runs") -> str | None:
    if not options.host:
        return None
    return f"{options.host.rstrip('/')}/#/{kind}/details/{run_id}"


def create_run(
    client: Any, options: KubeflowOptions, spec_path: str, arguments: Mapping[str, Any], run_name: str
) -> Submitted:
    """One run of the compiled spec, filed under the profile's experiment."""
    with _translated(options, "creating a run"):
        result = client.create_run_from_pipeline_package(
            spec_path,
            arguments=dict(arguments),
            run_name=run_name,
            experiment_name=options.experiment,
            namespace=options.namespace,
            pipeline_root=options.pipeline_root,
            service_account=options.service_account,
        )
    run_id = getattr(result, "run_id", None)
    if not run_id:
        raise BackendError(
            f"kubeflow: the API server at {options.host} accepted the run but returned no run id", backend="kubeflow"
        )
    return Submitted(external_id=run_id, url=_run_url(options, run_id))


def create_recurring_run(
    client: Any, options: KubeflowOptions, spec_path: str, arguments: Mapping[str, Any], run_name: str
) -> Submitted:
    """A recurring run of the compiled spec on the profile's cron schedule."""
    with _translated(options, "creating a recurring run"):
        experiment = client.create_experiment(options.experiment, namespace=options.namespace)
        result = client.create_recurring_run(
            experiment_id=experiment.experiment_id,
            job_name=run_name,
            cron_expression=options.kfp_cron,
            max_concurrency=options.schedule_max_concurrency,
            no_catchup=not options.schedule_catchup,
            params=dict(arguments),
            pipeline_package_path=spec_path,
            pipeline_root=options.pipeline_root,
            service_account=options.service_account,
        )
    rid = getattr(result, "recurring_run_id", None)
    if not rid:
        raise BackendError(
            f"kubeflow: the API server at {options.host} returned no recurring run id", backend="kubeflow"
        )
    return Submitted(
        external_id=rid,
        url=_run_url(options, rid, "recurringrun"),
        experiment_id=experiment.experiment_id,
        recurring=True,
    )


def run_state(client: Any, options: KubeflowOptions, run_id: str) -> tuple[str, str | None]:
    """mlpipe's state of a KFP run and the server's error message, if any."""
    with _translated(options, f"reading run {run_id}"):
        run = client.get_run(run_id)
    raw = str(getattr(run, "state", None) or "RUNTIME_STATE_UNSPECIFIED").upper()
    error = getattr(run, "error", None)
    message = getattr(error, "message", None) if error is not None else None
    return KFP_STATES.get(raw, "running"), message


def disable_schedule(client: Any, options: KubeflowOptions, recurring_run_id: str) -> None:
    """Stop a recurring run from starting new runs (idempotent on the server)."""
    with _translated(options, f"disabling recurring run {recurring_run_id}"):
        client.disable_recurring_run(recurring_run_id)


def terminate(client: Any, options: KubeflowOptions, run_id: str) -> None:
    """Ask the server to stop a run (the caller checks that it is not finished)."""
    with _translated(options, f"terminating run {run_id}"):
        client.terminate_run(run_id)
