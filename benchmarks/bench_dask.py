"""The Dask backend's figures: per-step overhead beyond Dask's task round trip, fan-out on 1 and 2 workers,
and the same fan-out as one mapped step (16 items).

Each cluster is a ``distributed.LocalCluster`` of one-thread worker processes
on 127.0.0.1, driven through the backend with its ``address`` (the same path
as a remote cluster), and closed at the end.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_pipelines import fan_pipeline, linear_pipeline, map_pipeline


def noop(i: int) -> int:
    return i


def _cluster(n_workers: int) -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        worker_dashboard_address="127.0.0.1:0",
        silence_logs=logging.ERROR,
    )


def _timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def measure(workdir: Path, *, quick: bool, repeats: int) -> dict[str, Any]:
    """Samples (seconds) of every Dask figure; see :func:`Bench.dask_backend` in run.py for the targets."""
    from mlpipe_dask import DaskBackend

    from mlpipe.extend import open_store
    from mlpipe.testing import run_on

    n = 20 if quick else 100
    store = open_store(str(workdir / "dask-store"))
    counter = iter(range(10**6))
    out: dict[str, Any] = {"n": n}

    def run(backend: Any, pipe: Any, **params: Any) -> None:
        result = run_on(backend, pipe, store, **params)
        assert result.status == "succeeded", result.error

    two = _cluster(2)
    try:
        with DaskBackend({"address": two.scheduler_address}) as backend:
            client = backend.client()
            one_step, chain = linear_pipeline(1), linear_pipeline(n)
            run(backend, one_step, x=-1)  # warm: imports and IR caches on both workers
            run(backend, chain, x=-1)

            def round_trips() -> None:
                for i in range(n):
                    client.submit(noop, i, pure=False).result()

            out["round_trip"] = [t / n for t in _timed(round_trips, repeats)]
            out["one_step"] = _timed(lambda: run(backend, one_step, x=next(counter)), repeats)
            out["chain"] = _timed(lambda: run(backend, chain, x=next(counter)), repeats)
            fan = fan_pipeline(0.25)
            run(backend, fan, seed=-1)
            out["fan_2"] = _timed(lambda: run(backend, fan, seed=next(counter)), repeats)
            mapped = map_pipeline(0.25)
            run(backend, mapped, seed=-1)
            out["map_2"] = _timed(lambda: run(backend, mapped, seed=next(counter) * 100), repeats)
    finally:
        two.close()
    single = _cluster(1)
    try:
        with DaskBackend({"address": single.scheduler_address}) as backend:
            run(backend, fan, seed=-2)
            out["fan_1"] = _timed(lambda: run(backend, fan, seed=next(counter)), max(1, repeats // 2 + 1))
    finally:
        single.close()
    out["per_step"] = [
        (c - statistics.median(out["one_step"])) / (n - 1) - statistics.median(out["round_trip"]) for c in out["chain"]
    ]
    return out
