"""A small, real tabular ML pipeline: load → validate → split → train → evaluate.

Uses the breast-cancer data set that ships inside scikit-learn (no download).
Run it with::

    mlpipe run examples/training.py:training -p n_estimators=200
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd
import pydantic
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import train_test_split

import mlpipe as mp

TARGET = "target"


class Metrics(pydantic.BaseModel):
    accuracy: float
    f1: float
    roc_auc: float
    n_test: int


class Split(NamedTuple):
    train_df: pd.DataFrame
    test_df: pd.DataFrame


@mp.step
def load(limit: int = 0) -> pd.DataFrame:
    """The breast-cancer data set as one DataFrame with a `target` column."""
    frame = load_breast_cancer(as_frame=True).frame
    return frame.head(limit) if limit else frame


@mp.step
def validate(df: pd.DataFrame, min_rows: int = 100) -> pd.DataFrame:
    """Refuse data that is too small, has missing values or a one-class target."""
    if len(df) < min_rows:
        raise ValueError(f"expected at least {min_rows} rows, got {len(df)}")
    missing = int(df.isna().sum().sum())
    if missing:
        raise ValueError(f"{missing} missing values")
    if df[TARGET].nunique() < 2:
        raise ValueError("the target has a single class")
    return df


@mp.step
def split(df: pd.DataFrame, test_size: float = 0.25, seed: int = 0) -> Split:
    train_df, test_df = train_test_split(df, test_size=test_size, random_state=seed, stratify=df[TARGET])
    return Split(train_df, test_df)


@mp.step(resources=mp.Resources(cpu=2, memory="2Gi"))
def train(train_df: pd.DataFrame, n_estimators: int = 100, seed: int = 0) -> RandomForestClassifier:
    model = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=2)
    model.fit(train_df.drop(columns=[TARGET]), train_df[TARGET])
    return model


@mp.step
def evaluate(model: RandomForestClassifier, test_df: pd.DataFrame) -> Metrics:
    features, labels = test_df.drop(columns=[TARGET]), test_df[TARGET]
    predicted = model.predict(features)
    return Metrics(
        accuracy=round(float(accuracy_score(labels, predicted)), 4),
        f1=round(float(f1_score(labels, predicted)), 4),
        roc_auc=round(float(roc_auc_score(labels, model.predict_proba(features)[:, 1])), 4),
        n_test=len(test_df),
    )


@mp.pipeline
def training(n_estimators: int = 100, test_size: float = 0.25, seed: int = 0) -> Metrics:
    df = validate(load())
    train_df, test_df = split(df, test_size=test_size, seed=seed)
    model = train(train_df, n_estimators=n_estimators, seed=seed)
    return evaluate(model, test_df)


if __name__ == "__main__":
    run = training.run()
    print(run.status, run.output("evaluate"))
