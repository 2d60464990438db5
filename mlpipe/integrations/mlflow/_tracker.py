"""The MLflow tracker: a pipeline run as a parent MLflow run, each step as a child run.

Every run is created with :class:`mlflow.MlflowClient` and addressed by id,
never through mlflow's "active run" (a thread-local stack in which
``nested=True`` silently makes top-level runs from worker threads). Only
while a step's function runs is its child run pushed on the active-run stack
of the thread running it, so plain ``mlflow.log_metric`` and
``mlflow.sklearn.log_model`` inside a step land in that step's child run.
mlflow's tracking URI is process-global; it is set to the profile's URI while
tracked steps run and restored when the last one ends.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from mlpipe.errors import MissingDependencyError, TrackingError
from mlpipe.tracking import StepTracking, Tracker

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["MlflowStep", "MlflowTracker", "client_for", "import_mlflow"]

_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED", "skipped": "KILLED"}
_MAX_PARAM = 6000
_MAX_TAG = 5000
#: Seconds to wait for ``/health`` before declaring a server down.
CHECK_TIMEOUT_ENV = "MLPIPE_MLFLOW_CHECK_TIMEOUT"


def import_mlflow() -> Any:
    """``import mlflow``, or :class:`MissingDependencyError` naming the extra to install."""
    try:
        import mlflow
    except ImportError as exc:
        raise MissingDependencyError(
            f"MLflow tracking is on but mlflow is not installed ({exc}); install it with: pip install 'mlpipe[mlflow]'",
            extra="mlflow",
        ) from exc
    _quiet_sagemaker_header_provider(mlflow)
    return mlflow


class _SageMakerHeaderNoise(logging.Filter):
    """Drops the warning the sagemaker-mlflow plugin causes on every request to a server that is not SageMaker's.

    ``sagemaker`` (which mlpipe-sagemaker needs) installs ``sagemaker-mlflow``. Its
    request-header provider says it applies to every request, then fails unless the
    tracking URI is a SageMaker ARN, and MLflow logs "Encountered unexpected error
    during resolving request headers: list index out of range" for each call. The
    headers it would add only route requests to SageMaker's managed MLflow, so
    nothing is lost; with an ``arn:`` tracking URI its errors still show.
    """

    def __init__(self, mlflow: Any) -> None:
        super().__init__()
        self._mlflow = mlflow

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.args[0] if isinstance(record.args, tuple) and record.args else None
        if not isinstance(exc, Exception) or str(self._mlflow.get_tracking_uri()).startswith("arn:"):
            return True
        tb = exc.__traceback__
        while tb is not None:
            if "sagemaker_mlflow" in tb.tb_frame.f_code.co_filename:
                return False
            tb = tb.tb_next
        return True


def _quiet_sagemaker_header_provider(mlflow: Any) -> None:
    logger = logging.getLogger("mlflow.tracking.request_header.registry")
    if not any(isinstance(f, _SageMakerHeaderNoise) for f in logger.filters):
        logger.addFilter(_SageMakerHeaderNoise(mlflow))


_clients: dict[str, MlflowClient] = {}
_clients_lock = threading.Lock()


def client_for(uri: str) -> MlflowClient:
    """One :class:`mlflow.MlflowClient` per tracking URI in this process (its store is reused)."""
    with _clients_lock:
        client = _clients.get(uri)
        if client is None:
            mlflow = import_mlflow()
            client = _clients[uri] = mlflow.MlflowClient(tracking_uri=uri)
        return client


class _GlobalUri:
    """Reference-counted use of mlflow's process-global tracking URI by running steps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._uri: str | None = None
        self._saved: tuple[str | None, str | None] = (None, None)

    @contextmanager
    def use(self, uri: str) -> Iterator[None]:
        mlflow = import_mlflow()
        from mlflow.tracking._tracking_service import utils as tracking_utils

        with self._lock:
            if self._users == 0:
                self._saved = (tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI"))
                mlflow.set_tracking_uri(uri)
                self._uri = uri
            elif self._uri != uri:
                raise TrackingError(
                    f"two tracked runs in one process use different MLflow servers ({self._uri} and {uri}) "
                    "at the same time; mlflow's tracking URI is process-wide, so run them one after the other",
                    uri=uri,
                )
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    saved_uri, saved_env = self._saved
                    mlflow.set_tracking_uri(saved_uri)
                    if saved_env is None:
                        os.environ.pop("MLFLOW_TRACKING_URI", None)
                    else:
                        os.environ["MLFLOW_TRACKING_URI"] = saved_env
                    self._uri = None


_GLOBAL_URI = _GlobalUri()


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _push_active(client: MlflowClient, run_id: str) -> None:
    """Put the run on this thread's active-run stack, where ``mlflow.log_*`` looks for it.

    Pushing the run object directly costs one request; ``mlflow.start_run(run_id=...)``
    costs three and rewrites the run's status. Falls back to it if mlflow's internals moved.
    """
    try:
        from mlflow.tracking.fluent import ActiveRun, _active_run_stack

        _active_run_stack.get().append(ActiveRun(client.get_run(run_id)))  # type: ignore[no-untyped-call]
    except ImportError:
        import_mlflow().start_run(run_id=run_id, nested=True)


def _pop_active(run_id: str) -> None:
    """Take the run off this thread's stack without ending it (the step's end ends it, with its status)."""
    try:
        from mlflow.tracking.fluent import _active_run_stack
    except ImportError:
        mlflow = import_mlflow()
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run()
        return
    stack = _active_run_stack.get()  # type: ignore[no-untyped-call]
    for index in range(len(stack) - 1, -1, -1):
        if stack[index].info.run_id == run_id:
            del stack[index]
            break


def _terminate(client: MlflowClient, run_id: str, status: str) -> None:
    """End a run without ``set_terminated``'s extra request and its printed link (one per step is noise)."""
    try:
        from mlflow.entities import RunStatus

        store = client._tracking_client.store
    except AttributeError:
        client.set_terminated(run_id, status)
        return
    store.update_run_info(run_id, RunStatus.from_string(status), int(time.time() * 1000), None)


class MlflowStep(StepTracking):
    """A step's child run, addressed by id."""

    def __init__(self, tracker: MlflowTracker, run_id: str) -> None:
        self.tracker = tracker
        self.id = run_id

    def log_metrics(self, metrics: Mapping[str, float], *, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
        if batch:
            self.tracker.client.log_batch(self.id, metrics=batch, synchronous=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        batch = [Param(key, _text(value, _MAX_PARAM)) for key, value in params.items()]
        for start in range(0, len(batch), 100):  # the server takes at most 100 params per batch
            self.tracker.client.log_batch(self.id, params=batch[start : start + 100], synchronous=True)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(key, _text(value, _MAX_TAG)) for key, value in tags.items()]
        for start in range(0, len(batch), 100):
            self.tracker.client.log_batch(self.id, tags=batch[start : start + 100], synchronous=True)

    def activate(self) -> AbstractContextManager[None]:
        return self._activate()

    @contextmanager
    def _activate(self) -> Iterator[None]:
        with _GLOBAL_URI.use(self.tracker.tracking_uri):
            _push_active(self.tracker.client, self.id)
            try:
                yield
            finally:
                _pop_active(self.id)


class MlflowTracker(Tracker):
    """Tracks pipeline runs in MLflow.

    Args:
        tracking_uri: ``http(s)://host:port`` of an ``mlflow server``,
            ``sqlite:///path.db`` (needs the full ``mlflow`` package), or any
            URI mlflow accepts.
        experiment: Experiment name (default ``mlpipe/<pipeline>``).
    """

    name = "mlflow"

    def __init__(self, *, tracking_uri: str, experiment: str | None = None) -> None:
        super().__init__(tracking_uri=tracking_uri, experiment=experiment)
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None

    @property
    def client(self) -> MlflowClient:
        return client_for(self.tracking_uri)

    # -- run level --------------------------------------------------------------------
    def check(self) -> None:
        """Fail fast with the URI in the message: mlflow missing, server down, or a database path that cannot exist."""
        import_mlflow()
        uri = self.tracking_uri
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme in ("http", "https"):
            timeout = float(os.environ.get(CHECK_TIMEOUT_ENV, "5"))
            try:
                with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                    pass
            except urllib.error.HTTPError as exc:
                if exc.code >= 500:
                    raise TrackingError(
                        f"the MLflow tracking server at {uri} answered HTTP {exc.code} to /health; "
                        "check the server's log, or fix tracking_uri in the profile (or MLFLOW_TRACKING_URI)",
                        uri=uri,
                    ) from exc
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                raise TrackingError(
                    f"the MLflow tracking server at {uri} cannot be reached ({reason}); start it "
                    f"(mlflow server --host {parsed.hostname} --port {parsed.port or 80}), or fix tracking_uri "
                    "in the profile (or MLFLOW_TRACKING_URI), or set MLPIPE_TRACKING=off to run untracked",
                    uri=uri,
                ) from exc
        elif parsed.scheme.startswith("sqlite"):
            path = uri.split(":///", 1)[1] if ":///" in uri else ""
            directory = os.path.dirname(os.path.abspath(path)) if path and path != ":memory:" else ""
            if directory and not os.path.isdir(directory):
                raise TrackingError(
                    f"the MLflow tracking database {uri} cannot be created: directory {directory} does not exist",
                    uri=uri,
                )
            try:
                import sqlalchemy  # noqa: F401  (full mlflow has it; mlflow-skinny cannot use sqlite:///)
            except ImportError as exc:
                raise MissingDependencyError(
                    f"the tracking URI {uri} needs the full mlflow package (mlflow-skinny talks to servers only); "
                    "install it with: pip install 'mlflow>=3.17,<3.18'",
                    extra="mlflow",
                ) from exc

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        client = self.client
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"the MLflow experiment {name!r} at {self.tracking_uri} is deleted; restore it "
                    "(mlflow experiments restore) or choose another experiment in the profile",
                    uri=self.tracking_uri,
                )
            return str(found.experiment_id)
        try:
            return str(client.create_experiment(name, tags={"mlpipe.pipeline": name}))
        except MlflowException:  # created concurrently by another launch
            again = client.get_experiment_by_name(name)
            if again is None:
                raise
            return str(again.experiment_id)

    def start_run(
        self, *, run_id: str, pipeline: str, params: Mapping[str, Any], backend: str, tags: Mapping[str, str]
    ) -> dict[str, str]:
        self.experiment_id = self._experiment_id(self.experiment or f"mlpipe/{pipeline}")
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{pipeline} {run_id}",
            tags={**self._source_tags(pipeline), **tags, "mlpipe.kind": "pipeline"},
        )
        self.parent_run_id = run.info.run_id
        if params:
            MlflowStep(self, self.parent_run_id).log_params(params)
        return self.environment_info()

    def environment_info(self) -> dict[str, str]:
        assert self.parent_run_id is not None and self.experiment_id is not None
        return {
            "tracking_uri": self.tracking_uri,
            "parent_run_id": self.parent_run_id,
            "experiment_id": self.experiment_id,
        }

    def environment(self) -> dict[str, str]:
        """``MLPIPE_MLFLOW_*`` variables that let a remote task join this run without reading the store."""
        info = self.environment_info()
        return {
            "MLPIPE_MLFLOW_TRACKING_URI": info["tracking_uri"],
            "MLPIPE_MLFLOW_PARENT_RUN_ID": info["parent_run_id"],
            "MLPIPE_MLFLOW_EXPERIMENT_ID": info["experiment_id"],
        }

    def resume(self, *, info: Mapping[str, str]) -> None:
        self.tracking_uri = info.get("tracking_uri") or self.tracking_uri
        self.parent_run_id = info["parent_run_id"]
        self.experiment_id = info.get("experiment_id") or self.client.get_run(self.parent_run_id).info.experiment_id

    def end_run(self, *, status: str, error: str | None = None) -> None:
        if self.parent_run_id is None:
            return
        tags = {"mlpipe.status": status}
        if error:
            tags["mlpipe.error"] = error
        MlflowStep(self, self.parent_run_id).set_tags(tags)
        _terminate(self.client, self.parent_run_id, _STATUS.get(status, "FINISHED"))

    # -- step level -------------------------------------------------------------------
    def start_step(self, *, step: str, tags: Mapping[str, str]) -> MlflowStep:
        assert self.parent_run_id is not None and self.experiment_id is not None, "start_run or resume first"
        all_tags = {
            **self._source_tags(tags.get("mlpipe.pipeline", "")),
            **tags,
            "mlflow.parentRunId": self.parent_run_id,
            "mlpipe.kind": "step",
        }
        run = self.client.create_run(self.experiment_id, run_name=step, tags=dict(all_tags))
        return MlflowStep(self, run.info.run_id)

    def end_step(self, handle: StepTracking, *, status: str, cached: bool, tags: Mapping[str, str]) -> None:
        final = dict(tags)
        if cached:
            source = self._producer(final.get("mlpipe.cache_key", ""))
            note = f"Cache hit: outputs reused from mlpipe run {final.get('mlpipe.cached_from_run_id') or '?'}"
            if source is not None:
                final["mlpipe.cached_from_mlflow_run_id"] = source
                note += f" (MLflow run {source})"
            final["mlflow.note.content"] = note + "; nothing was recomputed or re-logged."
        handle.set_tags(final)
        _terminate(self.client, handle.id, _STATUS.get(status, "FINISHED"))

    def _producer(self, key: str) -> str | None:
        """The child run that computed the outputs a cache hit reuses (same key, not a hit)."""
        if not key or self.experiment_id is None:
            return None
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlpipe.cache_key` = '{key}' and tags.`mlpipe.cache_hit` = 'false'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return str(found[0].info.run_id) if found else None

    @staticmethod
    def _source_tags(pipeline: str) -> dict[str, str]:
        try:
            user = getpass.getuser()
        except (OSError, KeyError):
            user = "unknown"
        return {"mlflow.source.name": f"mlpipe://{pipeline}", "mlflow.source.type": "JOB", "mlflow.user": user}
