"""Drift statistics against scipy on known distributions: no drift, a shifted mean, a new category."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mlpipe import quality as q


def reference_psi(ref: np.ndarray, cur: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """PSI written the textbook way, independently of the implementation under test."""
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    # np.histogram's bins are [a, b): a value equal to an inner edge lands in the upper bin, as in mlpipe.
    r = np.histogram(ref, edges)[0] / len(ref)
    c = np.histogram(cur, edges)[0] / len(cur)
    r, c = np.clip(r, eps, None), np.clip(c, eps, None)
    return float(np.sum((c - r) * np.log(c / r)))


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(20261126)


@pytest.mark.parametrize("n", [2_000, 30_000], ids=["exact-p", "asymptotic-p"])
def test_no_drift_matches_scipy(rng: np.random.Generator, n: int) -> None:
    ref, cur = rng.normal(0, 1, n), rng.normal(0, 1, n + 7)
    result = q.compute_drift(pd.DataFrame({"x": ref}), pd.DataFrame({"x": cur}))
    col = result.column("x")
    expected = stats.ks_2samp(ref, cur)
    assert col.statistic == pytest.approx(float(expected.statistic), abs=1e-12)
    assert col.p_value == pytest.approx(float(expected.pvalue), rel=1e-9)
    assert col.psi == pytest.approx(reference_psi(ref, cur), rel=1e-9)
    assert col.psi < 0.02 and col.p_value > 0.01
    assert not col.drifted and not result.drifted and result.passed
    assert col.reference_count == n and col.current_count == n + 7
    assert result.summary().startswith("no drift: 0 of 1 columns drifted")


@pytest.mark.parametrize("n", [1_500, 25_000], ids=["exact-p", "asymptotic-p"])
def test_shifted_mean_matches_scipy(rng: np.random.Generator, n: int) -> None:
    ref, cur = rng.normal(10, 2, n), rng.normal(11.5, 2, n)
    noise = rng.normal(0, 1, n)
    result = q.compute_drift(
        pd.DataFrame({"x": ref, "noise": noise}), pd.DataFrame({"x": cur, "noise": rng.normal(0, 1, n)})
    )
    col = result.column("x")
    expected = stats.ks_2samp(ref, cur)
    assert col.statistic == pytest.approx(float(expected.statistic), abs=1e-12)
    assert col.p_value == pytest.approx(float(expected.pvalue), rel=1e-6, abs=1e-300)
    assert col.psi == pytest.approx(reference_psi(ref, cur), rel=1e-9)
    assert col.psi > 0.2 and col.drifted
    assert col.reference_mean == pytest.approx(ref.mean()) and col.current_mean == pytest.approx(cur.mean())
    assert not result.column("noise").drifted
    assert result.share_drifted == 0.5 and result.drifted  # share threshold 0.5 is reached
    assert result.drifted_columns == ["x"]


def test_small_asymptotic_p_values_are_close_to_scipy(rng: np.random.Generator) -> None:
    """Below p = 0.025 on large samples the limiting distribution stands in for scipy's exact one."""
    ref, cur = rng.normal(0, 1, 20_000), rng.normal(0.04, 1, 20_000)
    col = q.compute_drift(pd.DataFrame({"x": ref}), pd.DataFrame({"x": cur})).column("x")
    expected = stats.ks_2samp(ref, cur)
    assert col.statistic == pytest.approx(float(expected.statistic), abs=1e-12)
    assert float(expected.pvalue) < 0.025
    assert col.p_value == pytest.approx(float(expected.pvalue), rel=0.05)


def test_new_category_matches_scipy_chi_square(rng: np.random.Generator) -> None:
    ref = rng.choice(["a", "b", "c"], 5_000, p=[0.5, 0.3, 0.2])
    cur = rng.choice(["a", "b", "c", "d"], 5_000, p=[0.4, 0.3, 0.1, 0.2])
    result = q.compute_drift(pd.DataFrame({"city": ref}), pd.DataFrame({"city": cur}))
    col = result.column("city")
    assert col.kind == "categorical" and col.test == "chi2"
    cats = ["a", "b", "c", "d"]
    table = np.array([[np.sum(ref == k) for k in cats], [np.sum(cur == k) for k in cats]])
    expected = stats.chi2_contingency(table, correction=False)
    assert col.statistic == pytest.approx(float(expected.statistic), rel=1e-9)
    assert col.p_value == pytest.approx(float(expected.pvalue), rel=1e-9, abs=1e-300)
    assert col.new_categories == ["d"]
    r = np.clip(table[0] / table[0].sum(), 1e-4, None)
    c = np.clip(table[1] / table[1].sum(), 1e-4, None)
    assert col.psi == pytest.approx(float(np.sum((c - r) * np.log(c / r))), rel=1e-9)
    assert col.drifted and result.drifted


