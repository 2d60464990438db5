"""mlpipe.pipeline: tracing, handles, unique names, build-time validation and parameters."""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
from typing import Any, NamedTuple

import pydantic
import pytest

import mlpipe as mp
from mlpipe.errors import DefinitionError, GraphError, ParameterError, StepSignatureError, TypeMismatchError
from mlpipe.trace import OutputHandle, ParamHandle, current_trace


class Model(pydantic.BaseModel):
    weights: list[float]


class Parts(NamedTuple):
    head: list[int]
    tail: list[int]


@mp.step
def load(n: int = 3) -> list[int]:
    return list(range(n))


@mp.step
def train(df: list[int], lr: float = 0.01) -> Model:
    return Model(weights=[x * lr for x in df])


@mp.step
def parts(df: list[int]) -> Parts:
    return Parts(df[:1], df[1:])


@mp.step
def pair(df: list[int]) -> tuple[int, str]:
    return len(df), "x"


@mp.step
def name_it(s: str) -> str:
    return s


@mp.step
def count(n: int) -> int:
    return n


@mp.step
def ratio(x: float) -> float:
    return x


@mp.step
def side_effect(df: list[int]) -> None:
    return None


def test_steps_return_handles_while_tracing() -> None:
    seen: dict[str, Any] = {}

    @mp.pipeline
    def training(n: int = 3, lr: float = 0.1) -> Model:
        seen["trace"] = current_trace()
        seen["n"] = n
        df = load(n=n)
        seen["df"] = df
        return train(df, lr=lr)

    trace = training.trace()
    assert seen["trace"] is trace
    assert isinstance(seen["n"], ParamHandle) and seen["n"].name == "n"
    assert isinstance(seen["df"], OutputHandle) and seen["df"].step == "load" and seen["df"].output == "output"
    assert [c.name for c in trace.calls] == ["load", "train"]
    assert current_trace() is None
    assert training.trace() is trace  # traced once


def test_tuple_and_namedtuple_outputs_unpack() -> None:
    @mp.pipeline
    def shapes() -> None:
        df = load()
        head, tail = parts(df)
        assert isinstance(head, OutputHandle) and head.output == "head"
        both = parts(df)
        assert both.tail.output == "tail"  # a real NamedTuple of handles
        n, label = pair(df)
        assert (n.output, label.output) == ("output_0", "output_1")
        count(n)
        name_it(label)
        assert side_effect(tail) is None

    ir = shapes.ir
    assert [s.name for s in ir.steps] == ["load", "parts", "parts_2", "pair", "count", "name_it", "side_effect"]
    assert ir.step("side_effect").outputs == ()
    assert ir.step("side_effect").input("df").output == "tail"


def test_repeated_calls_get_unique_names_and_with_options_names() -> None:
    @mp.pipeline
    def repeated() -> None:
        df = load()
        train(df)
        train(df, lr=0.5)
        train.with_options(name="train_big")(df, lr=1.0)
        train(df)

    names = [s.name for s in repeated.ir.steps]
    assert names == ["load", "train", "train_2", "train_big", "train_3"]


def test_with_options_name_collision_is_made_unique() -> None:
    @mp.pipeline
    def clash() -> None:
        df = load()
        train.with_options(name="load")(df)

    assert [s.name for s in clash.ir.steps] == ["load", "load_2"]


def test_missing_argument_error_names_pipeline_and_step_in_cpython_words() -> None:
    @mp.pipeline
    def broken() -> None:
        train()  # type: ignore[call-arg]

    with pytest.raises(StepSignatureError) as caught:
        _ = broken.ir
    assert str(caught.value) == "pipeline 'broken', step 'train': train() missing 1 required positional argument: 'df'"
    assert caught.value.pipeline == "broken"
    assert caught.value.step == "train"
    assert isinstance(caught.value, TypeError)


def test_unknown_argument_error() -> None:
    @mp.pipeline
    def broken() -> None:
        train(load(), momentum=0.9)  # type: ignore[call-arg]

    with pytest.raises(StepSignatureError, match=r"train\(\) got an unexpected keyword argument 'momentum'"):
        _ = broken.ir


