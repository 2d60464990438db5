"""Tiny pipelines the CLI tests run in subprocesses (``mlpipe run tests/resources/cli_pipelines.py:NAME``)."""

from __future__ import annotations

import threading

import mlpipe as mp


@mp.step
def make(n: int) -> int:
    return n * 2


@mp.step
def after(x: int) -> int:
    return x + 1


@mp.step
def scale(x: int, factor: float = 1.5) -> float:
    return x * factor


@mp.step
def wrong(x: int) -> int:
    return "oops"  # type: ignore[return-value]


class Holder:
    def __init__(self) -> None:
        self.lock = threading.Lock()


@mp.step
def unstorable(x: int) -> Holder:
    return Holder()


@mp.step
def boom(x: int) -> int:
    raise ValueError(f"kaboom {x}")


@mp.pipeline
def ok(n: int = 2, factor: float = 1.5) -> float:
    return scale(after(make(n)), factor=factor)


@mp.pipeline
def badtype(n: int = 1) -> int:
    return wrong(make(n))


@mp.pipeline
def badstore(n: int = 1) -> Holder:
    return unstorable(make(n))


@mp.pipeline
def raising(n: int = 1) -> int:
    x = make(n)
    after(boom(x))
    return after(x)


@mp.pipeline
def first() -> int:
    return make(1)


@mp.pipeline
def crossing() -> int:
    return after(first.trace().result)


@mp.pipeline
def mismatched() -> int:
    return after(scale(make(1)))  # float output into an int input


not_a_pipeline = 3
