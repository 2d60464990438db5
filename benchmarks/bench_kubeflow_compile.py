"""Compile time of a generated linear pipeline with the Kubeflow backend.

Usage: python benchmarks/bench_kubeflow_compile.py [N ...]   (default 100 1000)

Prints, per size: building the mlpipe IR, importing kfp (first size only),
planning (names, refusals, storing the IR), kfp's pipeline build (dsl.pipeline
over generated container components, with the backend's memoized name
sanitiser), kfp's own ``Compiler().compile`` of that pipeline (for comparison),
the backend's ``compile`` end to end (plan + the spec emitted without kfp,
the same bytes as kfp's compiler), and for comparison the plan built and
written by kfp unaided (no memoized sanitiser, kfp's own writer). The
whole-process figures the targets check are in ``benchmarks/run.py``
(``kubeflow_compile``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import mlpipe as mp


@mp.step
def inc(x: int) -> int:
    return x + 1


def linear(n: int) -> mp.Pipeline:
    def body(x: int = 0) -> int:
        value = inc(x)
        for _ in range(n - 1):
            value = inc(value)
        return value

    body.__name__ = body.__qualname__ = f"linear_{n}"
    return mp.pipeline(body)


def main(sizes: list[int]) -> None:
    t0 = time.perf_counter()
    import kfp.compiler
    import kfp.kubernetes  # noqa: F401
    from mlpipe_kubeflow import KubeflowBackend
    from mlpipe_kubeflow.compiler import _build, build

    from mlpipe.store import open_store

    print(f"import kfp + kfp.kubernetes: {time.perf_counter() - t0:.2f} s")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            store = open_store(str(Path(tmp) / "store"))
            t = time.perf_counter()
            ir = linear(n).ir
            t_ir = time.perf_counter() - t
            backend = KubeflowBackend(image="python:3.11-slim")
            t = time.perf_counter()
            plan = backend.plan(ir, store)
            t_plan = time.perf_counter() - t
            t = time.perf_counter()
            pipeline = build(plan)
            t_build = time.perf_counter() - t
            t = time.perf_counter()
            from kfp import compiler

            out = Path(tmp) / "p.yaml"
            compiler.Compiler().compile(pipeline, package_path=str(out))
            t_compile = time.perf_counter() - t
            t = time.perf_counter()
            backend.compile(ir, str(out), store=store)
            t_total = time.perf_counter() - t
            size = out.stat().st_size / 1024
            t = time.perf_counter()
            compiler.Compiler().compile(_build(plan), package_path=str(Path(tmp) / "plain.yaml"))
            t_plain = time.perf_counter() - t + t_plan
        print(
            f"N={n}: IR {t_ir:.2f} s | plan+write_ir {t_plan:.2f} s | kfp build {t_build:.2f} s | "
            f"kfp compile {t_compile:.2f} s | backend.compile end to end {t_total:.2f} s | {size:.0f} KiB | "
            f"same with kfp unaided (plain dsl.pipeline + Compiler) {t_plain:.2f} s"
        )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100, 1000])
