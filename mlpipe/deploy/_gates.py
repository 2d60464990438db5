"""Rollout gates: what the challenger's live metrics must show before it gets more traffic.

Each gate looks at the metrics of the current stage (from the target: the
local server's counters, SageMaker's CloudWatch metrics) merged with the
metrics you supply (``--metric accuracy=0.93``: labels that arrived later,
business KPIs), and at the challenger's inputs for drift. A gate *passes*,
*fails* (the rollout rolls back) or *waits* (not enough data yet: nothing
changes). Gates are pydantic models, stored with the deployment as JSON.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Agreement", "Drift", "ErrorRate", "Gate", "GateContext", "GateVerdict", "Latency", "Metric", "parse_gates"]


@dataclass
class GateContext:
    """What gates see: metrics per role (``champion``, ``challenger``) and the challenger's recent inputs."""

    metrics: dict[str, dict[str, Any]]
    current: pd.DataFrame | None = None
    shadow: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GateVerdict:
    outcome: Literal["pass", "fail", "wait"]
    reason: str


class Gate(BaseModel, ABC):
    """A condition on the challenger's live behaviour. Subclasses set ``kind`` and implement :meth:`check`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @abstractmethod
    def check(self, context: GateContext) -> GateVerdict:
        """Pass, fail, or wait (missing data), with a one-line reason."""


def _value(context: GateContext, role: str, metric: str) -> Any:
    return context.metrics.get(role, {}).get(metric)


class ErrorRate(Gate):
    """The challenger's share of failed requests is at most ``max``."""

    kind: Literal["error_rate"] = "error_rate"
    max: float = Field(0.01, ge=0, le=1)

    def check(self, context: GateContext) -> GateVerdict:
        rate = _value(context, "challenger", "error_rate")
        if rate is None:
            return GateVerdict("wait", "no error rate for the challenger yet (give --metric error_rate=...)")
        ok = float(rate) <= self.max
        return GateVerdict(
            "pass" if ok else "fail", f"error rate {float(rate):.2%} {'<=' if ok else '>'} {self.max:.2%}"
        )


class Latency(Gate):
    """The challenger's 99th percentile latency is at most ``p99_ms`` milliseconds."""

    kind: Literal["latency"] = "latency"
    p99_ms: float = Field(gt=0)

    def check(self, context: GateContext) -> GateVerdict:
        value = _value(context, "challenger", "latency_p99_ms")
        if value is None:
            return GateVerdict("wait", "no latency for the challenger yet")
        ok = float(value) <= self.p99_ms
        return GateVerdict(
            "pass" if ok else "fail", f"p99 latency {float(value):.1f} ms {'<=' if ok else '>'} {self.p99_ms:g} ms"
        )


class Metric(Gate):
    """A metric of ``role`` (a live one, or one you supply) is within ``[min, max]``."""

    kind: Literal["metric"] = "metric"
    name: str
    min: float | None = None
    max: float | None = None
    role: Literal["champion", "challenger"] = "challenger"

    def check(self, context: GateContext) -> GateVerdict:
        value = _value(context, self.role, self.name)
        if value is None:
            return GateVerdict("wait", f"no {self.name} for the {self.role} yet (give --metric {self.name}=...)")
        number = float(value)
        if self.min is not None and number < self.min:
            return GateVerdict("fail", f"{self.name} = {number:g} is below {self.min:g}")
        if self.max is not None and number > self.max:
            return GateVerdict("fail", f"{self.name} = {number:g} is above {self.max:g}")
        bounds = " and ".join(
            b
            for b in (
                f">= {self.min:g}" if self.min is not None else "",
                f"<= {self.max:g}" if self.max is not None else "",
            )
            if b
        )
        return GateVerdict("pass", f"{self.name} = {number:g} meets {bounds or 'no bound'}")


class Agreement(Gate):
    """Shadow mode: the challenger predicts what the champion answered on at least ``min`` of the rows."""

    kind: Literal["agreement"] = "agreement"
    min: float = Field(0.9, ge=0, le=1)

    def check(self, context: GateContext) -> GateVerdict:
        if not context.shadow:
            return GateVerdict("pass", "agreement is checked in shadow mode only (the challenger answers now)")
        value = _value(context, "challenger", "agreement")
        if value is None:
            return GateVerdict("wait", "no shadow comparisons yet")
        ok = float(value) >= self.min
        return GateVerdict(
            "pass" if ok else "fail",
            f"agreement with the champion {float(value):.1%} {'>=' if ok else '<'} {self.min:.0%}",
        )


class Drift(Gate):
    """The challenger's inputs have not drifted from ``reference`` (mlpipe.quality's PSI + KS / chi²).

    Attributes:
        reference: A Parquet or CSV file of the reference data (e.g. the training set).
        columns: Columns to compare (default: every reference column).
        share: The inputs drift when this share of columns drift.
        min_rows: Rows of current data needed before deciding.
    """

    kind: Literal["drift"] = "drift"
    reference: str
    columns: list[str] | None = None
    share: float = Field(0.5, gt=0, le=1)
    min_rows: int = Field(50, ge=1)

    def check(self, context: GateContext) -> GateVerdict:
        current = context.current
        rows = 0 if current is None else len(current)
        if current is None or rows < self.min_rows:
            return GateVerdict("wait", f"{rows} rows of challenger inputs, {self.min_rows} needed for the drift check")
        import pandas as pd

        from mlpipe.quality.drift import compute_drift

        path = self.reference
        reference = pd.read_csv(path) if path.endswith(".csv") else pd.read_parquet(path)
        result = compute_drift(reference, current, columns=self.columns or list(reference.columns), share=self.share)
        return GateVerdict("fail" if result.drifted else "pass", f"inputs: {result.summary()}")


AnyGate = Annotated[ErrorRate | Latency | Metric | Agreement | Drift, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(list[AnyGate])


def parse_gates(documents: list[dict[str, Any]]) -> list[Gate]:
    """Gates from their stored JSON form."""
    return list(_ADAPTER.validate_python(documents))


def parse_gate_option(text: str) -> Gate:
    """A gate from the CLI: ``error_rate<=0.01``, ``latency<=50``, ``agreement>=0.9``, ``drift:FILE``,
    ``METRIC>=X`` / ``METRIC<=X`` (a user metric of the challenger)."""
    from mlpipe.deploy._state import DeploymentError

    if text.startswith("drift:"):
        return Drift.model_validate({"reference": text[len("drift:") :]})
    for op in (">=", "<="):
        if op in text:
            name, _, raw = text.partition(op)
            name = name.strip()
            try:
                value = float(raw)
            except ValueError:
                break
            if name == "error_rate" and op == "<=":
                return ErrorRate(max=value)
            if name in ("latency", "latency_p99_ms") and op == "<=":
                return Latency(p99_ms=value)
            if name == "agreement" and op == ">=":
                return Agreement(min=value)
            return Metric(name=name, min=value) if op == ">=" else Metric(name=name, max=value)
    raise DeploymentError(
        f"cannot read the gate {text!r}; write error_rate<=0.01, latency<=50 (ms), agreement>=0.9, "
        "drift:reference.parquet, or METRIC>=VALUE / METRIC<=VALUE"
    )
