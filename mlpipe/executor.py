"""Executing one step call: the part every backend shares.

Given a step's spec, its function, the run's parameters and the objects its
upstream steps produced, :class:`StepExecutor` computes the cache key, serves
a hit when the entry and its objects exist, and otherwise loads the inputs
(verifying their hashes), calls the function with retries and a timeout,
validates the outputs against the annotation, stores them, writes the cache
entry, and records the step in the store and the index. The local backend
calls it in threads; ``python -m mlpipe.runtime`` calls it in a container.
Scheduling does not live here.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mlpipe.cache import artifact_input, cache_key, components_for, lookup, param_input, write_entry
from mlpipe.errors import (
    CorruptObjectError,
    MaterializerError,
    MlpipeError,
    ObjectNotFoundError,
    OutputTypeError,
    ParameterError,
    StepFailedError,
    StoreError,
)
from mlpipe.ir import StepSpec
from mlpipe.materializers import report_suffix
from mlpipe.records import RunRecord, StepOutcome, run_path, step_record
from mlpipe.store import ObjectInfo
from mlpipe.typecheck import type_name, validate

__all__ = ["AttemptLedger", "StepExecutor", "StepHooks", "UpstreamCorrupted"]

_IMMUTABLE = (int, float, str, bytes, bool, type(None), frozenset)


class UpstreamCorrupted(Exception):
    """An input object failed verification or is gone; the producing step must be recomputed."""

    def __init__(self, step: str, output: str, digest: str, problem: str = "is corrupted") -> None:
        super().__init__(f"output {output!r} of step {step!r} ({digest[:12]}…) {problem}")
        self.step, self.output, self.digest = step, output, digest


def is_immutable(value: Any) -> bool:
    if isinstance(value, _IMMUTABLE):
        return True
    if type(value) is tuple:
        return all(is_immutable(v) for v in value)
    return False


_versions: dict[str, str | None] = {}


def _package_versions(packages: frozenset[str]) -> dict[str, str]:
    """Versions of the installed top-level packages a step reaches, for the run record.

    ``module.__version__`` is free; the distribution metadata lookup (slow: it
    scans site-packages) is the fallback, once per package per process.
    """
    out: dict[str, str] = {}
    for top in sorted(packages):
        if top not in _versions:
            _versions[top] = _version_of(top)
        version = _versions[top]
        if version:
            out[top] = version
    return out


def _version_of(top: str) -> str | None:
    import importlib.metadata
    import sys

    version = getattr(sys.modules.get(top), "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version(top)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


_hint_cache: dict[Any, dict[str, Any]] = {}


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return _hint_cache[fn]
    except KeyError:
        hints = _hint_cache[fn] = typing.get_type_hints(fn)
        return hints


def _retry_delay(attempt: int) -> float:
    import os

    base = float(os.environ.get("MLPIPE_RETRY_BACKOFF", "1.0"))
    return float(min(base * (2 ** (attempt - 1)), 60.0))


class AttemptLedger(Protocol):
    """Counts a step's attempts across processes (remote tasks that the orchestrator retries)."""

    def used(self, step: str) -> tuple[int, str | None]:
        """Attempts already made for ``step`` in this run by earlier processes, and the last error."""
        ...

    def started(self, step: str, attempt: int) -> None:
        """Note that attempt number ``attempt`` (counting earlier processes' attempts) starts now."""
        ...


class StepHooks(Protocol):
    """What the executor tells the run's tracking (MLflow) about each step; injected by whoever runs it."""

    def wrap(
        self, spec: StepSpec, fn: Callable[..., Any], key: str, components: Mapping[str, Any]
    ) -> Callable[..., Any]:
        """``fn``, wrapped so that the step's tracking context is active wherever it is called."""
        ...

    def step_done(self, spec: StepSpec, outcome: StepOutcome) -> None:
        """The step ended (computed, failed, skipped or served from the cache) and is recorded. Never raises."""
        ...


@dataclass
class _Call:
    """The state of one step call while the executor works through it."""

    spec: StepSpec
    fn: Callable[..., Any]
    hints: dict[str, Any]
    outcome: StepOutcome
    packages: frozenset[str]
    components: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    pending: dict[str, tuple[InputRef, ObjectInfo]] = field(default_factory=dict)


