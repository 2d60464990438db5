"""Conditions: `with mp.when(...)` runs steps only when a step output passes a test at run time."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

import mlpipe as mp
from mlpipe.errors import GraphError, UnsupportedFeatureError


class Metrics(pydantic.BaseModel):
    accuracy: float
    passed: bool


@mp.step
def evaluate(score: float) -> Metrics:
    return Metrics(accuracy=score, passed=score > 0.5)


@mp.step
def register(m: Metrics) -> str:
    return f"registered at {m.accuracy}"


@mp.step
def announce(text: str) -> str:
    return text.upper()


@mp.step
def report(m: Metrics) -> str:
    return "needs work"


@mp.pipeline
def gated_release(score: float = 0.95):
    metrics = evaluate(score)
    with mp.when(metrics.accuracy > 0.9):
        announce(register(metrics))
    with mp.when(~(metrics.accuracy > 0.9)):
        report(metrics)


def test_the_branch_taken_runs_and_the_other_is_skipped_with_its_condition(tmp_path: Path) -> None:
    from mlpipe.local import LocalBackend
    from mlpipe.store import open_store
    from mlpipe.testing import run_on

    store = str(tmp_path / "s")

    run = run_on(LocalBackend(), gated_release, open_store(store), score=0.95)
    assert run.status == "succeeded"
    assert run.output("announce") == "REGISTERED AT 0.95"
    assert run.steps["report"].status == "skipped"
    assert run.steps["report"].error == "skipped: branch not taken (condition not (evaluate.accuracy > 0.9) is false)"

    low = run_on(LocalBackend(), gated_release, open_store(store), score=0.4)
    assert low.status == "succeeded"
    assert low.steps["evaluate"].status == "succeeded"
    assert low.steps["register"].status == "skipped"
    assert "condition evaluate.accuracy > 0.9 is false" in (low.steps["register"].error or "")
    assert low.steps["announce"].status == "skipped"  # it consumes the skipped step's output: skipped too
    assert low.steps["announce"].error == low.steps["register"].error
    assert low.output("report") == "needs work"


def test_a_boolean_output_is_a_condition(tmp_path: Path) -> None:
    @mp.pipeline
    def by_flag(score: float = 0.9):
        metrics = evaluate(score)
        with mp.when(metrics.passed):
            register(metrics)

    from mlpipe.local import LocalBackend
    from mlpipe.store import open_store
    from mlpipe.testing import run_on

    assert run_on(LocalBackend(), by_flag, open_store(str(tmp_path / "s")), score=0.9).steps["register"].status == (
        "succeeded"
    )
    assert run_on(LocalBackend(), by_flag, open_store(str(tmp_path / "s")), score=0.1).steps["register"].status == (
        "skipped"
    )


def test_conditions_are_in_the_ir_and_make_the_test_an_upstream() -> None:
    ir = gated_release.ir
    (cond,) = ir.step("register").when
    assert (cond.step, cond.output, cond.path, cond.op, cond.value, cond.negate) == (
        "evaluate", "output", ("accuracy",), "gt", 0.9, False,
    )
    assert ir.step("report").when[0].negate
    assert "evaluate" in ir.step("register").upstream
    assert ir.step("announce").when == ir.step("register").when


def test_bad_conditions_are_refused_when_the_graph_is_built() -> None:
    @mp.step
    def count(n: int) -> int:
        return n

    @mp.pipeline
    def not_boolean(n: int = 1):
        with mp.when(count(n)):
            count(n)

    with pytest.raises(GraphError, match=r"mp.when\(\) needs a boolean or a comparison, got the output"):
        _ = not_boolean.ir

    @mp.pipeline
    def plain_value(n: int = 1):
        with mp.when(True):
            count(n)

    with pytest.raises(GraphError, match=r"needs a condition on a step output"):
        _ = plain_value.ir

    @mp.pipeline
    def escaping(score: float = 0.9):
        metrics = evaluate(score)
        with mp.when(metrics.accuracy > 0.5):
            text = register(metrics)
        announce(text)

    with pytest.raises(GraphError, match=r"exists only when evaluate.accuracy > 0.5; call 'announce' inside the same"):
        _ = escaping.ir

    @mp.pipeline
    def if_statement(score: float = 0.9):
        metrics = evaluate(score)
        if metrics.accuracy > 0.5:
            register(metrics)

    with pytest.raises(GraphError, match=r"used in an if statement \(use `with mp.when\(condition\):`\)"):
        _ = if_statement.ir

    @mp.pipeline
    def wrong_field(score: float = 0.9):
        with mp.when(evaluate(score).precision > 0.5):
            pass

    with pytest.raises(GraphError, match=r"asked for field 'precision'"):
        _ = wrong_field.ir


def test_a_backend_without_the_capability_refuses_conditions() -> None:
    from mlpipe.testing import basic

    class NoConditions(mp.Backend):
        name = "noconditions"

        def submit(self, *a: object, **k: object) -> mp.RunHandle:  # type: ignore[override]
            raise AssertionError("never submitted")

        def status(self, handle: mp.RunHandle) -> mp.RunStatus:
            raise AssertionError

        def cancel(self, handle: mp.RunHandle) -> None:
            raise AssertionError

    NoConditions().check(basic.ir)  # no conditions: fine
    with pytest.raises(UnsupportedFeatureError, match=r"cannot run step 'register' under `mp.when\(evaluate.accuracy"):
        NoConditions().check(gated_release.ir)
