"""The ``kubeflow`` backend: compile to a KFP v2 spec, execute it with kfp.local, or submit it to a cluster.

This module ties the parts together and owns the run lifecycle (run records,
handles, status, cancel). The spec itself is built in ``compiler.py``, local
execution lives in ``local_runner.py`` and the API server is reached through
``client.py``. kfp is imported only when a method needs it.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from mlpipe.errors import BackendError, UnsupportedFeatureError
from mlpipe.extend import (
    ArtifactStore,
    Backend,
    BackendOptions,
    Capabilities,
    Run,
    RunHandle,
    RunPlan,
    RunRecord,
    RunState,
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
from mlpipe_kubeflow.background import (
    LocalRuns,
    close_after_engine,
    close_succeeded,
    execute_locally,
    refuse_in_local_mode,
    step_states,
)
from mlpipe_kubeflow.compiler import DEFAULT_IMAGE, PipelinePlan, plan, prune, write_spec
from mlpipe_kubeflow.naming import check_parameter_budget
from mlpipe_kubeflow.options import KubeflowOptions

__all__ = ["KubeflowBackend"]


class KubeflowBackend(Backend):
    """Kubeflow Pipelines (KFP v2).

    With ``mode = "cluster"`` (the default) :meth:`submit` sends the compiled
    spec to the KFP API server with ``kfp.Client``; with ``mode = "local"`` the
    same spec runs on this machine through kfp.local, and :meth:`run` returns
    the same :class:`~mlpipe.run.Run` as the local backend, sharing its cache.
    """

    name = "kubeflow"
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
    Options = KubeflowOptions

    def __init__(self, options: Mapping[str, Any] | BackendOptions | None = None, *, image: str | None = None) -> None:
        super().__init__(options, image=image)
        self._local = LocalRuns(self.name)
        self._clients: dict[tuple[str | None, str | None], Any] = {}
        self._checked: tuple[PipelineIR, PipelinePlan] | None = None

    @property
    def opts(self) -> KubeflowOptions:
        assert isinstance(self.options, KubeflowOptions)
        return self.options

    # -- compile ----------------------------------------------------------------------
    def plan(self, ir: PipelineIR, store: ArtifactStore, *, cache: bool = True) -> PipelinePlan:
        """Store the IR (shipping non-importable code) and decide the spec; refusals are raised here."""
        draft = self._draft(ir)
        return replace(
            draft,
            store=store.url,
            ir_digest=write_ir(store, ir),
            cache=cache,
            storage_options=task_storage_options(store.storage_options, self.name),
        )

    def check(self, ir: PipelineIR) -> None:
        """Refuse what KFP cannot express (names, sizes, resources), before anything is stored or run."""
        self._draft(ir)

    def _draft(self, ir: PipelineIR) -> PipelinePlan:
        """The plan without store and IR digest (the only fields those decide), once per IR object."""
        last = self._checked
        if last is not None and last[0] is ir:
            return last[1]
        super().check(ir)
        draft = plan(ir, self.opts, store="", ir_digest="", image=self.image)
        self._checked = (ir, draft)
        return draft

    def compile(self, ir: PipelineIR, path: str, *, store: ArtifactStore | None = None) -> str:
        """Write the KFP v2 pipeline spec (YAML) to ``path``.

        The spec's tasks read the IR from ``store`` (the profile's), where it is
        written now; submit the file with the KFP UI or ``kfp.Client`` and the
        tasks find it there.

        Raises:
            UnsupportedFeatureError: a step asks for what KFP cannot express (names the step and option).
        """
        write_spec(self.plan(ir, store if store is not None else open_store(None)), path)
        return path

    # -- submit / run -----------------------------------------------------------------
    def submit(
        self, ir: PipelineIR, store: ArtifactStore, *, params: Mapping[str, Any], run_id: str, cache: bool = True
    ) -> RunHandle:
        """Start a run and return its handle.

        The run id travels as the run parameter ``mlpipe_run_id``, so the
        tasks record themselves under it whatever the server's version; the
        handle's ``external_id`` is the KFP run id. With a ``schedule`` a
        recurring run is created instead and the handle names it
        (``data["kind"] == "recurring"``); each run it starts records itself
        under its KFP run id (``{{$.pipeline_job_uuid}}``, KFP >= 2.5).

        Raises:
            UnsupportedFeatureError: the store is not reachable from the cluster, no image is configured,
                or the parameters exceed KFP's budget.
            BackendError: the API server refused or could not be reached.
        """
        if self.opts.mode == "local":
            return self._submit_local(ir, store, params, run_id, cache)
        return self._submit_cluster(ir, store, params, run_id, cache)

    def run(
        self, ir: PipelineIR, store: ArtifactStore, *, params: Mapping[str, Any], run_id: str, cache: bool = True
    ) -> Run:
        """Submit, wait, and return the finished run as recorded in the store."""
        if self.opts.mode == "local":
            return self._execute_local(ir, store, params, run_id, cache, threading.Event())
        handle = self.submit(ir, store, params=params, run_id=run_id, cache=cache)
        status = self.wait(handle, timeout=self.opts.wait_timeout)
        record = RunRecord.load(store, handle.run_id)
        if status.state == "succeeded":
            close_succeeded(store, record, ir)
        else:
            ended = f"the KFP run ended {status.state}"
            close_after_engine(
                store,
                ir,
                record,
                engine_error=status.message or ended,
                cancelled=status.state == "cancelled",
                not_run=f"not run: {ended}",
            )
        return Run.load(store, handle.run_id)

    def _arguments(
        self, ir: PipelineIR, plan_: PipelinePlan, params: Mapping[str, Any], run_id: str | None
    ) -> dict[str, Any]:
        arguments = plan_.arguments(params, run_id)
        check_parameter_budget(ir.name, arguments, self.opts.max_parameter_bytes, "run parameters")
        return arguments

    def _submit_cluster(
        self, ir: PipelineIR, store: ArtifactStore, params: Mapping[str, Any], run_id: str, cache: bool
    ) -> RunHandle:
        from mlpipe_kubeflow import client as kfp_client

        opts = self.opts
        if store.url.startswith("memory://") or (store.is_local and not opts.shared_filesystem):
            raise UnsupportedFeatureError(
                f"kubeflow: the store {store.url} is on this machine, so the cluster's pods cannot reach it; "
                "use a bucket the cluster can read and write (s3://, gs://) as the profile's store, "
                'mode = "local" to run here, or shared_filesystem = true if the pods mount it at the same path',
                backend=self.name,
                option="store",
            )
        plan_ = self.plan(ir, store, cache=cache)
        unset = [t.step for t in plan_.tasks if t.image == DEFAULT_IMAGE and self.image is None]
        if unset:
            raise UnsupportedFeatureError(
                f"kubeflow: no container image for step(s) {unset}; set image in the profile or "
                "@mp.step(image=...). `mlpipe image FILE:PIPELINE` writes a Dockerfile for one",
                backend=self.name,
                step=unset[0],
                option="image",
            )
        # A schedule's runs each need their own id: they leave mlpipe_run_id at its default, the KFP run id.
        arguments = self._arguments(ir, plan_, params, None if opts.schedule else run_id)
        data: dict[str, Any] = {
            "mode": "cluster",
            "host": opts.host,
            "namespace": opts.namespace,
            "experiment": opts.experiment,
        }
        # Cache hits cost no pod: left out of the spec (a schedule's runs come later: each runs its whole spec).
        run_plan, cached = (None, {}) if opts.schedule else self._prune(ir, store, params, cache)
        if run_plan is not None and len(cached) == len(ir.steps):
            return self._fully_cached(ir, store, params, run_id, cache, run_plan, plan_.ir_digest, data)
        plan_ = prune(plan_, ir, cached)
        run_name = opts.run_name.format(pipeline=ir.name, run_id=run_id)
        with tempfile.TemporaryDirectory(prefix="mlpipe-kfp-") as tmp:
            spec = write_spec(plan_, os.path.join(tmp, f"{plan_.name}.yaml"))
            client = self._client(opts)
            if opts.schedule:
                sub = kfp_client.create_recurring_run(client, opts, spec, arguments, run_name)
            else:
                sub = kfp_client.create_run(client, opts, spec, arguments, run_name)
        if cached:
            data["pruned"] = sorted(cached)
        status: RunState = "running"
        if sub.recurring:
            data.update(kind="recurring", schedule=opts.kfp_cron, experiment_id=sub.experiment_id)
            status = "succeeded"
        record = RunRecord.open(
            store,
            ir,
            run_id,
            backend=self.name,
            params=params,
            status=status,
            ir_digest=plan_.ir_digest,
            cache=cache,
            kfp=data,
        )
        if run_plan is not None and cached:
            record_cached(record, ir, run_plan, frozenset(cached))
        if sub.recurring:
            record.update(ended=time.time())
        return RunHandle(
            backend=self.name,
            run_id=run_id,
            pipeline=ir.name,
            store=store.url,
            external_id=sub.external_id,
            url=sub.url,
            data=data,
        )

    def _prune(
        self, ir: PipelineIR, store: ArtifactStore, params: Mapping[str, Any], cache: bool
    ) -> tuple[RunPlan | None, dict[str, str]]:
        """The run's plan and the cache hits to leave out of the spec (step → key)."""
        if not cache:
            return None, {}
        run_plan = plan_run(ir, store, params, cache=cache, explain=False)
        return run_plan, run_plan.prunable(ir)

    def _fully_cached(
        self,
        ir: PipelineIR,
        store: ArtifactStore,
        params: Mapping[str, Any],
        run_id: str,
        cache: bool,
        run_plan: RunPlan,
        ir_digest: str,
        data: dict[str, Any],
    ) -> RunHandle:
        """Every step is a cache hit: nothing is sent to KFP; the run is recorded and closed here."""
        data = {**data, "kind": "cached"}
        close_cached_run(
            store, ir, run_id, run_plan, backend=self.name, params=params, ir_digest=ir_digest, cache=cache, kfp=data
        )
        return RunHandle(backend=self.name, run_id=run_id, pipeline=ir.name, store=store.url, data=data)

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
            schedule_message='schedule needs a cluster; kfp.local runs once (mode = "local")',
            store_hint="use a directory or a bucket",
        )
        plan_ = self.plan(ir, store, cache=cache)
        arguments = self._arguments(ir, plan_, params, run_id)
        run_plan, cached = self._prune(ir, store, params, cache)
        if run_plan is not None and len(cached) == len(ir.steps):
            data = {"mode": "local", "kind": "cached"}
            close_cached_run(
                store, ir, run_id, run_plan, backend=self.name, params=params, ir_digest=plan_.ir_digest,
                cache=cache, kfp=data,
            )  # fmt: skip
            return Run.load(store, run_id)
        plan_ = prune(plan_, ir, cached)
        record = RunRecord.open(
            store,
            ir,
            run_id,
            backend=self.name,
            params=params,
            ir_digest=plan_.ir_digest,
            index=open_index(store),
            cache=cache,
            kfp={"mode": "local", **({"pruned": sorted(cached)} if cached else {})},
        )
        if run_plan is not None and cached:
            record_cached(record, ir, run_plan, frozenset(cached))
        spec_file = f"{plan_.name}.yaml"
        return execute_locally(
            store, ir, record, lambda tmp: write_spec(plan_, os.path.join(tmp, spec_file)), arguments, cancel
        )

    # -- status / cancel --------------------------------------------------------------
    def _client(self, opts: KubeflowOptions) -> Any:
        """One ``kfp.Client`` per host and namespace (polling should not reconnect each time)."""
        from mlpipe_kubeflow import client as kfp_client

        key = (opts.host, opts.namespace)
        if key not in self._clients:
            self._clients[key] = kfp_client.connect(opts)
        return self._clients[key]

    def _options_for(self, handle: RunHandle) -> KubeflowOptions:
        data = handle.data
        return self.opts.model_copy(
            update={
                "host": data.get("host") or self.opts.host,
                "namespace": data.get("namespace") or self.opts.namespace,
            }
        )

    def status(self, handle: RunHandle) -> RunStatus:
        """The run's state: from this process for local runs, from the API server for cluster runs."""
        from mlpipe_kubeflow import client as kfp_client

        local = self._local.status(handle)
        if local is not None:
            return local
        steps = step_states(handle)
        if handle.data.get("kind") == "cached":
            return RunStatus(state="succeeded", message="every step was a cache hit: no task was submitted")
        if handle.data.get("kind") == "recurring":
            return RunStatus(
                state="succeeded",
                message=f"recurring run {handle.external_id} scheduled "
                f"({handle.data.get('schedule')}); each scheduled run is recorded under its KFP run id",
            )
        if not handle.external_id:
            raise BackendError(f"kubeflow: handle of run {handle.run_id} has no KFP run id", backend=self.name)
        opts = self._options_for(handle)
        state, message = kfp_client.run_state(self._client(opts), opts, handle.external_id)
        return RunStatus(state=state, message=message, steps=steps)

    def cancel(self, handle: RunHandle) -> None:
        """Stop the run; a finished run (or an already cancelled one) is left alone."""
        from mlpipe_kubeflow import client as kfp_client

        if self._local.cancel(handle) or not handle.external_id:  # a fully cached run has nothing to stop
            return
        opts = self._options_for(handle)
        client = self._client(opts)
        if handle.data.get("kind") == "recurring":
            kfp_client.disable_schedule(client, opts, handle.external_id)
            return
        state, _ = kfp_client.run_state(client, opts, handle.external_id)
        if state in ("succeeded", "failed", "cancelled"):
            return
        kfp_client.terminate(client, opts, handle.external_id)
