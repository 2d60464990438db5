"""Pipelines the benchmarks run: generated chains and fans of distinct steps, and a 1 → 16 → 1 fan-out."""

from __future__ import annotations

import time
from pathlib import Path

import mlpipe as mp


@mp.step
def inc(x: int) -> int:
    return x + 1


@mp.step
def source(seed: int) -> int:
    return seed


@mp.step
def nap(x: int, i: int, seconds: float) -> int:
    if seconds:
        time.sleep(seconds)
    return x + i


@mp.step
def gather(
    a0: int,
    a1: int,
    a2: int,
    a3: int,
    a4: int,
    a5: int,
    a6: int,
    a7: int,
    a8: int,
    a9: int,
    a10: int,
    a11: int,
    a12: int,
    a13: int,
    a14: int,
    a15: int,
) -> int:
    return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11 + a12 + a13 + a14 + a15


def map_pipeline(seconds: float, n: int = 16) -> mp.Pipeline:
    """1 -> n mapped items (``nap.map``) -> 1: the fan-out of :func:`fan_pipeline` as one mapped step."""

    def mapped(seed: int = 0) -> int:
        return total(nap.map(x=numbers(seed, n), i=mp.unmapped(0), seconds=mp.unmapped(seconds)))

    return mp.pipeline(name=f"map-{n}x{int(seconds * 1000)}ms")(mapped)


def linear_pipeline(n: int) -> mp.Pipeline:
    def linear(x: int = 0) -> int:
        h = x
        for _ in range(n):
            h = inc(h)
        return h

    return mp.pipeline(name=f"linear-{n}")(linear)


def fan_pipeline(seconds: float) -> mp.Pipeline:
    def fan(seed: int = 0) -> int:
        s = source(seed)
        outs = [nap(s, i, seconds) for i in range(16)]
        return gather(*outs)

    return mp.pipeline(name=f"fan-{int(seconds * 1000)}ms")(fan)


def write_steps_module(directory: Path, n: int, name: str) -> Path:
    """Write ``<name>.py``: ``n`` distinct step functions and a chain and a 1 → n → 1 fan over them.

    Every step has its own code, so its own fingerprint: a benchmark over these
    pays for fingerprinting, validating and recording ``n`` functions, where
    one function called ``n`` times would be fingerprinted once.
    """
    lines = ["import mlpipe as mp", ""]
    for i in range(n):
        lines += ["@mp.step", f"def s{i}(x: int) -> int:", f"    return x + {i}", ""]
    lines += ["@mp.step", "def source(seed: int) -> int:", "    return seed", ""]
    args = ", ".join(f"a{i}: int" for i in range(n))
    names = ", ".join(f"a{i}" for i in range(n))
    lines += ["@mp.step", f"def gather({args}) -> int:", f"    return sum(({names},))", ""]
    lines += ["@mp.pipeline", "def chain(x: int = 0) -> int:", "    v = x"]
    lines += [f"    v = s{i}(v)" for i in range(n)]
    lines += ["    return v", "", "", "@mp.pipeline", "def fan(seed: int = 0) -> int:", "    s = source(seed)"]
    lines += ["    return gather(" + ", ".join(f"s{i}(s)" for i in range(n)) + ")", ""]
    path = directory / f"{name}.py"
    path.write_text("\n".join(lines))
    return path


@mp.step
def numbers(start: int, n: int) -> list[int]:
    return list(range(start, start + n))


@mp.step
def bump(x: int) -> int:
    return x + 1


@mp.step
def total(xs: list[int]) -> int:
    return sum(xs)


@mp.pipeline
def mapped(start: int = 0, n: int = 10) -> int:
    """``n`` items, one ``bump`` run per item, summed: what a map costs per item."""
    return total(bump.map(x=numbers(start, n)))


@mp.pipeline
def unmapped(start: int = 0, n: int = 10) -> int:
    """The same list summed without the map: the baseline ``mapped`` is measured against."""
    return total(numbers(start, n))
