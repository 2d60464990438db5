"""Pipeline definition and tracing: ``@pipeline``, :class:`Pipeline`, output handles.

A pipeline function is traced once, by calling it with parameter handles in
place of values while a :class:`Trace` is active in a ``ContextVar``. Each
step call inside records itself and returns output handles, never data. The
trace is compiled to the IR by :mod:`mlpipe.graph`; running and compiling are
delegated to :mod:`mlpipe.launch`. Nothing here imports a backend.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

from mlpipe.errors import DefinitionError, GraphError, ParameterError, StepSignatureError, TypeMismatchError
from mlpipe.hashing import canonical_json, json_safe
from mlpipe.step import Step
from mlpipe.typecheck import compatible, to_json_value, type_name, validate

if TYPE_CHECKING:
    import networkx

    from mlpipe.backend import Backend, RunHandle
    from mlpipe.ir import PipelineIR
    from mlpipe.run import Run

__all__ = ["OutputHandle", "ParamHandle", "Pipeline", "current_trace", "pipeline"]

RESERVED = frozenset({"profile", "backend", "cache"})

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


for _op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "lt", "le", "gt", "ge"):
    setattr(_Handle, f"__{_op}__", _refuse_operator)
    setattr(_Handle, f"__r{_op}__", _refuse_operator)
for _conversion in ("int", "float", "complex", "index", "round", "neg", "abs"):
    setattr(_Handle, f"__{_conversion}__", _refuse_conversion)


@dataclass(frozen=True, eq=False)
class OutputHandle(_Handle):
    """One output of a traced step call."""

    trace: Trace = field(repr=False)
    step: str
    output: str
    annotation: Any = field(repr=False)

    def describe(self) -> str:
        return f"the output {self.output!r} of step {self.step!r}"


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
    """One recorded step call: the step, its unique name, and each bound argument."""

    step: Step[Any, Any]
    name: str
    arguments: dict[str, Any]


@dataclass(eq=False)
class Trace:
    """Everything recorded while a pipeline function runs with handles."""

    pipeline: str
    calls: list[Call] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    result: Any = None
    _next_suffix: dict[str, int] = field(default_factory=dict, repr=False)

    def unique_name(self, base: str) -> str:
        """``base``, or ``base_2``, ``base_3``... for repeated calls (constant time per call)."""
        if base not in self.names:
            return base
        n = self._next_suffix.get(base, 2)
        while f"{base}_{n}" in self.names:
            n += 1
        self._next_suffix[base] = n + 1
        return f"{base}_{n}"

    def record_call(self, step: Step[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        name = self.unique_name(step.name)
        try:
            bound = step.bind(args, kwargs)
        except TypeError as exc:
            raise StepSignatureError(
                f"pipeline {self.pipeline!r}, step {name!r}: {exc}", pipeline=self.pipeline, step=name
            ) from None
        arguments: dict[str, Any] = {}
        for arg, value in bound.items():
            arguments[arg] = self._check_argument(step, name, arg, value)
        self.names.add(name)
        self.calls.append(Call(step, name, arguments))
        outputs = [OutputHandle(self, name, o.name, o.annotation) for o in step.outputs]
        if not outputs:
            return None
        nt = step.namedtuple_type
        if nt is not None:
            return nt(*outputs)
        if len(outputs) == 1 and outputs[0].output == "output":
            return outputs[0]
        return tuple(outputs)

    def _check_argument(self, step: Step[Any, Any], name: str, arg: str, value: Any) -> Any:
        expected = step.input_annotation(arg)
        where = f"pipeline {self.pipeline!r}, step {name!r}, argument {arg!r}"
        if isinstance(value, _Handle):
            if value.trace is not self:
                raise GraphError(
                    f"{where}: {value.describe()} belongs to pipeline {value.trace.pipeline!r}; handles cannot "
                    "cross pipelines. Pass the data through a parameter or recompute it in this pipeline",
                    pipeline=self.pipeline,
                    step=name,
                    argument=arg,
                )
            if not compatible(value.annotation, expected):
                raise TypeMismatchError(
                    f"{where}: expected {type_name(expected)}, got {type_name(value.annotation)} from "
                    f"{value.describe()}. Change one of the two annotations so they agree",
                    pipeline=self.pipeline,
                    step=name,
                    argument=arg,
                    expected=type_name(expected),
                    actual=type_name(value.annotation),
                )
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


class Pipeline:
    """A pipeline: a traced graph of step calls that can run, compile and submit.

    Attributes:
        name: The pipeline's name (function name unless given).
        fn: The plain pipeline function.
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        if not self.name.replace("-", "_").isidentifier():
            raise DefinitionError(f"pipeline name {self.name!r} is not valid: use letters, digits, '_' and '-'")
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._trace: Trace | None = None
        self._ir: PipelineIR | None = None
        self._trace_current: Callable[[], bool] | None = None
        self.signature = inspect.signature(fn)
        for p in self.signature.parameters.values():
            if p.name in RESERVED:
                raise DefinitionError(
                    f"pipeline {self.name!r}: parameter name {p.name!r} is reserved (run() uses "
                    f"{sorted(RESERVED)}); rename the parameter",
                    pipeline=self.name,
                    argument=p.name,
                )
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                raise DefinitionError(
                    f"pipeline {self.name!r}: parameter {p}: pipeline parameters must be plain named parameters",
                    pipeline=self.name,
                    argument=p.name,
                )
        self._params: dict[str, Param] | None = None

    def __repr__(self) -> str:
        return f"<Pipeline {self.name!r}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise DefinitionError(
            f"pipeline {self.name!r} is not called directly: use {self.name}.run(...) to run it, or "
            f"{self.name}.compile(...) / .submit(...)",
            pipeline=self.name,
        )

    @property
    def params(self) -> dict[str, Param]:
        """Declared parameters, with resolved annotations."""
        if self._params is None:
            try:
                hints = typing.get_type_hints(self.fn)
            except NameError as exc:
                raise DefinitionError(f"pipeline {self.name!r}: cannot resolve annotations: {exc}") from exc
            self._params = {
                p.name: Param(
                    p.name,
                    hints.get(p.name, Any),
                    None if p.default is p.empty else p.default,
                    p.default is p.empty,
                )
                for p in self.signature.parameters.values()
            }
        return self._params

    def trace(self) -> Trace:
        """Trace the pipeline function and return the recorded calls.

        Traced once, and again only when the code the pipeline function reaches
        changed in this process (a notebook cell redefined a constant it passes
        to a step, or a step it calls).
        """
        if self._trace is not None and not self._current():
            self._trace = None
            self._ir = None
        if self._trace is None:
            from mlpipe.fingerprint import unchanged

            trace = Trace(self.name)
            handles = {name: ParamHandle(trace, name, p.annotation) for name, p in self.params.items()}
            token = _TRACE.set(trace)
            try:
                trace.result = self.fn(**handles)
            finally:
                _TRACE.reset(token)
            self._trace = trace
            self._trace_current = unchanged(self.fn)  # after: what the trace saw
        return self._trace

    def _current(self) -> bool:
        """Whether the trace and IR still describe the code (memoised fingerprints make this cheap)."""
        from mlpipe.fingerprint import fingerprint

        if self._trace is None or self._trace_current is None or not self._trace_current():
            return False
        if self._ir is None:
            return True
        compiled = {spec.name: spec.fingerprint for spec in self._ir.steps}
        checked: dict[int, str] = {}
        for call in self._trace.calls:
            fn = call.step.fn
            digest = checked.get(id(fn))
            if digest is None:
                digest = checked[id(fn)] = fingerprint(fn).digest
            if compiled.get(call.name) != digest:
                return False
        return True

    @property
    def ir(self) -> PipelineIR:
        """The compiled, validated, backend-neutral IR of this pipeline.

        Compiled once, and again when a step's code changed in this process.
        """
        trace = self.trace()
        if self._ir is None:
            from mlpipe.graph import compile_trace

            self._ir = compile_trace(self, trace)
        return self._ir

    @property
    def graph(self) -> networkx.DiGraph:
        """The step-call graph as a ``networkx.DiGraph`` (nodes are step names)."""
        from mlpipe.graph import to_networkx

        return to_networkx(self.ir)

    def validate_params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``values`` against the declared parameters; return every parameter's value.

        Raises:
            ParameterError: an unknown name, a missing required value, or a value
                of the wrong type (named with expected and actual type).
        """
        params = self.params
        unknown = sorted(set(values) - set(params))
        if unknown:
            raise ParameterError(
                f"pipeline {self.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are: {', '.join(params) or '(none)'}",
                pipeline=self.name,
                argument=unknown[0],
            )
        out: dict[str, Any] = {}
        for name, p in params.items():
            if name in values:
                value = values[name]
            elif p.required:
                raise ParameterError(
                    f"{self.name}() missing 1 required argument: {name!r}",
                    pipeline=self.name,
                    argument=name,
                )
            else:
                value = p.default
            try:
                out[name] = validate(p.annotation, value)
            except ValueError as exc:
                raise ParameterError(
                    f"pipeline {self.name!r}, parameter {name!r}: expected {type_name(p.annotation)}, "
                    f"got {value!r} ({type_name(type(value))}): {exc}",
                    pipeline=self.name,
                    argument=name,
                    expected=type_name(p.annotation),
                    actual=type_name(type(value)),
                ) from None
            try:  # every backend passes parameters as JSON, and the run record stores them
                canonical_json(out[name])
            except (TypeError, ValueError):
                try:  # a Path or a datetime travels as its text; the step's annotation turns it back
                    out[name] = to_json_value(p.annotation, out[name])
                    canonical_json(out[name])
                    continue
                except (TypeError, ValueError):
                    pass
                raise ParameterError(
                    f"pipeline {self.name!r}, parameter {name!r}: a {type_name(type(value))} cannot be a pipeline "
                    "parameter; parameters are JSON values (numbers, strings, booleans, lists, dicts, pydantic "
                    "models). Pass a path or a name instead and load the data inside a step",
                    pipeline=self.name,
                    argument=name,
                    actual=type_name(type(value)),
                ) from None
        return out

    def run(
        self,
        profile: str | None = None,
        backend: str | Backend | None = None,
        cache: bool = True,
        **params: Any,
    ) -> Run:
        """Run the pipeline and wait for it to finish.

        Args:
            profile: Profile name from ``mlpipe.toml`` (default: ``MLPIPE_PROFILE`` or the file's default).
            backend: Backend name or instance, overriding the profile's.
            cache: ``False`` recomputes every step (outputs are still stored).
            **params: Pipeline parameters, validated before anything runs.

        Returns:
            The finished :class:`~mlpipe.run.Run`, whatever its status.
        """
        from mlpipe.fingerprint import settle
        from mlpipe.launch import run_pipeline

        try:
            return run_pipeline(self, params, profile=profile, backend=backend, cache=cache)
        finally:
            settle()  # what the steps changed in module state while running is not an edit of the code

    def compile(self, backend: str | Backend, path: str, *, profile: str | None = None) -> str:
        """Write the backend's compiled form of this pipeline to ``path`` and return the path."""
        from mlpipe.launch import compile_pipeline

        return compile_pipeline(self, backend, path, profile=profile)

    def submit(
        self,
        profile: str | None = None,
        backend: str | Backend | None = None,
        cache: bool = True,
        **params: Any,
    ) -> RunHandle:
        """Submit the pipeline to the profile's backend without waiting; returns a serialisable handle."""
        from mlpipe.launch import submit_pipeline

        return submit_pipeline(self, params, profile=profile, backend=backend, cache=cache)


@overload
def pipeline(fn: Callable[..., Any], /) -> Pipeline: ...


@overload
def pipeline(*, name: str | None = None) -> Callable[[Callable[..., Any]], Pipeline]: ...


def pipeline(
    fn: Callable[..., Any] | None = None, /, *, name: str | None = None
) -> Pipeline | Callable[[Callable[..., Any]], Pipeline]:
    """Declare a pipeline. Works bare (``@pipeline``) or with a name (``@pipeline(name="train")``)."""
    if fn is not None:
        return Pipeline(fn, name)
    return lambda f: Pipeline(f, name)
