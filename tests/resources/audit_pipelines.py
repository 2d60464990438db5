"""A credit-scoring pipeline with every kind of evidence the audit report shows (``resources.audit_pipelines``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydantic
from sklearn.linear_model import LogisticRegression

import mlpipe as mp
from mlpipe import quality as q

SCHEMA = q.Schema(
    columns={"income": q.Column("float64", ge=0), "age": q.Column("int64", ge=18, le=100), "group": q.Column("str")},
    min_rows=50,
    name="applicants",
)

check = q.validate_step(SCHEMA, on_failure="stop", name="check_applicants")
drift = q.drift_step(columns=["income", "age"], on_drift="ignore", name="detect_drift")
fairness = q.fairness_step("group", on_violation="ignore", name="check_fairness",
                           thresholds=q.FairnessThresholds(demographic_parity=0.2, equalized_odds=0.3))


class Metrics(pydantic.BaseModel):
    accuracy: float
    positive_rate: float
    n_test: int


@mp.step
def applicants(n: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b"], n)
    income = rng.gamma(4.0, 10.0, n) + np.where(group == "a", 8.0, 0.0)
    age = rng.integers(18, 90, n)
    label = (income + rng.normal(0, 8, n) > 45).astype(int)
    return pd.DataFrame({"income": income, "age": age, "group": group, "label": label})


@mp.step
def train(df: pd.DataFrame, c: float = 1.0) -> LogisticRegression:
    return LogisticRegression(C=c).fit(df[["income", "age"]], df["label"])


@mp.step
def score(model: LogisticRegression, df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(prediction=model.predict(df[["income", "age"]]))


@mp.step
def evaluate(scored: pd.DataFrame) -> Metrics:
    return Metrics(
        accuracy=float((scored["label"] == scored["prediction"]).mean()),
        positive_rate=float(scored["prediction"].mean()),
        n_test=len(scored),
    )


@mp.pipeline
def credit(n: int = 600, c: float = 1.0):
    data, _report = check(applicants(n=n))
    model = train(data, c=c)
    holdout = applicants(n=300, seed=1)
    drift(data, holdout)
    scored = score(model, holdout)
    fairness(scored)
    return evaluate(scored)


@mp.step
def register(result: q.FairnessResult) -> str:
    return "registered"
