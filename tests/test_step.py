"""mlpipe.step: the decorator, options, Resources, eager calls, outputs and signature errors."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest

import mlpipe as mp
from mlpipe.errors import DefinitionError
from mlpipe.step import Step, memory_bytes, parse_duration


class Pair(NamedTuple):
    left: int
    right: str


@mp.step
def bare(x: int, y: int = 2) -> int:
    """Add two numbers."""
    return x + y


@mp.step(name="configured", retries=2, timeout="30m", resources=mp.Resources(cpu=2, memory="8Gi", gpu=1),
         cache=False, version="v3", image="python:3.11-slim", env={"A": "1"})
def with_options(df: list[int], lr: float = 0.01) -> float:
    return sum(df) * lr


@mp.step
def nothing() -> None:
    return None


@mp.step
def two(x: int) -> tuple[int, str]:
    return x, str(x)


@mp.step
def named(x: int) -> Pair:
    return Pair(x, str(x))


@mp.step
def untyped(x):  # type: ignore[no-untyped-def]
    return x


def test_bare_decorator_keeps_the_function() -> None:
    assert isinstance(bare, Step)
    assert bare.name == "bare"
    assert bare.__name__ == "bare"
    assert bare.__doc__ == "Add two numbers."
    assert bare.retries == 0 and bare.timeout is None and bare.cache is True
    assert bare.version is None and bare.image is None
    assert bare.resources == mp.Resources()


def test_eager_call_outside_a_pipeline_is_the_plain_function() -> None:
    assert bare(1) == 3
    assert bare(1, y=5) == 6
    assert with_options([1, 2, 3], lr=1.0) == 6.0
    assert two(4) == (4, "4")
    assert named(4) == Pair(4, "4")


def test_eager_call_errors_are_the_functions_own() -> None:
    with pytest.raises(TypeError, match=r"bare\(\) missing 1 required positional argument: 'x'"):
        bare()  # type: ignore[call-arg]


def test_decorator_with_options() -> None:
    s = with_options
    assert s.name == "configured"
    assert s.retries == 2
    assert s.timeout == 1800.0
    assert s.resources == mp.Resources(cpu=2, memory="8Gi", gpu=1)
    assert s.cache is False
    assert s.version == "v3"
    assert s.image == "python:3.11-slim"
    assert s.env == {"A": "1"}


def test_decorator_on_a_step_rewraps_the_function() -> None:
    again = mp.step(name="again")(bare)
    assert again.fn is bare.fn
    assert again.name == "again"


def test_with_options_returns_a_copy() -> None:
    big = bare.with_options(name="bare_big", retries=3, timeout=5)
    assert big.name == "bare_big" and big.retries == 3 and big.timeout == 5.0
    assert bare.name == "bare" and bare.retries == 0
    assert big.fn is bare.fn
    assert big(1) == 3


def test_with_options_rejects_unknown_options_listing_valid_ones() -> None:
    with pytest.raises(DefinitionError, match=r"unknown option\(s\) \['colour'\]; valid options: \[.*'retries'"):
        bare.with_options(colour="red")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"retries": -1}, "retries must be an int >= 0"),
        ({"retries": True}, "retries must be an int >= 0"),
        ({"timeout": "soon"}, "invalid duration 'soon'"),
        ({"timeout": 0}, "duration must be positive"),
        ({"resources": "big"}, "resources must be mp.Resources"),
        ({"cache": "yes"}, "cache must be True or False"),
        ({"version": 3}, "version must be a string"),
        ({"image": 3}, "image must be a string"),
        ({"name": "not valid"}, "step name 'not valid' is not valid"),
        ({"name": "1st"}, "step name '1st' is not valid"),
        ({"env": {"A": 1}}, "env must be a dict of strings"),
    ],
)
def test_invalid_options(options: dict[str, Any], match: str) -> None:
    with pytest.raises(DefinitionError, match=match):
        mp.step(**options)(lambda: None)


def test_resources_given_as_dict() -> None:
    s = bare.with_options(resources={"cpu": 1, "memory": "512Mi"})
    assert s.resources == mp.Resources(cpu=1, memory="512Mi")


def test_var_args_are_refused() -> None:
    with pytest.raises(DefinitionError, match=r"\*args and \*\*kwargs are not supported"):

        @mp.step
        def splat(*values: int) -> int:
            return sum(values)

    with pytest.raises(DefinitionError, match=r"\*\*options"):

        @mp.step
        def kw(**options: int) -> int:
            return 0


def test_not_callable_is_refused() -> None:
    with pytest.raises(DefinitionError, match=r"@step needs a function"):
        Step(3, None)  # type: ignore[arg-type]


# -- Resources ------------------------------------------------------------------------


def test_resources_valid() -> None:
    r = mp.Resources(cpu=0.5, memory="8Gi", gpu=1, accelerator="nvidia-tesla-t4", instance_type="ml.g4dn.xlarge")
    assert r.memory_bytes == 8 * 2**30
    assert r.to_dict() == {"cpu": 0.5, "memory": "8Gi", "gpu": 1, "accelerator": "nvidia-tesla-t4",
                           "instance_type": "ml.g4dn.xlarge"}
    assert mp.Resources().to_dict() == {}
    assert mp.Resources().memory_bytes is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cpu": 0}, "cpu must be positive"),
        ({"cpu": -1}, "cpu must be positive"),
        ({"gpu": -1}, "gpu must be a whole number"),
        ({"gpu": 1.5}, "gpu must be a whole number"),
        ({"memory": "lots"}, "invalid memory 'lots'"),
        ({"memory": "8GB"}, "invalid memory '8GB'"),
        ({"accelerator": "nvidia-tesla-t4"}, "needs gpu >= 1"),
    ],
)
def test_resources_invalid(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(DefinitionError, match=match):
        mp.Resources(**kwargs)


def test_resources_error_is_a_type_error_and_mlpipe_error() -> None:
    with pytest.raises(TypeError):
        mp.Resources(cpu=-1)
    with pytest.raises(mp.MlpipeError):
        mp.Resources(cpu=-1)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800.0), ("1.5h", 5400.0), ("90s", 90.0), ("250ms", 0.25), ("2d", 172800.0), (12, 12.0), ("7", 7.0),
     (None, None)],
)
def test_parse_duration(text: str | int | None, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "n"), [("512Mi", 512 * 2**20), ("16G", 16 * 10**9), ("1024", 1024), ("1Ki", 1024)])
def test_memory_bytes(text: str, n: int) -> None:
    assert memory_bytes(text) == n


# -- outputs ---------------------------------------------------------------------------


def test_outputs_from_annotations() -> None:
    assert [o.name for o in bare.outputs] == ["output"]
    assert bare.outputs[0].annotation is int
    assert nothing.outputs == ()
    assert [(o.name, o.annotation) for o in two.outputs] == [("output_0", int), ("output_1", str)]
    assert [(o.name, o.annotation) for o in named.outputs] == [("left", int), ("right", str)]
    assert named.namedtuple_type is Pair
    assert two.namedtuple_type is None
    assert [o.name for o in untyped.outputs] == ["output"]
    assert untyped.return_annotation is Any


def test_variable_length_tuple_is_one_output() -> None:
    @mp.step
    def many(x: int) -> tuple[int, ...]:
        return (x,)

    assert [o.name for o in many.outputs] == ["output"]


def test_unresolvable_annotation_is_a_definition_error() -> None:
    @mp.step
    def ghost(x: int) -> Ghost:  # type: ignore[name-defined]  # noqa: F821
        return x

    with pytest.raises(DefinitionError, match=r"cannot resolve the annotations of .*ghost\(\).*Ghost"):
        _ = ghost.outputs


# -- binding (CPython's wording) ----------------------------------------------------------


def test_bind_applies_defaults() -> None:
    assert bare.bind((1,), {}) == {"x": 1, "y": 2}
    assert bare.bind((), {"x": 1, "y": 3}) == {"x": 1, "y": 3}


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "bare() missing 1 required positional argument: 'x'"),
        ((1, 2, 3), {}, "bare() takes from 1 to 2 positional arguments but 3 were given"),
        ((1,), {"z": 1}, "bare() got an unexpected keyword argument 'z'"),
        ((1,), {"x": 1}, "bare() got multiple values for argument 'x'"),
    ],
)
def test_bind_errors_read_like_cpython(args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError) as caught:
        bare.bind(args, kwargs)
    assert str(caught.value) == message
    with pytest.raises(TypeError) as plain:
        bare.fn(*args, **kwargs)
    assert str(plain.value) == message


def test_bind_keyword_only_and_positional_only() -> None:
    @mp.step
    def fancy(a: int, /, b: int, *, c: int = 3) -> int:
        return a + b + c

    assert fancy.bind((1, 2), {}) == {"a": 1, "b": 2, "c": 3}
    with pytest.raises(TypeError, match=r"fancy\(\) takes 2 positional arguments but 3 were given"):
        fancy.bind((1, 2, 3), {})
    with pytest.raises(TypeError, match=r"fancy\(\) got some positional-only arguments passed as keyword"):
        fancy.bind((), {"a": 1, "b": 2})


def test_repr() -> None:
    assert repr(bare) == f"<Step 'bare' of {__name__}.bare>"
