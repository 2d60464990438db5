"""The intermediate representation: a frozen, backend-neutral compiled pipeline.

The IR is the only thing a backend receives. It names steps, their inputs
(pipeline parameters, constants, or outputs of upstream steps), their outputs,
options, and a *reference* to the code (import path, or a cloudpickle object in
the store for code that cannot be imported). Backends never see user functions.

It serialises to JSON (``to_dict()``, or ``model_dump_json()``) so it can be written
to the store and read back by ``python -m mlpipe.runtime`` inside a container.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

__all__ = [
    "ArtifactKind",
    "CodeRef",
    "ConditionSpec",
    "InputSpec",
    "OutputRef",
    "ParamSpec",
    "PipelineIR",
    "StepOutput",
    "StepSpec",
]

ParamKind = Literal["int", "float", "str", "bool", "list", "dict", "json"]
ArtifactKind = Literal["Dataset", "Model", "Metrics", "HTML", "Artifact"]

_M = TypeVar("_M", bound="_Frozen")


class _Frozen:
    """Frozen dataclasses with the part of pydantic's model API the IR is used through.

    A local run builds and reads IR from trusted data and never validates it,
    so the IR is plain dataclasses: the run path imports no pydantic (0.07 s).
    :meth:`model_validate` and :meth:`model_validate_json`, for IR read from a
    file, validate with pydantic (imported then): types, literals, no unknown
    fields (``pydantic.ValidationError``).
    """

    model_fields: ClassVar[dict[str, dataclasses.Field[Any]]]
    _tuples: ClassVar[tuple[str, ...]]
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "forbid"}  # read by pydantic when validating

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.model_fields = {}  # filled in by _finish once the dataclass exists
        cls._tuples = ()

    def __post_init__(self) -> None:
        for name in self._tuples:  # pydantic took lists for tuple fields: so do these
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (what ``model_dump(mode="json")`` gave when these were pydantic models)."""
        return {name: _plain(getattr(self, name)) for name in self.model_fields}

    def model_dump(self, *, mode: str = "json") -> dict[str, Any]:
        return self.to_dict()

    def model_dump_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def model_copy(self: _M, *, update: dict[str, Any] | None = None) -> _M:
        """A copy with ``update`` applied (not validated, as in pydantic)."""
        return dataclasses.replace(self, **(update or {}))  # type: ignore[type-var]

    @classmethod
    def model_construct(cls: type[_M], **values: Any) -> _M:
        return cls(**values)

    @classmethod
    def model_validate(cls: type[_M], data: Any) -> _M:
        return _adapter(cls).validate_python(data)  # type: ignore[no-any-return]

    @classmethod
    def model_validate_json(cls: type[_M], data: str | bytes | bytearray) -> _M:
        return _adapter(cls).validate_json(data)  # type: ignore[no-any-return]


_adapters: dict[type, Any] = {}


def _adapter(cls: type) -> Any:
    adapter = _adapters.get(cls)
    if adapter is None:
        from pydantic import TypeAdapter

        adapter = _adapters[cls] = TypeAdapter(cls)
    return adapter


def _finish(cls: type[_Frozen]) -> None:
    cls.model_fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    cls._tuples = tuple(f.name for f in dataclasses.fields(cls) if str(f.type).startswith("tuple["))  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    if isinstance(value, _Frozen):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class ParamSpec(_Frozen):
    """A pipeline parameter."""

    name: str
    type: str
    kind: ParamKind
    required: bool
    default: Any = None


@dataclass(frozen=True, kw_only=True)
class InputSpec(_Frozen):
    """Where one argument of a step comes from."""

    name: str
    type: str
    source: Literal["param", "step", "const"]
    param: str | None = None
    step: str | None = None
    output: str | None = None
    value: Any = None


_MODEL_NAME = re.compile(
    r"(Model|Regressor|Classifier|Regression|Estimator|Pipeline|Booster|Forest|Network|Net|SVC|SVR|KMeans)$"
)


@dataclass(frozen=True, kw_only=True)
class StepOutput(_Frozen):
    """One output of a step. ``materializer`` is the static choice for its annotation."""

    name: str
    type: str
    materializer: str

    @property
    def artifact(self) -> ArtifactKind:
        """What the output is, for an engine's UI: the KFP/Vertex artifact type names it (``system.<kind>``).

        Decided from the IR alone (compiling opens no store): frames and arrays
        are a ``Dataset``, pydantic models ``Metrics`` (their numeric fields are
        the metrics), ``HtmlReport`` values ``HTML``, values of a class whose name
        says it is an estimator (``LogisticRegression``, ``XGBClassifier``,
        ``Booster``, ``...Model``) a ``Model``, anything else an ``Artifact``.
        """
        family = self.materializer.partition("@")[0]
        if family in ("pandas.parquet", "numpy.npy") or self.type.split(".")[0] in ("pandas", "numpy", "pyarrow"):
            return "Dataset"
        if family == "pydantic.json":
            return "Metrics"
        if family == "html":
            return "HTML"
        if self.materializer == "auto" and _MODEL_NAME.search(self.type.rsplit(".", 1)[-1]):
            return "Model"
        return "Artifact"


