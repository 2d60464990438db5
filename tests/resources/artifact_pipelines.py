"""A pipeline with one output of each artifact kind the engines show: Dataset, Model, Metrics, HTML, Artifact."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel
from sklearn.linear_model import LogisticRegression

import mlpipe as mp
from mlpipe.quality import HtmlReport


class Scores(BaseModel):
    accuracy: float
    rows: int
    passed: bool  # not a metric: KFP metrics are numbers
    note: str
    per_class: dict[str, float]


@mp.step
def load(n: int) -> pd.DataFrame:
    x = np.arange(n, dtype=float)
    return pd.DataFrame({"x": x, "y": (x % 2).astype(int)})


@mp.step
def features(df: pd.DataFrame) -> np.ndarray:
    return df[["x"]].to_numpy() % 2


@mp.step
def train(df: pd.DataFrame, X: np.ndarray) -> LogisticRegression:
    return LogisticRegression().fit(X, df["y"])


@mp.step
def evaluate(model: LogisticRegression, df: pd.DataFrame, X: np.ndarray) -> Scores:
    accuracy = float(model.score(X, df["y"]))
    return Scores(accuracy=accuracy, rows=len(df), passed=accuracy > 0.5, note="train set",
                  per_class={"0": accuracy, "1": accuracy})


@mp.step
def report(scores: Scores) -> HtmlReport:
    return HtmlReport(f"<html><body><h1>accuracy {scores.accuracy:.3f}</h1></body></html>")


@mp.step
def summary(scores: Scores) -> dict[str, float]:
    return {"accuracy": scores.accuracy}


@mp.pipeline(name="artifacts")
def artifacts(n: int = 8) -> dict[str, float]:
    df = load(n)
    X = features(df)
    model = train(df, X)
    scores = evaluate(model, df, X)
    report(scores)
    return summary(scores)
