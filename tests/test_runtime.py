"""mlpipe.runtime: the per-step container entrypoint, run as a remote task would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from resources import pipelines as res

import mlpipe as mp
from mlpipe.errors import ParameterError
from mlpipe.ir import ParamSpec
from mlpipe.launch import new_run_id
from mlpipe.run import Run
from mlpipe.runtime import decode_param, execute_remote_step, load_ir, main, write_ir
from mlpipe.store import ArtifactStore, open_store

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return open_store(str(tmp_path / "store"))


@pytest.mark.parametrize(
    ("kind", "raw", "value"),
    [
        ("int", "5", 5), ("int", "5.0", 5), ("float", "0.5", 0.5), ("str", "[not json]", "[not json]"),
        ("bool", "True", True), ("bool", "0", False), ("list", "[1.0, 2.5]", [1, 2.5]),
        ("dict", '{"a": 3.0, "b": [1.0]}', {"a": 3, "b": [1]}), ("json", "null", None),
    ],
)
def test_decode_param(kind: str, raw: str, value: object) -> None:
    spec = ParamSpec(name="p", type="x", kind=kind, required=True)  # type: ignore[arg-type]
    decoded = decode_param(spec, raw)
    assert decoded == value and type(decoded) is type(value)


def test_decode_param_errors() -> None:
    with pytest.raises(ParameterError, match="parameter 'p': expected a boolean, got 'maybe'"):
        decode_param(ParamSpec(name="p", type="bool", kind="bool", required=True), "maybe")
    with pytest.raises(ParameterError, match="expected int as JSON text, got 'five'"):
        decode_param(ParamSpec(name="p", type="int", kind="int", required=True), "five")


def test_steps_run_one_by_one_like_remote_tasks(store: ArtifactStore) -> None:
    ir = res.arithmetic.ir
    digest = write_ir(store, ir)
    assert load_ir(store, digest) == ir
    run_id = new_run_id()
    for spec in ir.steps:
        outcome = execute_remote_step(store, ir, digest, run_id, spec.name, {"n": "6"}, backend="test")
        assert outcome.status == "succeeded", outcome.error
    run = Run.load(store, run_id)
    assert run.output("add_2") == 15
    assert run.backend == "test"
    # a second run is served from the shared cache, and agrees with the local backend
    again = new_run_id()
    outcomes = [execute_remote_step(store, ir, digest, again, s.name, {"n": "6"}) for s in ir.steps]
    assert all(o.cached for o in outcomes)
    local = res.arithmetic.run(n=6)
    assert local.output("add_2") == run.output("add_2")


def test_retried_tasks_share_the_steps_attempts(store: ArtifactStore) -> None:
    # retries=1: at most two runs of the step's code in the whole run, however often the
    # orchestrator retries the task (KFP retryPolicy, SageMaker RetryPolicies).
    ir = res.retried.ir
    digest = write_ir(store, ir)
    run_id = new_run_id()
    assert execute_remote_step(store, ir, digest, run_id, "source", {}).status == "succeeded"
    res.ALWAYS_FAILS_CALLS.clear()
    first = execute_remote_step(store, ir, digest, run_id, "always_fails", {})
    assert (first.status, first.attempts, len(res.ALWAYS_FAILS_CALLS)) == ("failed", 2, 2)
    assert "RuntimeError: broken 1" in (first.error or "")
    again = execute_remote_step(store, ir, digest, run_id, "always_fails", {})  # the orchestrator's retry
    assert len(res.ALWAYS_FAILS_CALLS) == 2, "the code must not run a third time"
    assert again.status == "failed" and again.attempts == 2
    assert again.error is not None
    assert "already ran 2 time(s) in this run, in earlier tasks (retries=1)" in again.error
    assert "Last error: RuntimeError: broken 1" in again.error
    third = execute_remote_step(store, ir, digest, run_id, "always_fails", {})  # retried again: no nesting
    assert third.error is not None and third.error.count("Last error:") == 1
    assert third.error == again.error
    markers = store.listdir(f"runs/{run_id}/attempts/always_fails")
    assert [m.split("-")[0] for m in markers] == ["1", "2"]
    # a new run starts with a fresh budget
    other = new_run_id()
    execute_remote_step(store, ir, digest, other, "source", {})
    execute_remote_step(store, ir, digest, other, "always_fails", {})
    assert len(res.ALWAYS_FAILS_CALLS) == 4


def test_a_task_killed_mid_attempt_used_that_attempt(store: ArtifactStore) -> None:
    ir = res.retried.ir
    digest = write_ir(store, ir)
    run_id = new_run_id()
    execute_remote_step(store, ir, digest, run_id, "source", {})
    # an earlier container started attempt 1 and was killed before writing any record
    store.put_json(f"runs/{run_id}/attempts/always_fails/1-node-7.json", {"attempt": 1})
    res.ALWAYS_FAILS_CALLS.clear()
    outcome = execute_remote_step(store, ir, digest, run_id, "always_fails", {})
    assert len(res.ALWAYS_FAILS_CALLS) == 1 and outcome.attempts == 2
    # a step served from the cache spends no attempt
    assert len(store.listdir(f"runs/{run_id}/attempts/source")) == 1
    cached = execute_remote_step(store, ir, digest, run_id, "source", {})
    assert cached.cached and len(store.listdir(f"runs/{run_id}/attempts/source")) == 1


def test_unknown_and_missing_params(store: ArtifactStore) -> None:
    ir = res.arithmetic.ir
    digest = write_ir(store, ir)
    with pytest.raises(ParameterError, match="has no parameter m"):
        execute_remote_step(store, ir, digest, new_run_id(), "numbers", {"m": "1"})


def test_upstream_must_have_run(store: ArtifactStore) -> None:
    ir = res.arithmetic.ir
    digest = write_ir(store, ir)
    with pytest.raises(mp.MlpipeError, match="upstream step 'numbers' has no record"):
        execute_remote_step(store, ir, digest, new_run_id(), "split", {})


def _runtime(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "mlpipe.runtime", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_runtime_subprocess_imports_code_and_shares_the_cache(store: ArtifactStore, tmp_path: Path) -> None:
    ir = res.arithmetic.ir
    digest = write_ir(store, ir)
    run_id = new_run_id()
    first = _runtime("--store", store.url, "--ir", digest, "--run-id", run_id, "--step", "numbers", "--param", "n=3",
                     "--output-file", str(tmp_path / "out" / "numbers.json"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"step 'numbers' of run {run_id}: succeeded" in first.stderr
    assert json.loads((tmp_path / "out" / "numbers.json").read_text())["status"] == "succeeded"
    second = _runtime("--store", store.url, "--ir", digest, "--run-id", new_run_id(), "--step", "numbers",
                      "--param", "n=3", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "cached" in second.stderr


def test_runtime_exit_codes(store: ArtifactStore, tmp_path: Path) -> None:
    assert main(["--store", store.url, "--ir", "0" * 64, "--run-id", "r", "--step", "x"]) == 2
    assert main(["--store", store.url, "--ir", "0" * 64, "--run-id", "r", "--step", "x", "--param", "novalue"]) == 2
    ir = res.failing.ir
    digest = write_ir(store, ir)
    run_id = new_run_id()
    assert main(["--store", store.url, "--ir", digest, "--run-id", run_id, "--step", "source"]) == 0
    assert main(["--store", store.url, "--ir", digest, "--run-id", run_id, "--step", "boom"]) == 1
    assert main(["--store", store.url, "--ir", digest, "--run-id", run_id, "--step", "plus_one"]) == 1


def test_code_that_cannot_be_imported_is_shipped_by_pickle(store: ArtifactStore, tmp_path: Path) -> None:
    @mp.step
    def local_step(n: int) -> int:
        return n * 7

    @mp.pipeline
    def shipped(n: int = 2) -> int:
        return local_step(n)

    ir = shipped.ir
    assert not ir.step("local_step").code.importable
    digest = write_ir(store, ir)
    stored = load_ir(store, digest)
    assert stored.step("local_step").code.pickle_digest
    assert stored.step("local_step").code.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    run_id = new_run_id()
    result = _runtime("--store", store.url, "--ir", digest, "--run-id", run_id, "--step", "local_step",
                      "--param", "n=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Run.load(store, run_id).output("local_step") == 21


def test_gc_keeps_shipped_code_of_recorded_runs(store: ArtifactStore) -> None:
    from mlpipe.gc import collect

    @mp.step
    def closure_step(n: int) -> int:
        return n + 1

    @mp.pipeline
    def shipped_gc(n: int = 1) -> int:
        return closure_step(n)

    digest = write_ir(store, shipped_gc.ir)
    pickle = load_ir(store, digest).step("closure_step").code.pickle_digest
    assert pickle is not None
    run_id = new_run_id()
    assert execute_remote_step(store, shipped_gc.ir, digest, run_id, "closure_step", {}).status == "succeeded"
    report = collect(store, grace=0)
    assert report.items == []
    assert store.exists(pickle)


STALE_STEP = '''
import mlpipe as mp


@mp.step
def bump(x: int) -> int:
    return {body}


@mp.pipeline
def stale(x: int = 5) -> int:
    return bump(x)
'''


def test_a_task_whose_image_holds_other_code_refuses_and_stores_nothing(tmp_path: Path) -> None:
    """Compiled from ``x + 1``, run in an image whose code returns ``x * 100``: refused, and no stale hit."""
    import importlib
    import uuid

    store = open_store(str(Path.cwd() / ".mlpipe"))  # the store the local run below uses too

    module = f"stale_{uuid.uuid4().hex[:8]}"
    checkout, image = tmp_path / "checkout", tmp_path / "image"
    checkout.mkdir()
    image.mkdir()
    (checkout / f"{module}.py").write_text(STALE_STEP.format(body="x + 1"))
    (image / f"{module}.py").write_text(STALE_STEP.format(body="x * 100"))  # built from older code
    sys.path.insert(0, str(checkout))
    try:
        pipe = importlib.import_module(module).stale
        ir = pipe.ir
        digest = write_ir(store, ir)
        run_id = new_run_id()
        env = {**os.environ, "PYTHONPATH": str(image)}
        task = subprocess.run(
            [sys.executable, "-m", "mlpipe.runtime", "--store", store.url, "--ir", digest, "--run-id", run_id,
             "--step", "bump"],
            cwd=image, env=env, capture_output=True, text=True, timeout=120, check=False,
        )
        assert task.returncode == 2, task.stderr
        compiled = ir.step("bump").fingerprint
        assert "step 'bump'" in task.stderr and compiled in task.stderr
        assert f"function {module}.bump changed" in task.stderr
        assert "rebuild the image" in task.stderr
        assert "Traceback" not in task.stderr
        assert store.listdir("cache") == [], "a refused task must write no cache entry"
        assert store.listdir("runs") == [] and store.listdir("objects") == [], "nothing may be stored"
        local = pipe.run()  # the local backend, with the checkout's code, on the same store
    finally:
        sys.path.remove(str(checkout))
        sys.modules.pop(module, None)
    assert local.output("bump") == 6
    assert local.steps["bump"].cached is False


def test_metric_numbers_keep_their_nesting_and_leave_out_what_is_not_a_number() -> None:
    from mlpipe.runtime import metric_tree, metric_values

    document = {"accuracy": 0.9, "rows": 8, "ok": True, "note": "x", "loss": float("nan"), "missing": None,
                "per_class": {"a": 0.5, "b": {"deep": 1}, "flags": {"on": False}}, "sizes": [1, 2]}
    assert metric_tree(document) == {"accuracy": 0.9, "rows": 8, "per_class": {"a": 0.5, "b": {"deep": 1}}}
    assert metric_values(document) == {"accuracy": 0.9, "rows": 8, "per_class.a": 0.5, "per_class.b.deep": 1}
