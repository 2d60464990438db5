"""The Dask backend: every step a Dask task on a real cluster, all data through the shared store.

``submit`` checks that every worker can read the store and offers the
resources the steps ask for, writes the compiled pipeline and the run's
record, and starts the run's driver on the cluster (see
:mod:`mlpipe_dask.tasks`); it returns at once. The launcher keeps one client
per scheduler address, and one ``LocalCluster`` on 127.0.0.1 per set of
options when the profile names no address, for the life of the process.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mlpipe.errors import BackendError, ConfigError, MlpipeError, UnsupportedFeatureError
from mlpipe.extend import (
    TERMINAL,
    ArtifactStore,
    Backend,
    BackendOptions,
    Capabilities,
    PipelineIR,
    RunHandle,
    RunRecord,
    RunStatus,
    load_step_records,
    open_index,
    open_store,
    ship,
    write_ir,
)
from mlpipe_dask.options import DaskOptions
from mlpipe_dask.tasks import (
    cancel_marker,
    drive,
    driver_key,
    driver_marker,
    driver_state,
    end_marker,
    probe,
    task_resources,
)

if TYPE_CHECKING:
    from distributed import Client, Future, LocalCluster

__all__ = ["DaskBackend", "encode_params"]

_lock = threading.Lock()
_clients: dict[str, Client] = {}
_clusters: dict[str, LocalCluster] = {}


def encode_params(ir: PipelineIR, params: Mapping[str, Any]) -> dict[str, str]:
    """Parameters as the runtime's text (``str`` as is, everything else JSON), decoded by their declared kind."""
    import json

    kinds = {p.name: p.kind for p in ir.params}
    return {
        name: value if kinds.get(name) == "str" and isinstance(value, str) else json.dumps(value)
        for name, value in params.items()
    }