def test_same_categories_do_not_drift(rng: np.random.Generator) -> None:
    ref = rng.choice(["x", "y"], 4_000)
    cur = rng.choice(["x", "y"], 4_000)
    col = q.compute_drift(pd.DataFrame({"k": ref}), pd.DataFrame({"k": cur})).column("k")
    table = np.array([[np.sum(ref == "x"), np.sum(ref == "y")], [np.sum(cur == "x"), np.sum(cur == "y")]])
    assert col.statistic == pytest.approx(float(stats.chi2_contingency(table, correction=False).statistic))
    assert not col.drifted and col.new_categories == []


def test_thresholds_per_column_and_overall(rng: np.random.Generator) -> None:
    ref = pd.DataFrame({"a": rng.normal(0, 1, 3_000), "b": rng.normal(0, 1, 3_000), "c": rng.normal(0, 1, 3_000)})
    cur = pd.DataFrame({"a": rng.normal(0.3, 1, 3_000), "b": rng.normal(0.3, 1, 3_000), "c": rng.normal(0, 1, 3_000)})
    default = q.compute_drift(ref, cur)
    assert {c.column for c in default.columns if c.drifted} == set()  # significant but PSI < 0.2
    strict = q.compute_drift(ref, cur, thresholds=q.DriftThresholds(psi=0.05), share=0.5)
    assert strict.drifted_columns == ["a", "b"] and strict.drifted
    per_column = q.compute_drift(
        ref, cur, column_thresholds={"a": q.DriftThresholds(psi=0.05)}, share=0.5
    )
    assert per_column.drifted_columns == ["a"] and not per_column.drifted  # 1 of 3 < 50 %
    assert q.compute_drift(ref, cur, column_thresholds={"a": q.DriftThresholds(psi=0.05)}, share=0.3).drifted
    p_only = q.compute_drift(ref, cur, thresholds=q.DriftThresholds(psi=None, p_value=0.01))
    assert {"a", "b"} <= set(p_only.drifted_columns)
    either = q.compute_drift(ref, cur, thresholds=q.DriftThresholds(psi=5.0, p_value=0.01, mode="any"))
    assert {"a", "b"} <= set(either.drifted_columns)
    with pytest.raises(KeyError, match="not compared"):
        q.compute_drift(ref, cur, column_thresholds={"zzz": q.DriftThresholds()})


def test_columns_missing_values_and_forced_categories(rng: np.random.Generator) -> None:
    ref = pd.DataFrame({"x": rng.normal(0, 1, 1_000), "code": rng.integers(0, 3, 1_000), "gone": 1.0})
    cur = pd.DataFrame({"x": rng.normal(0, 1, 1_000), "code": rng.integers(0, 4, 1_000)})
    cur.loc[:99, "x"] = np.nan
    result = q.compute_drift(ref, cur, categorical=["code"], share=1.0)
    assert result.missing_columns == ["gone"]
    assert "gone" in result.drifted_columns
    x = result.column("x")
    assert x.current_missing == pytest.approx(0.1) and x.current_count == 900
    code = result.column("code")
    assert code.kind == "categorical" and code.new_categories == ["3"]
    only = q.compute_drift(ref, cur, columns=["x"])
    assert [c.column for c in only.columns] == ["x"]
    with pytest.raises(KeyError, match="not in the reference"):
        q.compute_drift(ref, cur, columns=["nope"])


def test_empty_side_counts_as_drift() -> None:
    ref = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    cur = pd.DataFrame({"x": [np.nan, np.nan]})
    col = q.compute_drift(ref, cur).column("x")
    assert col.statistic is None and col.p_value is None and col.drifted


def test_psi_helper() -> None:
    assert q.psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    assert q.psi(np.array([0.5, 0.5]), np.array([0.9, 0.1])) == pytest.approx(
        0.4 * np.log(0.9 / 0.5) + (-0.4) * np.log(0.1 / 0.5)
    )


def test_result_round_trips_as_json(rng: np.random.Generator) -> None:
    ref = pd.DataFrame({"x": rng.normal(0, 1, 500), "c": rng.choice(["a", "b"], 500)})
    result = q.compute_drift(ref, ref.assign(x=ref["x"] + 3))
    again = q.DriftResult.model_validate_json(result.model_dump_json())
    assert again == result
    assert "x" in result.to_text() and "DRIFT" in result.to_text()


def test_timestamps_are_compared_as_numbers(rng: np.random.Generator) -> None:
    start = pd.Timestamp("2026-01-01", tz="UTC")
    ref = pd.DataFrame({"t": start + pd.to_timedelta(rng.uniform(0, 30, 2_000), unit="D")})
    cur = pd.DataFrame({"t": start + pd.to_timedelta(rng.uniform(20, 50, 2_000), unit="D")})
    cur.loc[0, "t"] = pd.NaT
    col = q.compute_drift(ref, cur).column("t")
    assert col.kind == "numeric" and col.drifted and col.current_count == 1_999
    seconds = (ref["t"] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    assert col.reference_mean == pytest.approx(float(seconds.mean()))
