"""Data drift: how far a current DataFrame has moved from a reference one, per column.

Numeric columns get the Population Stability Index (PSI, over quantile bins of
the reference) and the two-sample Kolmogorov-Smirnov test; categorical
columns get PSI over categories and a chi-square test of homogeneity. All of
it is numpy plus ``scipy.stats`` (imported on first use: it costs about two
seconds). A column drifts when it crosses its :class:`DriftThresholds`; the
data set drifts when the share of drifted columns reaches ``share``.

The HTML rendering of a :class:`DriftResult` lives in :mod:`mlpipe.quality.report`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from mlpipe.materializers import HtmlReport
from mlpipe.quality.base import QualityGateError, QualityResult
from mlpipe.step import Step, step

__all__ = [
    "ColumnDrift",
    "DriftOutput",
    "DriftResult",
    "DriftThresholds",
    "Histogram",
    "compute_drift",
    "drift_step",
    "ks_test",
    "psi",
]

logger = logging.getLogger("mlpipe.quality")

_EPS = 1e-4  # floor for bin shares, so an empty bin does not make PSI infinite
_PLOT_BINS = 30
_PLOT_CATEGORIES = 20
_KS_EXACT_MAX = 10_000  # scipy's ks_2samp switches from exact to asymptotic p-values above this
_KS_APPROX_BELOW = 0.025  # above 10,000 values, p-values below this use the limiting distribution
_ONE_SIDED = 10.0  # PSI recorded when only one side has values: beyond any usual threshold


class DriftThresholds(BaseModel):
    """When a column counts as drifted.

    With ``mode="all"`` (default) a column drifts when every threshold that is
    set is crossed: its PSI is at least ``psi`` *and* its test's p-value is below
    ``p_value``. The p-value says the change is real, PSI says it is large; on
    big samples tests call tiny changes significant, so requiring both avoids
    alerts on noise. ``mode="any"`` drifts when either is crossed. Set one to
    None to use only the other.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    psi: float | None = Field(default=0.2, ge=0)
    p_value: float | None = Field(default=0.05, gt=0, lt=1)
    mode: Literal["all", "any"] = "all"

    def crossed(self, psi_value: float, p: float | None) -> bool:
        checks = []
        if self.psi is not None:
            checks.append(psi_value >= self.psi)
        if self.p_value is not None and p is not None:
            checks.append(p < self.p_value)
        if not checks:
            return False
        return all(checks) if self.mode == "all" else any(checks)


class Histogram(BaseModel):
    """Shares of reference and current values per bin (numeric) or category, for plots."""

    model_config = ConfigDict(frozen=True)

    labels: list[str]
    edges: list[float] | None = None
    reference: list[float]
    current: list[float]


class ColumnDrift(BaseModel):
    """Drift of one column.

    Attributes:
        column: The column name.
        kind: ``numeric`` or ``categorical``.
        test: ``ks`` (two-sample Kolmogorov-Smirnov) or ``chi2`` (chi-square contingency).
        statistic: The test statistic (KS D, or chi-square); None when a side has no values.
        p_value: The test's p-value; None when a side has no values.
        psi: Population Stability Index (0: same distribution; 0.1-0.2 moderate; > 0.2 large).
        drifted: Whether the column crossed its thresholds.
        thresholds: The thresholds it was judged by.
        reference_count, current_count: Non-missing values on each side.
        reference_missing, current_missing: Share of missing values on each side.
        reference_mean, current_mean: Means (numeric columns).
        new_categories: Categories in the current data only (categorical columns).
        histogram: Binned shares for plotting.
    """

    model_config = ConfigDict(frozen=True)

    column: str
    kind: Literal["numeric", "categorical"]
    test: Literal["ks", "chi2"]
    statistic: float | None
    p_value: float | None
    psi: float
    drifted: bool
    thresholds: DriftThresholds
    reference_count: int
    current_count: int
    reference_missing: float = 0.0
    current_missing: float = 0.0
    reference_mean: float | None = None
    current_mean: float | None = None
    new_categories: list[str] = Field(default_factory=list)
    histogram: Histogram | None = None


