"""Type names, value validation and annotation compatibility.

Owns everything mlpipe does with annotations: naming a type for an error
message, validating a value against an annotation with pydantic (adapters are
built once per annotation and cached, because building one costs far more
than using it), deciding at graph-build time whether a producer's return type
fits a consumer's parameter, and parsing ``-p key=value`` strings by the
parameter's annotation. pydantic is imported on first use only.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Union

__all__ = [
    "compatible",
    "is_any",
    "parse_cli_value",
    "to_json_value",
    "type_name",
    "validate",
]

_adapters: dict[tuple[Any, bool], Any] = {}


def type_name(tp: Any) -> str:
    """A short, readable name for an annotation or a value's type."""
    if tp is Any:
        return "Any"
    if tp is type(None) or tp is None:
        return "None"
    if isinstance(tp, str):
        return tp
    origin = typing.get_origin(tp)
    if origin is not None:
        args = typing.get_args(tp)
        if origin in (Union, types.UnionType):
            return " | ".join(type_name(a) for a in args)
        base = getattr(origin, "__name__", str(origin))
        if origin is typing.Annotated:
            return type_name(args[0])
        return f"{base}[{', '.join(type_name(a) for a in args)}]"
    if isinstance(tp, type):
        module = tp.__module__
        if module == "builtins":
            return tp.__qualname__
        short = module.split(".")[0]
        if module == "mlpipe.files":  # mp.File, mp.Directory: the cache key looks for these names
            return f"mlpipe.{tp.__qualname__}"
        return f"{short}.{tp.__qualname__}" if short in ("pandas", "numpy", "pyarrow") else tp.__qualname__
    return repr(tp)


def is_any(tp: Any) -> bool:
    return tp is Any or tp is object or isinstance(tp, (str, typing.TypeVar, typing.ForwardRef))


def _adapter(tp: Any, strict: bool) -> Any:
    key = (tp, strict)
    try:
        return _adapters[key]
    except KeyError:
        pass
    except TypeError:  # unhashable annotation: build without caching
        return _build_adapter(tp, strict)
    adapter = _adapters[key] = _build_adapter(tp, strict)
    return adapter


def _build_adapter(tp: Any, strict: bool) -> Any:
    import pydantic

    config = pydantic.ConfigDict(arbitrary_types_allowed=True, strict=strict)
    try:
        return pydantic.TypeAdapter(tp, config=config)
    except pydantic.PydanticUserError:
        # BaseModel subclasses and dataclasses carry their own config.
        return pydantic.TypeAdapter(tp)


def validate(tp: Any, value: Any, *, strict: bool = False) -> Any:
    """Validate ``value`` against annotation ``tp`` and return the validated value.

    Raises:
        ValueError: with pydantic's description of what is wrong. Callers wrap
            it into an error that names the pipeline, step and argument.
    """
    if is_any(tp):
        return value
    if (
        isinstance(tp, type)
        and not typing.get_args(tp)
        and isinstance(value, tp)
        and not (type(value) is bool and tp is not bool)
    ):
        # Instances of a plain class pass as they are in strict and lax mode alike
        # (bool is excluded: pydantic refuses True for int in strict mode).
        return value
    import pydantic

    try:
        return _adapter(tp, strict).validate_python(value)
    except pydantic.ValidationError as exc:
        raise ValueError(_describe(exc)) from None


def to_json_value(tp: Any, value: Any) -> Any:
    """``value`` (valid for annotation ``tp``) as plain JSON: a ``Path`` or ``datetime`` becomes text.

    Raises:
        ValueError: the value has no JSON form (a DataFrame, an open file).
    """
    import pydantic_core

    try:
        return _adapter(Any if is_any(tp) else tp, False).dump_python(value, mode="json")
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


def _describe(exc: Any) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc + ': ' if loc else ''}{err.get('msg', 'invalid')}")
    return "; ".join(parts)


def _members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def compatible(produced: Any, expected: Any) -> bool:
    """Whether a value annotated ``produced`` may be passed where ``expected`` is declared.

    Conservative in the user's favour: anything mlpipe cannot decide (forward
    references, type variables, protocols) counts as compatible, so the check
    never rejects a valid pipeline. Unions are compatible when every member of
    ``produced`` fits some member of ``expected``.
    """
    if is_any(produced) or is_any(expected):
        return True
    if typing.get_origin(produced) is typing.Annotated:
        produced = typing.get_args(produced)[0]
    if typing.get_origin(expected) is typing.Annotated:
        expected = typing.get_args(expected)[0]
    produced_members = _members(produced)
    expected_members = _members(expected)
    if len(produced_members) > 1 or len(expected_members) > 1:
        return all(any(compatible(p, e) for e in expected_members) for p in produced_members)
    if produced == expected:
        return True
    p_origin = typing.get_origin(produced) or produced
    e_origin = typing.get_origin(expected) or expected
    if not isinstance(p_origin, type) or not isinstance(e_origin, type):
        return True
    if e_origin is float and p_origin is int:
        return True
    if typing.is_typeddict(e_origin) or getattr(e_origin, "_is_protocol", False):
        return True
    try:
        if not issubclass(p_origin, e_origin):
            return False
    except TypeError:
        return True
    p_args, e_args = typing.get_args(produced), typing.get_args(expected)
    if not p_args or not e_args:
        return True
    if len(p_args) != len(e_args) or Ellipsis in p_args or Ellipsis in e_args:
        return True
    return all(compatible(p, e) for p, e in zip(p_args, e_args, strict=True))


def parse_cli_value(tp: Any, raw: str) -> Any:
    """Turn the string of ``-p key=value`` into a Python value guided by ``tp``.

    Strings stay strings when the annotation is ``str``; otherwise the text is
    read as JSON when it parses (``5``, ``0.1``, ``true``, ``[1, 2]``) and kept
    as the raw string when not, so that pydantic's validation that follows
    reports the mismatch in its own words. When the annotation admits ``str``
    (``str | None``), only a JSON string or ``null`` is taken as JSON, so that
    ``-p label=123`` stays the string ``"123"``.
    """
    if tp is str:
        return raw
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    if str in _members(tp) and value is not None and not isinstance(value, str):
        return raw
    return value
