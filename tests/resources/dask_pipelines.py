"""Pipelines for the Dask backend's tests, importable by the test workers (``resources.dask_pipelines``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mlpipe as mp


@mp.step
def pause(seconds: float, tag: int) -> int:
    time.sleep(seconds)
    return tag


@mp.step
def add(a: int, b: int) -> int:
    return a + b


@mp.pipeline(name="dask-pair")
def pair(seconds: float = 1.0) -> int:
    """Two independent steps of ``seconds`` each, then their sum."""
    return add(pause(seconds, 1), pause.with_options(name="pause_b")(seconds, 2))


@mp.step(retries=1)
def flaky(flag_dir: str) -> str:
    """Fails on its first attempt (leaves a flag file), succeeds on the second."""
    flag = Path(flag_dir) / "failed-once"
    if not flag.exists():
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.write_text(str(os.getpid()))
        raise RuntimeError("first attempt fails")
    return "ok"


@mp.step(timeout=0.5)
def too_slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@mp.pipeline(name="dask-retry-timeout")
def retry_and_timeout(flag_dir: str, seconds: float = 3.0) -> None:
    flaky(flag_dir)
    too_slow(seconds)


@mp.step(resources=mp.Resources(cpu=1, memory="1Gi", gpu=1))
def on_gpu(x: int) -> int:
    return x * 2


@mp.step(resources=mp.Resources(cpu=1, memory="1Gi"))
def sized(x: int) -> int:
    return x + 1


@mp.pipeline(name="dask-resources")
def resourced(x: int = 1) -> int:
    return on_gpu(sized(x))


@mp.step(resources=mp.Resources(gpu=4))
def greedy(x: int) -> int:
    return x


@mp.pipeline(name="dask-greedy")
def too_greedy(x: int = 1) -> int:
    return greedy(x)


@mp.step(retries=1)
def long_step(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x * 10


@mp.pipeline(name="dask-kill")
def killable(x: int = 3, seconds: float = 4.0) -> int:
    return add(long_step(pause(0.0, x), seconds), 1)


@mp.pipeline(name="dask-chain")
def chain(seconds: float = 1.0) -> int:
    a = pause(seconds, 1)
    b = pause.with_options(name="pause_2")(seconds, a)
    return pause.with_options(name="pause_3")(seconds, b)


@mp.step
def rates(n: int) -> list[float]:
    return [0.5 * i for i in range(n)]


@mp.step
def train(lr: float, epochs: int, seconds: float) -> float:
    """One item of a sweep (its attempt marker names the worker that ran it)."""
    time.sleep(seconds)
    return lr * epochs


@mp.step
def doubled(score: float) -> float:
    return score * 2


@mp.step
def invert(x: float) -> float:
    return 1 / x


@mp.step
def best(scores: list[float]) -> float:
    return max(scores)


@mp.pipeline(name="dask-sweep")
def sweep(n: int = 4, epochs: int = 10, seconds: float = 0.0) -> float:
    """A 1 -> n -> n -> 1 fan-out: train[i] per rate, doubled[i] per score, then the best."""
    scores = train.map(lr=rates(n), epochs=mp.unmapped(epochs), seconds=mp.unmapped(seconds))
    return best(doubled.map(score=scores))


@mp.pipeline(name="dask-inverse")
def inverse(values: list[float] = [1.0, 0.0]) -> float:
    return best(invert.map(x=values))


@mp.pipeline(name="dask-uneven")
def uneven(n: int = 3) -> float:
    return best(train.map(lr=rates(n), epochs=[1, 2], seconds=mp.unmapped(0.0)))


@mp.pipeline(name="dask-branch-map")
def branch_map(n: int = 3) -> float:
    """A mapped step inside `mp.when`: skipped, branch not taken, when there are no more than 3 rates."""
    values = rates(n)
    top = best(values)
    with mp.when(top > 1.0):
        best.with_options(name="best_scores")(doubled.map(score=values))
    return top
