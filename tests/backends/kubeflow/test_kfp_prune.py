"""Cached steps cost no task: submit leaves the cache hits out of the spec (kfp.local runs of examples/training.py).

Tasks started are counted where mlpipe's kfp.local adapter starts their processes (``_run_task``, one per task).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlpipe_kubeflow import KubeflowBackend
from mlpipe_kubeflow.compiler import prune, write_spec

from mlpipe.cli import load_pipeline
from mlpipe.planning import plan_run
from mlpipe.run import Run
from mlpipe.store import ArtifactStore, open_store

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def training() -> Any:
    return load_pipeline(str(ROOT / "examples" / "training.py") + ":training")


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The step of every task kfp.local starts."""
    from mlpipe_kubeflow import local_runner

    steps: list[str] = []
    original = local_runner._run_task

    def counting(command: list[str], env: Any, out: Any) -> int:
        steps.append(command[command.index("--step") + 1])
        return original(command, env, out)

    monkeypatch.setattr(local_runner, "_run_task", counting)
    yield steps


def run(pipeline: Any, store: ArtifactStore, **params: Any) -> Run:
    backend = KubeflowBackend({"mode": "local"}, image="python:3.11-slim")
    from mlpipe.launch import new_run_id

    return backend.run(pipeline.ir, store, params=pipeline.validate_params(params), run_id=new_run_id())


def test_fully_cached_example_starts_no_task(training: Any, started: list[str], tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    first = run(training, store)
    assert first.status == "succeeded", first.error
    assert sorted(started) == sorted(s.name for s in training.ir.steps)  # 5 tasks: load ... evaluate
    before = len(started)
    started.clear()

    again = run(training, store)
    assert again.status == "succeeded"
    assert started == []  # fully cached: kfp.local was not even started
    assert all(s.cached and s.status == "succeeded" for s in again.steps.values())
    assert again.output("evaluate") == first.output("evaluate")
    doc = store.get_json(f"runs/{again.id}/run.json")
    assert doc["kfp"]["kind"] == "cached" and doc["status"] == "succeeded"
    print(f"kfp.local tasks started: {before} fresh, {len(started)} fully cached")


def test_partly_cached_run_starts_only_the_steps_that_miss(training: Any, started: list[str], tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    assert run(training, store).status == "succeeded"
    started.clear()
    changed = run(training, store, n_estimators=20)  # train and evaluate miss; load, validate, split are hits
    assert changed.status == "succeeded", changed.error
    assert started == ["train", "evaluate"]
    steps = changed.steps
    assert [n for n, s in steps.items() if s.cached] == ["load", "validate", "split"]
    assert not steps["train"].cached and not steps["evaluate"].cached
    reference = run(training, open_store(str(tmp_path / "ref")), n_estimators=20)
    assert changed.output("evaluate") == reference.output("evaluate")


def test_pruned_spec_has_no_task_for_a_hit_and_its_consumers_read_it_by_key(training: Any,
                                                                             tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    assert run(training, store).status == "succeeded"
    params = training.validate_params({"n_estimators": 20})
    plan = plan_run(training.ir, store, params, explain=False)
    cached = plan.prunable(training.ir)
    assert sorted(cached) == ["load", "split", "validate"]
    backend = KubeflowBackend(image="python:3.11-slim")
    pruned = prune(backend.plan(training.ir, store), training.ir, cached)
    spec = next(yaml.safe_load_all(Path(write_spec(pruned, str(tmp_path / "t.yaml"))).read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == ["evaluate", "train"]
    assert "dependentTasks" not in tasks["train"]  # its only upstream, split, is a hit
    assert tasks["evaluate"]["dependentTasks"] == ["train"]
    args = spec["deploymentSpec"]["executors"]["exec-evaluate"]["container"]["args"]
    assert args[args.index("--cached") + 1] == f"split={cached['split']}"  # test_df comes from the cache
    train_args = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["args"]
    assert train_args[train_args.index("--cached") + 1] == f"split={cached['split']}"
    assert set(spec["components"]) == {"comp-train", "comp-evaluate"}
    # train lost its upstream, so it receives every pipeline parameter, as a first task does
    assert set(tasks["train"]["inputs"]["parameters"]) >= {"n_estimators", "test_size", "seed", "mlpipe_run_id"}
