"""mlpipe.local and mlpipe.backend: parallelism, retries, timeouts, failures, run results, discovery."""

from __future__ import annotations

import threading
import time
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pydantic
import pytest
from resources import pipelines as res

import mlpipe as mp
from mlpipe.backend import Backend, RunHandle, RunStatus, available_backends, get_backend, get_backend_class
from mlpipe.errors import BackendError, BackendNotFoundError, ConfigError, StepFailedError, UnsupportedFeatureError
from mlpipe.local import LocalBackend, LocalOptions
from mlpipe.progress import REPORTER, PlainReporter


def test_fan_out_runs_in_parallel(capsys: pytest.CaptureFixture[str]) -> None:
    res.fanout.ir
    start = time.perf_counter()
    run = res.fanout.run()
    elapsed = time.perf_counter() - start
    assert run.status == "succeeded"
    assert run.output("gather") == 8 + sum(range(8))
    with capsys.disabled():
        print(f"\n[fan-out 1 -> 8 -> 1 of 0.5 s sleeps: {elapsed:.2f} s wall]")
    # Behavioural bound (sequential would be >= 4 s), not a performance target.
    assert elapsed < 2.5
    sleeps = [run.steps[n] for n in run.steps if n.startswith("sleepy")]
    assert len(sleeps) == 8 and all(s.duration >= 0.45 for s in sleeps)


_TOGETHER = threading.Barrier(6, timeout=20)
_RELEASE = threading.Event()


@mp.step
def meet(i: int) -> int:
    if i < 6:
        _TOGETHER.wait()  # passes only when six steps are running at once
    return i


@mp.pipeline
def six_at_once() -> int:
    return res.gather(*[meet(i) for i in range(6)], *[meet(i + 6) for i in range(2)])


@mp.step
def wait_for_release(x: int) -> int:
    if not _RELEASE.wait(timeout=20):
        raise TimeoutError("the quick steps never ran beside this one")
    return x


@mp.step
def quick(x: int, i: int) -> int:
    if i == 49:
        _RELEASE.set()
    return x + i


@mp.pipeline
def one_slow_many_quick(x: int = 1) -> None:
    wait_for_release(x)
    for i in range(50):
        quick(x, i)


def test_steps_that_wait_get_threads_of_their_own() -> None:
    # The scheduler starts with one worker and adds more only when the running steps wait or run long:
    # six steps that can only finish together prove that waiting steps get a thread each.
    _TOGETHER.reset()
    run = six_at_once.run(cache=False)
    assert run.status == "succeeded", run.error


def test_a_waiting_step_does_not_hold_up_the_quick_ones() -> None:
    _RELEASE.clear()
    run = one_slow_many_quick.run(cache=False)
    assert run.status == "succeeded", run.error
    assert run.output("wait_for_release") == 1


def test_max_workers_one_runs_sequentially() -> None:
    start = time.perf_counter()
    run = res.fanout.run(backend=LocalBackend({"max_workers": 1}), seconds=0.05)
    assert run.status == "succeeded"
    assert time.perf_counter() - start >= 0.4


def test_run_results_statuses_and_outputs() -> None:
    run = res.arithmetic.run(n=6)
    assert isinstance(run, mp.Run)
    assert run.status == "succeeded"
    assert run.pipeline == "arithmetic"
    assert run.params == {"n": 6}
    assert run.id and run.id in repr(run)
    assert list(run.steps) == ["numbers", "split", "halves", "add", "total", "add_2"]
    for step in run.steps.values():
        assert isinstance(step, mp.StepRun)
        assert step.status == "succeeded"
        assert step.cached is False
        assert step.duration >= 0
        assert step.attempts == 1
    assert run.duration >= 0 and run.started is not None and run.ended is not None
    # by name, by index, and the only output
    assert run.output("split", "train") == [0, 1, 2]
    assert run.output("split", 1) == [3, 4, 5]
    assert run.output("halves", "output_0") == 0 + 2
    assert run.output("halves", 1) == 1
    assert run.output("add_2") == 3 + 12
    assert run.output("numbers") == list(range(6))
    with pytest.raises(KeyError, match=r"has no step 'nope'"):
        run.output("nope")
    with pytest.raises(KeyError, match=r"has 2 outputs; name one: \['train', 'test'\]"):
        run.output("split")
    with pytest.raises(KeyError, match=r"has no output 'valid'; outputs: \['train', 'test'\]"):
        run.output("split", "valid")
    with pytest.raises(KeyError, match=r"index 5 is out of range"):
        run.output("split", 5)
    assert run.raise_for_status() is run