def test_type_mismatch_between_producer_and_consumer_is_caught_at_build() -> None:
    @mp.pipeline
    def mismatched() -> None:
        name_it(load())

    with pytest.raises(TypeMismatchError) as caught:
        _ = mismatched.graph
    err = caught.value
    message = str(err)
    assert "pipeline 'mismatched'" in message
    assert "step 'name_it'" in message
    assert "argument 's'" in message
    assert "expected str" in message
    assert "got list[int]" in message
    assert "step 'load'" in message
    assert (err.pipeline, err.step, err.argument, err.expected, err.actual) == (
        "mismatched", "name_it", "s", "str", "list[int]")


def test_int_output_fits_float_input() -> None:
    @mp.pipeline
    def widening() -> float:
        return ratio(count(3))

    assert [s.name for s in widening.ir.steps] == ["count", "ratio"]


def test_parameter_annotation_checked_against_consumer() -> None:
    @mp.pipeline
    def bad_param(label: str = "x") -> None:
        count(label)

    with pytest.raises(TypeMismatchError, match=r"argument 'n': expected int, got str from the parameter 'label'"):
        _ = bad_param.ir


def test_constants_are_validated() -> None:
    @mp.pipeline
    def bad_const() -> None:
        count("three")

    with pytest.raises(TypeMismatchError) as caught:
        _ = bad_const.ir
    assert "pipeline 'bad_const', step 'count', argument 'n': expected int, got 'three' (str)" in str(caught.value)

    @mp.pipeline
    def coerced() -> None:
        count("3")

    assert coerced.ir.step("count").input("n").value == 3


def test_non_json_constant_is_refused() -> None:
    @mp.pipeline
    def opaque() -> None:
        train(load(), lr=object())  # type: ignore[arg-type]

    with pytest.raises(TypeMismatchError):
        _ = opaque.ir

    @mp.step
    def anything(x: Any) -> int:
        return 1

    @mp.pipeline
    def opaque_any() -> None:
        anything(object())

    with pytest.raises(GraphError, match=r"only JSON values can"):
        _ = opaque_any.ir


def test_handles_across_pipelines_are_refused() -> None:
    @mp.pipeline
    def first() -> list[int]:
        return load()

    foreign = first.trace().result

    @mp.pipeline
    def second() -> None:
        train(foreign)

    with pytest.raises(GraphError) as caught:
        _ = second.ir
    message = str(caught.value)
    assert "pipeline 'second', step 'train', argument 'df'" in message
    assert "belongs to pipeline 'first'" in message
    assert caught.value.pipeline == "second"


def test_handles_cannot_be_used_as_values() -> None:
    @mp.pipeline
    def branching() -> None:
        df = load()
        if df:
            train(df)

    with pytest.raises(GraphError, match=r"cannot be used as a condition. Do this work inside a step"):
        _ = branching.ir

    @mp.pipeline
    def arithmetic(n: int = 1) -> None:
        count(n + 1)

    with pytest.raises(GraphError, match=r"parameter 'n' is a placeholder.*operator"):
        _ = arithmetic.ir

    @mp.pipeline
    def single_unpacked() -> None:
        _a, _b = load()  # type: ignore[misc]

    with pytest.raises(GraphError, match=r"unpacked"):
        _ = single_unpacked.ir


def test_handles_inside_containers_and_whole_tuples_are_refused() -> None:
    @mp.step
    def takes_list(xs: list[Any]) -> int:
        return len(xs)

    @mp.pipeline
    def in_list() -> None:
        takes_list([load()])

    with pytest.raises(GraphError, match=r"handles inside lists"):
        _ = in_list.ir

    @mp.pipeline
    def whole_tuple() -> None:
        takes_list(pair(load()))

    with pytest.raises(GraphError, match=r"got all 2 outputs of step 'pair' as one tuple"):
        _ = whole_tuple.ir


