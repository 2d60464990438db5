"""The ``vertex`` backend: the Kubeflow spec with Vertex settings, submitted as a Vertex AI PipelineJob.

This module owns the run lifecycle: everything is validated before the first
request (options, store, image, names, labels, resources, parameters, request
size), then the job or schedule is created, the run's record written and the
handle returned. The mlpipe run id of a submitted run *is* the job id mlpipe
chose (``<pipeline>-<launcher run id>``): every task records itself under
``{{$.pipeline_job_name}}``, so the handle, the records in the store and the
Vertex console agree. ``status`` asks Vertex for the job's state and writes
the end into ``run.json`` once the job has ended.

With ``mode = "local"`` the same compiled spec runs on this machine through
the Kubeflow backend's kfp.local adapter, against the same store.
The spec is built in ``compiler.py``; API calls live in ``client.py``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from mlpipe_kubeflow.background import (
    LocalRuns,
    close_after_engine,
    close_succeeded,
    execute_locally,
    refuse_in_local_mode,
    step_states,
)
from mlpipe_kubeflow.compiler import DEFAULT_IMAGE, prune
from mlpipe_kubeflow.naming import check_parameter_budget

from mlpipe.errors import BackendError, MlpipeError, UnsupportedFeatureError
from mlpipe.extend import (
    ArtifactStore,
    Backend,
    BackendOptions,
    Capabilities,
    Run,
    RunHandle,
    RunPlan,
    RunRecord,
    RunStatus,
    close_cached_run,
    open_index,
    open_store,
    plan_run,
    record_cached,
    task_storage_options,
    write_ir,
)
from mlpipe.ir import PipelineIR
from mlpipe_vertex.compiler import (
    VertexPlan,
    build_spec,
    check_arguments,
    job_request,
    vertex_plan,
    write_vertex_spec,
)
from mlpipe_vertex.naming import BACKEND, check_labels, job_id, label_value
from mlpipe_vertex.options import VertexOptions

__all__ = ["JobRequest", "VertexBackend"]

_GCS = ("gs://", "gcs://")
_PLACEHOLDER_DIGEST = "0" * 64
# Google front ends refuse request bodies over 10 MiB; a spec that large is refused here instead.
MAX_REQUEST_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class JobRequest:
    """Everything a submission sends, decided and checked before the first request."""

    parent: str
    job_id: str
    body: dict[str, Any]
    ir_digest: str
    pipeline_root: str

    @property
    def name(self) -> str:
        return f"{self.parent}/pipelineJobs/{self.job_id}"


class VertexBackend(Backend):
    """Vertex AI Pipelines.

    ``submit`` creates a ``PipelineJob`` (or, with ``schedule``, a Vertex
    schedule) through ``google.cloud.aiplatform_v1``; ``status`` and ``cancel``
    address the job by its resource name, kept in the handle. Nothing else is
    created: no bucket, no IAM binding, no experiment.
    """

    name = BACKEND
    capabilities = Capabilities(
        parallel=True,
        resources=True,
        retries=True,
        timeouts=True,
        schedules=True,
        conditions=True,
        map=True,
        prune=True,
    )
    Options = VertexOptions

    def __init__(self, options: Mapping[str, Any] | BackendOptions | None = None, *, image: str | None = None) -> None:
        super().__init__(options, image=image)
        self._local = LocalRuns(self.name)

    @property
    def opts(self) -> VertexOptions:
        assert isinstance(self.options, VertexOptions)
        return self.options

    # -- compile ----------------------------------------------------------------------
    def check(self, ir: PipelineIR) -> None:
        """Refuse what Vertex cannot express (names, resources, sizes), before anything is stored or sent."""
        super().check(ir)
        vertex_plan(ir, self.opts, store="", ir_digest="", image=self.image)

    def plan(self, ir: PipelineIR, store: ArtifactStore, *, cache: bool = True) -> VertexPlan:
        """Store the IR (shipping non-importable code) and decide the spec."""
        self.check(ir)
        return vertex_plan(
            ir,
            self.opts,
            store=store.url,
            ir_digest=write_ir(store, ir),
            image=self.image,
            cache=cache,
            storage_options=task_storage_options(store.storage_options, self.name),
        )

    def compile(self, ir: PipelineIR, path: str, *, store: ArtifactStore | None = None) -> str:
        """Write the pipeline spec Vertex runs (KFP v2 YAML) to ``path``.

        The tasks read the IR from ``store`` (the profile's, a ``gs://`` bucket),
        where it is written now. The file can be run from the Vertex console or
        with ``aiplatform.PipelineJob(template_path=...)``.

        Raises:
            UnsupportedFeatureError: the store is not on GCS, or a step asks for what Vertex cannot express.
        """
        if store is None or not store.url.startswith(_GCS):
            self._require_gcs(store.url if store is not None else "(the default store .mlpipe)")
        assert store is not None
        return write_vertex_spec(build_spec(self.plan(ir, store)), path)

    def _require_gcs(self, url: str) -> None:
        if not url.startswith(_GCS):
            raise UnsupportedFeatureError(
                f"vertex: the store {url} is not on Google Cloud Storage, so Vertex tasks cannot read or write it; "
                'use a gs://bucket/prefix store in the profile (in the job\'s region), or mode = "local" to run '
                "the compiled spec on this machine",
                backend=self.name,
                option="store",
            )

    def pipeline_root(self, store: ArtifactStore) -> str:
        """Where Vertex keeps its own task outputs: the ``pipeline_root`` option, else ``<store>/vertex``."""
        return self.opts.pipeline_root or f"{store.url.rstrip('/')}/vertex"

    # -- the request ----------------------------------------------------------------
    def _labels(self, ir: PipelineIR, run_id: str) -> dict[str, str]:
        labels = {"mlpipe-pipeline": label_value(ir.name) or "pipeline"}
        if not self.opts.schedule:  # every job a schedule starts carries the same labels
            labels["mlpipe-run"] = label_value(run_id)
        labels.update(self.opts.labels)
        try:
            check_labels(labels)
        except ValueError as exc:
            raise UnsupportedFeatureError(f"vertex: {exc}", backend=self.name, option="labels") from None
        return labels

    def _run_id_argument(self, jid: str) -> str | None:
        """The ``mlpipe_run_id`` run parameter: the job id, or none for a schedule (each job records under its own
        job id, ``{{$.pipeline_job_name}}``)."""
        return None if self.opts.schedule else jid

    def _validate(
        self, ir: PipelineIR, store: ArtifactStore, params: Mapping[str, Any], run_id: str, cache: bool
    ) -> tuple[str, VertexPlan]:
        """Every check that needs no request and no store write; the job id."""
        opts = self.opts
        if opts.project is None:
            raise UnsupportedFeatureError(
                "vertex: no project; set options.project in the profile (the Google Cloud project id)",
                backend=self.name,
                option="project",
            )
        self._require_gcs(store.url)
        self._require_gcs(self.pipeline_root(store))
        jid = job_id(ir.name, run_id)
        draft = vertex_plan(ir, opts, store=store.url, ir_digest=_PLACEHOLDER_DIGEST, image=self.image, cache=cache)
        unset = [t.step for t in draft.kfp.tasks if t.image == DEFAULT_IMAGE and self.image is None]
        if unset:
            raise UnsupportedFeatureError(
                f"vertex: no container image for step(s) {unset}; set image in the profile (an Artifact Registry "
                "image with mlpipe, mlpipe-vertex's runtime dependencies and your code) or @mp.step(image=...)",
                backend=self.name,
                step=unset[0],
                option="image",
            )
        arguments = draft.kfp.arguments(params, self._run_id_argument(jid))
        check_parameter_budget(ir.name, arguments, opts.max_parameter_bytes, "run parameters")
        spec = build_spec(draft)
        check_arguments(ir.name, spec, {**params, **arguments})
        body = self._body(ir, store, spec, arguments, jid)
        size = len(json.dumps(body))  # the IR digest is a placeholder of the same length
        if size > MAX_REQUEST_BYTES:
            raise UnsupportedFeatureError(
                f"vertex: the PipelineJob request is {size:,} bytes, over the 10 MiB Google APIs accept; "
                "pass large values as step outputs, not parameters, or split the pipeline",
                backend=self.name,
                option="size",
            )
        return jid, draft

    def _body(
        self, ir: PipelineIR, store: ArtifactStore, spec: dict[str, Any], arguments: Mapping[str, Any], jid: str
    ) -> dict[str, Any]:
        opts = self.opts
        return job_request(
            spec,
            opts,
            display_name=opts.display_name.format(pipeline=ir.name, run_id=jid),
            pipeline_root=self.pipeline_root(store),
            arguments=arguments,
            labels=self._labels(ir, jid),
        )

    def request(
        self,
        ir: PipelineIR,
        store: ArtifactStore,
        *,
        params: Mapping[str, Any],
        run_id: str,
        cache: bool = True,
        pruned: Mapping[str, str] | None = None,
    ) -> JobRequest:
        """The PipelineJob a submission would create, fully validated; stores the IR, sends nothing to Vertex.

        ``pruned``: cache hits (step → key) left out of the spec; their consumers read them by key.

        Raises:
            UnsupportedFeatureError: options, store, image or pipeline that Vertex would refuse.
            ParameterError: parameter values that do not match the spec.
        """
        opts = self.opts
        jid, _draft = self._validate(ir, store, params, run_id, cache)
        vplan = self.plan(ir, store, cache=cache)
        if pruned:
            vplan = replace(vplan, kfp=prune(vplan.kfp, ir, pruned))
        body = self._body(ir, store, build_spec(vplan), vplan.kfp.arguments(params, self._run_id_argument(jid)), jid)
        return JobRequest(
            parent=f"projects/{opts.project}/locations/{opts.location}",
            job_id=jid,
            body=body,
            ir_digest=vplan.kfp.ir_digest,
            pipeline_root=self.pipeline_root(store),
        )

    # -- submit / run -----------------------------------------------------------------
    def submit(
        self, ir: PipelineIR, store: ArtifactStore, *, params: Mapping[str, Any], run_id: str, cache: bool = True
    ) -> RunHandle:
        """Create the PipelineJob (or the schedule) and return its handle.

        The handle's ``run_id`` is the job id (``<pipeline>-<run_id>``, valid
        for Vertex whatever the pipeline is called); ``external_id`` is the
        job's resource name; ``data["requested_run_id"]`` keeps ``run_id``.
        With a ``schedule`` a Vertex schedule is created instead and the handle
        names it (``data["kind"] == "schedule"``); each job it starts records
        itself under its own job id.

        Raises:
            UnsupportedFeatureError: refused before any request (see :meth:`request`).
            BackendError: Vertex refused or could not be reached.
        """
        if self.opts.mode == "local":
            return self._submit_local(ir, store, params, run_id, cache)
        from mlpipe_vertex import client

        opts = self.opts
        self._validate(ir, store, params, run_id, cache)  # every refusal before the store is read
        # Cache hits cost no task: left out of the job's spec (a schedule's jobs come later and run it whole).
        run_plan = None if opts.schedule or not cache else plan_run(ir, store, params, cache=cache, explain=False)
        pruned = run_plan.prunable(ir) if run_plan is not None else {}
        if run_plan is not None and len(pruned) == len(ir.steps):
            return self._fully_cached(ir, store, params, run_id, cache, run_plan)
        req = self.request(ir, store, params=params, run_id=run_id, cache=cache, pruned=pruned)
        data: dict[str, Any] = {
            "mode": "vertex",
            "project": opts.project,
            "location": opts.location,
            "api_endpoint": opts.api_endpoint,
            "transport": opts.transport,
            "credentials": opts.credentials,
            "requested_run_id": run_id,
            "pipeline_root": req.pipeline_root,
        }
        if opts.schedule:
            display = req.body["displayName"]
            name = client.create_schedule(opts, req.parent, req.body, display)
            data.update(kind="schedule", schedule=opts.cron)
            record = RunRecord.open(
                store,
                ir,
                run_id,
                backend=BACKEND,
                params=params,
                status="succeeded",
                ir_digest=req.ir_digest,
                cache=cache,
                vertex={**data, "schedule_name": name},
            )
            record.update(ended=time.time())
            return RunHandle(
                backend=self.name,
                run_id=run_id,
                pipeline=ir.name,
                store=store.url,
                external_id=name,
                url=f"https://console.cloud.google.com/vertex-ai/pipelines/schedules?project={opts.project}",
                data=data,
            )
        name, state = client.create_job(opts, req.parent, req.body, req.job_id)
        data["kind"] = "job"
        if pruned:
            data["pruned"] = sorted(pruned)
        record = RunRecord.open(
            store,
            ir,
            req.job_id,
            backend=BACKEND,
            params=params,
            status="running" if state == "running" else "pending",
            ir_digest=req.ir_digest,
            cache=cache,
            vertex={**data, "job": name},
        )
        if run_plan is not None and pruned:
            record_cached(record, ir, run_plan, frozenset(pruned))
        return RunHandle(
            backend=self.name,
            run_id=req.job_id,
            pipeline=ir.name,
            store=store.url,
            external_id=name,
            url=(
                f"https://console.cloud.google.com/vertex-ai/locations/{opts.location}/pipelines/runs/"
                f"{req.job_id}?project={opts.project}"
            ),
            data=data,
        )

    def _fully_cached(
        self,
        ir: PipelineIR,
        store: ArtifactStore,
        params: Mapping[str, Any],
        run_id: str,
        cache: bool,
        run_plan: RunPlan,
    ) -> RunHandle:
        """Every step is a cache hit: no job is created; the run is recorded and closed under its job id."""
        jid, _draft = self._validate(ir, store, params, run_id, cache)
        data = {"mode": "vertex", "kind": "cached", "requested_run_id": run_id}
        close_cached_run(
            store,
            ir,
            jid,
            run_plan,
            backend=BACKEND,
            params=params,
            ir_digest=write_ir(store, ir),
            cache=cache,
            vertex=data,
        )
        return RunHandle(backend=self.name, run_id=jid, pipeline=ir.name, store=store.url, data=data)

    def run(
        self, ir: PipelineIR, store: ArtifactStore, *, params: Mapping[str, Any], run_id: str, cache: bool = True
    ) -> Run:
        """Submit, wait for the job's end, and return the run as recorded in the store."""
        if self.opts.mode == "local":
            return self._execute_local(ir, store, params, run_id, cache, threading.Event())
        handle = self.submit(ir, store, params=params, run_id=run_id, cache=cache)
        status = self.wait(handle, timeout=self.opts.wait_timeout, poll=self.opts.poll_interval)
        if handle.data.get("kind") == "job":
            # Steps Vertex never started (downstream of a failure) get a `skipped` record saying why.
            close_after_engine(
                store,
                ir,
                RunRecord.load(store, handle.run_id),
                engine_error=status.message if status.state == "failed" else None,
                cancelled=status.state == "cancelled",
            )
        return Run.load(store, handle.run_id)

    def _submit_local(
        self, ir: PipelineIR, store: ArtifactStore, params: Mapping[str, Any], run_id: str, cache: bool
    ) -> RunHandle:
        return self._local.start(
            ir, store, run_id, lambda cancel: self._execute_local(ir, store, params, run_id, cache, cancel)
        )

    def _execute_local(
        self,
        ir: PipelineIR,
        store: ArtifactStore,
        params: Mapping[str, Any],
        run_id: str,
        cache: bool,
        cancel: threading.Event,
    ) -> Run:
        refuse_in_local_mode(
            self.name,
            store,
            schedule=self.opts.schedule,
            schedule_message='schedule needs Vertex; mode = "local" runs the spec once',
            store_hint="use a gs:// bucket (or a directory)",
        )
        vplan = self.plan(ir, store, cache=cache)
        run_plan = plan_run(ir, store, params, cache=cache, explain=False) if cache else None
        pruned = run_plan.prunable(ir) if run_plan is not None else {}
        if run_plan is not None and len(pruned) == len(ir.steps):
            close_cached_run(
                store, ir, run_id, run_plan, backend=BACKEND, params=params, ir_digest=vplan.kfp.ir_digest,
                cache=cache, vertex={"mode": "local", "kind": "cached"},
            )  # fmt: skip
            return Run.load(store, run_id)
        vplan = replace(vplan, kfp=prune(vplan.kfp, ir, pruned))
        spec = build_spec(vplan)
        arguments = vplan.kfp.arguments(params, run_id)
        check_parameter_budget(ir.name, arguments, self.opts.max_parameter_bytes, "run parameters")
        check_arguments(ir.name, spec, arguments)
        record = RunRecord.open(
            store,
            ir,
            run_id,
            backend=BACKEND,
            params=params,
            ir_digest=vplan.kfp.ir_digest,
            index=open_index(store),
            cache=cache,
            vertex={"mode": "local", **({"pruned": sorted(pruned)} if pruned else {})},
        )
        if run_plan is not None and pruned:
            record_cached(record, ir, run_plan, frozenset(pruned))
        return execute_locally(
            store,
            ir,
            record,
            lambda tmp: write_vertex_spec(spec, os.path.join(tmp, f"{vplan.kfp.name}.yaml")),
            arguments,
            cancel,
        )

    # -- status / cancel --------------------------------------------------------------
    def _options_for(self, handle: RunHandle) -> VertexOptions:
        """The options a handle was submitted with (a later process may have another profile, or none)."""
        data = handle.data
        update = {
            key: data[key]
            for key in ("project", "location", "api_endpoint", "transport", "credentials")
            if data.get(key) is not None
        }
        return self.opts.model_copy(update=update)

    def status(self, handle: RunHandle) -> RunStatus:
        """The run's state: from this process for local runs, from Vertex for jobs.

        Once Vertex reports an end, the end is written into the run's record.
        """
        from mlpipe_vertex import client

        local = self._local.status(handle)
        if local is not None:
            return local
        steps = step_states(handle)
        if handle.data.get("kind") == "cached":
            return RunStatus(state="succeeded", message="every step was a cache hit: no job was created")
        if handle.data.get("kind") == "schedule":
            return RunStatus(
                state="succeeded",
                message=f"schedule {handle.external_id} created "
                f"({handle.data.get('schedule')}); each job it starts is recorded under its own job id",
            )
        if not handle.external_id:
            raise BackendError(f"vertex: handle of run {handle.run_id} has no job name", backend=self.name)
        state, message = client.job_state(self._options_for(handle), handle.external_id)
        status = RunStatus(state=state, message=message, steps=steps)
        if status.done:
            _close_run_doc(handle, status)
        return status

    def cancel(self, handle: RunHandle) -> None:
        """Cancel the job (pause the schedule); a job that has ended is left alone."""
        from mlpipe_vertex import client

        if self._local.cancel(handle) or not handle.external_id:
            return
        opts = self._options_for(handle)
        if handle.data.get("kind") == "schedule":
            client.pause_schedule(opts, handle.external_id)
            return
        state, _ = client.job_state(opts, handle.external_id)
        if state in ("succeeded", "failed", "cancelled"):
            return
        client.cancel_job(opts, handle.external_id)


def _close_run_doc(handle: RunHandle, status: RunStatus) -> None:
    """Write the end of a job into its record (the tasks write only their own)."""
    try:
        store = open_store(handle.store)
        if not RunRecord.exists(store, handle.run_id):
            return
        record = RunRecord.load(store, handle.run_id)
        if status.state == "succeeded":
            close_succeeded(store, record)  # with the steps of the branches not taken
        else:
            record.close_once(status.state, error=status.message)  # type: ignore[arg-type]
    except (MlpipeError, OSError):  # the state is still reported; the record catches up on the next status()
        return
