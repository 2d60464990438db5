"""The Dask backend on a real cluster: placement, resources, retries, timeouts, cancel, handles, stores, caching."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlpipe_dask import DaskBackend
from resources import dask_pipelines as dp
from resources.dask_cluster import DaskCluster

from mlpipe.errors import ConfigError, UnsupportedFeatureError
from mlpipe.extend import open_store
from mlpipe.launch import new_run_id
from mlpipe.local import LocalBackend
from mlpipe.testing import basic, run_on

pytestmark = pytest.mark.timeout(120)


def markers(store: Any, run_id: str, step: str) -> list[dict[str, Any]]:
    rel = f"runs/{run_id}/attempts/{step}"
    return sorted((store.get_json(f"{rel}/{n}") for n in store.listdir(rel)), key=lambda m: m["attempt"])


def submit(backend: DaskBackend, pipeline: Any, store: Any, **params: Any) -> Any:
    values = pipeline.validate_params(params)
    backend.check(pipeline.ir)
    return backend.submit(pipeline.ir, store, params=values, run_id=new_run_id())


def test_independent_steps_run_at_once_on_different_workers(
    dask_backend: DaskBackend, cluster: DaskCluster, tmp_path: Path
) -> None:
    store = open_store(str(tmp_path / "store"))
    run = run_on(dask_backend, dp.pair, store, seconds=1.5)
    assert run.status == "succeeded" and run.output("add") == 3
    pids = {markers(store, run.id, name)[0]["pid"] for name in ("pause", "pause_b")}
    assert pids == {w.pid for w in cluster.workers}  # one step on each worker
    # Side by side, not one after the other: the two 1.5 s steps' recorded run times overlap (no wall-clock
    # bound, which a loaded machine would break).
    records = {name: run.steps[name].record for name in ("pause", "pause_b")}
    overlap = min(r["ended"] for r in records.values()) - max(r["started"] for r in records.values())
    assert overlap > 0, records


def test_resources_map_to_worker_resources(dask_backend: DaskBackend, cluster: DaskCluster, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    run = run_on(dask_backend, dp.resourced, store, x=4)
    assert run.status == "succeeded" and run.output("on_gpu") == 10
    gpu_worker = cluster.workers[0]  # the only one declaring gpu=1
    assert markers(store, run.id, "on_gpu")[0]["pid"] == gpu_worker.pid


def test_resources_no_worker_offers_are_refused_before_anything_runs(
    dask_backend: DaskBackend, tmp_path: Path
) -> None:
    store = open_store(str(tmp_path / "store"))
    with pytest.raises(UnsupportedFeatureError, match=r"step 'greedy' asks for gpu=4") as info:
        submit(dask_backend, dp.too_greedy, store)
    assert '--resources "gpu=4"' in str(info.value) and "gpu=1" in str(info.value)
    assert not store.listdir("runs")


def test_accelerator_types_are_refused_at_check(dask_backend: DaskBackend) -> None:
    import mlpipe as mp

    @mp.step(resources=mp.Resources(gpu=1, accelerator="nvidia-tesla-t4"))
    def typed_gpu(x: int) -> int:
        return x

    @mp.pipeline(name="dask-accelerator")
    def accelerated(x: int = 1) -> int:
        return typed_gpu(x)

    with pytest.raises(UnsupportedFeatureError, match="accelerator='nvidia-tesla-t4'"):
        dask_backend.check(accelerated.ir)


def test_retries_and_timeouts_behave_as_on_the_local_backend(dask_backend: DaskBackend, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    run = run_on(dask_backend, dp.retry_and_timeout, store, flag_dir=str(tmp_path / "flags"), seconds=3.0)
    assert run.status == "failed"
    assert run.steps["flaky"].status == "succeeded" and run.steps["flaky"].attempts == 2
    slow = run.steps["too_slow"]
    assert slow.status == "failed" and "timed out after 0.5 s" in (slow.error or "")
    local = run_on(LocalBackend(), dp.retry_and_timeout, open_store(str(tmp_path / "local")),
                   flag_dir=str(tmp_path / "flags-local"), seconds=3.0)  # fmt: skip
    assert {n: (s.status, s.attempts) for n, s in local.steps.items()} == {
        n: (s.status, s.attempts) for n, s in run.steps.items()
    }


def test_cancel_stops_the_run_and_is_idempotent(dask_backend: DaskBackend, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    handle = submit(dask_backend, dp.chain, store, seconds=1.0)
    deadline = time.monotonic() + 30
    while not store.listdir(f"runs/{handle.run_id}/attempts"):  # the first step has started
        assert time.monotonic() < deadline
        time.sleep(0.05)
    dask_backend.cancel(handle)
    dask_backend.cancel(handle)
    status = dask_backend.wait(handle, timeout=30)
    assert status.state == "cancelled"
    assert status.steps["pause_3"] == "cancelled"
    assert "pause_3" not in store.listdir(f"runs/{handle.run_id}/attempts")  # never started
    dask_backend.cancel(handle)  # a finished run: nothing happens
    assert dask_backend.status(handle).state == "cancelled"


def test_handle_round_trips_json_and_status_works_from_a_new_process(
    dask_backend: DaskBackend, cluster: DaskCluster, tmp_path: Path
) -> None:
    store = open_store(str(tmp_path / "store"))
    handle = submit(dask_backend, basic, store, n=3)
    text = handle.to_json()
    dask_backend.wait(handle, timeout=60)
    code = (
        "import json, sys\n"
        "from mlpipe.extend import RunHandle, get_backend\n"
        "handle = RunHandle.from_json(sys.argv[1])\n"
        "backend = get_backend(handle.backend, {'address': handle.data['scheduler']})\n"
        "status = backend.status(handle)\n"
        "backend.cancel(handle)\n"  # finished: a no-op
        "print(json.dumps({'state': status.state, 'steps': status.steps}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, timeout=60, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"state": "succeeded", "steps": dict.fromkeys(("make_numbers", "summarize", "describe"),
                                                                  "succeeded")}  # fmt: skip
    assert json.loads(text)["data"]["scheduler"] == cluster.address


def test_memory_store_is_refused(dask_backend: DaskBackend) -> None:
    with pytest.raises(UnsupportedFeatureError, match="cannot see") as info:
        submit(dask_backend, basic, open_store("memory://dask-refused"), n=2)
    assert "s3://" in str(info.value)


def test_relative_store_path_is_refused(dask_backend: DaskBackend, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    store.url = "relative/store"  # what a store object that did not resolve its path would carry
    with pytest.raises(UnsupportedFeatureError, match="is relative"):
        submit(dask_backend, basic, store, n=2)


def test_dask_then_local_is_fully_cached(dask_backend: DaskBackend, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    remote = run_on(dask_backend, basic, store, n=5, label="both")
    local = run_on(LocalBackend(), basic, store, n=5, label="both")
    assert remote.status == local.status == "succeeded"
    assert all(s.cached for s in local.steps.values())
    assert {n: s.key for n, s in local.steps.items()} == {n: s.key for n, s in remote.steps.items()}
    assert local.output("describe") == remote.output("describe")
    assert all(s.source_run == remote.id for s in local.steps.values())


def test_s3_store_on_moto(dask_backend: DaskBackend, s3_url: str) -> None:
    """Workers write to the bucket themselves (moto's S3 on 127.0.0.1, an emulator); local and Dask share it."""
    store = open_store(s3_url)
    remote = run_on(dask_backend, basic, store, n=4)
    assert remote.status == "succeeded", remote.error
    local = run_on(LocalBackend(), basic, open_store(s3_url), n=4)
    assert all(s.cached for s in local.steps.values())
    assert local.output("describe") == remote.output("describe")
    again = run_on(dask_backend, dp.pair, open_store(s3_url), seconds=0.0)
    assert again.status == "succeeded" and again.output("add") == 3


def test_a_worker_that_cannot_see_the_store_is_refused(tmp_path: Path) -> None:
    """A worker in its own mount namespace (an empty tmpfs over the store) stands for another machine."""
    probe = subprocess.run(["unshare", "-m", "true"], check=False, capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m is not permitted here: {probe.stderr.decode().strip()}")
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    blind = DaskCluster(
        tmp_path / "blind-cluster",
        resources=[""],
        prefix=["unshare", "-m", "--propagation", "private", "sh", "-c",
                f'mount -t tmpfs none "{hidden}" && exec "$0" "$@"'],
    ).start()  # fmt: skip
    try:
        with DaskBackend({"address": blind.address}) as backend:
            with pytest.raises(ConfigError, match=r"1 of 1 workers cannot reach the store") as info:
                submit(backend, basic, open_store(str(hidden / "store")), n=2)
        assert "is not there" in str(info.value) and "s3://" in str(info.value)
    finally:
        blind.stop()


def test_local_cluster_when_no_address(tmp_path: Path) -> None:
    with DaskBackend({"n_workers": 1}) as backend:
        client = backend.client()
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        (info,) = client.scheduler_info(n_workers=-1)["workers"].values()
        assert info["resources"]["cpu"] == 1.0 and info["resources"]["memory"] > 0
        run = run_on(backend, basic, open_store(str(tmp_path / "store")), n=3)
        assert run.status == "succeeded" and run.backend == "dask"
    assert client.status == "closed"


def test_cli_submit_returns_and_the_run_goes_on_without_it(cluster: DaskCluster, tmp_path: Path) -> None:
    """`mlpipe submit` exits at once; the run's driver lives on the cluster; `mlpipe runs show` follows it."""
    import re

    from resources.dask_cluster import worker_env

    work = tmp_path / "project"
    work.mkdir()
    (work / "pipe.py").write_text("from resources.dask_pipelines import chain\n")
    (work / "mlpipe.toml").write_text(
        f'[profiles.cluster]\nbackend = "dask"\nstore = "{tmp_path / "store"}"\n'
        f'options = {{ address = "{cluster.address}" }}\n'
    )
    env = worker_env()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mlpipe", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip

    start = time.monotonic()
    submitted = cli("submit", "pipe.py:chain", "--profile", "cluster", "-p", "seconds=1.0")
    assert submitted.returncode == 0, submitted.stderr
    found = re.search(r"submitted run (\S+) to dask", submitted.stdout)
    assert found, submitted.stdout
    run_id = found.group(1)
    shown = cli("runs", "show", run_id, "--profile", "cluster")
    assert shown.returncode == 0, shown.stderr
    if time.monotonic() - start < 3.0:  # three 1 s steps in a row: the CLI came back before the end
        assert "status running" in shown.stdout, shown.stdout
    deadline = time.monotonic() + 60
    while "status succeeded" not in shown.stdout:
        assert time.monotonic() < deadline, shown.stdout + shown.stderr
        time.sleep(0.5)
        shown = cli("runs", "show", run_id, "--profile", "cluster")
    assert "pause_3" in shown.stdout
