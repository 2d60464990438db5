"""Fairness: per-group metrics against hand-computed values, disparities, the gate step and its report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import mlpipe as mp
from mlpipe import quality as q

pytest.importorskip("fairlearn")


def _frame() -> pd.DataFrame:
    # group a: 4 rows (2 positive labels), decisions 1,0,0,0 -> sel 0.25, tpr 0.5, fpr 0, acc 0.75
    # group b: 2 rows (no positive label), decisions 1,0     -> sel 0.5, tpr None, fpr 0.5, acc 0.5
    # group c: 2 rows (2 positive labels), decisions 1,1     -> sel 1.0, tpr 1.0, fpr None, acc 1.0
    return pd.DataFrame(
        {
            "label": [1, 0, 1, 0, 0, 0, 1, 1],
            "prediction": [1, 0, 0, 0, 1, 0, 1, 1],
            "group": ["a", "a", "a", "a", "b", "b", "c", "c"],
        }
    )


def test_group_metrics_match_hand_computed_values() -> None:
    df = _frame()
    result = q.compute_fairness(df["label"], df["prediction"], df["group"], thresholds=q.FairnessThresholds())
    a, b, c = (result.group(f"group={g}") for g in "abc")
    assert (a.count, a.positives, a.selection_rate, a.true_positive_rate, a.false_positive_rate, a.accuracy) == (
        4,
        2,
        0.25,
        0.5,
        0.0,
        0.75,
    )
    # a rate a group cannot have is None, not fairlearn's 0 (which would read as the worst possible gap)
    assert b.true_positive_rate is None and b.false_positive_rate == 0.5 and b.selection_rate == 0.5
    assert c.false_positive_rate is None and c.true_positive_rate == 1.0
    assert result.overall.selection_rate == 0.5 and result.overall.accuracy == 0.75
    dp = result.disparity("demographic_parity")
    assert dp.value == pytest.approx(0.75) and dp.worst == ("group=a", "group=c") and not dp.passed
    eo = result.disparity("equalized_odds")  # tpr gap 1.0-0.5, fpr gap 0.5-0.0
    assert eo.value == pytest.approx(0.5) and not eo.passed
    assert result.disparity("selection_ratio").value == pytest.approx(0.25)
    assert result.disparity("selection_ratio").passed  # not checked by default
    assert not result.passed and result.failed_checks == ["demographic_parity", "equalized_odds"]
    assert "demographic_parity 0.750 > 0.1" in result.summary()


def test_disparities_agree_with_fairlearn_where_every_rate_is_defined() -> None:
    from fairlearn.metrics import demographic_parity_difference, demographic_parity_ratio, equalized_odds_difference

    rng = np.random.default_rng(3)
    n = 2000
    sex = rng.choice(["f", "m"], n)
    age = rng.choice(["<40", "40+"], n)
    y = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < np.where(sex == "f", 0.35, 0.55), 1, 0)
    features = pd.DataFrame({"sex": sex, "age": age})
    result = q.compute_fairness(y, pred, features, thresholds=q.FairnessThresholds(selection_ratio=0.8))
    assert len(result.groups) == 4 and {g.group for g in result.groups} >= {"sex=f, age=<40", "sex=m, age=40+"}
    assert result.disparity("demographic_parity").value == pytest.approx(
        demographic_parity_difference(y, pred, sensitive_features=features)
    )
    assert result.disparity("equalized_odds").value == pytest.approx(
        equalized_odds_difference(y, pred, sensitive_features=features)
    )
    assert result.disparity("selection_ratio").value == pytest.approx(
        demographic_parity_ratio(y, pred, sensitive_features=features)
    )
    assert not result.disparity("selection_ratio").passed


def test_small_groups_are_reported_but_not_judged() -> None:
    df = _frame()
    result = q.compute_fairness(
        df["label"], df["prediction"], df["group"], thresholds=q.FairnessThresholds(min_group_size=3)
    )
    assert [g.judged for g in result.groups] == [True, False, False]
    assert result.passed  # one judged group: nothing to compare
    assert "(too small, not judged)" in result.to_text()


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="one row each: got 3, 2, 3"):
        q.compute_fairness([1, 0, 1], [1, 0], pd.Series(["a", "b", "a"]))
    with pytest.raises(ValueError, match=r"sensitive columns \['g'\] have missing values"):
        q.compute_fairness([1, 0], [1, 0], pd.DataFrame({"g": ["a", None]}))
    with pytest.raises(ValueError, match="on_violation must be"):
        q.fairness_step("g", on_violation="explode")  # type: ignore[arg-type]


fair_check = q.fairness_step("group", on_violation="stop", name="check_fairness")
fair_report = q.fairness_step("group", on_violation="ignore", name="fairness")
fair_gate = q.gate_step(name="fairness_gate")


@mp.step
def scored(bias: float = 0.0, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    group = rng.choice(["a", "b"], n)
    label = rng.integers(0, 2, n)
    flip = rng.random(n) < np.where(group == "b", bias, 0.0)
    prediction = np.where(flip, 0, label)  # a perfect model, except it refuses group b's positives
    return pd.DataFrame({"label": label, "prediction": prediction, "group": group})


@mp.step
def register(decision: q.GateDecision) -> str:
    return f"registered after {decision.gate}"


@mp.step
def register_checked(result: q.FairnessResult) -> str:
    return "registered"


@mp.pipeline
def gated(bias: float = 0.0):
    result, _report = fair_check(scored(bias=bias))
    return register_checked(result)


@mp.pipeline
def gated_separately(bias: float = 0.0):
    result, _report = fair_report(scored(bias=bias))
    return register(fair_gate(result))


def test_fairness_gate_stops_registration_with_the_table() -> None:
    run = gated.run(bias=0.6)
    assert run.status == "failed"
    error = run.steps["check_fairness"].error or ""
    assert "fairness across group failed: demographic_parity" in error and "group=b" in error
    assert run.steps["register_checked"].status == "skipped"
    assert "quality gate 'check_fairness' failed: fairness across group failed" in (
        run.steps["register_checked"].error or ""
    )
    ok = gated.run(bias=0.0)
    assert ok.status == "succeeded", ok.error
    assert ok.output("check_fairness", "result").passed


def test_gate_step_after_fairness_keeps_the_report() -> None:
    run = gated_separately.run(bias=0.6)
    assert run.status == "failed"
    assert run.steps["fairness"].status == "succeeded"
    assert run.steps["fairness_gate"].status == "failed" and run.steps["register"].status == "skipped"
    result = run.output("fairness", "result")
    assert isinstance(result, q.FairnessResult) and result.failed_checks[0] == "demographic_parity"
    html = str(run.output("fairness", "report"))
    assert "Fairness report" in html and "group=b" in html and "<script" not in html
    assert 'class="badge bad">fail<' in html and "fairness-disparities" in html
    assert run.steps["fairness"].reports["report"].endswith("fairness.report.html")


def test_fairness_html_escapes_group_names() -> None:
    df = pd.DataFrame({"label": [1, 0, 1, 0], "prediction": [1, 0, 1, 1], "g": ["<b>x", "<b>x", "y", "y"]})
    html = str(q.fairness_html(q.compute_fairness(df["label"], df["prediction"], df["g"])))
    assert "g=&lt;b&gt;x" in html and "<b>x" not in html
