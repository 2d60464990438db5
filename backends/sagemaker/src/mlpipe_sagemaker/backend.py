"""The ``sagemaker`` backend: compile, submit, follow and cancel SageMaker pipeline executions, and schedule them.

Submitting stores the IR in the (``s3://``) mlpipe store, upserts the
pipeline (``CreatePipeline``, or ``UpdatePipeline`` when it exists) and
starts an execution. The execution id becomes the mlpipe run id, so the
records every step writes under ``runs/<id>/`` and the handle agree, also for
executions started by a schedule or from the console. ``status`` asks
``DescribePipelineExecution`` and reads the steps' records from the store;
when the execution has ended it records the end in ``run.json``.

boto3 is imported on first use; this module never imports the SageMaker SDK.
Foreign exceptions (botocore's) are translated at this boundary into
:class:`~mlpipe.errors.BackendError` with the operation and a fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from mlpipe.errors import BackendError, ConfigError, ParameterError, UnsupportedFeatureError
from mlpipe.extend import (
    TERMINAL,
    ArtifactStore,
    Backend,
    BackendOptions,
    Capabilities,
    RunHandle,
    RunRecord,
    RunStatus,
    close_cached_run,
    load_ir,
    load_step_records,
    open_index,
    open_store,
    plan_run,
    record_cached,
    resolve_profile,
    ship,
    task_storage_options,
    track_skipped,
    write_ir,
)
from mlpipe.ir import PipelineIR
from mlpipe_sagemaker.compiler import (
    CACHE_PARAMETER,
    build_definition,
    dumps,
    encode_value,
    sagemaker_pipeline_name,
)
from mlpipe_sagemaker.options import SageMakerOptions
from mlpipe_sagemaker.validate import LIMITS, DefinitionValidationError, validate_definition

if TYPE_CHECKING:
    from mlpipe import Pipeline

__all__ = ["SageMakerBackend", "schedule_pipeline"]

_STATES = {
    "Executing": "running",
    "Stopping": "running",
    "Stopped": "cancelled",
    "Failed": "failed",
    "Succeeded": "succeeded",
}
_SCHEDULE_NAME_RE = re.compile(r"^[0-9a-zA-Z\-_.]{1,64}$")
_PLACEHOLDER_STORE = "s3://bucket/prefix"
_PLACEHOLDER_DIGEST = "0" * 64


def _token(*parts: str) -> str:
    """An idempotency token: the same request sent twice starts one thing."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]


