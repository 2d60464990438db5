"""Pipeline tracing: the machinery that turns a pipeline function into recorded step calls.

A pipeline function is traced once, by calling it with parameter handles in
place of values while a :class:`Trace` is active in a ``ContextVar``. Each
step call inside records itself (:meth:`Trace.record_call`) and returns output
handles, never data. A finished trace carries the pipeline's name, its
declared parameters and every call, which is all :mod:`mlpipe.graph` needs to
compile the IR. The user-facing :class:`~mlpipe.pipeline.Pipeline` lives in
:mod:`mlpipe.pipeline`; nothing here runs or compiles anything.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlpipe.errors import GraphError, StepSignatureError, TypeMismatchError
from mlpipe.hashing import json_safe
from mlpipe.typecheck import compatible, type_name, validate

if TYPE_CHECKING:
    from mlpipe.step import Step

__all__ = [
    "Call",
    "Condition",
    "FieldHandle",
    "OutputHandle",
    "Param",
    "ParamHandle",
    "Trace",
    "current_trace",
    "Unmapped",
    "trace_function",
    "unmapped",
    "when",
]

_TRACE: ContextVar[Trace | None] = ContextVar("mlpipe_trace", default=None)


def current_trace() -> Trace | None:
    """The trace being recorded in this context, or None outside a pipeline build."""
    return _TRACE.get()


class _Handle:
    """Stands for a value that exists only when the pipeline runs."""

    trace: Trace
    annotation: Any

    def _refuse(self, what: str) -> typing.NoReturn:
        raise GraphError(
            f"pipeline {self.trace.pipeline!r}: {self.describe()} is a placeholder while the pipeline is "
            f"being built, so it cannot be {what}. Do this work inside a step and pass the handle to it",
            pipeline=self.trace.pipeline,
        )

    def describe(self) -> str:
        raise NotImplementedError

    def __bool__(self) -> bool:  # noqa: PLE0304
        self._refuse("used as a condition")

    def __iter__(self) -> typing.Iterator[Any]:
        self._refuse("unpacked or iterated (a step with several outputs needs a tuple or NamedTuple annotation)")

    def __getitem__(self, key: Any) -> Any:
        self._refuse("indexed")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self._refuse(f"asked for attribute {name!r}")

    def __len__(self) -> int:  # noqa: PLE0303
        self._refuse("measured with len()")


def _refuse_operator(self: _Handle, other: Any) -> typing.NoReturn:
    self._refuse("used with an operator")


def _refuse_conversion(self: _Handle) -> typing.NoReturn:
    self._refuse("converted (int(), float(), round()...)")


for _op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow"):
    setattr(_Handle, f"__{_op}__", _refuse_operator)
    setattr(_Handle, f"__r{_op}__", _refuse_operator)


def _compare(op: str) -> Callable[[_Handle, Any], Condition]:
    def compare(self: _Handle, other: Any) -> Condition:
        return Condition.compare(self, op, other)

    compare.__name__ = f"__{op}__"
    return compare


for _op in ("lt", "le", "gt", "ge"):
    setattr(_Handle, f"__{_op}__", _compare(_op))
for _conversion in ("int", "float", "complex", "index", "round", "neg", "abs"):
    setattr(_Handle, f"__{_conversion}__", _refuse_conversion)


@dataclass(frozen=True, eq=False)
class OutputHandle(_Handle):
    """One output of a traced step call (``guard``: the conditions under which the step runs)."""

    trace: Trace = field(repr=False)
    step: str
    output: str
    annotation: Any = field(repr=False)
    guard: tuple[Condition, ...] = field(default=(), repr=False)

    def describe(self) -> str:
        return f"the output {self.output!r} of step {self.step!r}"

    def __getattr__(self, name: str) -> Any:
        fields = getattr(self.annotation, "model_fields", None)
        if name.startswith("__") or not isinstance(fields, dict):
            return super().__getattr__(name)
        if name not in fields:
            self._refuse(f"asked for field {name!r}: {type_name(self.annotation)} has {sorted(fields)}")
        return FieldHandle(self.trace, self, (name,), fields[name].annotation)


@dataclass(frozen=True, eq=False)
class FieldHandle(_Handle):
    """A field of a step output that is a pydantic model: ``metrics.accuracy``; usable in conditions."""

    trace: Trace = field(repr=False)
    source: OutputHandle
    path: tuple[str, ...]
    annotation: Any = field(repr=False)

    def describe(self) -> str:
        return f"the field {'.'.join(self.path)!r} of {self.source.describe()}"


_OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


@dataclass(frozen=True)
class Condition:
    """A test on a step output, decided when the pipeline runs: built by comparing a handle, used by :func:`when`.

    ``op`` is ``gt``/``ge``/``lt``/``le`` against ``value``, or ``true`` for a
    boolean output; ``negate`` is set by ``~condition``.
    """

    source: OutputHandle
    path: tuple[str, ...]
    op: str
    value: Any = None
    negate: bool = False

    @classmethod
    def compare(cls, handle: _Handle, op: str, value: Any) -> Condition:
        source, path = _condition_source(handle)
        if isinstance(value, _Handle):
            handle._refuse("compared with another placeholder (compare with a constant, or compute it in a step)")
        kind = typing.get_origin(handle.annotation) or handle.annotation
        if kind not in (int, float, str) or isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise GraphError(
                f"pipeline {handle.trace.pipeline!r}: {handle.describe()} ({type_name(handle.annotation)}) "
                f"{_OPS[op]} {value!r}: conditions compare a number or a string with a constant of its kind",
                pipeline=handle.trace.pipeline,
            )
        return cls(source, path, op, value)

    @classmethod
    def of(cls, value: Any) -> Condition:
        """``value`` as a condition: a Condition, or a boolean step output or field."""
        if isinstance(value, Condition):
            return value
        if isinstance(value, (OutputHandle, FieldHandle)):
            if value.annotation is not bool:
                raise GraphError(
                    f"pipeline {value.trace.pipeline!r}: mp.when() needs a boolean or a comparison, got "
                    f"{value.describe()} ({type_name(value.annotation)}); compare it, e.g. mp.when(x > 0.9)",
                    pipeline=value.trace.pipeline,
                )
            source, path = _condition_source(value)
            return cls(source, path, "true")
        raise GraphError(
            f"mp.when() needs a condition on a step output (a comparison such as metrics.accuracy > 0.9, or a "
            f"boolean output), got {value!r}. A value known while the pipeline is built needs no condition: use if"
        )

    def __invert__(self) -> Condition:
        return Condition(self.source, self.path, self.op, self.value, not self.negate)

    def __bool__(self) -> bool:  # noqa: PLE0304
        self.source._refuse("used in an if statement (use `with mp.when(condition):`)")

    def describe(self) -> str:
        target = ".".join((self.source.step, *self.path)) if self.path else f"{self.source.step}.{self.source.output}"
        test = target if self.op == "true" else f"{target} {_OPS[self.op]} {self.value!r}"
        return f"not ({test})" if self.negate else test


def _condition_source(handle: _Handle) -> tuple[OutputHandle, tuple[str, ...]]:
    if isinstance(handle, FieldHandle):
        return handle.source, handle.path
    if isinstance(handle, OutputHandle):
        return handle, ()
    handle._refuse("used in a condition (conditions are decided on step outputs; a parameter is known: use if)")


class when:
    """Run the steps called in the block only when ``condition`` holds at run time.

    ``condition`` compares a step output (or a field of a pydantic output) with
    a constant, ``metrics.accuracy > 0.9``, or is a boolean output; ``~cond`` is
    its negation (the else branch). Steps in a branch not taken are recorded
    ``skipped`` with the condition, and so are the steps that consume their
    outputs; the run still succeeds. Blocks nest (both conditions must hold).
    """

    def __init__(self, condition: Any) -> None:
        self.condition = Condition.of(condition)

    def __enter__(self) -> Condition:
        trace = self.condition.source.trace
        if current_trace() is not trace:
            raise GraphError("mp.when() is used inside the pipeline function that produced its condition")
        trace.conditions.append(self.condition)
        return self.condition

    def __exit__(self, *exc: object) -> None:
        self.condition.source.trace.conditions.pop()


@dataclass(frozen=True, eq=False)
class ParamHandle(_Handle):
    """A pipeline parameter inside the traced pipeline function."""

    trace: Trace = field(repr=False)
    name: str
    annotation: Any = field(repr=False)

    def describe(self) -> str:
        return f"the parameter {self.name!r}"


@dataclass
class Call:
    """One recorded step call: the step, its unique name, each bound argument, and its conditions."""

    step: Step[Any, Any]
    name: str
    arguments: dict[str, Any]
    guard: tuple[Condition, ...] = ()
    map_over: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unmapped:
    """An argument of ``step.map(...)`` that every item receives whole: ``mp.unmapped(df)``."""

    value: Any


def unmapped(value: Any) -> Unmapped:
    """Pass ``value`` to every item of ``step.map(...)`` instead of mapping over it."""
    return Unmapped(value)


@dataclass(eq=False)
class Trace:
    """Everything recorded while a pipeline function runs with handles."""

    pipeline: str
    params: dict[str, Param] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    result: Any = None
    prefix: str = ""
    conditions: list[Condition] = field(default_factory=list)
    _next_suffix: dict[str, int] = field(default_factory=dict, repr=False)
    _prefixes: set[str] = field(default_factory=set, repr=False)
    _inlining: list[str] = field(default_factory=list, repr=False)

    def unique_name(self, base: str) -> str:
        """``base``, or ``base_2``, ``base_3``... for repeated calls (constant time per call)."""
        if base not in self.names:
            return base
        n = self._next_suffix.get(base, 2)
        while f"{base}_{n}" in self.names:
            n += 1
        self._next_suffix[base] = n + 1
        return f"{base}_{n}"

    def inline(
        self,
        name: str,
        fn: Callable[..., Any],
        signature: inspect.Signature,
        params: dict[str, Param],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Trace a nested pipeline's function into this trace; its steps are named ``<name>-<step>``.

        The nested pipeline's parameters take the handles and constants it is
        called with (checked against its annotations, defaults filled in);
        what its function returns is returned, handles of this trace.
        """
        where = f"pipeline {self.pipeline!r}, nested pipeline {name!r}"
        if name in self._inlining:
            raise GraphError(f"{where} calls itself; pipelines cannot recurse", pipeline=self.pipeline)
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise StepSignatureError(f"{where}: {exc}", pipeline=self.pipeline, step=name) from None
        bound.apply_defaults()
        for arg, value in bound.arguments.items():
            self._check_nested_argument(where, value, params[arg].annotation, arg)
        prefix = full = f"{self.prefix}{name}"
        n = 2
        while full in self._prefixes:
            full = f"{prefix}_{n}"
            n += 1
        self._prefixes.add(full)
        outer, self.prefix = self.prefix, f"{full}-"
        self._inlining.append(name)
        try:
            return fn(**bound.arguments)
        finally:
            self.prefix = outer
            self._inlining.pop()

    def _check_handle(self, where: str, value: _Handle, expected: Any, **context: Any) -> None:
        """A handle passed where ``expected`` is declared: it must be of this pipeline and of a compatible type."""
        if value.trace is not self:
            raise GraphError(
                f"{where}: {value.describe()} belongs to pipeline {value.trace.pipeline!r}; handles cannot "
                "cross pipelines. Pass the data through a parameter or recompute it in this pipeline",
                pipeline=self.pipeline,
                **context,
            )
        if not compatible(value.annotation, expected):
            raise TypeMismatchError(
                f"{where}: expected {type_name(expected)}, got {type_name(value.annotation)} from "
                f"{value.describe()}. Change one of the two annotations so they agree",
                pipeline=self.pipeline,
                expected=type_name(expected),
                actual=type_name(value.annotation),
                **context,
            )

    def _check_nested_argument(self, where: str, value: Any, expected: Any, arg: str) -> None:
        if isinstance(value, _Handle):
            self._check_handle(f"{where}, argument {arg!r}", value, expected, argument=arg)
            return
        try:
            validate(expected, value)
        except ValueError as exc:
            raise TypeMismatchError(
                f"{where}, argument {arg!r}: expected {type_name(expected)}, got {value!r}: {exc}",
                pipeline=self.pipeline,
                argument=arg,
                expected=type_name(expected),
                actual=type_name(type(value)),
            ) from None

    def record_call(self, step: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = self.unique_name(self.prefix + step.name)
        try:
            bound = step.bind(args, kwargs)
        except TypeError as exc:
            raise StepSignatureError(
                f"pipeline {self.pipeline!r}, step {name!r}: {exc}", pipeline=self.pipeline, step=name
            ) from None
        arguments: dict[str, Any] = {}
        for arg, value in bound.items():
            arguments[arg] = self._check_argument(step, name, arg, value)
        guard = tuple(self.conditions)
        for arg, value in arguments.items():
            missing = [c for c in value.guard if c not in guard] if isinstance(value, OutputHandle) else []
            if missing:
                raise GraphError(
                    f"pipeline {self.pipeline!r}, step {name!r}, argument {arg!r}: {value.describe()} exists only "
                    f"when {missing[0].describe()}; call {name!r} inside the same `with mp.when(...)` block",
                    pipeline=self.pipeline,
                    step=name,
                    argument=arg,
                )
        for condition in guard:
            if condition.source.trace is not self:
                raise GraphError(f"pipeline {self.pipeline!r}: a condition of another pipeline is used here")
        self.names.add(name)
        self.calls.append(Call(step, name, arguments, guard))
        outputs = [OutputHandle(self, name, o.name, o.annotation, guard) for o in step.outputs]
        if not outputs:
            return None
        nt = step.namedtuple_type
        if nt is not None:
            return nt(*outputs)
        if len(outputs) == 1 and outputs[0].output == "output":
            return outputs[0]
        return tuple(outputs)

    def record_map(self, step: Step[Any, Any], kwargs: dict[str, Any]) -> OutputHandle:
        """Record ``step.map(**kwargs)``: one step run per item of the mapped lists, collected into a list."""
        name = self.unique_name(self.prefix + step.name)
        where = f"pipeline {self.pipeline!r}, step {name!r}"
        if len(step.outputs) != 1 or step.namedtuple_type is not None:
            raise GraphError(f"{where}: map() needs a step with one output", pipeline=self.pipeline, step=name)
        mapped = {k: v for k, v in kwargs.items() if not isinstance(v, Unmapped)}
        whole = {k: v.value for k, v in kwargs.items() if isinstance(v, Unmapped)}
        if not mapped:
            raise GraphError(
                f"{where}: map() got no argument to map over (every one is wrapped in mp.unmapped)",
                pipeline=self.pipeline,
                step=name,
            )
        try:
            bound = step.bind((), {**whole, **dict.fromkeys(mapped)})
        except TypeError as exc:
            raise StepSignatureError(f"{where}: {exc}", pipeline=self.pipeline, step=name) from None
        arguments: dict[str, Any] = {}
        lengths: dict[str, int] = {}
        for arg, value in mapped.items():
            arguments[arg] = self._check_mapped(step, name, arg, value, lengths)
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise GraphError(
                f"{where}: mismatched map lengths ({sizes}); mapped lists are zipped, so they need one length",
                pipeline=self.pipeline,
                step=name,
            )
        for arg, value in bound.items():  # the unmapped arguments, defaults included
            if arg not in mapped:
                arguments[arg] = self._check_argument(step, name, arg, value)
        guard = tuple(self.conditions)
        self.names.add(name)
        self.calls.append(Call(step, name, arguments, guard, tuple(mapped)))
        annotation: Any = list.__class_getitem__(step.outputs[0].annotation)  # list[R], R known at run time
        return OutputHandle(self, name, "output", annotation, guard)

    def _check_mapped(self, step: Step[Any, Any], name: str, arg: str, value: Any, lengths: dict[str, int]) -> Any:
        expected = step.input_annotation(arg)
        where = f"pipeline {self.pipeline!r}, step {name!r}, mapped argument {arg!r}"
        if isinstance(value, (OutputHandle, ParamHandle)):
            if value.trace is not self:
                raise GraphError(f"{where}: {value.describe()} belongs to another pipeline", pipeline=self.pipeline)
            origin = typing.get_origin(value.annotation) or value.annotation
            if origin not in (list, tuple):
                raise GraphError(
                    f"{where}: {value.describe()} is a {type_name(value.annotation)}, and only lists can be mapped "
                    "over; wrap it in mp.unmapped(...) to give every item the whole value",
                    pipeline=self.pipeline,
                    step=name,
                    argument=arg,
                )
            items = typing.get_args(value.annotation)
            element = items[0] if items else Any
            if not compatible(element, expected):
                raise TypeMismatchError(
                    f"{where}: expected items of type {type_name(expected)}, got {type_name(value.annotation)} from "
                    f"{value.describe()}",
                    pipeline=self.pipeline,
                    step=name,
                    argument=arg,
                    expected=type_name(expected),
                    actual=type_name(value.annotation),
                )
            return value
        if not isinstance(value, (list, tuple)):
            raise GraphError(
                f"{where}: got {value!r} ({type_name(type(value))}); only lists can be mapped over. Wrap it in "
                "mp.unmapped(...) to give every item the whole value",
                pipeline=self.pipeline,
                step=name,
                argument=arg,
            )
        if _contains_handle(value):
            raise GraphError(
                f"{where}: a list of handles cannot be mapped over; map over the step output that is a list",
                pipeline=self.pipeline,
                step=name,
                argument=arg,
            )
        checked = []
        for i, item in enumerate(value):
            try:
                checked.append(validate(expected, item))
            except ValueError as exc:
                raise TypeMismatchError(
                    f"{where}: item {i} {item!r} is not a {type_name(expected)}: {exc}",
                    pipeline=self.pipeline,
                    step=name,
                    argument=arg,
                    expected=type_name(expected),
                    actual=type_name(type(item)),
                ) from None
        if not json_safe(_jsonable(checked)):
            raise GraphError(f"{where}: mapped constants must be JSON values", pipeline=self.pipeline, step=name)
        lengths[arg] = len(checked)
        return _Const(checked)

    def _check_argument(self, step: Step[Any, Any], name: str, arg: str, value: Any) -> Any:
        expected = step.input_annotation(arg)
        where = f"pipeline {self.pipeline!r}, step {name!r}, argument {arg!r}"
        if isinstance(value, FieldHandle):
            raise GraphError(
                f"{where}: {value.describe()} can be used in a condition, not passed to a step; pass the whole "
                f"output ({value.source.describe()}) and read the field inside the step",
                pipeline=self.pipeline,
                step=name,
                argument=arg,
            )
        if isinstance(value, _Handle):
            self._check_handle(where, value, expected, step=name, argument=arg)
            return value
        if isinstance(value, tuple) and value and all(isinstance(v, OutputHandle) for v in value):
            raise GraphError(
                f"{where}: got all {len(value)} outputs of step {value[0].step!r} as one tuple; unpack them "
                f"(a, b = {value[0].step}(...)) and pass the one you need",
                pipeline=self.pipeline,
                step=name,
                argument=arg,
            )
        if _contains_handle(value):
            raise GraphError(
                f"{where}: handles inside lists, dicts or other containers are not supported; pass each "
                "handle as its own argument",
                pipeline=self.pipeline,
                step=name,
                argument=arg,
            )
        try:
            checked = validate(expected, value)
        except ValueError as exc:
            raise TypeMismatchError(
                f"{where}: expected {type_name(expected)}, got {value!r} ({type_name(type(value))}): {exc}",
                pipeline=self.pipeline,
                step=name,
                argument=arg,
                expected=type_name(expected),
                actual=type_name(type(value)),
            ) from None
        if not json_safe(_jsonable(checked)):
            raise GraphError(
                f"{where}: the constant {type_name(type(value))} value cannot be part of the compiled pipeline "
                "(only JSON values can); return it from a step or make it a pipeline parameter",
                pipeline=self.pipeline,
                step=name,
                argument=arg,
            )
        return _Const(checked)


@dataclass(frozen=True)
class _Const:
    value: Any


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _contains_handle(value: Any) -> bool:
    if isinstance(value, _Handle):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_contains_handle(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_handle(v) for v in value.values())
    return False


@dataclass(frozen=True)
class Param:
    """A declared pipeline parameter."""

    name: str
    annotation: Any
    default: Any
    required: bool


def trace_function(name: str, fn: Callable[..., Any], params: dict[str, Param]) -> Trace:
    """Call ``fn`` with a handle for each parameter while a new trace records its step calls."""
    trace = Trace(name, params=params)
    handles = {p: ParamHandle(trace, p, param.annotation) for p, param in params.items()}
    token = _TRACE.set(trace)
    try:
        trace.result = fn(**handles)
    finally:
        _TRACE.reset(token)
    return trace