def test_second_run_is_cached_and_fast() -> None:
    first = res.arithmetic.run(n=5)
    second = res.arithmetic.run(n=5)
    assert all(s.cached for s in second.steps.values())
    assert all(s.source_run == first.id for s in second.steps.values())
    assert second.output("add_2") == first.output("add_2")
    third = res.arithmetic.run(n=5, cache=False)
    assert not any(s.cached for s in third.steps.values())


def test_failed_step_skips_dependents_while_independent_branches_finish() -> None:
    run = res.failing.run()
    assert run.status == "failed"
    steps = run.steps
    assert steps["boom"].status == "failed"
    assert "ValueError: kaboom 1" in (steps["boom"].error or "")
    assert "Traceback" in (steps["boom"].traceback or "")
    assert 'raise ValueError(f"kaboom {x}")' in (steps["boom"].traceback or "")
    assert "mlpipe/executor.py" not in (steps["boom"].traceback or "")
    assert steps["plus_one"].status == "skipped"
    assert steps["plus_one_2"].status == "skipped"
    assert "upstream step 'boom'" in (steps["plus_one"].error or "")
    assert steps["slow_ok"].status == "succeeded"
    assert steps["plus_one_3"].status == "succeeded"
    assert run.output("plus_one_3") == 2
    assert "step 'boom' failed" in (run.error or "")
    with pytest.raises(StepFailedError, match=r"step 'boom' of run .* failed, so it has no outputs"):
        run.output("boom")
    with pytest.raises(StepFailedError, match=r"skipped"):
        run.output("plus_one_2")
    with pytest.raises(StepFailedError, match=r"kaboom"):
        run.raise_for_status()
    # the record in the store says the same
    loaded = mp.get_run(run.id)
    assert loaded.status == "failed"
    assert {n: s.status for n, s in loaded.steps.items()} == {n: s.status for n, s in steps.items()}


def test_wrong_return_type_fails_the_step_with_a_clear_error() -> None:
    run = res.returns_wrong_type.run()
    assert run.status == "failed"
    step = run.steps["wrong_type"]
    assert step.status == "failed"
    assert step.error is not None
    assert step.error.startswith("pipeline 'returns_wrong_type', step 'wrong_type': output expected int, got str")
    assert step.traceback is None
    assert len(list(Path(".mlpipe", "cache").rglob("*.json"))) == 1  # only `source` left a cache entry


def test_unstorable_output_fails_the_step() -> None:
    run = res.returns_unstorable.run()
    assert run.status == "failed"
    error = run.steps["unstorable"].error or ""
    assert error.startswith("pipeline 'returns_unstorable', step 'unstorable', output: no materializer can store a "
                            "value of type Holder")
    assert "mp.register_materializer" in error


def test_several_outputs_of_the_wrong_shape() -> None:
    @mp.step
    def pairish(x: int) -> tuple[int, int]:
        return (x,)  # type: ignore[return-value]

    @mp.pipeline
    def shape() -> None:
        pairish(1)

    run = shape.run()
    assert "expected a tuple of 2 outputs (output_0, output_1), got tuple of length 1" in (
        run.steps["pairish"].error or "")


_attempts: dict[str, int] = {}


@mp.step(retries=2)
def flaky(key: str) -> str:
    _attempts[key] = _attempts.get(key, 0) + 1
    if _attempts[key] < 3:
        raise ConnectionError(f"attempt {_attempts[key]}")
    return "ok"


@mp.step(retries=1)
def hopeless(key: str) -> str:
    _attempts[key] = _attempts.get(key, 0) + 1
    raise ConnectionError(f"attempt {_attempts[key]}")


@mp.pipeline
def retrying(key: str = "a") -> str:
    return flaky(key)


@mp.pipeline
def retrying_hopeless(key: str = "b") -> str:
    return hopeless(key)


def test_retries_until_success() -> None:
    run = retrying.run(key="retry-ok")
    assert run.status == "succeeded"
    assert run.steps["flaky"].attempts == 3
    assert _attempts["retry-ok"] == 3