class DaskBackend(Backend):
    """Runs each step as a task on a Dask cluster; workers read and write the store directly.

    Retries and timeouts are the step executor's, as on every backend; a task
    whose worker dies is run again by Dask on another worker, and the attempt
    ledger in the store keeps ``retries=N`` bounding the step's runs to N + 1.
    """

    name = "dask"
    capabilities = Capabilities(
        parallel=True, resources=True, retries=True, timeouts=True, gates=True, conditions=True, map=True
    )
    Options = DaskOptions

    def __init__(self, options: Mapping[str, Any] | BackendOptions | None = None, *, image: str | None = None) -> None:
        super().__init__(options, image=image)
        self._drivers: dict[str, Future] = {}
        self._synced: set[str] = set()

    @property
    def opts(self) -> DaskOptions:
        assert isinstance(self.options, DaskOptions)
        return self.options

    # -- the cluster ---------------------------------------------------------------------
    def _cluster_key(self) -> str:
        opts = self.opts
        if opts.address:
            return opts.address
        return f"local:{opts.model_dump_json(exclude={'address', 'connect_timeout'})}"

    def client(self) -> Client:
        """The client of this backend's cluster, connected (or the local cluster started) on first use.

        Raises:
            BackendError: the scheduler cannot be reached, or no worker joined it in time.
        """
        key = self._cluster_key()
        with _lock:
            found = _clients.get(key)
            if found is not None and found.status == "running":
                return found
            client = self._connect() if self.opts.address else self._start_local(key)
            _clients[key] = client
        try:
            client.wait_for_workers(1, timeout=self.opts.connect_timeout)
        except TimeoutError:
            raise BackendError(
                f"dask: no worker joined the scheduler at {client.scheduler.address} within "
                f"{self.opts.connect_timeout:g} s. Start one with `dask worker {client.scheduler.address}`",
                backend=self.name,
            ) from None
        return client

    def _connect(self) -> Client:
        from distributed import Client

        address = self.opts.address
        try:
            return Client(address, timeout=self.opts.connect_timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise BackendError(
                f"dask: cannot reach the scheduler at {address} within {self.opts.connect_timeout:g} s "
                f"({type(exc).__name__}: {exc}). Start it with `dask scheduler`, check options.address, or "
                "remove the address to run on a local cluster started by mlpipe",
                backend=self.name,
            ) from exc

    def _start_local(self, key: str) -> Client:
        from distributed import Client, LocalCluster
        from distributed.worker_memory import parse_memory_limit

        opts = self.opts
        memory = parse_memory_limit(opts.memory_limit, opts.threads_per_worker, logger=logging.getLogger(__name__))
        resources = {"cpu": float(opts.threads_per_worker), **opts.worker_resources}
        if memory:
            resources.setdefault("memory", float(memory))
        cluster = LocalCluster(
            n_workers=opts.n_workers,
            threads_per_worker=opts.threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # its HTTP server (health, metrics) too: never all interfaces
            worker_dashboard_address="127.0.0.1:0",
            memory_limit=opts.memory_limit,
            resources=resources,
            silence_logs=logging.ERROR,
        )
        _clusters[key] = cluster
        return Client(cluster, set_as_default=False)

    def close(self) -> None:
        """Disconnect from the cluster; stop the local cluster if this backend's options started one."""
        key = self._cluster_key()
        with _lock:
            client = _clients.pop(key, None)
            cluster = _clusters.pop(key, None)
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def __enter__(self) -> DaskBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- checks ----------------------------------------------------------------------------
    def check(self, ir: PipelineIR) -> None:
        super().check(ir)
        for spec in ir.steps:
            for field in ("accelerator", "instance_type"):
                if spec.resources.get(field):
                    raise UnsupportedFeatureError(
                        f"backend 'dask' cannot honour resources({field}={spec.resources[field]!r}) on step "
                        f"{spec.name!r}: Dask workers offer counted resources (cpu, memory, gpu), not machine or "
                        "accelerator types. Drop it, or run that step on a backend that chooses machines",
                        backend=self.name,
                        step=spec.name,
                    )

    def _shared_url(self, store: ArtifactStore) -> str:
        url = store.url
        if url.startswith("memory://"):
            raise UnsupportedFeatureError(
                f"dask: the store {url} lives in this process's memory, which the Dask workers cannot see. Use a "
                "store every worker can reach: an absolute local path when the workers run on this machine, or "
                'a bucket (store = "s3://bucket/prefix") for a cluster of several machines',
                backend=self.name,
                option="store",
            )
        if "://" not in url and not os.path.isabs(url):
            raise UnsupportedFeatureError(
                f"dask: the store path {url!r} is relative, so each worker would resolve it against its own "
                "working directory. Give the profile an absolute store path or a bucket URL",
                backend=self.name,
                option="store",
            )
        return url

    def _probe(self, client: Client, store: ArtifactStore, rel: str) -> None:
        """Refuse before the run starts when a worker cannot read what the launcher just wrote."""
        try:
            seen: dict[str, dict[str, Any]] = client.run(probe, store.url, store.storage_options, rel)
        except Exception as exc:  # the worker could not even run the probe: no mlpipe-dask there
            raise BackendError(
                f"dask: a worker of {client.scheduler.address} cannot run mlpipe's tasks ({type(exc).__name__}: "
                f"{exc}). Install mlpipe and mlpipe-dask, the same versions as here, on every worker",
                backend=self.name,
            ) from exc
        blind = {address: info for address, info in seen.items() if info.get("error")}
        if blind:
            listed = "; ".join(
                f"{address} on {info['host']}: {info['error']}" for address, info in sorted(blind.items())
            )
            raise ConfigError(
                f"dask: {len(blind)} of {len(seen)} workers cannot reach the store {store.url} ({listed}). Every "
                "worker reads and writes the store directly: use a path mounted at the same place on every "
                "machine, or a bucket (s3://...) the workers have credentials for",
                backend=self.name,
                option="store",
            )

    def _check_resources(self, client: Client, ir: PipelineIR) -> None:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        offered = [dict(info.get("resources") or {}) for info in workers.values()]
        for spec in ir.steps:
            wanted = task_resources(spec)
            if not wanted or any(all(w.get(k, 0) >= v for k, v in wanted.items()) for w in offered):
                continue
            asked = ", ".join(f"{k}={v:g}" for k, v in wanted.items())
            flag = asked.replace(", ", ",")
            have = "; ".join(", ".join(f"{k}={v:g}" for k, v in w.items()) or "none" for w in offered)
            raise UnsupportedFeatureError(
                f"dask: step {spec.name!r} asks for {asked} (resources=), and no worker of the cluster at "
                f"{client.scheduler.address} declares that much (workers offer: {have}), so its task would wait "
                f'forever. Start a worker with `dask worker {client.scheduler.address} --resources "{flag}"` '
                "(memory in bytes), or lower the step's resources",
                backend=self.name,
                step=spec.name,
            )

    # -- the contract ------------------------------------------------------------------------
    def submit(
        self,
        ir: PipelineIR,
        store: ArtifactStore,
        *,
        params: Mapping[str, Any],
        run_id: str,
        cache: bool = True,
    ) -> RunHandle:
        """Start the run's driver on the cluster and return at once.

        Raises:
            UnsupportedFeatureError: an in-memory or relative store, or resources no worker offers.
            ConfigError: a worker cannot reach the store.
            BackendError: the scheduler cannot be reached, or its workers lack mlpipe-dask.
        """
        from distributed import fire_and_forget

        self.check(ir)
        url = self._shared_url(store)
        client = self.client()
        shipped = ship(ir, store)
        digest = write_ir(store, shipped)
        self._probe(client, store, f"pipelines/{digest}.json")
        self._check_resources(client, ir)
        address = str(client.scheduler.address)
        RunRecord.open(
            store,
            shipped,
            run_id,
            backend=self.name,
            params=params,
            ir_digest=digest,
            cache=cache,
            # The launcher is not the run's process (the driver on the cluster is, see dask-driver.json): its
            # host and pid stay out of the top level, where they would make the run look interrupted once the
            # launcher exits.
            dask={
                "scheduler": address,
                "driver": driver_key(run_id),
                "heartbeat": self.opts.heartbeat,
                "launcher": {"host": socket.gethostname(), "pid": os.getpid()},
            },
        )
        ref = {
            "store": url,
            "storage_options": store.storage_options,
            "ir": digest,
            "run_id": run_id,
            "params": encode_params(ir, params),
            "cache": cache,
            "heartbeat": self.opts.heartbeat,
        }
        future = client.submit(drive, ref, key=driver_key(run_id), pure=False)
        fire_and_forget(future)
        self._drivers[run_id] = future
        return RunHandle(
            backend=self.name,
            run_id=run_id,
            pipeline=ir.name,
            store=url,
            external_id=driver_key(run_id),
            url=client.dashboard_link if self.opts.address else None,
            data={"scheduler": address},
        )

    def _store(self, handle: RunHandle) -> ArtifactStore:
        return open_store(handle.store)

    def status(self, handle: RunHandle) -> RunStatus:
        """The run's state from its records in the store (any process can ask).

        When this process submitted the run and its driver task failed (the
        driver's worker died more often than Dask allows), the run is closed as
        failed here, with Dask's reason. In any process, a run whose driver
        stopped beating and that the scheduler no longer runs (or whose
        scheduler is gone) is closed as failed, ``interrupted: ...`` with the
        evidence: a driver lost with its cluster never leaves a run ``running``.
        """
        store = self._store(handle)
        if not RunRecord.exists(store, handle.run_id):
            raise BackendError(f"dask: run {handle.run_id} has no record in {store.url}", backend=self.name)
        record = RunRecord.load(store, handle.run_id)
        doc = record.doc
        if doc.get("status") not in TERMINAL and store.has(end_marker(handle.run_id)):
            record.update(**store.get_json(end_marker(handle.run_id)))  # the driver's end, lost to a concurrent write
        future = self._drivers.get(handle.run_id)
        if doc.get("status") not in TERMINAL and future is not None and future.status in ("error", "cancelled"):
            reason = "cancelled by the scheduler" if future.status == "cancelled" else repr(future.exception())
            record.close("failed", error=f"the run's driver task ended: {reason}")
        if doc.get("status") not in TERMINAL:
            lost = self._driver_lost(store, handle.run_id, doc)
            if lost is not None:
                self._close_orphaned(store, record, lost)
                doc = record.doc
        steps = {name: str(r.get("status")) for name, r in load_step_records(store, handle.run_id).items()}
        state = str(doc.get("status", "running"))
        if state in TERMINAL and handle.run_id not in self._synced:
            open_index(store).sync_run(store, handle.run_id)
            self._synced.add(handle.run_id)
            self._drivers.pop(handle.run_id, None)
        return RunStatus(state=state, message=doc.get("error"), steps=steps)

    def _driver_lost(self, store: ArtifactStore, run_id: str, doc: Mapping[str, Any]) -> str | None:
        """Why the run's driver is gone for good (its heartbeat stopped and the scheduler confirms), or None.

        A driver beats every ``heartbeat`` seconds; two missed beats (or none
        within two beats plus ``connect_timeout`` of the submission) make this
        process ask the scheduler about the driver's task. A driver that is
        queued, or being restarted on another worker, is still running.
        """
        section = doc.get("dask") or {}
        every = float(section.get("heartbeat") or 5.0)
        now = time.time()
        marker = driver_marker(run_id)
        beat = store.get_json(marker) if store.has(marker) else None
        if beat is not None:
            age = now - float(beat.get("beat", 0.0))
            if age <= 2 * every:
                return None
            heard = (
                f"its driver (pid {beat.get('pid')} on {beat.get('host')}, Dask worker {beat.get('worker')}) "
                f"last beat {age:.0f} s ago"
            )
        else:
            age = now - float(doc.get("started") or now)
            if age <= 2 * every + self.opts.connect_timeout:
                return None
            heard = f"its driver never started ({age:.0f} s since the run was submitted)"
        address, key = section.get("scheduler"), section.get("driver") or driver_key(run_id)
        if not address:
            return f"interrupted: {heard}"
        try:
            from distributed import Client

            with Client(address, timeout=min(self.opts.connect_timeout, 5.0), set_as_default=False) as client:
                state, workers = client.run_on_scheduler(driver_state, key)
        except (OSError, TimeoutError) as exc:
            return (
                f"interrupted: {heard}, and the scheduler at {address} cannot be reached ({type(exc).__name__}): "
                "the cluster was stopped or lost. Finished steps are cached; submit the run again to go on"
            )
        if state in ("waiting", "queued", "no-worker", "processing", "memory") and workers:
            return None  # running, or waiting for a free thread: a restarted driver beats again when it starts
        if state is None:
            why = "no longer knows the driver's task"
        elif not workers:
            why = f"has no worker left to run the driver's task ({state})"
        else:
            why = f"has the driver's task {state}"
        return (
            f"interrupted: {heard}, and the scheduler at {address} {why}. Finished steps are cached; submit the "
            "run again to go on"
        )

    def _close_orphaned(self, store: ArtifactStore, record: RunRecord, reason: str) -> None:
        """Close a run whose driver is gone: its unfinished steps get records, the run fails with ``reason``."""
        from mlpipe.extend import load_ir

        try:
            ir = load_ir(store, str(record.doc["ir"]))
            record.settle(ir, engine_error=reason, not_run="not run: the run's driver was lost")
        except (KeyError, MlpipeError):  # no IR to settle by: the run's end still says why
            pass
        record.close_once("failed", error=reason)

    def wait(self, handle: RunHandle, *, timeout: float | None = None, poll: float = 2.0) -> RunStatus:
        """Wait on the driver task when this process started it; else poll the store."""
        future = self._drivers.get(handle.run_id)
        if future is not None:
            try:
                future.result(timeout=timeout)
            except TimeoutError:
                raise BackendError(
                    f"run {handle.run_id} on dask still running after {timeout:g} s", run_id=handle.run_id
                ) from None
            except Exception:  # the driver failed: status() records why
                pass
        return super().wait(handle, timeout=timeout, poll=poll)

    def cancel(self, handle: RunHandle) -> None:
        """Ask the run's driver to stop (it checks twice a second). Idempotent; a finished run is left alone.

        Queued steps never start; a step already running finishes its current
        attempt (Dask cannot interrupt a running task) and its record stays.
        """
        store = self._store(handle)
        if not RunRecord.exists(store, handle.run_id) or RunRecord.load(store, handle.run_id).status in TERMINAL:
            return
        marker = cancel_marker(handle.run_id)
        if not store.has(marker):
            store.put_json(marker, {"requested": time.time(), "host": socket.gethostname(), "pid": os.getpid()})