@contextlib.contextmanager
def _aws(operation: str, **context: Any) -> Iterator[None]:
    """Translate botocore's exceptions into a BackendError naming the call and the fix."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", str(exc))
        hint = ""
        if code in ("AccessDeniedException", "AccessDenied", "UnrecognizedClientException"):
            hint = f"; the caller's credentials need the permission for {operation} (see docs/backends/sagemaker.md)"
        raise BackendError(
            f"SageMaker {operation} failed: {code}: {message}{hint}", backend="sagemaker", **context
        ) from exc
    except NoRegionError as exc:
        raise BackendError(
            f"SageMaker {operation}: no AWS region; set options.region in the profile or AWS_DEFAULT_REGION",
            backend="sagemaker",
            **context,
        ) from exc
    except NoCredentialsError as exc:
        raise BackendError(
            f"SageMaker {operation}: no AWS credentials found; configure them (aws configure, "
            "AWS_PROFILE, or an instance role)",
            backend="sagemaker",
            **context,
        ) from exc
    except EndpointConnectionError as exc:
        raise BackendError(f"SageMaker {operation}: cannot reach AWS: {exc}", backend="sagemaker", **context) from exc
    except BotoCoreError as exc:
        raise BackendError(f"SageMaker {operation} failed: {exc}", backend="sagemaker", **context) from exc


class SageMakerBackend(Backend):
    """Runs mlpipe pipelines as SageMaker pipelines (one Processing job per step).

    Profile::

        [profiles.sagemaker]
        backend = "sagemaker"
        store = "s3://my-bucket/mlpipe"
        image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1.4"
        options = { role = "arn:aws:iam::123456789012:role/SageMakerRole", region = "us-east-1" }

    See :class:`~mlpipe_sagemaker.options.SageMakerOptions` for every option.
    """

    name = "sagemaker"
    capabilities = Capabilities(
        parallel=True,
        resources=True,
        retries=True,
        timeouts=True,
        schedules=True,
        gates=True,
        conditions=True,
        prune=True,
    )
    Options = SageMakerOptions

    def __init__(self, options: Mapping[str, Any] | BackendOptions | None = None, *, image: str | None = None) -> None:
        super().__init__(options, image=image)
        self._clients: dict[tuple[str, str | None, str | None], Any] = {}
        self._stores: dict[str, ArtifactStore] = {}

    @property
    def opts(self) -> SageMakerOptions:
        assert isinstance(self.options, SageMakerOptions)
        return self.options

    # -- compiling ----------------------------------------------------------------------
    def _role(self) -> str:
        if not self.opts.role:
            raise ConfigError(
                "the sagemaker backend needs the execution role: set options.role in the profile, e.g. "
                'options = { role = "arn:aws:iam::123456789012:role/SageMakerRole", region = "us-east-1" }',
                backend=self.name,
            )
        return self.opts.role

    def check(self, ir: PipelineIR) -> None:
        """Refuse, before anything is stored or sent, what SageMaker would reject (names the step)."""
        super().check(ir)
        definition = build_definition(
            ir,
            store_url=_PLACEHOLDER_STORE,
            ir_digest=_PLACEHOLDER_DIGEST,
            role=self._role(),
            image=self.image,
            options=self.opts,
        )
        validate_definition(definition, pipeline_name=sagemaker_pipeline_name(ir, self.opts))

    def definition(
        self, ir: PipelineIR, store: ArtifactStore, pruned: Mapping[str, str] | None = None
    ) -> tuple[dict[str, Any], str]:
        """The validated definition for ``ir`` and the digest of the IR it runs, which is written to ``store``.

        Every step's runtime loads the IR from ``store`` by that digest, so the
        definition is only valid together with the store it names. ``pruned``:
        cache hits (step → key) left out; their consumers read them by key.
        """
        self.check(ir)
        digest = write_ir(store, ir)
        definition = build_definition(
            ir,
            store_url=store.url,
            ir_digest=digest,
            role=self._role(),
            image=self.image,
            options=self.opts,
            storage_options=task_storage_options(store.storage_options, self.name),
            pruned=pruned,
        )
        validate_definition(definition, pipeline_name=sagemaker_pipeline_name(ir, self.opts))
        return definition, digest

    def compile(self, ir: PipelineIR, path: str, *, store: ArtifactStore | None = None) -> str:
        """Write the SageMaker pipeline definition (JSON, as the SDK's ``definition()`` writes it) to ``path``.

        The IR is stored in ``store`` (the profile's), which the definition
        names; a definition compiled against a local store is for reading, and
        :meth:`submit` needs an ``s3://`` store.
        """
        if store is None:
            raise BackendError(
                "compiling for sagemaker needs the profile's store (it holds the compiled IR)", backend=self.name
            )
        definition, _digest = self.definition(ir, store)
        with open(path, "w", encoding="utf-8") as f:
            f.write(dumps(definition))
        return path

    # -- AWS clients ----------------------------------------------------------------------
    def _region(self, region: str | None = None) -> str:
        chosen = region or self.opts.region
        if chosen:
            return chosen
        import boto3

        found = boto3.session.Session().region_name
        if not found:
            raise ConfigError(
                "no AWS region for sagemaker: set options.region in the profile or AWS_DEFAULT_REGION",
                backend=self.name,
            )
        return str(found)

    def _client(self, service: str, region: str | None = None, endpoint_url: str | None = None) -> Any:
        region = self._region(region)
        endpoint_url = endpoint_url or self.opts.endpoint_url
        key = (service, region, endpoint_url)
        client = self._clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"mode": "standard", "max_attempts": 4}, user_agent_extra="mlpipe-sagemaker")
            client = boto3.client(service, region_name=region, endpoint_url=endpoint_url, config=config)
            self._clients[key] = client
        return client

    def _handle_client(self, handle: RunHandle) -> Any:
        return self._client("sagemaker", handle.data.get("region"), handle.data.get("endpoint_url"))

    # -- deploying and submitting ---------------------------------------------------------
    def _require_s3(self, store: ArtifactStore) -> None:
        if not store.url.startswith("s3://"):
            raise ConfigError(
                f"the sagemaker backend needs an s3:// store that the Processing jobs can reach, but the profile's "
                f'store is {store.url!r}; set store = "s3://my-bucket/mlpipe" in the profile',
                backend=self.name,
            )

    def deploy(self, ir: PipelineIR, store: ArtifactStore) -> str:
        """Create the SageMaker pipeline, or update it if it exists; return its ARN."""
        self._require_s3(store)
        definition, _digest = self.definition(ir, store)
        return self._upsert(ir, definition)[0]

    def _upsert(self, ir: PipelineIR, definition: Mapping[str, Any]) -> tuple[str, int | None]:
        """Create or update the pipeline; its ARN and the version the update made (None when created)."""
        from botocore.exceptions import ClientError

        sm = self._client("sagemaker")
        name = sagemaker_pipeline_name(ir, self.opts)
        body = dumps(definition)
        common: dict[str, Any] = {
            "PipelineName": name,
            "PipelineDefinition": body,
            "PipelineDescription": f"mlpipe pipeline {ir.name}"[:3072],
            "RoleArn": self._role(),
        }
        if self.opts.max_parallel_steps:
            common["ParallelismConfiguration"] = {"MaxParallelExecutionSteps": self.opts.max_parallel_steps}
        tags = [{"Key": k, "Value": v} for k, v in sorted(self.opts.tags.items())]
        with _aws("CreatePipeline", pipeline=ir.name):
            try:
                created = sm.create_pipeline(
                    **common,
                    ClientRequestToken=uuid.uuid4().hex,  # botocore's retries resend the same one
                    **({"Tags": tags} if tags else {}),
                )
                return str(created["PipelineArn"]), None
            except ClientError as exc:
                message = str(exc.response.get("Error", {}).get("Message", "")).lower()
                if "exist" not in message and "unique" not in message:
                    raise
        with _aws("UpdatePipeline", pipeline=ir.name):
            updated = sm.update_pipeline(**common)
            version = updated.get("PipelineVersionId")
            return str(updated["PipelineArn"]), int(version) if version is not None else None

    def _parameter_values(self, ir: PipelineIR, params: Mapping[str, Any], cache: bool) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for spec in ir.params:
            if spec.name not in params:
                continue
            value = encode_value(spec, params[spec.name])
            if len(spec.name) + 1 + len(value) > LIMITS["argument_chars"]:
                raise DefinitionValidationError(
                    f"SageMaker pipeline: parameter {spec.name!r} is {len(value)} characters as text; it travels as "
                    f"the container argument '{spec.name}=…', which SageMaker limits to {LIMITS['argument_chars']} "
                    "characters. Pass large values through the store (a step output), not as a parameter",
                    backend=self.name,
                    argument=spec.name,
                )
            out.append({"Name": spec.name, "Value": value})
        out.append({"Name": CACHE_PARAMETER, "Value": "true" if cache else "false"})
        return out

    def submit(
        self,
        ir: PipelineIR,
        store: ArtifactStore,
        *,
        params: Mapping[str, Any],
        run_id: str,
        cache: bool = True,
    ) -> RunHandle:
        """Upsert the pipeline and start an execution; the handle's ``run_id`` is the execution id.

        ``run_id`` (the launcher's) becomes the execution's display name. The
        start is idempotent for one ``run_id`` (a client request token).

        Raises:
            ConfigError: no role, no region, or a store that is not ``s3://``.
            DefinitionValidationError: the pipeline or a parameter value breaks a SageMaker limit.
            BackendError: AWS refused a call (the message names it).
        """
        self._require_s3(store)
        values = self._parameter_values(ir, params, cache)
        self.check(ir)
        shipped = ship(ir, store)
        # Cache hits cost no Processing job: left out of the definition this execution runs.
        run_plan = plan_run(shipped, store, params, explain=False) if cache else None
        pruned = run_plan.prunable(shipped) if run_plan is not None else {}
        if run_plan is not None and len(pruned) == len(ir.steps):
            cached_data = {"kind": "cached", "submitted_as": run_id}
            close_cached_run(
                store, shipped, run_id, run_plan, backend=self.name, params=params, ir_digest=write_ir(store, shipped),
                cache=cache, sagemaker=cached_data,
            )  # fmt: skip
            return RunHandle(backend=self.name, run_id=run_id, pipeline=ir.name, store=store.url, data=cached_data)
        definition, digest = self.definition(shipped, store, pruned)
        pipeline_arn, version = self._upsert(ir, definition)
        name = sagemaker_pipeline_name(ir, self.opts)
        sm = self._client("sagemaker")
        request: dict[str, Any] = {
            "PipelineName": name,
            "PipelineParameters": values,
            "PipelineExecutionDescription": f"mlpipe run {run_id} of {ir.name}",
            "ClientRequestToken": _token(name, run_id),
        }
        if re.match(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,81}$", run_id):
            request["PipelineExecutionDisplayName"] = run_id
        if self.opts.max_parallel_steps:
            request["ParallelismConfiguration"] = {"MaxParallelExecutionSteps": self.opts.max_parallel_steps}
        if version is not None:
            # Pin the execution to the definition this submit wrote: a concurrent submit of another
            # checkout updating the same pipeline in between must not change what this run executes.
            request["PipelineVersionId"] = version
        with _aws("StartPipelineExecution", pipeline=ir.name):
            started = sm.start_pipeline_execution(**request)
        execution_arn = str(started["PipelineExecutionArn"])
        execution_id = execution_arn.rsplit("/", 1)[-1]
        if pruned:
            # The pruned definition is this execution's alone (its keys follow these parameters): the pipeline's
            # latest definition, which a schedule or the console starts, is the whole one again.
            self._upsert(ir, self.definition(shipped, store)[0])
        record = RunRecord.open(
            store,
            shipped,
            execution_id,
            backend=self.name,
            params=params,
            ir_digest=digest,
            cache=cache,
            sagemaker={
                "execution_arn": execution_arn,
                "pipeline_arn": pipeline_arn,
                "submitted_as": run_id,
                **({"pruned": sorted(pruned)} if pruned else {}),
            },
        )
        if run_plan is not None and pruned:
            record_cached(record, shipped, run_plan, frozenset(pruned))
        self._stores[execution_id] = store
        data: dict[str, Any] = {
            "region": self._region(),
            "pipeline_name": name,
            "pipeline_arn": pipeline_arn,
            "submitted_as": run_id,
        }
        if pruned:
            data["pruned"] = sorted(pruned)
        if self.opts.endpoint_url:
            data["endpoint_url"] = self.opts.endpoint_url
        return RunHandle(
            backend=self.name,
            run_id=execution_id,
            pipeline=ir.name,
            store=store.url,
            external_id=execution_arn,
            data=data,
        )

    # -- following -------------------------------------------------------------------------
    def _store_for(self, handle: RunHandle) -> ArtifactStore:
        store = self._stores.get(handle.run_id)
        if store is None:
            store = self._stores[handle.run_id] = open_store(handle.store)
        return store

    def _execution_state(self, handle: RunHandle) -> tuple[str, str | None]:
        """SageMaker's view of the execution: (mlpipe state, failure reason)."""
        if not handle.external_id:
            raise BackendError(
                f"run {handle.run_id}: the handle has no execution ARN", backend=self.name, run_id=handle.run_id
            )
        with _aws("DescribePipelineExecution", run_id=handle.run_id):
            described = self._handle_client(handle).describe_pipeline_execution(PipelineExecutionArn=handle.external_id)
        raw = str(described.get("PipelineExecutionStatus", ""))
        state = _STATES.get(raw)
        if state is None:
            state = "running"  # a status newer than this code: keep polling
        return state, described.get("FailureReason") or None

    def _step_failures(self, handle: RunHandle) -> dict[str, str]:
        """Failure reasons SageMaker gives for steps (a container that never started writes no record)."""
        try:
            with _aws("ListPipelineExecutionSteps", run_id=handle.run_id):
                listed = self._handle_client(handle).list_pipeline_execution_steps(
                    PipelineExecutionArn=handle.external_id
                )
        except BackendError:
            return {}
        return {
            str(s.get("StepName")): str(s.get("FailureReason"))
            for s in listed.get("PipelineExecutionSteps", [])
            if s.get("StepStatus") == "Failed" and s.get("FailureReason")
        }

    def status(self, handle: RunHandle) -> RunStatus:
        """The execution's state, with each step's state from the records in the store.

        When the execution has ended, the end is recorded in the run's
        ``run.json`` (once), so ``Run.load`` and ``mlpipe runs show`` agree.
        """
        if handle.data.get("kind") == "cached":
            return RunStatus(state="succeeded", message="every step was a cache hit: no execution was started")
        state, message = self._execution_state(handle)
        store = self._store_for(handle)
        steps = self._step_states(store, handle.run_id)
        if state in TERMINAL:
            self._record_end(store, handle, state, message)
            steps = self._step_states(store, handle.run_id)
        return RunStatus(state=state, message=message, steps=steps)

    @staticmethod
    def _step_states(store: ArtifactStore, run_id: str) -> dict[str, str]:
        return {name: str(record.get("status")) for name, record in load_step_records(store, run_id).items()}

    def _record_end(self, store: ArtifactStore, handle: RunHandle, state: str, message: str | None) -> None:
        """Close the run's record once the execution has ended (steps it never started included)."""
        if RunRecord.exists(store, handle.run_id):
            record = RunRecord.load(store, handle.run_id)
        else:  # started from a schedule or the console: no launcher opened it
            record = RunRecord(
                store,
                {"id": handle.run_id, "pipeline": handle.pipeline, "backend": self.name, "started": None, "params": {}},
            )
        if record.status in TERMINAL:
            return
        record.doc.setdefault("handle", handle.model_dump(mode="json"))
        error = message or "stopped" if state == "cancelled" else None
        if state == "failed":
            self._record_skipped(store, record, self._step_failures(handle))
            error = (
                None
                if any(r.get("status") == "failed" for r in record.steps().values())
                else (message or "the SageMaker execution failed")
            )
        elif state == "succeeded":
            self._record_skipped(store, record, {})  # the steps of the branches not taken: skipped, with why
        record.close(state, error=error)  # type: ignore[arg-type]
        open_index(store).sync_run(store, handle.run_id)

    @staticmethod
    def _record_skipped(store: ArtifactStore, record: RunRecord, failures: Mapping[str, str]) -> None:
        """Complete the records of a failed execution.

        A step SageMaker reports failed without a record (its container never
        started) gets a ``failed`` record with SageMaker's reason; every step
        not started because an upstream step failed is recorded ``skipped``
        with the reason the local backend gives (for a quality gate: the
        gate's own message).
        """
        ir_digest = record.doc.get("ir")
        if not ir_digest:
            return
        ir = load_ir(store, ir_digest)
        known = {spec.name for spec in ir.steps}
        lost = {name: f"SageMaker: {reason}" for name, reason in failures.items() if name in known}
        skipped = record.settle(ir, lost=lost, not_run=None)  # steps no failure blocks: SageMaker reports them
        track_skipped(store, record.run_id, ir, skipped)

    def cancel(self, handle: RunHandle) -> None:
        """Stop the execution. Idempotent: an ended or stopping execution is left alone."""
        state, _message = self._execution_state(handle)
        if state in TERMINAL:
            return
        sm = self._handle_client(handle)
        try:
            with _aws("StopPipelineExecution", run_id=handle.run_id):
                sm.stop_pipeline_execution(
                    PipelineExecutionArn=handle.external_id, ClientRequestToken=_token("stop", handle.run_id)
                )
        except BackendError:
            # It may have ended (or begun stopping) between the two calls; that is a successful cancel.
            again, _ = self._execution_state(handle)
            if again in TERMINAL:
                return
            with _aws("DescribePipelineExecution", run_id=handle.run_id):
                raw = sm.describe_pipeline_execution(PipelineExecutionArn=handle.external_id)
            if raw.get("PipelineExecutionStatus") == "Stopping":
                return
            raise

    # -- schedules -------------------------------------------------------------------------
    def schedule(
        self,
        ir: PipelineIR,
        store: ArtifactStore,
        *,
        cron: str,
        params: Mapping[str, Any] | None = None,
        name: str | None = None,
        timezone: str | None = None,
        enabled: bool = True,
    ) -> str:
        """Deploy the pipeline and create (or update) an EventBridge Scheduler schedule that starts it.

        Args:
            cron: ``cron(0 3 * * ? *)``, ``rate(1 day)``, ``at(2026-12-01T03:00:00)`` or the six
                fields of an EventBridge cron expression (``"0 3 * * ? *"``).
            params: Pipeline parameters for every scheduled run (validated values); the others
                use their defaults. Every required parameter must be given.
            name: Schedule name (default: the SageMaker pipeline name, cut to 64).
            timezone: IANA time zone for the expression (default UTC).
            enabled: Create it paused with ``False``.

        Returns:
            The schedule's ARN.
        """
        from botocore.exceptions import ClientError

        params = dict(params or {})
        missing = [p.name for p in ir.params if p.required and p.name not in params]
        if missing:
            raise ParameterError(
                f"pipeline {ir.name!r}: a schedule needs a value for the required parameter(s) {', '.join(missing)}",
                pipeline=ir.name,
            )
        expression = _schedule_expression(cron)
        schedule_name = name or sagemaker_pipeline_name(ir, self.opts)[:64]
        if not _SCHEDULE_NAME_RE.match(schedule_name):
            raise ConfigError(
                f"schedule name {schedule_name!r} must be 1-64 of letters, digits, '-', '_' or '.'", backend=self.name
            )
        values = self._parameter_values(ir, params, True)
        pipeline_arn = self.deploy(ir, store)
        request: dict[str, Any] = {
            "Name": schedule_name,
            "ScheduleExpression": expression,
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "State": "ENABLED" if enabled else "DISABLED",
            "Description": f"mlpipe pipeline {ir.name}"[:512],
            "Target": {
                "Arn": pipeline_arn,
                "RoleArn": self.opts.schedule_role or self._role(),
                "SageMakerPipelineParameters": {"PipelineParameterList": values},
            },
        }
        if timezone:
            request["ScheduleExpressionTimezone"] = timezone
        scheduler = self._client("scheduler")
        with _aws("UpdateSchedule/CreateSchedule", pipeline=ir.name):
            try:
                return str(scheduler.update_schedule(**request)["ScheduleArn"])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                    raise
            return str(scheduler.create_schedule(**request)["ScheduleArn"])

    def unschedule(self, name: str) -> None:
        """Delete a schedule. Idempotent: a missing schedule is not an error."""
        from botocore.exceptions import ClientError

        scheduler = self._client("scheduler")
        with _aws("DeleteSchedule"):
            try:
                scheduler.delete_schedule(Name=name)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                    raise


def _schedule_expression(cron: str) -> str:
    text = cron.strip()
    if re.match(r"^(cron|rate|at)\(.+\)$", text):
        return text
    fields = text.split()
    if len(fields) == 6:
        return f"cron({text})"
    raise UnsupportedFeatureError(
        f"schedule {cron!r} is not an EventBridge Scheduler expression: use cron(minutes hours day-of-month month "
        "day-of-week year) such as cron(0 3 * * ? *), rate(1 day), or at(2026-12-01T03:00:00). A five-field "
        "Unix cron needs a year field and '?' in day-of-month or day-of-week",
        backend="sagemaker",
    )


def schedule_pipeline(
    pipeline: Pipeline,
    cron: str,
    *,
    profile: str | None = None,
    name: str | None = None,
    timezone: str | None = None,
    enabled: bool = True,
    **params: Any,
) -> str:
    """Schedule ``pipeline`` on the SageMaker backend of ``profile``; returns the schedule ARN.

    Parameters are validated as for ``Pipeline.run``; see :meth:`SageMakerBackend.schedule`.
    """
    values = pipeline.validate_params(params)
    _prof, backend, store = resolve_profile(profile, None)
    if not isinstance(backend, SageMakerBackend):
        raise ConfigError(
            f"profile {_prof.name!r} uses the {backend.name!r} backend, not sagemaker", profile=_prof.name
        )
    return backend.schedule(pipeline.ir, store, cron=cron, params=values, name=name, timezone=timezone, enabled=enabled)