@pytest.mark.parametrize("reserved", ["profile", "backend", "cache"])
def test_reserved_parameter_names(reserved: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def reserved_fn({reserved}: int = 1):\n    return None", namespace)
    with pytest.raises(DefinitionError) as caught:
        mp.pipeline(namespace["reserved_fn"])
    assert f"parameter name {reserved!r} is reserved" in str(caught.value)
    assert caught.value.argument == reserved


def test_var_args_pipeline_parameters_are_refused() -> None:
    with pytest.raises(DefinitionError, match=r"plain named parameters"):

        @mp.pipeline
        def splat(*args: int) -> None:
            return None


def test_pipeline_name_option_and_validation() -> None:
    @mp.pipeline(name="my-pipeline")
    def renamed() -> None:
        load()

    assert renamed.name == "my-pipeline"
    assert renamed.ir.name == "my-pipeline"
    assert repr(renamed) == "<Pipeline 'my-pipeline'>"
    with pytest.raises(DefinitionError, match=r"pipeline name 'bad name' is not valid"):
        mp.pipeline(name="bad name")(lambda: None)


def test_calling_a_pipeline_directly_is_an_error() -> None:
    @mp.pipeline
    def direct() -> None:
        load()

    with pytest.raises(DefinitionError, match=r"use direct.run\(\.\.\.\)"):
        direct()


# -- parameters ----------------------------------------------------------------------------


@mp.pipeline
def params_pipeline(n: int, lr: float = 0.1, tags: list[str] = ["a"], model: Model | None = None) -> Model:
    return train(load(n=n), lr=lr)


def test_validate_params_fills_defaults_and_coerces() -> None:
    values = params_pipeline.validate_params({"n": "5", "lr": 1})
    assert values == {"n": 5, "lr": 1.0, "tags": ["a"], "model": None}
    assert isinstance(values["lr"], float)
    values = params_pipeline.validate_params({"n": 1, "model": {"weights": [1]}})
    assert values["model"] == Model(weights=[1.0])


def test_validate_params_wrong_type_names_everything() -> None:
    with pytest.raises(ParameterError) as caught:
        params_pipeline.validate_params({"n": "abc"})
    err = caught.value
    assert str(err).startswith("pipeline 'params_pipeline', parameter 'n': expected int, got 'abc' (str)")
    assert (err.pipeline, err.argument, err.expected, err.actual) == ("params_pipeline", "n", "int", "str")
    assert err.exit_code == 2


def test_validate_params_unknown_and_missing() -> None:
    with pytest.raises(ParameterError, match=r"pipeline 'params_pipeline' has no parameter 'm'; its parameters are: "
                                             r"n, lr, tags, model"):
        params_pipeline.validate_params({"n": 1, "m": 2})
    with pytest.raises(ParameterError, match=r"params_pipeline\(\) missing 1 required argument: 'n'"):
        params_pipeline.validate_params({})


def test_params_are_validated_before_anything_runs() -> None:
    ran: list[str] = []

    @mp.step
    def record(n: int) -> int:
        ran.append("record")
        return n

    @mp.pipeline
    def guarded(n: int = 1) -> int:
        return record(n)

    with pytest.raises(ParameterError):
        guarded.run(n="abc")
    with pytest.raises(ParameterError):
        guarded.run(nope=1)
    assert ran == []
    import os

    assert not os.path.exists(".mlpipe/runs")


def test_non_json_default_is_refused_at_build() -> None:
    @mp.pipeline
    def odd(x: Any = object()) -> None:
        load()

    with pytest.raises(GraphError, match=r"its default .* is not a JSON value"):
        _ = odd.ir


def test_ir_records_steps_inputs_and_options() -> None:
    ir = params_pipeline.ir
    assert [p.name for p in ir.params] == ["n", "lr", "tags", "model"]
    assert [(p.kind, p.required) for p in ir.params] == [("int", True), ("float", False), ("list", False),
                                                         ("json", False)]
    train_spec = ir.step("train")
    assert train_spec.upstream == ("load",)
    assert train_spec.input("df").source == "step"
    assert train_spec.input("lr").source == "param" and train_spec.input("lr").param == "lr"
    assert train_spec.code.qualname == "train"
    assert train_spec.outputs[0].materializer == "pydantic.json@1"
    assert [(o.step, o.output) for o in ir.outputs] == [("train", "output")]
    with pytest.raises(KeyError, match=r"has no step 'nope'"):
        ir.step("nope")
    # the IR is frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        train_spec.name = "other"  # type: ignore[misc]


def test_tracing_state_is_per_context() -> None:
    import threading

    barrier = threading.Barrier(2, timeout=10)
    seen: dict[str, Any] = {}

    def make(tag: str) -> mp.Pipeline:
        @mp.pipeline(name=f"concurrent_{tag}")
        def concurrent() -> None:
            df = load()
            barrier.wait()  # both traces are active at once, in two threads
            seen[tag] = current_trace()
            train(df)

        return concurrent

    pipes = {tag: make(tag) for tag in ("a", "b")}
    threads = [threading.Thread(target=lambda p=p: p.trace()) for p in pipes.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for tag, pipe in pipes.items():
        assert seen[tag] is pipe.trace()
        assert [c.name for c in pipe.trace().calls] == ["load", "train"]
    assert current_trace() is None


def test_non_json_parameter_values_are_refused_before_anything_runs() -> None:
    import os

    @mp.pipeline
    def takes_object(config: Any = None) -> None:
        load()

    with pytest.raises(ParameterError) as caught:
        takes_object.run(config=object())
    assert "pipeline 'takes_object', parameter 'config': a object cannot be a pipeline parameter" in str(caught.value)
    assert not os.path.exists(".mlpipe/runs")
    assert takes_object.validate_params({"config": {"a": [1, 2]}}) == {"config": {"a": [1, 2]}}


def test_path_and_date_parameters_travel_as_text() -> None:
    @mp.step
    def describe_path(p: pathlib.Path, when: datetime.date) -> str:
        return f"{type(p).__name__}:{p.name}:{type(when).__name__}:{when.isoformat()}"

    @mp.pipeline
    def paths(p: pathlib.Path = pathlib.Path("data/x.csv"), when: datetime.date = datetime.date(2024, 1, 2)) -> str:
        return describe_path(p, when)

    assert paths.ir.param("p").default == "data/x.csv"
    assert paths.validate_params({"when": datetime.date(2025, 3, 4)}) == {"p": "data/x.csv", "when": "2025-03-04"}
    run = paths.run()
    assert run.output("describe_path") == "PosixPath:x.csv:date:2024-01-02"
    assert run.params == {"p": "data/x.csv", "when": "2024-01-02"}
    again = paths.run(p="data/x.csv", when="2024-01-02")  # the same values, given as text
    assert all(s.cached for s in again.steps.values())


# -- nested pipelines --------------------------------------------------------------------------


def test_a_pipeline_called_in_a_pipeline_is_inlined_with_prefixed_names() -> None:
    from mlpipe.testing import nested

    ir = nested.ir
    assert [s.name for s in ir.steps] == [
        "stats-make_numbers",
        "stats-summarize",
        "stats_2-make_numbers",
        "stats_2-summarize",
        "describe",
    ]
    assert ir.step("stats-summarize").upstream == ("stats-make_numbers",)
    assert ir.step("describe").upstream == ("stats-summarize",)
    consts = {i.name: i.value for i in ir.step("stats-make_numbers").inputs if i.source == "const"}
    assert consts == {"scale": 2.0}
    assert ir.step("stats-make_numbers").input("n").param == "n"  # the outer parameter flows in


def test_nested_pipeline_arguments_are_checked() -> None:
    @mp.step
    def ident(x: int) -> int:
        return x

    @mp.pipeline
    def inner(x: int):
        return ident(x)

    @mp.pipeline
    def bad_type():
        return inner(x="seven")

    with pytest.raises(TypeMismatchError, match=r"nested pipeline 'inner', argument 'x': expected int, got 'seven'"):
        _ = bad_type.ir

    @mp.pipeline
    def missing():
        return inner()

    with pytest.raises(StepSignatureError, match=r"nested pipeline 'inner': missing a required argument: 'x'"):
        _ = missing.ir


def test_a_pipeline_called_outside_a_pipeline_says_how_to_run_it() -> None:
    from mlpipe.testing import stats

    with pytest.raises(DefinitionError, match=r"use stats.run"):
        stats(n=2)
