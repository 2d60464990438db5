"""Quality gates: a step that stops the pipeline when a quality result did not pass.

A gate is a step declared with ``gate=True``. When it fails, the backend
records every step that depends on it as ``skipped`` with the gate's reason,
independent branches still run, and the run ends ``failed`` (so ``mlpipe run``
exits 1 and ``run.raise_for_status()`` raises). Backends without the
``gates`` capability refuse such a pipeline before it runs.

:func:`validate_step` (``on_failure="stop"``) and :func:`drift_step`
(``on_drift="stop"``) are gates themselves. :func:`gate_step` is the
separate form: the check step always succeeds and stores its result and
report, and the gate after it decides, so the evidence survives a closed gate.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from mlpipe.quality.base import QualityGateError
from mlpipe.quality.drift import DriftResult
from mlpipe.quality.fairness import FairnessResult
from mlpipe.quality.validation import ValidationReport
from mlpipe.step import Step, step

__all__ = ["GateDecision", "gate_step"]


class GateDecision(BaseModel):
    """What a passed gate returns; steps that must wait for the gate take it as an input.

    Attributes:
        gate: The gate step's name.
        summary: The checked result's summary.
    """

    model_config = ConfigDict(frozen=True)

    gate: str
    summary: str


def gate_step(*, name: str = "quality_gate") -> Step[[ValidationReport | DriftResult | FairnessResult], GateDecision]:
    """A quality gate over a validation report, a drift result or a fairness result.

    ``decision = gate(result)`` fails when ``result.passed`` is false, with the
    result's full text as the reason; steps that take ``decision`` (a
    registration, a deployment, publishing scores) are then skipped.

    Args:
        name: The step's name in the pipeline.
    """

    def quality_gate(result: ValidationReport | DriftResult | FairnessResult) -> GateDecision:
        if not result.passed:
            raise QualityGateError(result.to_text(), result=result)
        return GateDecision(gate=name, summary=result.summary())

    # Real types: a remote runtime unpickles this closure without this module's globals.
    quality_gate.__annotations__ = {"result": ValidationReport | DriftResult | FairnessResult, "return": GateDecision}
    return step(name=name, gate=True)(quality_gate)