class StepExecutor:
    """Runs step calls of one pipeline run against one store.

    Args:
        record: The run's record: where step records go (and the index, if it has one).
        pipeline: The pipeline's name.
        use_cache: False recomputes every step (entries are still written).
        attempts: Where attempts are counted across processes (remote runtimes): with
            it, ``retries=N`` bounds a step's runs to N + 1 in the whole run, even when
            the orchestrator retries the task too. None counts in this process only.
        hooks: The run's tracking (None: not tracked).
    """

    def __init__(
        self,
        record: RunRecord,
        pipeline: str,
        *,
        use_cache: bool = True,
        attempts: AttemptLedger | None = None,
        hooks: StepHooks | None = None,
    ) -> None:
        self.record = record
        self.store = record.store
        self.run_id = record.run_id
        self.pipeline = pipeline
        self.use_cache = use_cache
        self.attempts = attempts
        self.hooks = hooks

    def execute(
        self,
        spec: StepSpec,
        fn: Callable[..., Any],
        params: Mapping[str, Any],
        upstream: Mapping[tuple[str, str], ObjectInfo],
        memory: Mapping[str, Any] | None = None,
        force: bool = False,
        packages: frozenset[str] = frozenset(),
    ) -> StepOutcome:
        """Run (or serve from the cache) one step call and record it.

        ``upstream`` maps ``(step, output)`` to the stored object; ``memory``
        maps digests to values already in this process (immutable values only).
        ``force`` recomputes even when an entry exists (used to repair).

        Raises:
            UpstreamCorrupted: an input failed verification (the caller repairs).
        """
        begun = self.begin(spec, fn, params, upstream, force, packages)
        return begun if isinstance(begun, StepOutcome) else self.finish(begun, memory)

    def begin(
        self,
        spec: StepSpec,
        fn: Callable[..., Any],
        params: Mapping[str, Any],
        upstream: Mapping[tuple[str, str], ObjectInfo],
        force: bool = False,
        packages: frozenset[str] = frozenset(),
    ) -> StepOutcome | _Call:
        """The first half of :meth:`execute`: bind the inputs and look up the cache, loading no input.

        Returns the recorded outcome of a cache hit (or of an input the step
        refuses), else the call for :meth:`finish`. Cheap, so a scheduler can
        serve hits without handing them to a worker thread.
        """
        call = _Call(spec, fn, _hints(fn), StepOutcome(spec.name, "running", started=time.time()), packages)
        invalid = self._bind_inputs(call, params, upstream)
        if invalid is not None:
            return self._fail(call, invalid, with_traceback=False)
        if self.use_cache and spec.cache and not force:
            entry = lookup(self.store, call.outcome.key or "")
            if entry is not None:
                outcome = call.outcome
                outcome.status, outcome.cached, outcome.source_run = "succeeded", True, entry.run_id
                outcome.outputs = {n: ObjectInfo(**i) for n, i in entry.outputs.items()}
                outcome.ended = time.time()
                self._record(call, new_entry=None)
                return outcome
        return call

    def finish(self, call: _Call, memory: Mapping[str, Any] | None = None) -> StepOutcome:
        """The second half of :meth:`execute`: load the inputs, call the step, store and record its outputs.

        Raises:
            UpstreamCorrupted: an input failed verification (the caller repairs).
        """
        bad = self._load_inputs(call, memory)
        if bad is not None:
            return self._fail(call, bad, with_traceback=False)
        return self._compute(call)

    def _bind_inputs(
        self, call: _Call, params: Mapping[str, Any], upstream: Mapping[tuple[str, str], ObjectInfo]
    ) -> ParameterError | None:
        """Fingerprint every input, validate parameters and constants, and compute the cache key."""
        inputs_fp: dict[str, dict[str, Any]] = {}
        invalid: ParameterError | None = None
        for inp in call.spec.inputs:
            annotation = call.hints.get(inp.name, Any)
            if inp.source == "step":
                assert inp.step is not None and inp.output is not None
                info = upstream[(inp.step, inp.output)]
                inputs_fp[inp.name] = artifact_input(info.digest, inp.step, inp.output)
                call.pending[inp.name] = ((inp.step, inp.output), info)
            else:
                raw = params[inp.param] if inp.source == "param" else inp.value  # type: ignore[index]
                inputs_fp[inp.name] = param_input(raw)
                try:
                    call.values[inp.name] = validate(annotation, raw)
                except ValueError as exc:  # an untyped pipeline parameter given a value the step refuses
                    invalid = invalid or self._invalid_input(call.spec, inp.name, annotation, raw, exc)
        call.components = components_for(call.spec, inputs_fp)
        call.outcome.key = cache_key(call.components)
        return invalid

    def _load_inputs(self, call: _Call, memory: Mapping[str, Any] | None) -> ParameterError | None:
        """Load upstream outputs (from ``memory`` or the store, verified) into ``call.values``.

        Raises:
            UpstreamCorrupted: an input failed verification or is gone.
        """
        for name, ((up_step, up_output), info) in call.pending.items():
            if memory is not None and info.digest in memory:
                call.values[name] = memory[info.digest]
                continue
            try:
                call.values[name] = self.store.get_value(info.digest, call.hints.get(name, Any), info=info)
            except CorruptObjectError:
                raise UpstreamCorrupted(up_step, up_output, info.digest) from None
            except ObjectNotFoundError:  # deleted (or its sidecar lost) since the hit was taken
                raise UpstreamCorrupted(up_step, up_output, info.digest, "is missing from the store") from None
            except ValueError as exc:  # an untyped producer's value that this step's annotation refuses
                source = f"the output of step {up_step!r}"
                return self._invalid_input(call.spec, name, call.hints.get(name, Any), None, exc, source)
        return None

    def _compute(self, call: _Call) -> StepOutcome:
        """Call the step, validate and store its outputs, write the cache entry and the record."""
        spec, outcome = call.spec, call.outcome
        fn = call.fn
        if self.hooks is not None:  # the step's child run is active wherever fn runs
            fn = self.hooks.wrap(spec, fn, outcome.key or "", call.components)
        try:
            result = self._call(spec, fn, call.values, outcome)
            produced = self._split_outputs(spec, result, call.hints.get("return", Any))
            for out in spec.outputs:
                info = self._store_output(spec, out.name, produced[out.name])
                outcome.outputs[out.name] = info
                if is_immutable(produced[out.name]):
                    outcome.values[info.digest] = produced[out.name]
        except MlpipeError as exc:
            return self._fail(call, exc, with_traceback=False)
        except Exception as exc:  # the user's code may raise anything
            return self._fail(call, exc, with_traceback=True)
        outcome.status = "succeeded"
        outcome.ended = time.time()
        outputs = {n: i.to_dict() for n, i in outcome.outputs.items()}
        entry = write_entry(
            self.store, outcome.key or "", self.pipeline, spec.name, self.run_id, outputs, call.components
        )
        self._record(call, new_entry=None if entry is None else entry.to_dict())
        return outcome

    def _store_output(self, spec: StepSpec, name: str, value: Any) -> ObjectInfo:
        try:
            return self.store.put_value(value)
        except MaterializerError as exc:
            label = "output" if name == "output" else f"output {name!r}"
            raise MaterializerError(
                f"pipeline {self.pipeline!r}, step {spec.name!r}, {label}: {exc}",
                pipeline=self.pipeline,
                step=spec.name,
                argument=name,
                type=getattr(exc, "type", None),
            ) from exc

    def _call(self, spec: StepSpec, fn: Callable[..., Any], values: dict[str, Any], outcome: StepOutcome) -> Any:
        """Call the step, retrying with exponential backoff; ``outcome.attempts`` counts every try."""
        last_error = None
        if self.attempts is not None:
            outcome.attempts, last_error = self.attempts.used(spec.name)
        while True:
            if outcome.attempts > spec.retries:  # only with attempts made by earlier processes
                raise StepFailedError(
                    f"step {spec.name!r} already ran {outcome.attempts} time(s) in this run, in earlier tasks "
                    f"(retries={spec.retries}); not running it again. Last error: {last_error or 'none recorded'}",
                    step=spec.name,
                )
            outcome.attempts += 1
            if self.attempts is not None:
                self.attempts.started(spec.name, outcome.attempts)
            try:
                return self._call_once(spec, fn, values)
            except Exception:
                if outcome.attempts > spec.retries:
                    raise
                time.sleep(_retry_delay(outcome.attempts))

    def _call_once(self, spec: StepSpec, fn: Callable[..., Any], values: dict[str, Any]) -> Any:
        if spec.timeout is None:
            return _invoke(spec, fn, values)
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = _invoke(spec, fn, values)
            except BaseException as exc:  # carried to the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=target, name=f"mlpipe-step-{spec.name}", daemon=True)
        worker.start()
        worker.join(spec.timeout)
        if worker.is_alive():
            raise StepFailedError(
                f"step {spec.name!r} timed out after {spec.timeout:g} s (its thread is abandoned, not killed); "
                "raise the step's timeout= or make it faster",
                step=spec.name,
            )
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def _split_outputs(self, spec: StepSpec, result: Any, annotation: Any) -> dict[str, Any]:
        where = f"pipeline {self.pipeline!r}, step {spec.name!r}"
        outs = spec.outputs
        if not outs:
            return {}
        if len(outs) == 1 and not spec.namedtuple:
            values = {outs[0].name: result}
        else:
            if not isinstance(result, tuple) or len(result) != len(outs):
                got = (
                    f"{type_name(type(result))} of length {len(result)}"
                    if isinstance(result, tuple)
                    else type_name(type(result))
                )
                raise OutputTypeError(
                    f"{where}: expected a tuple of {len(outs)} outputs ({', '.join(o.name for o in outs)}), got {got}",
                    pipeline=self.pipeline,
                    step=spec.name,
                )
            values = {o.name: v for o, v in zip(outs, result, strict=True)}
        hints = _output_annotations(annotation, [o.name for o in outs])
        for name, value in values.items():
            expected = hints.get(name, Any)
            if expected in (int, float, bool) and type(value).__module__ == "numpy" and hasattr(value, "item"):
                # `-> float` returning np.float64 (what numpy and scikit-learn hand back): store the Python
                # scalar, as JSON, when it is exactly that value; np.float64(2.5) for `-> int` still fails.
                plain = value.item()
                if type(plain) is expected or (expected is float and type(plain) is int):
                    values[name] = value = plain
            try:
                checked = validate(expected, value, strict=True)
                pydantic = sys.modules.get("pydantic")  # a model can only come back if validate imported it
                if (
                    pydantic is not None
                    and isinstance(checked, pydantic.BaseModel)
                    and not isinstance(value, pydantic.BaseModel)
                ):
                    values[name] = checked  # `-> Metrics` returning a dict: store (and pass on) the model
                if expected is float and type(value) is int:
                    values[name] = float(value)  # `-> float` returning 3 stores 3.0, as declared
            except ValueError as exc:
                label = "output" if name == "output" else f"output {name!r}"
                raise OutputTypeError(
                    f"{where}: {label} expected {type_name(expected)}, got {type_name(type(value))} "
                    f"({_preview(value)}): {exc}",
                    pipeline=self.pipeline,
                    step=spec.name,
                    argument=name,
                    expected=type_name(expected),
                    actual=type_name(type(value)),
                ) from None
        return values

    def _invalid_input(
        self, spec: StepSpec, name: str, annotation: Any, raw: Any, exc: ValueError, source: str | None = None
    ) -> ParameterError:
        got = source or f"{_preview(raw)} ({type_name(type(raw))})"
        return ParameterError(
            f"pipeline {self.pipeline!r}, step {spec.name!r}, argument {name!r}: expected {type_name(annotation)}, "
            f"got {got}: {exc}",
            pipeline=self.pipeline,
            step=spec.name,
            argument=name,
            expected=type_name(annotation),
        )

    def _fail(self, call: _Call, exc: BaseException, with_traceback: bool) -> StepOutcome:
        outcome = call.outcome
        outcome.status = "failed"
        outcome.ended = time.time()
        outcome.outputs = {}
        outcome.error = f"{type(exc).__name__}: {exc}" if with_traceback else str(exc)
        if with_traceback:
            outcome.traceback = "".join(traceback.format_exception(type(exc), exc, _user_frames(exc.__traceback__)))
        self._record(call, new_entry=None)
        return outcome

    def _record(self, call: _Call, new_entry: dict[str, Any] | None) -> None:
        spec, outcome = call.spec, call.outcome
        if outcome.status == "succeeded":
            outcome.reports = self._publish_reports(spec.name, outcome.outputs)
        doc = step_record(self.run_id, self.pipeline, spec, outcome, call.components)
        if call.packages and not outcome.cached:
            doc["packages"] = _package_versions(call.packages)
        outcome.record = doc
        self.record.record_step(doc, new_entry=new_entry)
        if self.hooks is not None:
            self.hooks.step_done(spec, outcome)

    def _publish_reports(self, step: str, outputs: Mapping[str, ObjectInfo]) -> dict[str, str]:
        """Copy each report output (see ``Materializer.report_suffix``) to a named file of this run.

        ``runs/<run>/reports/<step>.<output>.html`` opens in a browser, which a
        suffix-less content-addressed object does not. Cache hits get their copy
        too, so every run's record points at its own reports.
        """
        found: dict[str, str] = {}
        for name, info in outputs.items():
            suffix = report_suffix(info.materializer)
            if suffix is None:
                continue
            rel = run_path(self.run_id, "reports", f"{step}.{name}.{suffix}")
            try:
                self.store.put_bytes(rel, bytes(self.store.read_verified(info.digest)))
            except StoreError:  # a report copy must never fail the step; its object stays listed in outputs
                continue
            found[name] = f"{self.store.url}/{rel}"
        return found


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback from the first frame outside mlpipe: the user's code, without the executor's calls."""
    first = tb
    while first is not None and first.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        first = first.tb_next
    return first or tb


def _output_annotations(annotation: Any, names: list[str]) -> dict[str, Any]:
    from mlpipe.step import output_specs

    specs = output_specs(annotation)
    if [s.name for s in specs] == names:
        return {s.name: s.annotation for s in specs}
    return {}


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


InputRef = tuple[str, str]


def _invoke(spec: StepSpec, fn: Callable[..., Any], values: dict[str, Any]) -> Any:
    """Call a step's function; ``sys.exit()`` inside it is the step failing, never the process ending."""
    try:
        return fn(**values)
    except SystemExit as exc:
        raise StepFailedError(
            f"step {spec.name!r} called sys.exit({exc.code!r}); a step ends by returning its outputs or raising "
            "an exception, so it is recorded as failed",
            step=spec.name,
        ) from None
