"""The backend conformance suite, shipped with mlpipe so that every backend runs the same tests.

A backend's test module subclasses :class:`BackendConformance` and supplies
fixtures; the inherited tests run the pipelines below and check that results,
statuses, cache behaviour and failure handling are the same as on the local
backend::

    from mlpipe.testing import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def backend(self):
            return MyBackend({"mode": "local"})

Override ``store`` to run against another store (``s3://`` on moto,
``gs://`` on an emulator). The pipelines live in this importable module, so
remote runtimes started as subprocesses can import their steps.

Importing this module needs pytest; nothing else in mlpipe imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import mlpipe as mp
from mlpipe.backend import Backend
from mlpipe.errors import UnsupportedFeatureError
from mlpipe.launch import new_run_id
from mlpipe.run import Run
from mlpipe.store import ArtifactStore, open_store

__all__ = ["BackendConformance", "run_on"]


# -- the conformance pipelines ------------------------------------------------------------


class Stats(NamedTuple):
    total: float
    n: int


@mp.step
def make_numbers(n: int, scale: float = 1.0) -> list[float]:
    return [i * scale for i in range(n)]


@mp.step
def summarize(values: list[float]) -> Stats:
    return Stats(float(sum(values)), len(values))


@mp.step
def describe(total: float, count: int, label: str, options: dict[str, Any], flags: list[int]) -> dict[str, Any]:
    return {"label": label, "mean": total / count if count else 0.0, "options": options, "flags": flags}


@mp.step
def parity(n: int) -> int:
    return n % 2


@mp.step
def after_parity(p: int, values: list[float]) -> float:
    return float(len(values) + p * 0)


@mp.step
def explode(values: list[float], fail: bool = True) -> float:
    if fail:
        raise RuntimeError("planted failure")
    return sum(values)


@mp.step
def consume(x: float) -> float:
    return x + 1


@mp.pipeline(name="conformance-basic")
def basic(
    n: int = 5,
    scale: float = 2.0,
    label: str = "demo",
    options: dict[str, Any] = {"k": 1},  # noqa: B006
    flags: list[int] = [1, 2],  # noqa: B006
) -> dict[str, Any]:
    total, count = summarize(make_numbers(n, scale=scale))
    return describe(total, count, label=label, options=options, flags=flags)


@mp.pipeline(name="conformance-cutoff")
def cutoff(n: int = 4) -> float:
    return after_parity(parity(n), make_numbers(3))


@mp.pipeline(name="conformance-failure")
def failing(fail: bool = True) -> None:
    values = make_numbers(3)
    consume(explode(values, fail=fail))
    summarize(values)


@mp.step(gate=True)
def check_limit(values: list[float], limit: float) -> list[float]:
    largest = max(values, default=0.0)
    if largest > limit:
        raise ValueError(f"largest value {largest} is above the limit {limit}")
    return values


@mp.pipeline(name="conformance-gate")
def gated(limit: float = 1.0) -> None:
    values = make_numbers(3)
    consume(explode(check_limit(values, limit=limit), fail=False))
    summarize(values)


@mp.pipeline
def stats(n: int = 3, scale: float = 1.0) -> Stats:
    return summarize(make_numbers(n, scale=scale))


@mp.pipeline(name="conformance-nested")
def nested(n: int = 3) -> dict[str, Any]:
    total, count = stats(n=n, scale=2.0)  # a pipeline called in a pipeline is inlined: stats-make_numbers, ...
    stats(n=2)  # a second call: stats_2-make_numbers, ...
    return describe(total, count, label="nested", options={"small": 1}, flags=[1])


@mp.pipeline(name="conformance-branch")
def branching(n: int = 3) -> None:
    total, count = summarize(make_numbers(n))
    with mp.when(total > 10.0):
        consume(total)
    with mp.when(~(total > 10.0)):
        describe(total, count, label="small", options={}, flags=[])


@mp.pipeline(name="conformance-map")
def fanned(n: int = 3) -> Stats:
    return summarize(consume.map(x=make_numbers(n)))  # consume[0], consume[1], ... then fan-in


@mp.pipeline(name="conformance-dynamic")
def dynamic(n: int = 3) -> None:
    values = make_numbers(n)
    total, _count = summarize(values)
    with mp.when(total > 2.0):
        again, _ = summarize(consume.map(x=values))  # a map and its fan-in inside a branch
        with mp.when(again > 100.0):  # a branch inside the branch
            consume(again)


def run_on(backend: Backend, pipeline: mp.Pipeline, store: ArtifactStore, *, cache: bool = True, **params: Any) -> Run:
    """Run ``pipeline`` on ``backend`` against ``store``, as ``Pipeline.run`` would with a profile."""
    values = pipeline.validate_params(params)
    ir = pipeline.ir
    backend.check(ir)
    return backend.run(ir, store, params=values, run_id=new_run_id(), cache=cache)


class BackendConformance:
    """Tests every executing backend must pass. Subclass it and provide the ``backend`` fixture."""

    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError("subclasses provide a `backend` fixture")

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ArtifactStore]:
        yield open_store(str(tmp_path / "store"))

    @pytest.fixture
    def local(self) -> Backend:
        from mlpipe.local import LocalBackend

        return LocalBackend()

    def test_basic_results_match_local(
        self, backend: Backend, local: Backend, store: ArtifactStore, tmp_path: Path
    ) -> None:
        params: dict[str, Any] = {
            "n": 4,
            "scale": 0.5,
            "label": "x y",
            "options": {"a": 1, "nested": [1, 2]},
            "flags": [3, 4],
        }
        run = run_on(backend, basic, store, **params)
        assert run.status == "succeeded", run.error
        reference = run_on(local, basic, open_store(str(tmp_path / "reference")), **params)
        assert run.output("describe") == reference.output("describe")
        assert run.output("summarize", "total") == 3.0
        assert run.output("summarize", 1) == 4
        assert set(run.steps) == {"make_numbers", "summarize", "describe"}
        assert all(not s.cached for s in run.steps.values())

    def test_second_run_is_fully_cached(self, backend: Backend, store: ArtifactStore) -> None:
        first = run_on(backend, basic, store, n=3)
        second = run_on(backend, basic, store, n=3)
        assert first.status == second.status == "succeeded"
        assert all(s.cached for s in second.steps.values())
        assert second.output("describe") == first.output("describe")

    def test_cache_shared_with_local_backend(self, backend: Backend, local: Backend, store: ArtifactStore) -> None:
        run_on(local, basic, store, n=6)
        remote = run_on(backend, basic, store, n=6)
        assert remote.status == "succeeded"
        assert all(s.cached for s in remote.steps.values())

    def test_early_cutoff(self, backend: Backend, store: ArtifactStore) -> None:
        run_on(backend, cutoff, store, n=4)
        again = run_on(backend, cutoff, store, n=6)  # parity re-runs, produces the same 0
        assert not again.steps["parity"].cached
        assert again.steps["after_parity"].cached

    def test_no_cache_recomputes(self, backend: Backend, store: ArtifactStore) -> None:
        run_on(backend, basic, store, n=2)
        again = run_on(backend, basic, store, cache=False, n=2)
        assert not any(s.cached for s in again.steps.values())

    def test_failure_skips_dependents(self, backend: Backend, store: ArtifactStore) -> None:
        run = run_on(backend, failing, store, fail=True)
        assert run.status == "failed"
        assert run.steps["explode"].status == "failed"
        assert "planted failure" in (run.steps["explode"].error or "")
        assert run.steps["consume"].status in ("skipped", "pending", "cancelled")
        assert run.steps["make_numbers"].status == "succeeded"

    def test_failed_gate_skips_dependents_with_reason(self, backend: Backend, store: ArtifactStore) -> None:
        if not backend.capabilities.gates:
            with pytest.raises(UnsupportedFeatureError, match="quality gate 'check_limit'"):
                backend.check(gated.ir)
            return
        run = run_on(backend, gated, store, limit=1.0)
        assert run.status == "failed"
        assert run.steps["check_limit"].status == "failed"
        assert "above the limit" in (run.steps["check_limit"].error or "")
        for name in ("explode", "consume"):
            assert run.steps[name].status == "skipped"
            reason = run.steps[name].error or ""
            assert "quality gate 'check_limit' failed" in reason and "above the limit" in reason
        assert run.steps["summarize"].status == "succeeded"
        assert run_on(backend, gated, store, limit=100.0).status == "succeeded"

    def test_nested_pipeline_is_inlined(self, backend: Backend, local: Backend, store: ArtifactStore) -> None:
        run = run_on(backend, nested, store, n=4)
        assert run.status == "succeeded", run.error
        assert set(run.steps) == {
            "stats-make_numbers",
            "stats-summarize",
            "stats_2-make_numbers",
            "stats_2-summarize",
            "describe",
        }
        assert run.output("stats-summarize", "total") == 12.0
        assert run.output("describe")["mean"] == 3.0
        again = run_on(local, nested, store, n=4)  # the same keys on every backend
        assert all(s.cached for s in again.steps.values())

    def test_conditions_run_the_branch_taken_or_are_refused(self, backend: Backend, store: ArtifactStore) -> None:
        if not backend.capabilities.conditions:
            with pytest.raises(UnsupportedFeatureError, match=r"cannot run step 'consume' under `mp.when"):
                backend.check(branching.ir)
            return
        big = run_on(backend, branching, store, n=6)  # total 15
        assert big.status == "succeeded", big.error
        assert big.output("consume") == 16.0
        assert big.steps["describe"].status == "skipped"
        assert "branch not taken" in (big.steps["describe"].error or "")
        small = run_on(backend, branching, store, n=3)  # total 3
        assert small.status == "succeeded"
        assert small.steps["consume"].status == "skipped"
        assert small.output("describe")["label"] == "small"

    def test_a_map_inside_a_branch_with_a_branch_inside(self, backend: Backend, store: ArtifactStore) -> None:
        caps = backend.capabilities
        if not (caps.map and caps.conditions):
            with pytest.raises(UnsupportedFeatureError, match="cannot run step"):
                backend.check(dynamic.ir)
            return
        taken = run_on(backend, dynamic, store, n=3)  # total 3 > 2: the map runs; 6 > 100 does not hold
        assert taken.status == "succeeded", taken.error
        assert taken.output("consume") == [1.0, 2.0, 3.0]
        assert [taken.steps[f"consume[{i}]"].status for i in range(3)] == ["succeeded"] * 3
        assert taken.output("summarize_2", "total") == 6.0
        assert taken.steps["consume_2"].status == "skipped"
        assert "summarize_2.total > 100.0 is false" in (taken.steps["consume_2"].error or "")
        not_taken = run_on(backend, dynamic, store, n=2)  # total 1: nothing in the branch runs
        assert not_taken.status == "succeeded", not_taken.error
        for name in ("consume", "summarize_2", "consume_2"):
            assert not_taken.steps[name].status == "skipped"
            assert "summarize.total > 2.0 is false" in (not_taken.steps[name].error or ""), name
        assert not any(name.startswith("consume[") for name in not_taken.steps)

    def test_map_fans_out_per_item_or_is_refused(self, backend: Backend, store: ArtifactStore) -> None:
        if not backend.capabilities.map:
            with pytest.raises(UnsupportedFeatureError, match=r"cannot run step 'consume', a fan-out"):
                backend.check(fanned.ir)
            return
        run = run_on(backend, fanned, store, n=3)
        assert run.status == "succeeded", run.error
        assert run.output("consume") == [1.0, 2.0, 3.0]
        assert run.output("summarize", "total") == 6.0
        more = run_on(backend, fanned, store, n=4)
        assert [more.steps[f"consume[{i}]"].cached for i in range(4)] == [True, True, True, False]