class DriftResult(QualityResult):
    """Drift of a current data set against a reference.

    Attributes:
        drifted: Whether the data set drifted (``share_drifted >= share``); ``passed`` is its negation.
        share_drifted: Drifted columns / compared columns.
        share: The data-set threshold on that share.
        columns: Per-column results, in column order.
        missing_columns: Reference columns absent from the current data (each counts as drifted).
        reference_rows, current_rows: Row counts.
        seconds: Computation time.
    """

    kind: Literal["drift"] = "drift"
    drifted: bool
    share_drifted: float
    share: float
    columns: list[ColumnDrift]
    missing_columns: list[str] = Field(default_factory=list)
    reference_rows: int
    current_rows: int
    seconds: float = 0.0

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted] + list(self.missing_columns)

    def column(self, name: str) -> ColumnDrift:
        for c in self.columns:
            if c.column == name:
                return c
        raise KeyError(f"no drift result for column {name!r}; columns: {[c.column for c in self.columns]}")

    def summary(self) -> str:
        total = len(self.columns) + len(self.missing_columns)
        names = self.drifted_columns
        verdict = "drift detected" if self.drifted else "no drift"
        listed = f": {', '.join(names[:10])}{', ...' if len(names) > 10 else ''}" if names else ""
        return (
            f"{verdict}: {len(names)} of {total} columns drifted ({self.share_drifted:.0%}, "
            f"threshold {self.share:.0%}){listed}"
        )

    def to_text(self) -> str:
        lines = [self.summary()]
        width = max([len(c.column) for c in self.columns] + [6])
        for c in self.columns:
            p = "-" if c.p_value is None else f"{c.p_value:.3g}"
            stat = "-" if c.statistic is None else f"{c.statistic:.4g}"
            flag = "DRIFT" if c.drifted else "ok"
            lines.append(f"  {c.column:<{width}}  {c.test:<4} stat={stat:<9} p={p:<9} psi={c.psi:<8.4f} {flag}")
        for name in self.missing_columns:
            lines.append(f"  {name:<{width}}  missing from the current data  DRIFT")
        return "\n".join(lines)


class DriftOutput(NamedTuple):
    """What a drift step returns: the typed result and the self-contained HTML report."""

    result: DriftResult
    report: HtmlReport


# -- statistics ----------------------------------------------------------------------------


def psi(reference_shares: np.ndarray, current_shares: np.ndarray, eps: float = _EPS) -> float:
    """Population Stability Index between two share vectors over the same bins."""
    r = np.clip(np.asarray(reference_shares, dtype=float), eps, None)
    c = np.clip(np.asarray(current_shares, dtype=float), eps, None)
    return float(np.sum((c - r) * np.log(c / r)))


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts), dtype=float)


