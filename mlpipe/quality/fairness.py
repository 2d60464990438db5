"""Fairness of a classifier's decisions across groups: per-group metrics, their disparities, a gate.

Per group of one or more sensitive columns (intersections when several), the
selection rate, true and false positive rates and accuracy are computed with
fairlearn's ``MetricFrame`` (the ``fairness`` extra: ``pip install
'mlpipe[fairness]'``; imported on first use, it takes seconds). A disparity
is the largest difference between two groups (and the smallest ratio, for the
selection rate); the result fails when a disparity crosses its
:class:`FairnessThresholds`.

A rate that a group cannot have (the true positive rate of a group without
positive labels) is recorded as None and left out of the disparity, instead
of fairlearn's 0, which would read as a maximal gap.

The HTML rendering lives in :mod:`mlpipe.quality.report`.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mlpipe.errors import MissingDependencyError
from mlpipe.materializers import HtmlReport
from mlpipe.quality.base import FAIRNESS_METRICS, QualityGateError, QualityResult
from mlpipe.step import Step, step

__all__ = [
    "Disparity",
    "FairnessOutput",
    "FairnessResult",
    "FairnessThresholds",
    "GroupMetrics",
    "compute_fairness",
    "fairness_step",
]

logger = logging.getLogger("mlpipe.quality")

METRICS = FAIRNESS_METRICS


class FairnessThresholds(BaseModel):
    """The largest disparities a model may show between groups. None switches a check off.

    Attributes:
        demographic_parity: Largest difference in selection rate (share of positive decisions).
        equalized_odds: Largest difference in true positive rate or in false positive rate
            (fairlearn's ``equalized_odds_difference``).
        accuracy: Largest difference in accuracy.
        selection_ratio: Smallest ratio of the lowest to the highest selection rate
            (0.8 is the "four-fifths rule" of US employment law).
        min_group_size: Groups with fewer rows are reported but not judged: their rates are noise.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    demographic_parity: float | None = Field(default=0.1, ge=0, le=1)
    equalized_odds: float | None = Field(default=0.1, ge=0, le=1)
    accuracy: float | None = Field(default=None, ge=0, le=1)
    selection_ratio: float | None = Field(default=None, ge=0, le=1)
    min_group_size: int = Field(default=1, ge=1)


class GroupMetrics(BaseModel):
    """The metrics of one group (or of all rows, as ``overall``).

    Attributes:
        group: ``column=value`` pairs joined by ``, ``; ``(all)`` for the overall row.
        count: Rows in the group.
        positives: Rows with a positive label.
        selection_rate: Share of positive decisions.
        true_positive_rate: Recall; None without positive labels.
        false_positive_rate: None without negative labels.
        accuracy: Share of correct decisions.
        judged: Whether the group is large enough to count in the disparities.
    """

    model_config = ConfigDict(frozen=True)

    group: str
    count: int
    positives: int
    selection_rate: float
    true_positive_rate: float | None
    false_positive_rate: float | None
    accuracy: float
    judged: bool = True


class Disparity(BaseModel):
    """One disparity between groups and its verdict.

    Attributes:
        name: ``demographic_parity``, ``equalized_odds``, ``accuracy`` or ``selection_ratio``.
        metric: The per-group metric it is computed from.
        value: The difference (or the ratio, for ``selection_ratio``).
        threshold: The limit; None when the check is off (reported, not judged).
        passed: Whether the value is within the limit.
        worst: The groups furthest apart, low first.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    metric: str
    value: float | None
    threshold: float | None
    passed: bool
    worst: tuple[str, str] | None = None

    @property
    def is_ratio(self) -> bool:
        return self.name == "selection_ratio"


class FairnessResult(QualityResult):
    """Per-group metrics of a classifier and whether their disparities are within the thresholds.

    Attributes:
        sensitive: The sensitive columns.
        groups: One :class:`GroupMetrics` per group, in group order.
        overall: The metrics over every row.
        disparities: One :class:`Disparity` per check.
        thresholds: The thresholds judged by.
        rows: Rows checked.
        seconds: Computation time.
    """

    kind: Literal["fairness"] = "fairness"
    sensitive: list[str]
    groups: list[GroupMetrics]
    overall: GroupMetrics
    disparities: list[Disparity]
    thresholds: FairnessThresholds
    rows: int
    seconds: float = 0.0

    def disparity(self, name: str) -> Disparity:
        for d in self.disparities:
            if d.name == name:
                return d
        raise KeyError(f"no disparity {name!r}; disparities: {[d.name for d in self.disparities]}")

    def group(self, name: str) -> GroupMetrics:
        for g in self.groups:
            if g.group == name:
                return g
        raise KeyError(f"no group {name!r}; groups: {[g.group for g in self.groups]}")

    @property
    def failed_checks(self) -> list[str]:
        return [d.name for d in self.disparities if not d.passed]

    def summary(self) -> str:
        by = ", ".join(self.sensitive)
        if self.passed:
            return f"fairness across {by} passed: {len(self.groups)} groups ({self.rows} rows)"
        parts = []
        for d in self.disparities:
            if not d.passed and d.value is not None:
                op = "<" if d.is_ratio else ">"
                parts.append(f"{d.name} {d.value:.3f} {op} {d.threshold:g}")
        return f"fairness across {by} failed: {'; '.join(parts)} ({len(self.groups)} groups, {self.rows} rows)"

    def to_text(self) -> str:
        lines = [self.summary()]
        width = max([len(g.group) for g in self.groups] + [7])
        lines.append(f"  {'group':<{width}}  {'rows':>6}  {'sel':>6}  {'tpr':>6}  {'fpr':>6}  {'acc':>6}")
        for g in [*self.groups, self.overall]:
            cells = [_fmt(getattr(g, m)) for m in METRICS]
            note = "" if g.judged else "  (too small, not judged)"
            lines.append(f"  {g.group:<{width}}  {g.count:>6}  " + "  ".join(f"{c:>6}" for c in cells) + note)
        for d in self.disparities:
            limit = "-" if d.threshold is None else f"{'>=' if d.is_ratio else '<='} {d.threshold:g}"
            verdict = "ok" if d.passed else "FAIL"
            between = f"  ({d.worst[0]} vs {d.worst[1]})" if d.worst else ""
            lines.append(f"  {d.name:<20} {_fmt(d.value):>6}  limit {limit:<8} {verdict}{between}")
        return "\n".join(lines)


class FairnessOutput(NamedTuple):
    """What a fairness step returns: the typed result and the self-contained HTML report."""

    result: FairnessResult
    report: HtmlReport


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _metric_frame() -> Any:
    try:
        from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
    except ImportError as exc:
        raise MissingDependencyError(
            f"fairness metrics need fairlearn ({exc}); install it with: pip install 'mlpipe[fairness]'"
        ) from exc
    from sklearn.metrics import accuracy_score

    def frame(y_true: Any, y_pred: Any, sensitive: Any) -> Any:
        return MetricFrame(
            metrics={
                "selection_rate": selection_rate,
                "true_positive_rate": true_positive_rate,
                "false_positive_rate": false_positive_rate,
                "accuracy": accuracy_score,
            },
            y_true=y_true,
            y_pred=y_pred,
            sensitive_features=sensitive,
        )

    return frame


def _binary(values: Any, pos_label: Any, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {array.shape}")
    if pd.isna(pd.Series(array)).any():
        raise ValueError(f"{what} has missing values; fairness metrics need a label and a decision for every row")
    return np.asarray(array == pos_label, dtype=int)


def compute_fairness(
    y_true: Any,
    y_pred: Any,
    sensitive: pd.DataFrame | pd.Series,
    *,
    thresholds: FairnessThresholds | None = None,
    pos_label: Any = 1,
) -> FairnessResult:
    """Per-group metrics of binary decisions and their disparities.

    Args:
        y_true: The true labels (one per row).
        y_pred: The model's decisions (labels, not scores: threshold scores first).
        sensitive: The sensitive attribute(s): a Series, or a DataFrame whose
            columns are crossed (``sex=f, age_band=60+``).
        thresholds: The limits (default :class:`FairnessThresholds`).
        pos_label: The label that counts as positive (a favourable decision).

    Returns:
        A :class:`FairnessResult`; ``passed`` is whether every judged disparity is within its limit.

    Raises:
        MissingDependencyError: fairlearn is not installed.
        ValueError: the inputs have different lengths or missing values.
    """
    started = time.perf_counter()
    limits = thresholds or FairnessThresholds()
    features = sensitive.to_frame() if isinstance(sensitive, pd.Series) else sensitive
    if not isinstance(features, pd.DataFrame) or features.shape[1] == 0:
        raise ValueError("sensitive must be a pandas Series or a DataFrame with at least one column")
    truth, decision = _binary(y_true, pos_label, "y_true"), _binary(y_pred, pos_label, "y_pred")
    if not len(truth) == len(decision) == len(features):
        raise ValueError(
            f"y_true, y_pred and sensitive must have one row each: got {len(truth)}, {len(decision)}, {len(features)}"
        )
    if not len(truth):
        raise ValueError("fairness metrics need at least one row")
    if features.isna().any().any():
        raise ValueError(f"sensitive columns {list(features.columns[features.isna().any()])} have missing values")
    columns = [str(c) for c in features.columns]
    features = features.astype(str).set_axis(columns, axis=1).reset_index(drop=True)
    with warnings.catch_warnings():
        # sklearn warns about undefined rates in groups without positives or negatives; those are set to None below
        warnings.simplefilter("ignore")
        frame = _metric_frame()(truth, decision, features)
    by_group = frame.by_group
    keys = features.apply(tuple, axis=1)
    groups: list[GroupMetrics] = []
    for index, row in by_group.iterrows():
        values = index if isinstance(index, tuple) else (index,)
        mask = (keys == tuple(str(v) for v in values)).to_numpy()
        groups.append(
            _group_metrics(
                ", ".join(f"{c}={v}" for c, v in zip(columns, values, strict=True)),
                row,
                truth[mask],
                limits.min_group_size,
            )
        )
    overall = _group_metrics("(all)", frame.overall, truth, 1)
    disparities = _disparities(groups, limits)
    return FairnessResult(
        passed=all(d.passed for d in disparities),
        sensitive=columns,
        groups=groups,
        overall=overall,
        disparities=disparities,
        thresholds=limits,
        rows=len(truth),
        seconds=time.perf_counter() - started,
    )


def _group_metrics(name: str, row: Any, truth: np.ndarray, min_size: int) -> GroupMetrics:
    positives = int(truth.sum())
    negatives = len(truth) - positives
    return GroupMetrics(
        group=name,
        count=len(truth),
        positives=positives,
        selection_rate=float(row["selection_rate"]),
        true_positive_rate=float(row["true_positive_rate"]) if positives else None,
        false_positive_rate=float(row["false_positive_rate"]) if negatives else None,
        accuracy=float(row["accuracy"]),
        judged=len(truth) >= min_size,
    )


def _spread(groups: Sequence[GroupMetrics], metric: str) -> tuple[float, tuple[str, str]] | None:
    known = [(getattr(g, metric), g.group) for g in groups if g.judged and getattr(g, metric) is not None]
    if len(known) < 2:
        return None
    low, high = min(known), max(known)
    return float(high[0] - low[0]), (low[1], high[1])


def _disparities(groups: Sequence[GroupMetrics], limits: FairnessThresholds) -> list[Disparity]:
    out: list[Disparity] = []

    def difference(name: str, metric: str, threshold: float | None, spreads: list[Any]) -> None:
        known = [s for s in spreads if s is not None]
        if not known:
            out.append(Disparity(name=name, metric=metric, value=None, threshold=threshold, passed=True))
            return
        value, worst = max(known, key=lambda s: s[0])
        passed = threshold is None or value <= threshold + 1e-12
        out.append(Disparity(name=name, metric=metric, value=value, threshold=threshold, passed=passed, worst=worst))

    difference("demographic_parity", "selection_rate", limits.demographic_parity, [_spread(groups, "selection_rate")])
    difference(
        "equalized_odds",
        "true_positive_rate, false_positive_rate",
        limits.equalized_odds,
        [_spread(groups, "true_positive_rate"), _spread(groups, "false_positive_rate")],
    )
    difference("accuracy", "accuracy", limits.accuracy, [_spread(groups, "accuracy")])
    rates = sorted((g.selection_rate, g.group) for g in groups if g.judged)
    if len(rates) >= 2:
        (low, low_name), (high, high_name) = rates[0], rates[-1]
        ratio = low / high if high > 0 else 1.0
        passed = limits.selection_ratio is None or ratio >= limits.selection_ratio - 1e-12
        out.append(
            Disparity(
                name="selection_ratio",
                metric="selection_rate",
                value=ratio,
                threshold=limits.selection_ratio,
                passed=passed,
                worst=(low_name, high_name),
            )
        )
    else:
        out.append(
            Disparity(
                name="selection_ratio",
                metric="selection_rate",
                value=None,
                threshold=limits.selection_ratio,
                passed=True,
            )
        )
    return out


# -- the step -----------------------------------------------------------------------------


class _FairnessSettings(BaseModel):
    """Everything a fairness step is configured with (hashed into its code fingerprint)."""

    model_config = ConfigDict(frozen=True)

    sensitive: tuple[str, ...]
    label: str
    prediction: str
    pos_label: Any
    thresholds: FairnessThresholds
    on_violation: Literal["warn", "stop", "ignore"]
    title: str


def fairness_step(
    sensitive: str | Sequence[str],
    *,
    label: str = "label",
    prediction: str = "prediction",
    pos_label: Any = 1,
    thresholds: FairnessThresholds | None = None,
    on_violation: Literal["warn", "stop", "ignore"] = "stop",
    name: str = "check_fairness",
    title: str = "Fairness report",
) -> Step[[pd.DataFrame], FairnessOutput]:
    """A pipeline step checking a classifier's decisions for disparities between groups.

    ``result, report = check(scored)`` takes one DataFrame with the true
    labels, the model's decisions and the sensitive columns (an evaluation
    set scored by the model), and returns a :class:`FairnessResult` and an
    :class:`~mlpipe.materializers.HtmlReport`.

    Args:
        sensitive: The sensitive column(s); several are crossed into intersectional groups.
        label: The column of true labels.
        prediction: The column of the model's decisions.
        pos_label: The label that counts as positive.
        thresholds: The limits (default :class:`FairnessThresholds`: demographic parity and
            equalized odds differences at most 0.1).
        on_violation: ``"stop"`` (default) makes the step a quality gate: a disparity over its
            limit fails the step with the full table, the steps after it (registration,
            deployment) are skipped and the run fails. ``"warn"`` logs the summary on the
            ``mlpipe.quality`` logger; ``"ignore"`` says nothing. To keep the report of a failed
            check, use ``"ignore"`` and put :func:`~mlpipe.quality.gate_step` after it.
        name: The step's name in the pipeline.
        title: The report's title.
    """
    if on_violation not in ("warn", "stop", "ignore"):
        raise ValueError(f"on_violation must be 'warn', 'stop' or 'ignore', got {on_violation!r}")
    columns = (sensitive,) if isinstance(sensitive, str) else tuple(sensitive)
    if not columns:
        raise ValueError("fairness_step() needs at least one sensitive column")
    settings = _FairnessSettings(
        sensitive=columns,
        label=label,
        prediction=prediction,
        pos_label=pos_label,
        thresholds=thresholds or FairnessThresholds(),
        on_violation=on_violation,
        title=title,
    )

    def check_fairness(scored: pd.DataFrame) -> FairnessOutput:
        from mlpipe.quality.report import fairness_html

        wanted = [settings.label, settings.prediction, *settings.sensitive]
        missing = [c for c in wanted if c not in scored.columns]
        if missing:
            raise KeyError(
                f"the scored data has no column(s) {missing}; it has {list(scored.columns)}. "
                "Pass label=, prediction= and sensitive= with its column names"
            )
        result = compute_fairness(
            scored[settings.label],
            scored[settings.prediction],
            scored[list(settings.sensitive)],
            thresholds=settings.thresholds,
            pos_label=settings.pos_label,
        )
        if not result.passed and settings.on_violation == "stop":
            raise QualityGateError(result.to_text(), result=result)
        if not result.passed and settings.on_violation == "warn":
            logger.warning("%s", result.summary())
        return FairnessOutput(result, fairness_html(result, title=settings.title))

    # Real types, as in drift_step: a remote runtime unpickles this closure without this module's globals.
    check_fairness.__annotations__ = {"scored": pd.DataFrame, "return": FairnessOutput}
    return step(name=name, gate=on_violation == "stop")(check_fairness)
