"""Pipelines the reliability tests run, in process and in subprocesses (gc races, exits inside steps)."""

from __future__ import annotations

import time

import pandas as pd

import mlpipe as mp


@mp.step
def seed(n: int, salt: int) -> list[int]:
    return [salt * 1_000_003 + i for i in range(n)]


@mp.step
def grow(values: list[int], k: int) -> list[int]:
    time.sleep(0.01)
    return [v * 3 + k for v in values]


@mp.step
def total(values: list[int]) -> int:
    return sum(values)


@mp.pipeline
def chain(n: int = 200, salt: int = 0) -> int:
    values = seed(n, salt)
    for k in range(4):
        values = grow(values, k)
    return total(values)


@mp.step
def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"x": list(range(n))})


@mp.step
def width(df: pd.DataFrame) -> int:
    return int(df["x"].sum())


@mp.pipeline
def frames(n: int = 5) -> int:
    return width(frame(n))


class Model:
    def __init__(self, w: int) -> None:
        self.w = w


@mp.step
def fit(n: int) -> Model:
    return Model(n * 2)


@mp.step
def score(model: Model) -> int:
    return model.w + 1


@mp.pipeline
def models(n: int = 3) -> int:
    return score(fit(n))


@mp.step
def quits(n: int) -> int:
    import sys

    sys.exit(0)


@mp.step
def dies(n: int) -> int:
    import os

    os._exit(0)


@mp.pipeline
def exits(n: int = 1) -> int:
    return after_exit(quits(n))


@mp.step
def after_exit(x: int) -> int:
    return x


@mp.pipeline
def hard_exit(n: int = 1) -> int:
    return dies(n)


@mp.step
def shout(text: str) -> int:
    if text.startswith("fail"):
        raise ValueError("bad input \x1b]0;pwned\x07\x1b[2J" + text)
    return len(text)


@mp.pipeline
def texts(text: str = "ok") -> int:
    return shout(text)