def _quantiles(ordered: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """``np.quantile(x, qs)`` (linear interpolation) of an already sorted array, without sorting again."""
    pos = qs * (len(ordered) - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(ordered) - 1)
    frac = pos - lo
    return np.asarray(ordered[lo] + frac * (ordered[hi] - ordered[lo]), dtype=float)


def _bin_counts(ordered: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Counts per bin of a sorted array; bin i holds values in ``[inner[i-1], inner[i])``, open at both ends."""
    cumulative = np.searchsorted(ordered, inner, side="left")
    return np.diff(np.concatenate([[0], cumulative, [len(ordered)]]))


def ks_test(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov-Smirnov statistic and p-value, as ``scipy.stats.ks_2samp`` computes them.

    Up to 10,000 values per side this is ``scipy.stats.ks_2samp`` itself (exact
    p-values). Above, the statistic comes from the sorted arrays the PSI needs
    too, and the p-value from ``scipy.stats.kstwo`` as ``ks_2samp`` computes it,
    except below 0.025, where the limiting Kolmogorov distribution is used
    (within a few percent; scipy's exact computation costs 0.2 s per column at
    100,000 values there).
    """
    from scipy import stats

    n1, n2 = len(ref_sorted), len(cur_sorted)
    if max(n1, n2) <= _KS_EXACT_MAX:
        result = stats.ks_2samp(ref_sorted, cur_sorted)
        return float(result.statistic), float(result.pvalue)
    # The empirical CDFs only step at data points, so D is the largest gap at a point of either sample,
    # taken at the last copy of each value, where a sample's own CDF is (position + 1) / n.
    d = max(_largest_gap(ref_sorted, cur_sorted), _largest_gap(cur_sorted, ref_sorted))
    m, n = sorted([float(n1), float(n2)], reverse=True)
    en = m * n / (m + n)
    # scipy's exact distribution of D (kstwo) takes 0.2 s per column at 100,000 rows, and seconds
    # at a million, once p < 0.02 - that is, for every drifted column. There, the limiting
    # Kolmogorov distribution is within a few percent and the column is significant at any usual level.
    approx = float(stats.kstwobign.sf(np.sqrt(en) * d))
    p = approx if approx < _KS_APPROX_BELOW else float(stats.kstwo.sf(d, np.round(en)))
    return d, float(np.clip(p, 0.0, 1.0))


def _largest_gap(own: np.ndarray, other: np.ndarray) -> float:
    """max |F_own(x) - F_other(x)| over the points x of ``own`` (both sorted)."""
    last = np.flatnonzero(np.append(own[1:] != own[:-1], True))
    gaps = (last + 1) / len(own) - np.searchsorted(other, own[last], side="right") / len(other)
    return float(np.max(np.abs(gaps)))


def _numeric(
    name: str, ref: np.ndarray, cur: np.ndarray, bins: int, thresholds: DriftThresholds, missing: tuple[float, float]
) -> ColumnDrift:
    statistic: float | None = None
    p: float | None = None
    value = 0.0
    histogram = None
    if len(ref) and len(cur):
        rs, cs = np.sort(ref), np.sort(cur)
        statistic, p = ks_test(rs, cs)
        # Quantile bins of the reference; a value equal to an edge goes to the upper bin.
        inner = np.unique(_quantiles(rs, np.linspace(0, 1, bins + 1)[1:-1]))
        value = psi(_shares(_bin_counts(rs, inner)), _shares(_bin_counts(cs, inner)))
        histogram = _numeric_histogram(rs, cs)
    elif len(ref) or len(cur):
        value = _ONE_SIDED
    return ColumnDrift(
        column=name,
        kind="numeric",
        test="ks",
        statistic=statistic,
        p_value=p,
        psi=value,
        drifted=thresholds.crossed(value, _p_for(p, value)),
        thresholds=thresholds,
        reference_count=len(ref),
        current_count=len(cur),
        reference_missing=missing[0],
        current_missing=missing[1],
        reference_mean=float(ref.mean()) if len(ref) else None,
        current_mean=float(cur.mean()) if len(cur) else None,
        histogram=histogram,
    )


def _numeric_histogram(rs: np.ndarray, cs: np.ndarray) -> Histogram:
    """Equal-width bins over the central 99% of both samples (the tails fall in the end bins)."""
    tails = np.array([0.005, 0.995])
    (r_lo, r_hi), (c_lo, c_hi) = _quantiles(rs, tails), _quantiles(cs, tails)
    lo, hi = min(r_lo, c_lo), max(r_hi, c_hi)
    if not hi > lo:
        lo, hi = float(min(rs[0], cs[0])), float(max(rs[-1], cs[-1]))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, _PLOT_BINS + 1)
    r, c = _bin_counts(rs, edges[1:-1]), _bin_counts(cs, edges[1:-1])
    labels = [f"{edges[i]:.4g}" for i in range(_PLOT_BINS)]
    return Histogram(
        labels=labels, edges=[float(e) for e in edges], reference=_shares(r).tolist(), current=_shares(c).tolist()
    )


def _categorical(
    name: str, ref: pd.Series, cur: pd.Series, thresholds: DriftThresholds, missing: tuple[float, float]
) -> ColumnDrift:
    from scipy import stats

    ref_counts = ref.astype(str).value_counts()
    cur_counts = cur.astype(str).value_counts()
    categories = list(ref_counts.index) + [c for c in cur_counts.index if c not in ref_counts.index]
    r = ref_counts.reindex(categories, fill_value=0).to_numpy(dtype=float)
    c = cur_counts.reindex(categories, fill_value=0).to_numpy(dtype=float)
    statistic: float | None = None
    p: float | None = None
    if r.sum() and c.sum():
        if len(categories) > 1:
            chi2 = stats.chi2_contingency(np.vstack([r, c]), correction=False)
            statistic, p = float(chi2.statistic), float(chi2.pvalue)
        else:
            statistic, p = 0.0, 1.0
    value = psi(_shares(r), _shares(c)) if r.sum() and c.sum() else (_ONE_SIDED if r.sum() or c.sum() else 0.0)
    order = np.argsort(-(_shares(r) + _shares(c)), kind="stable")
    shown = [int(i) for i in order[:_PLOT_CATEGORIES]]
    labels = [categories[i] for i in shown]
    ref_share, cur_share = _shares(r), _shares(c)
    hist_r, hist_c = [float(ref_share[i]) for i in shown], [float(cur_share[i]) for i in shown]
    if len(categories) > _PLOT_CATEGORIES:
        labels.append("(other)")
        hist_r.append(float(1.0 - sum(hist_r)) if r.sum() else 0.0)
        hist_c.append(float(1.0 - sum(hist_c)) if c.sum() else 0.0)
    return ColumnDrift(
        column=name,
        kind="categorical",
        test="chi2",
        statistic=statistic,
        p_value=p,
        psi=value,
        drifted=thresholds.crossed(value, _p_for(p, value)),
        thresholds=thresholds,
        reference_count=int(r.sum()),
        current_count=int(c.sum()),
        reference_missing=missing[0],
        current_missing=missing[1],
        new_categories=[k for k in cur_counts.index if k not in ref_counts.index],
        histogram=Histogram(labels=labels, reference=hist_r, current=hist_c),
    )


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    columns: Sequence[str] | None = None,
    categorical: Sequence[str] = (),
    bins: int = 10,
    thresholds: DriftThresholds | None = None,
    column_thresholds: Mapping[str, DriftThresholds] | None = None,
    share: float = 0.5,
) -> DriftResult:
    """Compare ``current`` with ``reference`` column by column.

    Args:
        reference: The reference data (e.g. the training set).
        current: The data to check (e.g. this week's scoring batch).
        columns: Columns to compare (default: every reference column).
        categorical: Numeric columns to treat as categories (codes, small integers).
            Non-numeric and boolean columns are always categorical; timestamps are
            numeric (seconds since the epoch). Leave identifiers out (``columns=``):
            every new id is a new category.
        bins: Quantile bins of the reference used for numeric PSI.
        thresholds: Default :class:`DriftThresholds` for every column.
        column_thresholds: Overrides for some columns.
        share: The data set drifts when at least this share of compared columns drift.

    Returns:
        A :class:`DriftResult`.
    """
    import scipy.stats  # noqa: F401  - the first import takes seconds; keep it out of `seconds`

    started = time.perf_counter()
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    names = [str(c) for c in (columns if columns is not None else reference.columns)]
    unknown = [c for c in names if c not in reference.columns]
    if unknown:
        raise KeyError(f"columns {unknown} are not in the reference data; it has {list(reference.columns)}")
    default = thresholds or DriftThresholds()
    overrides = dict(column_thresholds or {})
    stray = sorted(set(overrides) - set(names))
    if stray:
        raise KeyError(f"column_thresholds names columns that are not compared: {stray}")
    results: list[ColumnDrift] = []
    missing_columns: list[str] = []
    for name in names:
        if name not in current.columns:
            missing_columns.append(name)
            continue
        ref_col, cur_col = reference[name], current[name]
        missing = (_missing_share(ref_col), _missing_share(cur_col))
        limits = overrides.get(name, default)
        if name not in categorical and _is_numeric(ref_col) and _is_numeric(cur_col):
            ref, cur = _as_float(ref_col), _as_float(cur_col)
            results.append(_numeric(name, ref[~np.isnan(ref)], cur[~np.isnan(cur)], bins, limits, missing))
        else:
            results.append(_categorical(name, ref_col.dropna(), cur_col.dropna(), limits, missing))
    total = len(results) + len(missing_columns)
    n_drifted = sum(c.drifted for c in results) + len(missing_columns)
    fraction = n_drifted / total if total else 0.0
    drifted = bool(total) and fraction >= share
    return DriftResult(
        passed=not drifted,
        drifted=drifted,
        share_drifted=fraction,
        share=share,
        columns=results,
        missing_columns=missing_columns,
        reference_rows=len(reference),
        current_rows=len(current),
        seconds=time.perf_counter() - started,
    )


