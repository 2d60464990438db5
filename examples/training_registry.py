"""The README's training pipeline, plus the MLflow model registry: register, then promote on a gate.

Needs a profile with tracking on (see docs/mlflow.md), for example ``mlpipe.toml``::

    [profiles.tracked]
    tracking_uri = "http://127.0.0.1:5000"

Run it with::

    mlpipe run examples/training_registry.py:training_registry --profile tracked

The new model version gets the ``challenger`` alias; it becomes ``champion``
only if its accuracy is at least ``min_accuracy`` *and* it beats the current
champion on the same test data. Either way the version's tags say why.
"""

from __future__ import annotations

import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from training import TARGET, Metrics, evaluate, load, split, train, validate

import mlpipe as mp
from mlpipe.integrations import mlflow as mpm

MODEL_NAME = "breast-cancer-rf"


def accuracy_on(model: RandomForestClassifier, test_df: pd.DataFrame) -> dict[str, float]:
    """Re-scores the current champion on the candidate's test data when it was never scored on it."""
    predicted = model.predict(test_df.drop(columns=[TARGET]))
    return {"accuracy": round(float((predicted == test_df[TARGET]).mean()), 4)}


@mp.step
def register(model: RandomForestClassifier, train_df: pd.DataFrame, name: str = MODEL_NAME) -> mpm.ModelVersionRef:
    """Log the model to this step's MLflow run and register it, with the training data's digest."""
    return mpm.register_model(
        model,
        name,
        datasets={"training": train_df},
        input_example=train_df.drop(columns=[TARGET]).head(3),
        skops_trusted_types=["sklearn.tree._tree.Tree"],  # the forest's trees, which we trained ourselves
    )


@mp.step
def promote(
    version: mpm.ModelVersionRef, metrics: Metrics, test_df: pd.DataFrame, min_accuracy: float = 0.9
) -> mpm.Promotion:
    """Move `champion` only if the quality gate passes; the registry records why either way."""
    return mpm.promote(
        version,
        metrics,
        gates=[mpm.MetricThreshold("accuracy", min=min_accuracy), mpm.BetterThanChampion("accuracy")],
        evaluation_data=test_df,
        scorer=accuracy_on,
    )


@mp.pipeline
def training_registry(n_estimators: int = 100, seed: int = 0, min_accuracy: float = 0.9) -> mpm.Promotion:
    df = validate(load())
    train_df, test_df = split(df, seed=seed)
    model = train(train_df, n_estimators=n_estimators, seed=seed)
    version = register(model, train_df)
    return promote(version, evaluate(model, test_df), test_df, min_accuracy=min_accuracy)
