"""mlpipe.typecheck and mlpipe.hashing: type names, validation, compatibility, CLI values, canonical JSON."""

from __future__ import annotations

import io
from typing import Annotated, Any, Literal, NamedTuple, Protocol, TypedDict, TypeVar

import numpy as np
import pandas as pd
import pydantic
import pytest

from mlpipe.hashing import HashingWriter, canonical_json, digest_json, digest_object, json_safe
from mlpipe.typecheck import compatible, is_any, parse_cli_value, type_name, validate

T = TypeVar("T")


class Model(pydantic.BaseModel):
    a: int


class Base:
    pass


class Child(Base):
    pass


class Pair(NamedTuple):
    x: int
    y: int


class Movie(TypedDict):
    title: str


class Sized(Protocol):
    def __len__(self) -> int: ...


@pytest.mark.parametrize(
    ("tp", "name"),
    [
        (int, "int"), (Any, "Any"), (None, "None"), (type(None), "None"), (list[int], "list[int]"),
        (dict[str, list[float]], "dict[str, list[float]]"), (int | None, "int | None"),
        (pd.DataFrame, "pandas.DataFrame"),
        (np.ndarray, "numpy.ndarray"), (Model, "Model"), (Annotated[int, "meta"], "int"), ("Forward", "Forward"),
        (tuple[int, str], "tuple[int, str]"),
    ],
)
def test_type_name(tp: Any, name: str) -> None:
    assert type_name(tp) == name


@pytest.mark.parametrize(
    ("produced", "expected", "ok"),
    [
        (int, int, True),
        (int, float, True),
        (float, int, False),
        (str, int, False),
        (Child, Base, True),
        (Base, Child, False),
        (list[int], list[int], True),
        (list[int], list[str], False),
        (list[int], list, True),
        (list, list[int], True),
        (dict[str, int], dict[str, float], True),
        (int, int | None, True),
        (int | None, int, False),
        (int | str, int | str | None, True),
        (Any, int, True),
        (int, Any, True),
        (object, int, True),
        ("Model", int, True),
        (T, int, True),
        (Annotated[int, "x"], int, True),
        (pd.DataFrame, pd.DataFrame, True),
        (pd.DataFrame, np.ndarray, False),
        (Pair, tuple, True),
        (dict[str, str], Movie, True),
        (list[int], Sized, True),
        (Literal["a"], str, True),
        (tuple[int, ...], tuple[int, int], True),
    ],
)
def test_compatible(produced: Any, expected: Any, ok: bool) -> None:
    assert compatible(produced, expected) is ok


def test_is_any() -> None:
    assert is_any(Any) and is_any(object) and is_any("Name") and is_any(T)
    assert not is_any(int)


def test_validate() -> None:
    assert validate(int, "5") == 5
    assert validate(float, 1) == 1.0 and isinstance(validate(float, 1), float)
    assert validate(list[float], [1, 2]) == [1.0, 2.0]
    assert validate(Model, {"a": 1}) == Model(a=1)
    assert validate(Any, object) is object
    assert validate(pd.DataFrame, pd.DataFrame()).empty
    with pytest.raises(ValueError, match="Input should be a valid integer"):
        validate(int, "abc")
    with pytest.raises(ValueError, match="Input should be a valid integer"):
        validate(int, "5", strict=True)
    with pytest.raises(ValueError, match="Input should be an instance of DataFrame"):
        validate(pd.DataFrame, [1])
    with pytest.raises(ValueError, match=r"1: Input should be a valid integer"):
        validate(list[int], [1, "x"])


@pytest.mark.parametrize(
    ("tp", "raw", "value"),
    [
        (int, "5", 5), (float, "0.1", 0.1), (bool, "true", True), (str, "5", "5"), (str, "[1]", "[1]"),
        (list[int], "[1, 2]", [1, 2]), (dict[str, int], '{"a": 1}', {"a": 1}), (int, "abc", "abc"),
        (Any, "plain text", "plain text"), (str | None, "123", "123"), (str | None, "null", None),
        (str | None, "abc", "abc"), (int | None, "5", 5), (int | str, "[1]", "[1]"),
    ],
)
def test_parse_cli_value(tp: Any, raw: str, value: Any) -> None:
    assert parse_cli_value(tp, raw) == value


# -- hashing ---------------------------------------------------------------------------------------


def test_canonical_json_is_order_and_format_independent() -> None:
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert digest_json({"b": 1, "a": 2}) == digest_json({"a": 2, "b": 1})
    assert canonical_json({"é": "ü"}) == '{"é":"ü"}'
    assert canonical_json((1, 2)) == "[1,2]"
    assert canonical_json({3, 1, 2}) == "[1,2,3]"
    assert canonical_json(b"\x00\xff") == '{"__bytes__":"00ff"}'
    assert canonical_json(Model(a=1)) == '{"a":1}'
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        canonical_json(object())


def test_json_safe() -> None:
    assert json_safe({"a": [1, 2.5, None, True, "x"]})
    assert not json_safe({1: 2})
    assert not json_safe((1, 2))
    assert not json_safe(float("nan"))
    assert not json_safe(float("inf"))
    assert not json_safe(object())


def test_hashing_writer() -> None:
    raw = io.BytesIO()
    writer = HashingWriter(raw)
    writer.write(b"hello ")
    writer.write(memoryview(np.array([1, 2], dtype="int32")))
    data = raw.getvalue()
    assert writer.hexdigest() == digest_object(data)
    assert writer.size == len(data) == writer.tell() == 14
    assert writer.writable() and not writer.readable() and not writer.seekable()
    writer.close()
    assert not writer.closed
