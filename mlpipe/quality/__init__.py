"""Data quality for pipelines: validation steps, drift reports and quality gates.

Needs the ``data`` extra (``pip install 'mlpipe[data]'``: pandas, pyarrow,
pandera, scipy). ``import mlpipe`` never imports this package; ``mp.quality``
loads it on first use.

- :mod:`~mlpipe.quality.validation`: :class:`Schema`, :func:`validate`, :func:`validate_step`.
- :mod:`~mlpipe.quality.drift`: :func:`compute_drift`, :func:`drift_step`, :class:`DriftResult`.
- :mod:`~mlpipe.quality.fairness`: :func:`compute_fairness`, :func:`fairness_step`, :class:`FairnessResult`
  (per-group metrics on fairlearn, the ``fairness`` extra, imported on first use).
- :mod:`~mlpipe.quality.gates`: :func:`gate_step`; what a failed gate does to a run.
- :mod:`~mlpipe.quality.report`: self-contained HTML for drift and validation results.
"""

from __future__ import annotations

try:
    import numpy  # noqa: F401
    import pandas  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    from mlpipe.errors import MissingDependencyError

    raise MissingDependencyError(
        f"mlpipe.quality needs pandas and numpy ({exc}); install them with: pip install 'mlpipe[data]'"
    ) from exc

from mlpipe.materializers import HtmlReport
from mlpipe.quality.base import QualityGateError, QualityResult
from mlpipe.quality.drift import (
    ColumnDrift,
    DriftOutput,
    DriftResult,
    DriftThresholds,
    Histogram,
    compute_drift,
    drift_step,
    psi,
)
from mlpipe.quality.fairness import (
    Disparity,
    FairnessOutput,
    FairnessResult,
    FairnessThresholds,
    GroupMetrics,
    compute_fairness,
    fairness_step,
)
from mlpipe.quality.gates import GateDecision, gate_step
from mlpipe.quality.report import drift_html, fairness_html, validation_html
from mlpipe.quality.validation import (
    Column,
    Schema,
    Validated,
    ValidationReport,
    Violation,
    infer_schema,
    validate,
    validate_step,
)

__all__ = [
    "Column",
    "ColumnDrift",
    "Disparity",
    "DriftOutput",
    "DriftResult",
    "DriftThresholds",
    "FairnessOutput",
    "FairnessResult",
    "FairnessThresholds",
    "GateDecision",
    "GroupMetrics",
    "Histogram",
    "HtmlReport",
    "QualityGateError",
    "QualityResult",
    "Schema",
    "Validated",
    "ValidationReport",
    "Violation",
    "compute_drift",
    "compute_fairness",
    "drift_html",
    "drift_step",
    "fairness_html",
    "fairness_step",
    "gate_step",
    "infer_schema",
    "psi",
    "validate",
    "validate_step",
    "validation_html",
]
