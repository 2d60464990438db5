"""Pipelines for the SageMaker backend's tests (imported as ``sm_pipelines`` here and by the runtime subprocesses)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

import mlpipe as mp


@mp.step
def load(n: int, tag: str = "x") -> list[int]:
    return list(range(n))


@mp.step(retries=2, timeout="30m", resources=mp.Resources(cpu=4, memory="15Gi"))
def featurize(values: list[int], scale: float) -> list[float]:
    return [v * scale for v in values]


@mp.step(resources=mp.Resources(gpu=1, accelerator="nvidia-a10g", memory="20Gi"), timeout=600,
         image="123456789012.dkr.ecr.us-east-1.amazonaws.com/gpu:2.0", env={"OMP_NUM_THREADS": "4"})
def train(features: list[float], epochs: int, flags: dict[str, Any]) -> dict[str, float]:
    return {"weight": sum(features) / max(len(features), 1), "epochs": float(epochs)}


@mp.step(resources=mp.Resources(instance_type="ml.c5.9xlarge"), retries=30)
def stats(values: list[int]) -> int:
    return len(values)


@mp.step
def report(model: dict[str, float], count: int, full: bool) -> str:
    return f"{model['weight']:.3f} over {count} ({'full' if full else 'quick'})"


@mp.pipeline(name="sm_training")
def training(n: int = 8, scale: float = 0.5, epochs: int = 3, full: bool = False,
             flags: dict[str, Any] = {"lr": 0.1, "layers": [8, 4]}) -> str:
    values = load(n)
    model = train(featurize(values, scale), epochs=epochs, flags=flags)
    return report(model, stats(values), full=full)


@mp.step
def square(x: int) -> int:
    return x * x


@mp.step
def add(a: int, b: int) -> int:
    return a + b


@mp.step
def clip(x: int, limit: int | None = None) -> int:
    return x if limit is None else min(x, limit)


@mp.pipeline(name="sm-required")
def required(x: int, limit: int | None = None) -> int:
    return add(square(x), clip(x, limit=limit))


@mp.step
def is_big(x: int) -> bool:
    return x > 10


@mp.pipeline(name="sm-branches")
def branches(x: int = 4) -> None:
    """if/else on one test, a block inside a block, and a second test on the same step."""
    sq = square(x)
    with mp.when(sq > 10):
        big = is_big(add(sq, 1))
        with mp.when(big) as yes:
            clip(sq, limit=5)
        with mp.when(~yes):
            clip(sq)
    with mp.when(~(sq > 10)):
        add(sq, 2)
    with mp.when(sq >= 100):
        square(sq)


class PerClass(BaseModel):
    positive: float
    negative: float


class Scores(BaseModel):
    accuracy: float
    samples: int
    calibrated: bool
    per_class: PerClass
    note: str


@mp.step
def evaluate(n: int) -> Scores:
    accuracy = round(1 - 1 / (n + 2), 4)
    return Scores(accuracy=accuracy, samples=n, calibrated=True, per_class=PerClass(positive=accuracy, negative=0.5),
                  note="holdout")


@mp.step
def promote(scores: Scores) -> str:
    return f"promoted at {scores.accuracy}"


@mp.pipeline(name="sm-evaluated")
def evaluated(n: int = 8) -> None:
    """A step with pydantic metrics (a property file for SageMaker) that a condition also tests."""
    scores = evaluate(n)
    with mp.when(scores.accuracy > 0.85):
        promote(scores)
