"""Step definition: the ``@step`` decorator, :class:`Step` and :class:`Resources`.

A step is a plain, annotated Python function plus options. Decorating attaches
metadata and nothing else: outside a pipeline the step is called as the plain
function (so it stays unit-testable); inside a pipeline being traced, the call
is recorded and output handles are returned. Tracing itself lives in
:mod:`mlpipe.trace`.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, ParamSpec, TypeVar, overload

from mlpipe.errors import DefinitionError
from mlpipe.trace import current_trace

__all__ = ["OutputSpec", "Resources", "Step", "parse_duration", "step"]

P = ParamSpec("P")
R = TypeVar("R")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T)?\s*$")
_MEM_UNITS = {
    None: 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_duration(value: str | float | int | None) -> float | None:
    """Seconds from ``"30m"``, ``"1.5h"``, ``"90s"``, ``"250ms"`` or a number of seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if not match:
            raise DefinitionError(
                f"invalid duration {value!r}: use a number of seconds or a string like '90s', '30m', '2h'",
                value=value,
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise DefinitionError(f"duration must be positive, got {value!r}", value=value)
    return seconds


def memory_bytes(value: str) -> int:
    """Bytes from a Kubernetes-style quantity such as ``"8Gi"`` or ``"512M"``."""
    match = _MEMORY.match(value)
    if not match:
        raise DefinitionError(
            f"invalid memory {value!r}: use a Kubernetes quantity like '512Mi', '8Gi' or '16G'",
            value=value,
        )
    return int(float(match.group(1)) * _MEM_UNITS[match.group(2)])


@dataclass(frozen=True)
class Resources:
    """Compute a step asks for. Backends map it to their own terms.

    Args:
        cpu: Number of CPU cores (fractions allowed, e.g. ``0.5``).
        memory: Kubernetes-style quantity, e.g. ``"8Gi"``.
        gpu: Number of accelerators.
        accelerator: Accelerator type, e.g. ``"nvidia-tesla-t4"`` (backend specific).
        instance_type: An explicit machine/instance type that overrides the mapping
            from cpu/memory/gpu on backends that choose machines (SageMaker, Vertex).
    """

    cpu: float | None = None
    memory: str | None = None
    gpu: int | None = None
    accelerator: str | None = None
    instance_type: str | None = None

    def __post_init__(self) -> None:
        if self.cpu is not None and self.cpu <= 0:
            raise DefinitionError(f"Resources(cpu={self.cpu!r}): cpu must be positive")
        if self.gpu is not None and (self.gpu < 0 or int(self.gpu) != self.gpu):
            raise DefinitionError(f"Resources(gpu={self.gpu!r}): gpu must be a whole number >= 0")
        if self.memory is not None:
            memory_bytes(self.memory)
        if self.accelerator is not None and not self.gpu:
            raise DefinitionError(
                f"Resources(accelerator={self.accelerator!r}) needs gpu >= 1 to say how many accelerators"
            )

    @property
    def memory_bytes(self) -> int | None:
        return None if self.memory is None else memory_bytes(self.memory)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class OutputSpec(NamedTuple):
    """One output of a step: its name and annotation."""

    name: str
    annotation: Any


_OPTION_NAMES = ("name", "retries", "timeout", "resources", "cache", "version", "image", "env", "gate")


@dataclass(frozen=True)
class _Options:
    name: str
    retries: int = 0
    timeout: float | None = None
    resources: Resources = field(default_factory=Resources)
    cache: bool | None = None  # None: cached, unless the code acts on an external system
    version: str | None = None
    image: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    gate: bool = False


class Step(Generic[P, R]):
    """A decorated step function.

    Attributes:
        fn: The plain function.
        name: The step's name (function name unless given).
        retries, timeout, resources, cache, version, image, env, gate: Options, see :func:`step`.
    """

    def __init__(self, fn: Callable[P, R], options: _Options) -> None:
        if not callable(fn):
            raise DefinitionError(f"@step needs a function, got {type(fn).__name__}")
        self.fn = fn
        self._options = options
        self._hints: dict[str, Any] | None = None
        self._outputs: tuple[OutputSpec, ...] | None = None
        self._binder: Callable[..., dict[str, Any]] | None = None
        self.signature = inspect.signature(fn)
        for param in self.signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise DefinitionError(
                    f"step {options.name!r}: parameter {param}: *args and **kwargs are not supported "
                    "because every input must have a name; declare the parameters explicitly",
                    step=options.name,
                )
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    # -- options ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._options.name

    @property
    def retries(self) -> int:
        return self._options.retries

    @property
    def timeout(self) -> float | None:
        return self._options.timeout

    @property
    def resources(self) -> Resources:
        return self._options.resources

    @property
    def cache(self) -> bool:
        """False when declared ``cache=False`` (a step that acts on an external system may still not be cached)."""
        return self._options.cache is not False

    @property
    def cache_option(self) -> bool | None:
        """``cache=`` as declared: ``None`` (the default) caches unless the code acts on an external system."""
        return self._options.cache

    @property
    def version(self) -> str | None:
        return self._options.version

    @property
    def image(self) -> str | None:
        return self._options.image

    @property
    def env(self) -> dict[str, str]:
        return dict(self._options.env)

    @property
    def gate(self) -> bool:
        return self._options.gate

    def with_options(self, **options: Any) -> Step[P, R]:
        """A copy of this step with some options replaced, e.g. ``train.with_options(name="train_big")``."""
        unknown = set(options) - set(_OPTION_NAMES)
        if unknown:
            raise DefinitionError(
                f"with_options() got unknown option(s) {sorted(unknown)}; valid options: {list(_OPTION_NAMES)}",
                step=self.name,
            )
        current = dict(self._options.__dict__)
        current.update(_normalise_options(self.fn, options, partial=True))
        return Step(self.fn, _Options(**current))

    # -- types -----------------------------------------------------------------
    @property
    def hints(self) -> dict[str, Any]:
        """Resolved annotations of the function (strings resolved in its module)."""
        if self._hints is None:
            self._hints = _resolve_hints(self.fn)
        return self._hints

    def input_annotation(self, name: str) -> Any:
        return self.hints.get(name, Any)

    @property
    def return_annotation(self) -> Any:
        if "return" not in self.hints and self.signature.return_annotation is inspect.Signature.empty:
            return Any
        return self.hints.get("return", Any)

    @property
    def outputs(self) -> tuple[OutputSpec, ...]:
        """The step's outputs, derived from the return annotation.

        ``-> None`` gives no output, ``-> tuple[A, B]`` two outputs named
        ``output_0`` and ``output_1``, a ``NamedTuple`` one output per field,
        anything else one output named ``output``.
        """
        if self._outputs is None:
            self._outputs = output_specs(self.return_annotation)
        return self._outputs

    @property
    def namedtuple_type(self) -> type | None:
        ret = self.return_annotation
        return ret if _is_namedtuple(ret) else None

    # -- calling ----------------------------------------------------------------
    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind a call's arguments to parameter names, defaults applied.

        Raises TypeError worded exactly as CPython words it for the function
        (``train() missing 1 required positional argument: 'df'``).
        """
        if self._binder is None:
            self._binder = _make_binder(self.fn, self.signature)
        return self._binder(*args, **kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        trace = current_trace()
        if trace is None:
            return self.fn(*args, **kwargs)
        return typing.cast(R, trace.record_call(self, args, kwargs))

    def map(self, **kwargs: Any) -> Any:
        """Inside a pipeline: one run of this step per item of the list arguments, collected into a list.

        Every keyword argument is mapped over (lists of one length, zipped)
        except those wrapped in :func:`mlpipe.unmapped`, which each item
        receives whole. Each item is cached by its own key; the result is a
        handle of ``list[R]`` that a step taking a list receives (fan-in).
        """
        trace = current_trace()
        if trace is None:
            raise DefinitionError(
                f"{self.name}.map() builds a fan-out inside a pipeline; outside one, call {self.name}() in a loop"
            )
        return trace.record_map(self, kwargs)

    def __repr__(self) -> str:
        return f"<Step {self.name!r} of {self.fn.__module__}.{self.fn.__qualname__}>"


def _is_namedtuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def output_specs(ret: Any) -> tuple[OutputSpec, ...]:
    if ret is None or ret is type(None):
        return ()
    if _is_namedtuple(ret):
        hints = typing.get_type_hints(ret)
        return tuple(OutputSpec(f, hints.get(f, Any)) for f in ret._fields)
    if typing.get_origin(ret) is tuple:
        args = typing.get_args(ret)
        if args and Ellipsis not in args and args != ((),):
            return tuple(OutputSpec(f"output_{i}", a) for i, a in enumerate(args))
    return (OutputSpec("output", ret),)


def _resolve_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except NameError as exc:
        raise DefinitionError(
            f"cannot resolve the annotations of {fn.__qualname__}(): {exc}. Define the named type "
            "before the pipeline is built, or import it in the step's module",
            step=fn.__name__,
        ) from exc


def _make_binder(fn: Callable[..., Any], sig: inspect.Signature) -> Callable[..., dict[str, Any]]:
    """Compile a function with ``fn``'s name and signature that returns its bound arguments.

    Calling it makes CPython itself check the call, so errors read exactly like
    calling the real function, without running it.
    """
    name = fn.__name__ if fn.__name__.isidentifier() else "step"
    defaults: dict[str, Any] = {}
    parts: list[str] = []
    seen_kwonly = False
    added_slash = False
    params = list(sig.parameters.values())
    for i, p in enumerate(params):
        if p.kind is p.KEYWORD_ONLY and not seen_kwonly:
            parts.append("*")
            seen_kwonly = True
        text = p.name
        if p.default is not p.empty:
            defaults[p.name] = p.default
            text += f"=__defaults[{p.name!r}]"
        parts.append(text)
        nxt = params[i + 1] if i + 1 < len(params) else None
        if p.kind is p.POSITIONAL_ONLY and (nxt is None or nxt.kind is not p.POSITIONAL_ONLY) and not added_slash:
            parts.append("/")
            added_slash = True
    signature = ", ".join(parts)
    code = _BINDERS.get(signature)
    if code is None:  # compiled once per signature (a module of 5,000 one-argument steps compiles one)
        source = f"def __mlpipe_binder({signature}):\n    return dict(locals())\n"
        code = _BINDERS[signature] = compile(source, "<mlpipe binder>", "exec")
    namespace: dict[str, Any] = {"__defaults": defaults}
    exec(code, namespace)
    binder = namespace["__mlpipe_binder"]
    binder.__code__ = binder.__code__.replace(co_name=name, co_qualname=name)  # CPython's errors name the step
    binder.__name__ = binder.__qualname__ = name
    return typing.cast(Callable[..., dict[str, Any]], binder)


_BINDERS: dict[str, types.CodeType] = {}


def _normalise_options(fn: Callable[..., Any], options: dict[str, Any], partial: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key == "name":
            if not isinstance(value, str) or not value.isidentifier():
                raise DefinitionError(
                    f"step name {value!r} is not valid: use letters, digits and underscores, not starting with a digit",
                    step=fn.__name__,
                )
            out["name"] = value
        elif key == "retries":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DefinitionError(f"retries must be an int >= 0, got {value!r}", step=fn.__name__)
            out["retries"] = value
        elif key == "timeout":
            out["timeout"] = parse_duration(value)
        elif key == "resources":
            if value is None:
                value = Resources()
            if isinstance(value, dict):
                value = Resources(**value)
            if not isinstance(value, Resources):
                raise DefinitionError(
                    f"resources must be mp.Resources(...), got {type(value).__name__}", step=fn.__name__
                )
            out["resources"] = value
        elif key == "cache" and value is None:
            out[key] = None
        elif key in ("cache", "gate"):
            if not isinstance(value, bool):
                raise DefinitionError(f"{key} must be True or False, got {value!r}", step=fn.__name__)
            out[key] = value
        elif key in ("version", "image"):
            if value is not None and not isinstance(value, str):
                raise DefinitionError(f"{key} must be a string, got {value!r}", step=fn.__name__)
            out[key] = value
        elif key == "env":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise DefinitionError(f"env must be a dict of strings, got {value!r}", step=fn.__name__)
            out["env"] = tuple(sorted(value.items()))
        else:  # pragma: no cover - guarded by callers
            raise DefinitionError(f"unknown step option {key!r}")
    if not partial:
        out.setdefault("name", fn.__name__ if fn.__name__.isidentifier() else "step")
    return out


@overload
def step(fn: Callable[P, R], /) -> Step[P, R]: ...


@overload
def step(
    *,
    name: str | None = None,
    retries: int = 0,
    timeout: str | float | None = None,
    resources: Resources | None = None,
    cache: bool | None = None,
    version: str | None = None,
    image: str | None = None,
    env: dict[str, str] | None = None,
    gate: bool = False,
) -> Callable[[Callable[P, R]], Step[P, R]]: ...


def step(
    fn: Callable[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int = 0,
    timeout: str | float | None = None,
    resources: Resources | None = None,
    cache: bool | None = None,
    version: str | None = None,
    image: str | None = None,
    env: dict[str, str] | None = None,
    gate: bool = False,
) -> Step[P, R] | Callable[[Callable[P, R]], Step[P, R]]:
    """Declare a function as a pipeline step. Works bare (``@step``) or with options.

    Args:
        name: The step's name in the graph (default: the function's name).
        retries: How many times to retry after a failure, with exponential backoff.
        timeout: Maximum run time, seconds or a string like ``"30m"``.
        resources: :class:`Resources` the step needs on remote backends.
        cache: ``False`` always recomputes the step. ``None`` (the default) caches it unless its
            code calls a function that acts on an external system whose state the store cannot
            see (the MLflow model registry: ``register_model``, ``promote``); ``True`` caches it
            regardless.
        version: A manual salt added to the cache key.
        image: Container image for remote backends (default: the profile's image).
        env: Environment variables set for the step on remote backends.
        gate: Mark the step as a quality gate: when it fails, every step that
            depends on it is recorded ``skipped`` with the gate's reason, and the
            run is ``failed``. Backends without the ``gates`` capability refuse
            such a pipeline before it runs.
    """

    def decorate(func: Callable[P, R]) -> Step[P, R]:
        if isinstance(func, Step):
            func = func.fn
        raw: dict[str, Any] = {
            "retries": retries,
            "timeout": timeout,
            "resources": resources,
            "cache": cache,
            "version": version,
            "image": image,
            "gate": gate,
        }
        if name is not None:
            raw["name"] = name
        if env is not None:
            raw["env"] = env
        return Step(func, _Options(**_normalise_options(func, raw)))

    if fn is not None:
        return decorate(fn)
    return decorate
