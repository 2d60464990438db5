"""What every quality check shares: the :class:`QualityResult` base and :class:`QualityGateError`.

Kept apart from the checks so that validation, drift and gates can all use it
without importing each other.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from mlpipe.errors import StepFailedError

__all__ = ["FAIRNESS_METRICS", "QualityGateError", "QualityResult"]

#: The per-group metrics a fairness check computes, in report order (see :mod:`mlpipe.quality.fairness`).
FAIRNESS_METRICS = ("selection_rate", "true_positive_rate", "false_positive_rate", "accuracy")


class QualityResult(BaseModel):
    """The outcome of a quality check.

    Attributes:
        passed: Whether the data met every rule (validation) or stayed within the
            drift thresholds (drift).
    """

    model_config = ConfigDict(frozen=True)

    passed: bool

    def summary(self) -> str:
        """One line for logs and skip reasons."""
        return "passed" if self.passed else "failed"

    def to_text(self) -> str:
        """The summary and the details, as a failed gate reports them."""
        return self.summary()


class QualityGateError(StepFailedError):
    """A quality gate stopped the pipeline: the data failed validation or drifted too far.

    The message is the full readable report; ``result`` is the typed
    :class:`QualityResult` (a ``ValidationReport`` or a ``DriftResult``).
    """

    def __init__(self, message: str, *, result: QualityResult | None = None, **context: Any) -> None:
        super().__init__(message, result=result, **context)
        self.result = result
