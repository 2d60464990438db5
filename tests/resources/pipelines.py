"""Tiny pipelines shared by the core tests (imported as ``resources.pipelines``)."""

from __future__ import annotations

import threading
import time
from typing import NamedTuple

import mlpipe as mp


class Split(NamedTuple):
    train: list[int]
    test: list[int]


@mp.step
def numbers(n: int) -> list[int]:
    return list(range(n))


@mp.step
def split(values: list[int], ratio: float = 0.5) -> Split:
    cut = int(len(values) * ratio)
    return Split(values[:cut], values[cut:])


@mp.step
def halves(values: list[int]) -> tuple[int, int]:
    return sum(values[::2]), sum(values[1::2])


@mp.step
def total(values: list[int]) -> int:
    return sum(values)


@mp.step
def add(a: int, b: int) -> int:
    return a + b


@mp.pipeline
def arithmetic(n: int = 4) -> int:
    train, test = split(numbers(n))
    even, odd = halves(train)
    return add(add(even, odd), total(test))


# -- fan-out: 1 -> 8 -> 1 -------------------------------------------------------------


@mp.step
def source() -> int:
    return 1


@mp.step
def sleepy(x: int, i: int, seconds: float = 0.5) -> int:
    time.sleep(seconds)
    return x + i


@mp.step
def gather(a: int, b: int, c: int, d: int, e: int, f: int, g: int, h: int) -> int:
    return a + b + c + d + e + f + g + h


@mp.pipeline
def fanout(seconds: float = 0.5) -> int:
    x = source()
    parts = [sleepy(x, i, seconds=seconds) for i in range(8)]
    return gather(*parts)


# -- failures ------------------------------------------------------------------------


@mp.step
def boom(x: int) -> int:
    raise ValueError(f"kaboom {x}")


@mp.step
def slow_ok(x: int) -> int:
    time.sleep(0.3)
    return x


@mp.step
def plus_one(x: int) -> int:
    return x + 1


@mp.pipeline
def failing(n: int = 1) -> int:
    x = source()
    plus_one(plus_one(boom(x)))
    return plus_one(slow_ok(x))


ALWAYS_FAILS_CALLS: list[int] = []


@mp.step(retries=1)
def always_fails(x: int) -> int:
    ALWAYS_FAILS_CALLS.append(x)
    raise RuntimeError(f"broken {x}")


@mp.pipeline
def retried() -> int:
    return always_fails(source())


@mp.step
def wrong_type(x: int) -> int:
    return "not an int"  # type: ignore[return-value]


@mp.pipeline
def returns_wrong_type() -> int:
    return wrong_type(source())


class Holder:
    """An object cloudpickle cannot store (it holds a lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


@mp.step
def unstorable(x: int) -> Holder:
    return Holder()


@mp.pipeline
def returns_unstorable() -> Holder:
    return unstorable(source())