def test_retries_exhausted() -> None:
    run = retrying_hopeless.run(key="retry-fail")
    assert run.status == "failed"
    assert _attempts["retry-fail"] == 2
    assert "ConnectionError: attempt 2" in (run.steps["hopeless"].error or "")


def test_retry_backoff_is_exponential(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlpipe.executor import _retry_delay

    monkeypatch.setenv("MLPIPE_RETRY_BACKOFF", "1.0")
    assert [_retry_delay(a) for a in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert _retry_delay(20) == 60.0


@mp.step(timeout=0.2)
def too_slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@mp.pipeline
def timing_out(seconds: float = 1.0) -> float:
    return too_slow(seconds)


def test_timeout_fails_the_step() -> None:
    start = time.perf_counter()
    run = timing_out.run(seconds=5.0)
    assert time.perf_counter() - start < 4.0  # did not wait for the step (generous bound)
    assert run.status == "failed"
    assert "timed out after 0.2 s" in (run.steps["too_slow"].error or "")
    ok = timing_out.run(seconds=0.01)
    assert ok.status == "succeeded"


def test_progress_plain_reporter(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    stream = io.StringIO()
    token = REPORTER.set(PlainReporter(stream))
    try:
        res.failing.run()
    finally:
        REPORTER.reset(token)
    text = stream.getvalue()
    assert "pipeline failing, 6 steps" in text
    assert "failed    boom" in text and "ValueError: kaboom 1" in text
    assert "skipped   plus_one" in text
    assert "succeeded slow_ok" in text
    assert "failed in" in text
    assert capsys.readouterr().err == ""  # nothing printed without a reporter


def test_submit_status_and_cancel() -> None:
    backend = LocalBackend()
    from mlpipe.launch import new_run_id
    from mlpipe.store import open_store

    store = open_store()
    ir = res.arithmetic.ir
    handle = backend.submit(ir, store, params={"n": 3}, run_id=new_run_id())
    assert isinstance(handle, RunHandle)
    assert RunHandle.from_json(handle.to_json()) == handle
    status = backend.wait(handle, timeout=30, poll=0.05)
    assert status.done and status.state == "succeeded"
    backend.cancel(handle)  # idempotent on a finished run
    backend.cancel(handle)
    # another backend instance finds it through the store
    other = LocalBackend().status(handle)
    assert other.state == "succeeded"
    assert other.steps["add_2"] == "succeeded"


def test_cancel_stops_pending_steps() -> None:
    @mp.step
    def nap(x: int) -> int:
        time.sleep(0.3)
        return x

    @mp.pipeline
    def naps() -> int:
        return nap(nap(nap(1)))

    from mlpipe.launch import new_run_id
    from mlpipe.store import open_store

    backend = LocalBackend()
    handle = backend.submit(naps.ir, open_store(), params={}, run_id=new_run_id())
    time.sleep(0.1)
    backend.cancel(handle)
    status = backend.wait(handle, timeout=10, poll=0.05)
    assert status.state == "cancelled"
    run = mp.get_run(handle.run_id)
    assert run.status == "cancelled"
    assert run.steps["nap_3"].status in ("cancelled", "pending")


# -- backend options, discovery ------------------------------------------------------------


def test_options_are_validated_listing_valid_keys() -> None:
    assert LocalBackend({"max_workers": 4}).max_workers == 4
    assert LocalBackend(LocalOptions(max_workers=2)).max_workers == 2
    with pytest.raises(ConfigError) as caught:
        LocalBackend({"workers": 4})
    message = str(caught.value)
    assert "invalid options for backend 'local'" in message
    assert "workers: Extra inputs are not permitted" in message
    assert "Valid options: max_workers" in message
    with pytest.raises(ConfigError, match=r"max_workers: Input should be greater than or equal to 1"):
        get_backend("local", {"max_workers": 0})


class FakeBackend(Backend):
    name = "fake"

    def submit(self, ir: Any, store: Any, *, params: Any, run_id: str, cache: bool = True) -> RunHandle:
        return RunHandle(backend=self.name, run_id=run_id, pipeline=ir.name, store=store.url)

    def status(self, handle: RunHandle) -> RunStatus:
        return RunStatus(state="succeeded")

    def cancel(self, handle: RunHandle) -> None:
        pass


class NotABackend:
    pass


def _patch_entry_points(monkeypatch: pytest.MonkeyPatch, *eps: EntryPoint) -> None:
    def entry_points(group: str | None = None, **_: Any) -> list[EntryPoint]:
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    monkeypatch.delenv("MLPIPE_DISABLE_PLUGIN_AUTOLOAD", raising=False)


def _ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group="mlpipe.backends")


def test_backend_discovery_through_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_entry_points(monkeypatch, _ep("fake", f"{__name__}:FakeBackend"))
    assert get_backend_class("fake") is FakeBackend
    assert get_backend_class("local") is LocalBackend
    assert isinstance(get_backend("fake"), FakeBackend)
    listed = available_backends()
    assert list(listed) == ["fake", "local"]
    assert "test_local:FakeBackend" in listed["fake"]
    assert listed["local"] == "mlpipe (mlpipe.local:LocalBackend)"


def test_backend_not_found_lists_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_entry_points(monkeypatch, _ep("fake", f"{__name__}:FakeBackend"))
    with pytest.raises(BackendNotFoundError) as caught:
        get_backend_class("vertex")
    assert "no backend named 'vertex' is installed (installed: fake, local); pip install mlpipe-vertex" in str(
        caught.value)
    assert caught.value.exit_code == 2


def test_backend_entry_point_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_entry_points(monkeypatch, _ep("dup", f"{__name__}:FakeBackend"), _ep("dup", f"{__name__}:FakeBackend"),
                        _ep("wrong", f"{__name__}:NotABackend"), _ep("broken", "no_such_module_xyz:B"))
    with pytest.raises(BackendError, match=r"backend name 'dup' is claimed by several distributions"):
        get_backend_class("dup")
    with pytest.raises(BackendError, match=r"entry point 'wrong' from .* is not a mlpipe.Backend subclass"):
        get_backend_class("wrong")
    with pytest.raises(BackendError, match=r"backend 'broken' from .* failed to import"):
        get_backend_class("broken")


def test_plugin_autoload_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_entry_points(monkeypatch, _ep("fake", f"{__name__}:FakeBackend"))
    monkeypatch.setenv("MLPIPE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert list(available_backends()) == ["local"]


def test_backend_instance_is_injected() -> None:
    run = res.arithmetic.run(backend=LocalBackend({"max_workers": 2}), n=2)
    assert run.status == "succeeded"
    run = res.arithmetic.run(backend="local", n=2)
    assert run.status == "succeeded"


def test_capability_check_refuses_unsupported_options() -> None:
    class Minimal(FakeBackend):
        name = "minimal"

    @mp.step(retries=1, timeout=5, resources=mp.Resources(cpu=1))
    def demanding(x: int) -> int:
        return x

    @mp.pipeline
    def demands() -> int:
        return demanding(1)

    with pytest.raises(UnsupportedFeatureError, match=r"cannot honour resources= on step 'demanding'"):
        Minimal().check(demands.ir)
    with pytest.raises(UnsupportedFeatureError, match=r"has no compiled form"):
        Minimal().compile(demands.ir, "out.yaml")
    LocalBackend().check(demands.ir)


def test_numpy_scalars_are_stored_as_the_declared_python_scalar() -> None:
    import numpy as np

    @mp.step
    def metric(n: int) -> float:
        return np.float64(n) / 4  # what numpy and scikit-learn return

    @mp.step
    def counted(n: int) -> int:
        return np.int64(n) * 2  # type: ignore[return-value]

    @mp.step
    def flag(n: int) -> bool:
        return np.bool_(n > 0)  # type: ignore[return-value]

    @mp.step
    def lossy(n: int) -> int:
        return np.float64(n + 0.5)  # type: ignore[return-value]

    @mp.pipeline
    def numpy_scalars(n: int = 2) -> None:
        metric(n)
        counted(n)
        flag(n)
        lossy(n)

    run = numpy_scalars.run()
    for name, value in (("metric", 0.5), ("counted", 4), ("flag", True)):
        step = run.steps[name]
        assert step.status == "succeeded"
        assert step.outputs["output"].materializer == "json"
        loaded = run.output(name)
        assert loaded == value and type(loaded) is type(value)
    assert run.steps["lossy"].status == "failed"
    assert "output expected int, got numpy.float64" in (run.steps["lossy"].error or "")


def test_values_an_untyped_parameter_or_producer_gives_are_validated_by_the_step() -> None:
    @mp.step
    def typed(n: int) -> int:
        return n

    @mp.step
    def untyped_source():  # type: ignore[no-untyped-def]
        return "abc"

    @mp.pipeline
    def untyped_param(x="abc"):  # type: ignore[no-untyped-def]
        return typed(x)

    @mp.pipeline
    def untyped_producer():  # type: ignore[no-untyped-def]
        return typed(untyped_source())

    run = untyped_param.run()
    assert run.status == "failed"
    assert run.steps["typed"].error == (
        "pipeline 'untyped_param', step 'typed', argument 'n': expected int, got 'abc' (str): Input should be a "
        "valid integer, unable to parse string as an integer")
    assert mp.get_run(run.id).status == "failed"
    assert untyped_param.run(x="7").output("typed") == 7

    untyped_producer.run()
    again = untyped_producer.run()  # the producer is a hit: its output is read from the store and checked
    assert again.steps["untyped_source"].cached
    assert "argument 'n': expected int, got the output of step 'untyped_source'" in (again.steps["typed"].error or "")


def test_each_output_is_validated_by_name() -> None:
    @mp.step
    def pair_out(x: int) -> tuple[int, str]:
        return x, x  # type: ignore[return-value]

    @mp.step
    def split_out(x: int) -> res.Split:
        return res.Split([x], "not a list")  # type: ignore[arg-type]

    @mp.pipeline
    def outputs() -> None:
        pair_out(1)
        split_out(1)

    run = outputs.run()
    assert run.steps["pair_out"].error == (
        "pipeline 'outputs', step 'pair_out': output 'output_1' expected str, got int (1): Input should be a valid "
        "string")
    assert (run.steps["split_out"].error or "").startswith(
        "pipeline 'outputs', step 'split_out': output 'test' expected list[int], got str ('not a list')")


class _Point(pydantic.BaseModel):
    a: int


def test_equal_bytes_from_two_types_load_as_each_steps_own_type() -> None:
    @mp.step
    def as_model() -> _Point:
        return _Point(a=1)

    @mp.step
    def as_dict() -> dict[str, int]:
        return {"a": 1}  # the same canonical JSON bytes as the model: one object in the store

    @mp.step
    def type_of(d: dict[str, int]) -> str:
        return type(d).__name__

    @mp.pipeline
    def models() -> _Point:
        return as_model()

    @mp.pipeline
    def dicts() -> str:
        return type_of(as_dict())

    first = models.run()  # the object's sidecar now says pydantic.json / _Point
    second = dicts.run(cache=False)
    assert first.steps["as_model"].outputs["output"].digest == second.steps["as_dict"].outputs["output"].digest
    assert type(first.output("as_model")) is _Point
    assert second.output("as_dict") == {"a": 1} and type(second.output("as_dict")) is dict
    assert second.output("type_of") == "dict"
    assert mp.get_run(second.id).output("as_dict") == {"a": 1}


def test_backend_wait_times_out_and_default_run_is_submit_plus_wait() -> None:
    class Stuck(FakeBackend):
        name = "stuck"

        def status(self, handle: RunHandle) -> RunStatus:
            return RunStatus(state="running")

    from mlpipe.launch import new_run_id
    from mlpipe.store import open_store

    store = open_store()
    handle = Stuck().submit(res.arithmetic.ir, store, params={}, run_id=new_run_id())
    with pytest.raises(BackendError, match=r"still running after 0.2 s"):
        Stuck().wait(handle, timeout=0.2, poll=0.05)

    class Delegating(FakeBackend):
        """A remote-style backend: submit starts the work elsewhere, status reports it."""

        name = "delegating"

        def __init__(self) -> None:
            super().__init__()
            self.local = LocalBackend()

        def submit(self, ir: Any, store: Any, *, params: Any, run_id: str, cache: bool = True) -> RunHandle:
            return self.local.submit(ir, store, params=params, run_id=run_id, cache=cache)

        def status(self, handle: RunHandle) -> RunStatus:
            return self.local.status(handle)

    run = res.arithmetic.run(backend=Delegating(), n=3)
    assert isinstance(run, mp.Run) and run.status == "succeeded"
    assert run.output("add_2") == 3