def _p_for(p: float | None, value: float) -> float | None:
    """The p-value to judge by: with no test (a side without values), a one-sided column is certain drift."""
    if p is not None:
        return p
    return 0.0 if value >= _ONE_SIDED else None


def _is_numeric(series: pd.Series) -> bool:
    """Numbers and timestamps are compared as distributions; booleans, strings and categories by counts."""
    if pd.api.types.is_datetime64_any_dtype(series):
        return True
    return bool(pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))


def _as_float(series: pd.Series) -> np.ndarray:
    """The values as float64, missing as NaN; timestamps as seconds since the epoch (whatever their unit)."""
    if pd.api.types.is_datetime64_any_dtype(series):
        epoch = pd.Timestamp(0, tz=getattr(series.dt, "tz", None))
        series = (series - epoch) / pd.Timedelta(seconds=1)
    return np.asarray(series.to_numpy(dtype=float, na_value=np.nan), dtype=float)


def _missing_share(series: pd.Series) -> float:
    return float(series.isna().mean()) if len(series) else 0.0


# -- the step -----------------------------------------------------------------------------


class _DriftSettings(BaseModel):
    """Everything a drift step is configured with (hashed into its code fingerprint)."""

    model_config = ConfigDict(frozen=True)

    columns: tuple[str, ...] | None
    categorical: tuple[str, ...]
    bins: int
    thresholds: DriftThresholds
    column_thresholds: dict[str, DriftThresholds]
    share: float
    on_drift: Literal["warn", "stop", "ignore"]
    title: str


