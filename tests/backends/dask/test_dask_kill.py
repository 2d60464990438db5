"""SIGKILL a worker in the middle of a step: Dask runs the task again on the other worker, nothing is lost.

A cluster of its own (a scheduler and two workers without nannies, so the
killed worker stays dead), stopped by the test.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from mlpipe_dask import DaskBackend
from resources import dask_pipelines as dp
from resources.dask_cluster import DaskCluster

from mlpipe.cache import lookup
from mlpipe.extend import load_step_records, open_store
from mlpipe.launch import new_run_id
from mlpipe.local import LocalBackend
from mlpipe.testing import run_on

pytestmark = pytest.mark.timeout(180)


def test_killed_worker_mid_step_is_retried_on_the_other(tmp_path: Path) -> None:
    cluster = DaskCluster(tmp_path / "cluster").start()
    try:
        store = open_store(str(tmp_path / "store"))
        with DaskBackend({"address": cluster.address}) as backend:
            ir = dp.killable.ir
            params = dp.killable.validate_params({"x": 3, "seconds": 4.0})
            handle = backend.submit(ir, store, params=params, run_id=new_run_id())
            attempts = f"runs/{handle.run_id}/attempts/long_step"
            deadline = time.monotonic() + 60
            while not [n for n in store.listdir(attempts) if n.endswith(".json")]:
                assert time.monotonic() < deadline, cluster.logs()
                time.sleep(0.05)
            (first,) = [store.get_json(f"{attempts}/{n}") for n in store.listdir(attempts)]
            victim = cluster.worker_by_pid(first["pid"])
            time.sleep(0.5)  # well inside the 4 s step
            os.kill(victim.pid, signal.SIGKILL)
            victim.proc.wait(timeout=10)
            status = backend.wait(handle, timeout=90)
        assert status.state == "succeeded", status.message
        survivor = next(w for w in cluster.workers if w is not victim)
        found = [store.get_json(f"{attempts}/{n}") for n in store.listdir(attempts)]
        markers = sorted(found, key=lambda m: m["attempt"])
        assert [(m["attempt"], m["pid"]) for m in markers] == [(1, victim.pid), (2, survivor.pid)]
        records = load_step_records(store, handle.run_id)
        assert sorted(records) == ["add", "long_step", "pause"]  # one record per step, no duplicate
        assert sorted(store.listdir(f"runs/{handle.run_id}/steps")) == ["add.json", "long_step.json", "pause.json"]
        assert records["long_step"]["status"] == "succeeded" and records["long_step"]["attempts"] == 2
        entry = lookup(store, records["long_step"]["key"])
        assert entry is not None and entry.run_id == handle.run_id
        again = run_on(LocalBackend(), dp.killable, store, x=3, seconds=4.0)  # nothing lost: all from the cache
        assert all(s.cached for s in again.steps.values()) and again.output("add") == 31
    finally:
        cluster.stop()


def test_killed_driver_worker_mid_step_resumes_the_run(tmp_path: Path) -> None:
    """The run's driver is a task too: its worker dies, Dask starts it again elsewhere, it resumes from the store."""
    from mlpipe_dask.tasks import driver_key

    cluster = DaskCluster(tmp_path / "cluster").start()
    try:
        store = open_store(str(tmp_path / "store"))
        with DaskBackend({"address": cluster.address}) as backend:
            client = backend.client()
            params = dp.killable.validate_params({"x": 4, "seconds": 3.0})
            handle = backend.submit(dp.killable.ir, store, params=params, run_id=new_run_id())
            attempts = f"runs/{handle.run_id}/attempts/long_step"
            deadline = time.monotonic() + 60
            while not [n for n in store.listdir(attempts) if n.endswith(".json")]:
                assert time.monotonic() < deadline, cluster.logs()
                time.sleep(0.05)
            where = [w for w, keys in client.processing().items() if driver_key(handle.run_id) in keys]
            assert len(where) == 1, client.processing()
            pid = client.run(os.getpid, workers=where)[where[0]]
            victim = cluster.worker_by_pid(pid)
            os.kill(victim.pid, signal.SIGKILL)
            victim.proc.wait(timeout=10)
            status = backend.wait(handle, timeout=90)
        assert status.state == "succeeded", status.message
        records = load_step_records(store, handle.run_id)
        assert {n: r["status"] for n, r in records.items()} == dict.fromkeys(("pause", "long_step", "add"), "succeeded")
        assert records["long_step"]["attempts"] in (1, 2)  # 2 when the step shared the driver's worker
        assert len(store.listdir(attempts)) == records["long_step"]["attempts"]
        assert Path(store.url, "runs", handle.run_id, "run.json").exists()
        assert store.get_json(f"runs/{handle.run_id}/run.json")["status"] == "succeeded"
    finally:
        cluster.stop()
