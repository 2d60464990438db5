"""Mapped steps and conditions on a real Dask cluster: one task per item, the local backend's per-item cache keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlpipe_dask import DaskBackend
from resources import dask_pipelines as dp
from resources.dask_cluster import DaskCluster

from mlpipe.extend import open_store
from mlpipe.local import LocalBackend
from mlpipe.testing import run_on

pytestmark = pytest.mark.timeout(120)


def worker_pid(store: Any, run_id: str, step: str) -> int:
    rel = f"runs/{run_id}/attempts/{step}"
    return int(store.get_json(f"{rel}/{store.listdir(rel)[0]}")["pid"])


def test_each_item_is_a_task_on_any_worker_and_the_fan_in_collects_them(
    dask_backend: DaskBackend, cluster: DaskCluster, tmp_path: Path
) -> None:
    store = open_store(str(tmp_path / "store"))
    run = run_on(dask_backend, dp.sweep, store, n=4, seconds=1.0)
    assert run.status == "succeeded", run.error
    assert [n for n in run.steps if n.startswith("train")] == ["train", *(f"train[{i}]" for i in range(4))]
    assert run.output("train") == [0.0, 5.0, 10.0, 15.0]
    assert run.output("doubled") == [0.0, 10.0, 20.0, 30.0]
    assert run.output("train[3]") == 15.0 and run.output("best") == 30.0
    assert run.steps["train"].record["components"]["map"]["items"] == [f"train[{i}]" for i in range(4)]
    # Four 1 s items on two one-thread workers: both workers took some (Dask spreads independent tasks).
    pids = {worker_pid(store, run.id, f"train[{i}]") for i in range(4)}
    assert pids == {w.pid for w in cluster.workers}


def test_items_are_cached_by_the_local_backends_keys_both_ways(dask_backend: DaskBackend, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    local = run_on(LocalBackend(), dp.sweep, store, n=3)
    remote = run_on(dask_backend, dp.sweep, store, n=3)
    assert remote.status == "succeeded", remote.error
    assert all(s.cached for s in remote.steps.values()), {n: s.cached for n, s in remote.steps.items()}
    assert remote.output("best") == local.output("best") == 20.0
    more = run_on(dask_backend, dp.sweep, store, n=4)  # one new item, computed on Dask
    assert [more.steps[f"train[{i}]"].cached for i in range(4)] == [True, True, True, False]
    assert [more.steps[f"train[{i}]"].record["key"] for i in range(3)] == [
        local.steps[f"train[{i}]"].record["key"] for i in range(3)
    ]
    back = run_on(LocalBackend(), dp.sweep, store, n=4)  # and the local backend reuses what Dask computed
    assert all(s.cached for s in back.steps.values())
    assert back.output("doubled") == [0.0, 10.0, 20.0, 30.0]


def test_a_failed_item_fails_its_step_and_skips_the_consumers(dask_backend: DaskBackend, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    run = run_on(dask_backend, dp.inverse, store)
    assert run.status == "failed"
    assert run.steps["invert[0]"].status == "succeeded"
    assert run.steps["invert[1]"].status == "failed"
    assert "1 of 2 items failed; invert[1]: ZeroDivisionError" in (run.steps["invert"].error or "")
    assert run.steps["best"].status == "skipped"
    assert "upstream step 'invert' did not succeed" in (run.steps["best"].error or "")


def test_run_time_map_lengths_must_match(dask_backend: DaskBackend, tmp_path: Path) -> None:
    run = run_on(dask_backend, dp.uneven, open_store(str(tmp_path / "store")))
    assert run.status == "failed"
    assert "mismatched map lengths (lr: 3, epochs: 2)" in (run.steps["train"].error or "")
    assert run.steps["best"].status == "skipped"


def test_a_mapped_step_in_a_branch_not_taken_is_skipped_with_the_reason(
    dask_backend: DaskBackend, tmp_path: Path
) -> None:
    store = open_store(str(tmp_path / "store"))
    small = run_on(dask_backend, dp.branch_map, store, n=3)  # best rate 1.0: not > 1.0
    assert small.status == "succeeded", small.error
    for name in ("doubled", "best_scores"):
        assert small.steps[name].status == "skipped"
        assert small.steps[name].error == "skipped: branch not taken (condition best.output > 1.0 is false)"
    big = run_on(dask_backend, dp.branch_map, store, n=4)
    assert big.status == "succeeded", big.error
    assert big.output("best_scores") == 3.0
    assert big.output("doubled") == [0.0, 1.0, 2.0, 3.0]
