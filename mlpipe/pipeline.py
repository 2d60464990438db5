"""The user's pipeline object: ``@pipeline`` and :class:`Pipeline`.

A :class:`Pipeline` wraps the plain pipeline function. It validates the
declared parameters, traces the function once (:mod:`mlpipe.trace`), compiles
the trace to the IR (:mod:`mlpipe.graph`) and hands the IR and validated
parameter values to :mod:`mlpipe.launch` to run, submit or compile. The
tracing machinery itself does not live here; nothing here imports a backend.
"""

from __future__ import annotations

import html
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, overload

from mlpipe.errors import DefinitionError, ParameterError
from mlpipe.hashing import canonical_json
from mlpipe.trace import Param, Trace, current_trace, trace_function
from mlpipe.typecheck import to_json_value, type_name, validate

if TYPE_CHECKING:
    import networkx

    from mlpipe.backend import Backend, RunHandle
    from mlpipe.ir import PipelineIR
    from mlpipe.run import Run

__all__ = ["Pipeline", "pipeline"]

RESERVED = frozenset({"profile", "backend", "cache"})


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
        """Inside another pipeline: inline this one as a sub-graph (step names prefixed ``<name>-``)."""
        trace = current_trace()
        if trace is not None:
            return trace.inline(self.name, self.fn, self.signature, self.params, args, kwargs)
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

            self._trace = trace_function(self.name, self.fn, self.params)
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

    def _repr_html_(self) -> str:
        """The graph, for notebooks (Jupyter calls this to display the pipeline)."""
        from mlpipe.graphview import svg

        params = ", ".join(self.params) or "no parameters"
        return (
            f'<div class="mlpipe-pipeline"><b>pipeline {html.escape(self.name)}</b> '
            f'<span style="color:#57606a">({html.escape(params)})</span><br>{svg(self.ir)}</div>'
        )

    @property
    def ir(self) -> PipelineIR:
        """The compiled, validated, backend-neutral IR of this pipeline.

        Compiled once, and again when a step's code changed in this process.
        """
        trace = self.trace()
        if self._ir is None:
            from mlpipe.graph import compile_trace

            self._ir = compile_trace(trace)
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
        *,
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

        In a Jupyter notebook, the run's progress shows as an output of the cell,
        updated in place as steps finish.
        """
        from mlpipe.fingerprint import settle
        from mlpipe.launch import run_pipeline
        from mlpipe.progress import REPORTER, default_reporter

        values = self.validate_params(params)
        notebook = default_reporter() if REPORTER.get() is None else None
        token = REPORTER.set(notebook) if notebook is not None else None
        try:
            return run_pipeline(self.ir, values, profile=profile, backend=backend, cache=cache)
        finally:
            if token is not None:
                REPORTER.reset(token)
            settle()  # what the steps changed in module state while running is not an edit of the code

    def compile(self, backend: str | Backend, path: str, *, profile: str | None = None, upload: bool = False) -> str:
        """Write the backend's compiled form of this pipeline to ``path`` and return the path.

        Compiling opens no store and needs no credentials; ``upload=True`` also
        puts what the tasks load (the IR, shipped code) into the profile's
        store, as :meth:`submit` does.
        """
        from mlpipe.launch import compile_pipeline

        return compile_pipeline(self.ir, backend, path, profile=profile, upload=upload)

    def submit(
        self,
        *,
        profile: str | None = None,
        backend: str | Backend | None = None,
        cache: bool = True,
        **params: Any,
    ) -> RunHandle:
        """Submit the pipeline to the profile's backend without waiting; returns a serialisable handle."""
        from mlpipe.launch import submit_pipeline

        values = self.validate_params(params)
        return submit_pipeline(self.ir, values, profile=profile, backend=backend, cache=cache)


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
