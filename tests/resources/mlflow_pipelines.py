"""Pipelines for the MLflow integration tests (imported as ``resources.mlflow_pipelines``).

Importable, so ``python -m mlpipe.runtime`` subprocesses can run their steps too.
"""

from __future__ import annotations

import threading
import time
from typing import Any, NamedTuple

import pandas as pd
import pydantic
from sklearn.linear_model import LogisticRegression

import mlpipe as mp
from mlpipe.integrations import mlflow as mpm  # does not import mlflow


class Scores(pydantic.BaseModel):
    accuracy: float
    n: int
    passed: bool
    label: str


@mp.step
def source(n: int = 4) -> list[float]:
    mp.log_metric("rows", n)
    return [float(i) for i in range(n)]


@mp.step
def left(values: list[float], pause: float = 0.3) -> Scores:
    import mlflow

    time.sleep(pause)  # overlaps with `right`: both run at once in worker threads
    mlflow.log_metric("only_left", 1.0)
    mp.log_params({"side": "left", "thread": threading.current_thread().name})
    return Scores(accuracy=sum(values) / 10, n=len(values), passed=True, label="left")


@mp.step
def right(values: list[float], pause: float = 0.3) -> float:
    import mlflow

    time.sleep(pause)
    mlflow.log_metric("only_right", 2.0)
    mp.log_params({"side": "right", "thread": threading.current_thread().name})
    for epoch in range(3):
        mp.log_metric("loss", 1.0 / (epoch + 1), step=epoch)
    return max(values)


class Pair(NamedTuple):
    first: Scores
    second: float


@mp.step
def pair(scores: Scores, top: float) -> Pair:
    return Pair(scores, top)


@mp.pipeline
def branches(n: int = 4, pause: float = 0.3) -> Pair:
    values = source(n=n)
    return pair(left(values, pause=pause), right(values, pause=pause))


@mp.step
def boom(values: list[float]) -> float:
    raise RuntimeError("planted failure")


@mp.step
def after(value: float) -> float:
    return value


@mp.pipeline
def failing(n: int = 3) -> float:
    return after(boom(source(n=n)))


# -- model registry ------------------------------------------------------------------------

FEATURES = ["a", "b", "c"]


class Quality(pydantic.BaseModel):
    accuracy: float


def make_frame(n: int, seed: int) -> Any:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] + x[:, 1] > 0).astype(int)})


@mp.step
def frames(seed: int = 0, eval_seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    return make_frame(300, seed), make_frame(200, eval_seed)


@mp.step
def fit(train_df: pd.DataFrame, c: float = 1.0) -> LogisticRegression:
    return LogisticRegression(C=c).fit(train_df[FEATURES], train_df["y"])


def accuracy(model: Any, df: pd.DataFrame) -> Quality:
    predicted = model.predict(df[FEATURES])
    return Quality(accuracy=round(float((predicted == df["y"]).mean()), 4))


@mp.step
def score(model: LogisticRegression, eval_df: pd.DataFrame) -> Quality:
    return accuracy(model, eval_df)


@mp.step
def register(model: LogisticRegression, train_df: pd.DataFrame, name: str) -> mpm.ModelVersionRef:
    return mpm.register_model(model, name, datasets={"training": train_df})


@mp.step
def decide(
    version: mpm.ModelVersionRef, quality: Quality, eval_df: pd.DataFrame, gate: str, threshold: float, rescore: bool
) -> mpm.Promotion:
    gates: list[mpm.Gate] = [mpm.MetricThreshold("accuracy", min=threshold)]
    if gate == "better":
        gates.append(mpm.BetterThanChampion("accuracy"))
    return mpm.promote(version, quality, gates=gates, evaluation_data=eval_df, scorer=accuracy if rescore else None)


@mp.pipeline
def registry(
    name: str,
    c: float = 1.0,
    threshold: float = 0.8,
    gate: str = "threshold",
    eval_seed: int = 1,
    rescore: bool = False,
) -> mpm.Promotion:
    train_df, eval_df = frames(eval_seed=eval_seed)
    model = fit(train_df, c=c)
    version = register(model, train_df, name=name)
    return decide(version, score(model, eval_df), eval_df, gate=gate, threshold=threshold, rescore=rescore)


class Doubler:
    """A model with no MLflow flavor: served through mlpipe's pyfunc wrapper."""

    def predict(self, frame: pd.DataFrame) -> list[float]:
        return [2.0 * v for v in frame["a"]]


@mp.step
def publish_custom(name: str) -> mpm.ModelVersionRef:
    return mpm.register_model(Doubler(), name, aliases=("champion",))


@mp.pipeline
def custom(name: str) -> mpm.ModelVersionRef:
    return publish_custom(name=name)


@mp.step
def halve(value: float) -> float:
    return value / 2


@mp.pipeline(name="mapped-and-branched")
def mapped(n: int = 3) -> float:
    """A map (halve[0], halve[1], ...) and two branches, one of which is not taken."""
    top = after(right(halve.map(value=source(n)), pause=0.0))
    with mp.when(top > 100.0):
        after(top)
    return top
