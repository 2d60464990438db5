"""Pipelines the benchmarks run: generated linear chains and a 1 → 16 → 1 fan-out."""

from __future__ import annotations

import time

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