def drift_step(
    *,
    columns: Sequence[str] | None = None,
    categorical: Sequence[str] = (),
    bins: int = 10,
    thresholds: DriftThresholds | None = None,
    column_thresholds: Mapping[str, DriftThresholds] | None = None,
    share: float = 0.5,
    on_drift: Literal["warn", "stop", "ignore"] = "warn",
    name: str = "detect_drift",
    title: str = "Data drift report",
) -> Step[[pd.DataFrame, pd.DataFrame], DriftOutput]:
    """A pipeline step comparing ``current`` with ``reference``: ``result, report = drift(reference, current)``.

    The step returns a :class:`DriftResult` and an :class:`~mlpipe.materializers.HtmlReport`
    (tables and per-column distribution plots, self-contained). The report is
    stored as ``runs/<run>/reports/<name>.report.html`` and listed by
    ``mlpipe runs show``.

    Args:
        columns, categorical, bins, thresholds, column_thresholds, share: As in :func:`compute_drift`.
        on_drift: ``"warn"`` logs the summary on the ``mlpipe.quality`` logger;
            ``"ignore"`` says nothing (decide downstream from ``result.drifted``);
            ``"stop"`` makes the step a quality gate that fails on drift, so the
            steps after it are skipped and the run fails. With ``"stop"`` the
            report of a drifted run is not stored (the step failed); to keep it,
            use ``"ignore"`` and put :func:`~mlpipe.quality.gate_step` after it.
        name: The step's name in the pipeline.
        title: The report's title.
    """
    settings = _DriftSettings(
        columns=tuple(columns) if columns is not None else None,
        categorical=tuple(categorical),
        bins=bins,
        thresholds=thresholds or DriftThresholds(),
        column_thresholds=dict(column_thresholds or {}),
        share=share,
        on_drift=on_drift,
        title=title,
    )
    if on_drift not in ("warn", "stop", "ignore"):
        raise ValueError(f"on_drift must be 'warn', 'stop' or 'ignore', got {on_drift!r}")

    def detect_drift(reference: pd.DataFrame, current: pd.DataFrame) -> DriftOutput:
        from mlpipe.quality.report import drift_html

        result = compute_drift(
            reference,
            current,
            columns=settings.columns,
            categorical=settings.categorical,
            bins=settings.bins,
            thresholds=settings.thresholds,
            column_thresholds=settings.column_thresholds,
            share=settings.share,
        )
        if result.drifted and settings.on_drift == "stop":
            raise QualityGateError(result.to_text(), result=result)
        if result.drifted and settings.on_drift == "warn":
            logger.warning("%s", result.summary())
        return DriftOutput(result, drift_html(result, title=settings.title))

    # Real types, not the strings of `from __future__ import annotations`: a remote runtime unpickles
    # this closure with only the globals its body uses, where "pd.DataFrame" would not resolve.
    detect_drift.__annotations__ = {"reference": pd.DataFrame, "current": pd.DataFrame, "return": DriftOutput}
    return step(name=name, gate=on_drift == "stop")(detect_drift)