@dataclass(frozen=True, kw_only=True)
class CodeRef(_Frozen):
    """How a runtime finds a step's function.

    ``module``/``qualname`` locate it by import. When ``importable`` is false
    (functions defined in ``__main__``, notebooks, closures) the launcher
    stores the function with cloudpickle and ``pickle_digest`` addresses it;
    ``pickle_sha256`` is the SHA-256 of those bytes, which a runtime checks
    before unpickling (the IR itself is verified against its SHA-256 digest).
    """

    module: str
    qualname: str
    importable: bool
    pickle_digest: str | None = None
    python: str | None = None
    pickle_sha256: str | None = None


@dataclass(frozen=True, kw_only=True)
class ConditionSpec(_Frozen):
    """A run-time test a step runs under (``with mp.when(...)``): an output of an upstream step, or a field of it.

    ``op`` is ``gt``/``ge``/``lt``/``le`` against ``value``, or ``true`` for a boolean; ``negate`` inverts it.
    """

    step: str
    output: str
    path: tuple[str, ...] = ()
    op: Literal["gt", "ge", "lt", "le", "true"]
    value: Any = None
    negate: bool = False

    def describe(self) -> str:
        target = ".".join((self.step, *self.path)) if self.path else f"{self.step}.{self.output}"
        symbol = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}.get(self.op)
        test = target if symbol is None else f"{target} {symbol} {self.value!r}"
        return f"not ({test})" if self.negate else test

    def not_taken(self) -> str:
        """Why a step under this condition was skipped, as every backend records it."""
        return f"skipped: branch not taken (condition {self.describe()} is false)"

    def test(self) -> ConditionSpec:
        """The condition without its negation: what a remote task publishes (``~c`` reads it as false)."""
        return self.model_copy(update={"negate": False}) if self.negate else self

    def holds(self, value: Any) -> bool:
        """Whether the test holds for the upstream output ``value`` (a model, a dict or a plain value)."""
        for name in self.path:
            value = value[name] if isinstance(value, dict) else getattr(value, name)
        if self.op == "true":
            result = bool(value)
        elif self.op == "gt":
            result = value > self.value
        elif self.op == "ge":
            result = value >= self.value
        elif self.op == "lt":
            result = value < self.value
        else:
            result = value <= self.value
        return result != self.negate


@dataclass(frozen=True, kw_only=True)
class StepSpec(_Frozen):
    """One step call in the compiled pipeline."""

    name: str
    code: CodeRef
    fingerprint: str
    code_manifest: dict[str, str] = field(default_factory=dict)
    code_previews: dict[str, str] = field(default_factory=dict)
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[StepOutput, ...] = ()
    upstream: tuple[str, ...] = ()
    retries: int = 0
    timeout: float | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    cache: bool = True
    version: str | None = None
    image: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    namedtuple: bool = False
    gate: bool = False
    when: tuple[ConditionSpec, ...] = ()
    #: Inputs mapped over (``step.map``): one run per item, named ``<name>[i]``; the output is the list of items'.
    map_over: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        doc = super().to_dict()
        for key in ("when", "map_over"):  # a pipeline without them (and so its digest) is what it always was
            if not doc[key]:
                del doc[key]
        return doc

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True, kw_only=True)
class OutputRef(_Frozen):
    step: str
    output: str


@dataclass(frozen=True, kw_only=True)
class PipelineIR(_Frozen):
    """A compiled pipeline. ``steps`` are in a topological order."""

    name: str
    params: tuple[ParamSpec, ...] = ()
    steps: tuple[StepSpec, ...] = ()
    outputs: tuple[OutputRef, ...] = ()
    mlpipe_version: str = ""

    def step(self, name: str) -> StepSpec:
        for spec in self.steps:
            if spec.name == name:
                return spec
        raise KeyError(f"pipeline {self.name!r} has no step {name!r}; steps: {[s.name for s in self.steps]}")

    def param(self, name: str) -> ParamSpec:
        for spec in self.params:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def published_tests(self) -> dict[str, tuple[ConditionSpec, ...]]:
        """Per step, the distinct tests that ``mp.when`` blocks make on its outputs, in the order first used.

        A remote task publishes the result of each (true or false) for the
        orchestrator's branch; ``~c`` and ``c`` share one (see :meth:`ConditionSpec.test`).
        """
        found: dict[str, dict[ConditionSpec, None]] = {}  # an ordered set per step (the specs are frozen: hashable)
        for spec in self.steps:
            for condition in spec.when:
                found.setdefault(condition.step, {})[condition.test()] = None
        return {step: tuple(tests) for step, tests in found.items()}

    def downstream(self) -> dict[str, list[str]]:
        """Map of step name to the names of the steps that consume its outputs."""
        out: dict[str, list[str]] = {s.name: [] for s in self.steps}
        for spec in self.steps:
            for up in spec.upstream:
                out[up].append(spec.name)
        return out


for _cls in (ParamSpec, InputSpec, StepOutput, CodeRef, ConditionSpec, StepSpec, OutputRef, PipelineIR):
    _finish(_cls)
