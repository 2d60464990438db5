"""mlpipe benchmarks: the speed targets of the project, measured against baselines in the same run.

Usage::

    python benchmarks/run.py            # full run, checks every target, writes bench-results.json
    python benchmarks/run.py --quick    # each figure once at reduced size: proves the benchmarks run

Each figure is the median of its repeats (min and max are kept too) and is
compared with a baseline measured in the same run (bare ``python -c pass``,
plain function calls, plain ``df.to_parquet``/``np.save``), because absolute
times drift on shared machines. Exit status 1 when a target fails (full mode).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def stats(samples: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
        "samples": [round(x, 6) for x in samples],
    }


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def run_python(code: str, cwd: str, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True, env=env)
    return time.perf_counter() - start


def run_python_json(code: str, cwd: str) -> Any:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


class Bench:
    def __init__(self, quick: bool, workdir: Path) -> None:
        self.quick = quick
        self.workdir = workdir
        self.figures: dict[str, dict[str, Any]] = {}
        self.repeats = 1 if quick else 5
        self.cpu: dict[str, list[float]] = {}

    def record(
        self,
        name: str,
        value: dict[str, float],
        unit: str,
        target: float | None,
        *,
        baseline: dict[str, float] | None = None,
        ratio: float | None = None,
        note: str = "",
        compare: str = "value",
    ) -> None:
        checked = ratio if compare == "ratio" else value["median"]
        passed = None if target is None else bool(checked is not None and checked <= target)
        self.figures[name] = {
            "unit": unit,
            **{k: round(v, 6) if isinstance(v, float) else v for k, v in value.items()},
            "target": target,
            "compare": compare,
            "baseline": baseline,
            "ratio": None if ratio is None else round(ratio, 3),
            "pass": passed,
            "note": note,
        }
        shown = f"{value['median']:.4g} {unit}"
        extra = f" (ratio {ratio:.2f})" if ratio is not None else ""
        if self.quick:  # one round at reduced size: a verdict would be noise
            verdict = "" if passed is None else " (target not checked in quick mode)"
        else:
            verdict = "" if passed is None else (" PASS" if passed else " FAIL")
        print(f"  {name:<44} {shown}{extra}{verdict}", flush=True)

    # -- figures ----------------------------------------------------------------------------
    def abba(self, commands: dict[str, list[str]], rounds: int) -> dict[str, list[float]]:
        """Wall times of fresh processes, the commands interleaved and their order reversed every round."""
        out: dict[str, list[float]] = {k: [] for k in commands}
        self.cpu = {k: [] for k in commands}  # user + system CPU seconds of each process, same order
        names = list(commands)
        for i in range(rounds):
            for name in names if i % 2 == 0 else names[::-1]:
                shutil.rmtree(self.workdir / ".mlpipe", ignore_errors=True)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                subprocess.run([sys.executable, *commands[name]], cwd=self.workdir, check=True)
                out[name].append(time.perf_counter() - start)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                self.cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        return out

    def import_time(self) -> None:
        n = 4 if self.quick else 12
        t = self.abba({"bare": ["-c", "pass"], "import": ["-c", "import mlpipe"]}, n)
        base = statistics.median(t["bare"])
        self.record(
            "import mlpipe, beyond bare python",
            stats([i - base for i in t["import"]]),
            "s",
            0.25,
            baseline=stats(t["bare"]),
            note="fresh process, bare and import interleaved ABBA; each sample minus the bare median",
        )

    def first_run(self) -> None:
        from bench_pipelines import write_steps_module

        write_steps_module(self.workdir, 10, "steps10")
        script = self.workdir / "first10.py"
        script.write_text(
            "import sys\nimport steps10\nassert steps10.chain.run(x=int(sys.argv[1])).status == 'succeeded'\n"
        )
        n = 4 if self.quick else 12
        t = self.abba({"bare": ["-c", "pass"], "first": [str(script), "3"]}, n)
        base = statistics.median(t["bare"])
        self.record(
            "import mlpipe + first 10-step run, beyond bare python",
            stats([x - base for x in t["first"]]),
            "s",
            0.12,
            baseline=stats(t["bare"]),
            note="whole process: import, define 10 distinct steps, run them into a new store; ABBA with bare python",
        )
        cpu_base = statistics.median(self.cpu["bare"])
        self.record(
            "import mlpipe + first 10-step run, CPU time beyond bare python",
            stats([x - cpu_base for x in self.cpu["first"]]),
            "s",
            0.12,
            baseline=stats(self.cpu["bare"]),
            note="user + system CPU of the same processes: what the wall figure is on an idle machine, "
            "and what it is not inflated by on a shared one",
        )

    def whole_process_50(self) -> None:
        from bench_pipelines import write_steps_module

        write_steps_module(self.workdir, 50, "steps50")
        script = self.workdir / "linear50.py"
        script.write_text(
            "import sys\nimport steps50\nassert steps50.chain.run(x=int(sys.argv[1])).status == 'succeeded'\n"
        )
        t = self.abba({"bare": ["-c", "pass"], "run": [str(script), "1000"]}, 2 if self.quick else self.repeats)
        self.record(
            "50-step linear pipeline, whole process",
            stats(t["run"]),
            "s",
            0.5,
            baseline=stats(t["bare"]),
            note="50 distinct step functions defined and run in a fresh process into a new store, every step "
            "computed, stored and recorded; ABBA with bare python",
        )

    def per_step(self) -> None:
        import importlib

        from bench_pipelines import write_steps_module

        n = 50 if self.quick else 200
        write_steps_module(self.workdir, n, f"steps{n}")
        sys.path.insert(0, str(self.workdir))
        pipe = importlib.import_module(f"steps{n}").chain
        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            pipe.run(x=-1)  # warm: directories, imports, IR
            counter = iter(range(10**6))

            def fresh() -> None:
                run = pipe.run(x=next(counter))
                assert run.status == "succeeded"

            def cached() -> None:
                run = pipe.run(x=7)
                assert all(s.cached for s in run.steps.values())

            def recompute() -> None:
                run = pipe.run(x=7, cache=False)
                assert not any(s.cached for s in run.steps.values())

            samples = [t / n for t in timed(fresh, self.repeats)]
            pipe.run(x=7)
            hits = [t / n for t in timed(cached, self.repeats)]
            again = [t / n for t in timed(recompute, self.repeats)]
        finally:
            os.chdir(cwd)
        calls = timed(lambda: [mp_inc(i) for i in range(n)], 5)
        plain = statistics.median(calls) / n
        naive = [t / n for t in timed(naive_disk_cache(self.workdir / "naive-cache", n), self.repeats)]
        overhead = [s - plain for s in samples]
        self.record(
            f"per-step overhead, {n}-step linear, in-process",
            stats([s * 1000 for s in overhead]),
            "ms",
            1.0,
            baseline={"median": plain * 1000},
            note=f"{n} distinct step functions; every output stored, every step recorded",
        )
        self.record(
            "fully-cached re-run, per step",
            stats([h * 1000 for h in hits]),
            "ms",
            0.3,
            baseline=stats([t * 1000 for t in naive]),
            ratio=statistics.median(hits) / statistics.median(naive),
            note="key computation, existence check, recording the hit; baseline: a naive disk cache "
            "(sha256 of the pickled call, exists, unpickle)",
        )
        self.record(
            "re-run with cache=False, same inputs, per step",
            stats([a * 1000 for a in again]),
            "ms",
            1.0,
            baseline=stats([s * 1000 for s in samples]),
            ratio=statistics.median(again) / statistics.median(samples),
            note="every step computed again into outputs the store has: no object or cache entry is rewritten; "
            "baseline: the fresh run's per step",
        )

    def cosmetic_edit(self) -> None:
        """A comment added to every step of a module: the fingerprints ignore it, so the re-run is all hits."""
        from bench_pipelines import write_steps_module

        path = write_steps_module(self.workdir, 50, "edited50")
        script = self.workdir / "edited.py"
        script.write_text(
            "import json, sys\nimport edited50\nrun = edited50.chain.run(x=5)\n"
            "print(json.dumps(sum(s.cached for s in run.steps.values())))\n"
        )
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        shutil.rmtree(self.workdir / ".mlpipe", ignore_errors=True)
        first = time.perf_counter()
        subprocess.run([sys.executable, str(script)], cwd=self.workdir, check=True, env=env, capture_output=True)
        first = time.perf_counter() - first
        samples, hits = [], []
        for i in range(2 if self.quick else self.repeats):
            path.write_text(path.read_text().replace("    return x +", f"    # edit {i}\n    return x +"))
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, str(script)], cwd=self.workdir, check=True, env=env, capture_output=True, text=True
            )
            samples.append(time.perf_counter() - start)
            hits.append(json.loads(out.stdout.strip().splitlines()[-1]))
        self.record(
            "re-run after a comment edit in every step, 50 steps, whole process",
            stats(samples),
            "s",
            0.5,
            baseline={"median": first},
            note=f"cache hits per re-run: {sorted(set(hits))} of 50 (comments do not change a fingerprint); "
            "baseline: the first run",
        )
        self.figures["re-run after a comment edit in every step, 50 steps, whole process"]["hits"] = hits

    def fan_out(self) -> None:
        from bench_pipelines import fan_pipeline

        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            slow, fast = fan_pipeline(0.25), fan_pipeline(0.0)
            slow.run(seed=-1)
            fast.run(seed=-1)
            counter = iter(range(10**6))
            with_sleep = timed(lambda: slow.run(seed=next(counter)), self.repeats)
            without = timed(lambda: fast.run(seed=next(counter)), self.repeats)
        finally:
            os.chdir(cwd)
        extra = [w - statistics.median(without) for w in with_sleep]
        self.record(
            "fan-out 1 -> 16 x sleep(0.25 s) -> 1, beyond no-sleep",
            stats(extra),
            "s",
            0.40,
            baseline=stats(without),
            note="default settings; 0.25 s is the floor",
        )

    def map_items(self) -> None:
        """``step.map`` over 10,000 items (1,000 in quick mode): per item, fresh and fully cached.

        Each round maps over a new list (fresh: every item computed, stored, cached and recorded),
        then maps over the same list again (every item a cache hit). The baseline is the same
        pipeline summing the list without the map, run the same way; the step's own work (``x + 1``)
        is a plain call's, below a microsecond.
        """
        from bench_pipelines import mapped, unmapped

        n = 1000 if self.quick else 10_000
        cwd = os.getcwd()
        os.chdir(self.workdir)
        fresh, cached, base_fresh, base_cached = [], [], [], []
        try:
            mapped.run(start=-100, n=10)  # warm: directories, imports, IR
            unmapped.run(start=-100, n=10)
            for i in range(self.repeats):
                for pipe, first, again in (
                    (
                        (unmapped, base_fresh, base_cached),
                        (mapped, fresh, cached),
                    )
                    if i % 2 == 0
                    else ((mapped, fresh, cached), (unmapped, base_fresh, base_cached))
                ):
                    start = (i + 1) * 10**6
                    t = time.perf_counter()
                    run = pipe.run(start=start, n=n)
                    first.append(time.perf_counter() - t)
                    assert run.status == "succeeded", run.status
                    t = time.perf_counter()
                    run = pipe.run(start=start, n=n)
                    again.append(time.perf_counter() - t)
                    assert all(s.cached for s in run.steps.values())
        finally:
            os.chdir(cwd)
        for label, samples, base, target in (
            ("fresh", fresh, base_fresh, 1.0),
            ("fully cached", cached, base_cached, 0.3),
        ):
            b = statistics.median(base)
            self.record(
                f"map over {n:,} items, {label}, per item",
                stats([(s - b) / n * 1000 for s in samples]),
                "ms",
                target,
                baseline=stats([x * 1000 for x in base]),
                note=f"(map run - the same list summed without a map) / {n}; every item "
                + ("computed, stored, cached and recorded" if label == "fresh" else "a cache hit, recorded")
                + "; baseline in ms for the whole unmapped run; ABBA",
            )

    def dask_backend(self) -> None:
        """The Dask backend on local clusters of one-thread worker processes (see bench_dask.py)."""
        from bench_dask import measure

        got = measure(self.workdir, quick=self.quick, repeats=self.repeats)
        ms = [x * 1000 for x in got["per_step"]]
        self.record(
            "dask: per-step overhead beyond a task round trip",
            stats(ms),
            "ms",
            5.0,
            baseline={"median": statistics.median(got["round_trip"]) * 1000},
            note=f"({got['n']}-step chain - 1-step run) / {got['n'] - 1}, minus a bare client.submit().result()",
        )
        self.record(
            "dask: per-run fixed cost (1-step run)",
            stats(got["one_step"]),
            "s",
            None,
            note="submit (probe, IR, record) to the run closed by its driver",
        )
        ideal = 16 * 0.25 / 2
        self.record(
            "dask: fan-out 1 -> 16 x 0.25 s -> 1, 2 workers, beyond ideal",
            stats([t - ideal for t in got["fan_2"]]),
            "s",
            0.5,
            baseline={"median": ideal},
            note="two one-thread workers; ideal = 16 x 0.25 s / 2",
        )
        self.record(
            "dask: mapped step 1 -> 16 x 0.25 s items -> 1, 2 workers, beyond ideal",
            stats([t - ideal for t in got["map_2"]]),
            "s",
            0.5,
            baseline={"median": ideal},
            note="nap.map(...): one task per item plus the fan-in task; the same bound as the explicit fan-out",
        )
        one = statistics.median(got["fan_1"])
        self.record(
            "dask: same fan-out on 1 worker",
            stats(got["fan_1"]),
            "s",
            None,
            baseline={"median": 16 * 0.25},
            ratio=one / statistics.median(got["fan_2"]),
            note="ratio = speed-up from 1 to 2 workers (ideal 2.0)",
        )

    def artifacts(self) -> None:
        import numpy as np
        import pandas as pd

        rows = 200_000 if self.quick else 8_000_000
        mib = 20 if self.quick else 1024
        rng = np.random.default_rng(0)
        frame = pd.DataFrame({"a": rng.random(rows), "b": rng.integers(0, 1000, rows), "c": rng.random(rows)})
        self._artifact_pair(
            f"{rows:,}-row DataFrame",
            frame,
            lambda path: frame.to_parquet(path, engine="pyarrow", compression="snappy"),
            pd.read_parquet,
            ("to_parquet", "read_parquet"),
            ".parquet",
            lambda df, i: df.iloc.__setitem__((0, 0), float(i)),
            lambda df: df["a"].__iadd__(1.0),
        )
        frame = None
        array = rng.random(mib * 1024 * 1024 // 8)
        self._artifact_pair(
            f"{mib} MiB numpy array",
            array,
            lambda path: np.save(path, array),
            np.load,
            ("np.save", "np.load"),
            ".npy",
            lambda arr, i: arr.__setitem__(0, float(i)),
            lambda arr: arr.__iadd__(1.0),
            after_target=None,  # the memory map's trade: a 4x faster load, the copy paid at the first write
        )

    def _artifact_pair(
        self,
        label: str,
        value: Any,
        bare_write: Callable[[Path], Any],
        bare_read: Callable[[Path], Any],
        names: tuple[str, str],
        suffix: str,
        touch: Callable[[Any, int], None],
        write_all: Callable[[Any], Any],
        after_target: float | None = 1.3,
    ) -> None:
        from mlpipe.store import open_store

        repeats = 1 if self.quick else 11
        store = open_store(str(self.workdir / "store-artifacts"))
        path = self.workdir / f"bare{suffix}"
        size = getattr(value, "nbytes", 0) or int(value.memory_usage(deep=True).sum())
        infos: list[Any] = []
        write_bare: list[float] = []
        write_ours: list[float] = []
        for i in range(repeats):
            # New content each round (the store never dedups) and the same conditions for both
            # sides: no dirty pages waiting for writeback, the last file written deleted (so no
            # files accumulate), freshly touched memory to write into, and the order swapped
            # every round (the first write of a round runs slower on this VM, whichever it is).
            touch(value, i)
            for side in ("bare", "ours") if i % 2 == 0 else ("ours", "bare"):  # ABBA: no order bias
                prepare_memory(size, lambda: free_previous(path, store, infos))
                if side == "bare":
                    write_bare += timed(lambda: bare_write(path), 1)
                else:
                    write_ours += timed(lambda: infos.append(store.put_value(value)), 1)
        bare_write(path)  # for the reads
        read_bare = timed(lambda: bare_read(path), repeats)
        read_ours = timed(lambda: store.get_value(infos[-1].digest), repeats)
        # A memory-mapped load defers the copy to the first write of each page (copy-on-write): load, then
        # write every element, so that cost is counted where it lands.
        write_bare_after = timed(lambda: write_all(bare_read(path)), repeats)
        write_ours_after = timed(lambda: write_all(store.get_value(infos[-1].digest)), repeats)
        self.record(
            f"load {label} then write every element, vs {names[1]} + the same write",
            stats(write_ours_after),
            "s",
            after_target,
            baseline=stats(write_bare_after),
            ratio=statistics.median(write_ours_after) / statistics.median(write_bare_after),
            compare="ratio",
            note="a memory map moves the copy to the first write: this is the load figure with that cost included"
            + ("" if after_target else " (informational: the load figure has the target)"),
        )
        # Writes are paired (each round writes bare, then through the store, under the same
        # conditions): their ratio is the median of the per-round ratios, which a stall of the
        # VM in one round cannot move. Reads are not paired: the ratio of the medians.
        paired = statistics.median(o / b for o, b in zip(write_ours, write_bare, strict=True))
        for kind, ours, bare, name, ratio, note in (
            (
                "store",
                write_ours,
                write_bare,
                names[0],
                paired,
                "includes the XXH3-128 content address; ratio = median of per-round ratios",
            ),
            (
                "load",
                read_ours,
                read_bare,
                names[1],
                statistics.median(read_ours) / statistics.median(read_bare),
                "load verifies every byte (XXH3-128); large objects are memory-mapped copy-on-write, so the "
                "copy is paid at the first write (see the load-then-write figure)",
            ),
        ):
            self.record(
                f"{kind} {label} vs {name}",
                stats(ours),
                "s",
                1.3,
                baseline=stats(bare),
                ratio=ratio,
                compare="ratio",
                note=note,
            )
        path.unlink()
        shutil.rmtree(self.workdir / "store-artifacts", ignore_errors=True)

    def graph_scale(self) -> None:
        from bench_pipelines import write_steps_module

        n = 1000 if self.quick else 10_000
        write_steps_module(self.workdir, n, f"graph{n}")
        code = textwrap.dedent(f"""
            import json, resource, sys, time
            sys.path.insert(0, {str(self.workdir)!r})
            sys.setrecursionlimit(100000)
            import graph{n}
            pipe = graph{n}.chain
            start = time.perf_counter()
            ir = pipe.ir
            elapsed = time.perf_counter() - start
            assert len(ir.steps) == {n}
            print(json.dumps({{"seconds": elapsed, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
        """)
        results = [run_python_json(code, str(self.workdir)) for _ in range(1 if self.quick else 3)]
        self.record(
            f"build + validate + fingerprint {n:,}-step graph",
            stats([r["seconds"] for r in results]),
            "s",
            2.0,
            note=f"{n:,} distinct step functions (each fingerprinted); peak RSS "
            f"{max(r['maxrss_kb'] for r in results) / 1024:.0f} MiB (whole process)",
        )
        self.figures[f"build + validate + fingerprint {n:,}-step graph"]["peak_rss_mib"] = round(
            max(r["maxrss_kb"] for r in results) / 1024, 1
        )

    def scale(self) -> None:
        """The issue-18 table: linear, wide (1 -> N -> 1), cached re-runs, Kubeflow compile; a process per size."""
        from bench_pipelines import write_steps_module

        sizes = (200, 1000) if self.quick else (1000, 5000)
        table: dict[str, dict[str, float]] = {}
        for n in sizes:
            write_steps_module(self.workdir, n, f"scale{n}")
            run = textwrap.dedent(f"""
                import json, sys, time
                sys.setrecursionlimit(100000)
                t0 = time.perf_counter()
                import scale{n} as m
                pipe = m.chain if sys.argv[1] == "linear" else m.fan
                run = pipe.run()
                assert run.status == "succeeded"
                assert all(s.cached for s in run.steps.values()) == (sys.argv[2] == "cached")
                print(json.dumps(time.perf_counter() - t0))
            """)
            script = self.workdir / f"scale_run{n}.py"
            script.write_text(run)
            for kind in ("linear run", "wide (1 -> N -> 1) run"):
                shutil.rmtree(self.workdir / ".mlpipe", ignore_errors=True)
                table.setdefault(kind, {})[str(n)] = self._whole(script, "linear" if kind == "linear run" else "wide")
            table.setdefault("wide, fully cached re-run", {})[str(n)] = self._whole(script, "wide", "cached")
            table.setdefault("linear, fully cached re-run", {})[str(n)] = self._cached_linear(script)
            shutil.rmtree(self.workdir / ".mlpipe", ignore_errors=True)
            try:
                table.setdefault("mlpipe compile --backend kubeflow, linear", {})[str(n)] = self._compile(n)
            except subprocess.CalledProcessError as exc:
                print(f"  kubeflow compile failed at {n} steps: {exc.stderr.decode(errors='replace').strip()}")
            except FileNotFoundError as exc:  # mlpipe-kubeflow not installed beside this python
                print(f"  kubeflow compile skipped: {exc}")
        a, b = sizes
        load = os.getloadavg()
        for kind, row in table.items():
            if str(a) in row and str(b) in row:
                exponent = math.log(row[str(b)] / row[str(a)]) / math.log(b / a)
            else:
                exponent = float("nan")
            self.record(
                f"scale: {kind}, {b:,} steps",
                {"median": row.get(str(b), float("nan"))},
                "s",
                None,
                note=f"{a:,}: {row.get(str(a), float('nan')):.3f} s; exponent {exponent:.2f}; whole process, "
                f"{b:,} distinct steps; load average {load[0]:.1f}",
            )
            self.figures[f"scale: {kind}, {b:,} steps"].update(
                {"sizes": row, "exponent": round(exponent, 3), "load_average": load}
            )

    def _whole(self, script: Path, kind: str, expect: str = "fresh") -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(script), kind, expect], cwd=self.workdir, check=True, capture_output=True)
        return time.perf_counter() - start

    def _cached_linear(self, script: Path) -> float:
        shutil.rmtree(self.workdir / ".mlpipe", ignore_errors=True)
        self._whole(script, "linear")
        return self._whole(script, "linear", "cached")

    def _compile(self, n: int) -> float:
        mlpipe_cli = Path(sys.executable).with_name("mlpipe")
        start = time.perf_counter()
        subprocess.run(
            [str(mlpipe_cli), "compile", f"scale{n}.py:chain", "--backend", "kubeflow", "-o", f"scale{n}.yaml"],
            cwd=self.workdir,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start

    def kubeflow_compile(self) -> None:
        """``mlpipe compile --backend kubeflow`` as a user runs it: a fresh process, a file of N distinct steps.

        Against kfp itself at 10 steps: the same chain of container components written with ``kfp.dsl`` and
        compiled by ``kfp.compiler`` (what a kfp user runs), interleaved ABBA. Both run once first with
        bytecode writing on, so neither side pays for compiling its packages' sources.
        """
        big = 500 if self.quick else 5000

        def write_chain(n: int) -> Path:
            lines = ["import mlpipe as mp", ""]
            for i in range(n):
                lines += ["@mp.step", f"def s{i}(x: int) -> int:", f"    return x + {i}", ""]
            lines += ["@mp.pipeline", "def chain(x: int = 0) -> int:", "    v = s0(x)"]
            lines += [f"    v = s{i}(v)" for i in range(1, n)] + ["    return v", ""]
            path = self.workdir / f"kfp_chain{n}.py"
            path.write_text("\n".join(lines))
            return path

        kfp_chain = self.workdir / "kfp_native10.py"
        kfp_chain.write_text(
            textwrap.dedent("""
            from kfp import compiler, dsl

            def make(i):
                def body(x: int, record: dsl.OutputPath(str)):
                    return dsl.ContainerSpec(image="python:3.11-slim", command=["python", "-m", "mlpipe.runtime"],
                                             args=["--step", f"s{i}", "--param", dsl.ConcatPlaceholder(["x=", x]),
                                                   "--output-file", record])
                body.__name__ = f"s{i}"
                return dsl.container_component(body)

            components = [make(i) for i in range(10)]

            @dsl.pipeline(name="chain")
            def chain(x: int = 0):
                previous = None
                for component in components:
                    task = component(x=x).set_caching_options(False)
                    if previous is not None:
                        task.after(previous)
                    previous = task

            compiler.Compiler().compile(chain, "kfp_native10.yaml")
        """)
        )
        store = str(self.workdir / "kfp-compile-store")
        env = {**os.environ, "MLPIPE_STORE": store}
        quiet = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}

        def ours(path: Path, environ: dict[str, str] | None = None) -> float:
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mlpipe.cli",
                    "compile",
                    f"{path}:chain",
                    "--backend",
                    "kubeflow",
                    "-o",
                    str(self.workdir / f"{path.stem}.yaml"),
                ],
                cwd=str(self.workdir),
                check=True,
                env=environ or env,
                stdout=subprocess.DEVNULL,
            )
            return time.perf_counter() - start

        def theirs(environ: dict[str, str] | None = None) -> float:
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, str(kfp_chain)],
                cwd=str(self.workdir),
                check=True,
                env=environ or env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            return time.perf_counter() - start

        small, large = write_chain(10), write_chain(big)
        for warm in (lambda: ours(small, quiet), lambda: theirs(quiet), lambda: ours(large, quiet)):
            warm()  # bytecode of every imported package, written once
        rounds = 1 if self.quick else 5
        mine, kfp_times = [], []
        for i in range(rounds):
            if i % 2 == 0:
                mine.append(ours(small))
                kfp_times.append(theirs())
            else:
                kfp_times.append(theirs())
                mine.append(ours(small))
        ratio = statistics.median(mine) / statistics.median(kfp_times)
        self.record(
            "mlpipe compile --backend kubeflow, 10 steps",
            stats(mine),
            "s",
            1.0,
            baseline=stats(kfp_times),
            ratio=ratio,
            compare="ratio",
            note="whole process; baseline: the same chain written with kfp.dsl and compiled by kfp, ABBA",
        )
        large_times = [ours(large) for _ in range(1 if self.quick else 3)]
        self.record(
            f"mlpipe compile --backend kubeflow, {big:,} steps",
            stats(large_times),
            "s",
            3.0,
            note=f"whole process, a file of {big:,} distinct steps in a chain (load, trace, fingerprint, "
            "plan, store the IR, write the spec)",
        )

    def fingerprint(self) -> None:
        module = self.workdir / "helpers50.py"
        lines = ["import mlpipe as mp", "", "SCALE = 3", ""]
        for i in range(50):
            body = f"h{i + 1}(x) + {i}" if i < 49 else "x * SCALE"
            lines += [f"def h{i}(x):", f"    '''helper {i}'''", f"    return {body}", ""]
        lines += ["@mp.step", "def root(x: int) -> int:", "    return h0(x)", ""]
        module.write_text("\n".join(lines))
        code = textwrap.dedent("""
            import json, time
            import helpers50
            from mlpipe.fingerprint import fingerprint
            t0 = time.perf_counter(); fp = fingerprint(helpers50.root); t1 = time.perf_counter()
            fingerprint(helpers50.root); t2 = time.perf_counter()
            assert len([k for k in fp.manifest if k.startswith("function")]) == 51, fp.manifest
            import hashlib, inspect
            t3 = time.perf_counter()
            fns = [helpers50.root, *(getattr(helpers50, f"h{i}") for i in range(50))]
            naive = hashlib.sha256("".join(inspect.getsource(f) for f in fns).encode()).hexdigest()
            t4 = time.perf_counter()
            print(json.dumps({"first": t1 - t0, "again": t2 - t1, "naive": t4 - t3}))
        """)
        results = [run_python_json(code, str(self.workdir)) for _ in range(self.repeats)]
        self.record(
            "fingerprint of a step reaching 50 helpers",
            stats([r["first"] * 1000 for r in results]),
            "ms",
            5.0,
            baseline=stats([r["naive"] * 1000 for r in results]),
            ratio=statistics.median(r["first"] for r in results) / statistics.median(r["naive"] for r in results),
            note=f"then {statistics.median(r['again'] for r in results) * 1e6:.1f} µs (memoised); baseline: "
            "hashlib.sha256 of inspect.getsource of the same 51 functions, known in advance",
        )


def free_previous(path: Path, store: Any, infos: list[Any]) -> None:
    """Delete whatever the last write of either side left: the bare file and the last stored object."""
    path.unlink(missing_ok=True)
    if infos:
        store.delete_object(infos[-1].digest)


def prepare_memory(size: int, free_previous: Callable[[], Any]) -> None:
    """Flush dirty pages, free the previous file, then touch and release memory for the next write.

    On this project's VMs the host backs guest memory lazily and takes back pages
    the guest has freed for a few seconds (free page reporting): a write into
    such pages runs at disk speed, about 400 MB/s, against 5-7 GB/s into memory
    the guest has just used. Touching as much anonymous memory as the write
    needs, right before it, hands the page cache hot pages, whichever side of a
    comparison writes; without it the two sides' medians swing 2-10x between runs.
    """
    import numpy as np

    os.sync()
    free_previous()
    scratch = np.ones(size + size // 4, dtype=np.uint8)
    del scratch


def naive_disk_cache(directory: Path, n: int) -> Callable[[], None]:
    """A hand-written disk cache hit for ``n`` calls: the baseline of a cached re-run, per step."""
    import hashlib
    import pickle

    directory.mkdir(parents=True, exist_ok=True)
    keys = [hashlib.sha256(pickle.dumps(("inc", i))).hexdigest() for i in range(n)]
    for i, key in enumerate(keys):
        (directory / key).write_bytes(pickle.dumps(i + 1))

    def hits() -> None:
        for i in range(n):
            path = directory / hashlib.sha256(pickle.dumps(("inc", i))).hexdigest()
            if path.exists():
                pickle.loads(path.read_bytes())

    return hits


def mp_inc(x: int) -> int:
    return x + 1


def ensure_bytecode() -> None:
    """Compile the packages a run imports, so import figures are not compile figures.

    pip writes bytecode at install time; uv and PYTHONDONTWRITEBYTECODE=1 do not,
    and then every fresh process recompiles pydantic from source.
    """
    import compileall
    import importlib.util

    for name in (
        "mlpipe",
        "pydantic",
        "pydantic_core",
        "annotated_types",
        "typing_inspection",
        "typing_extensions",
        "fsspec",
        "cloudpickle",
        "networkx",
        "numpy",
        "pandas",
        "pyarrow",
        "rich",
        "typer",
    ):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        target = os.path.dirname(spec.origin) if spec.submodule_search_locations else spec.origin
        if os.path.isdir(target):
            compileall.compile_dir(target, quiet=2, workers=0)
        else:
            compileall.compile_file(target, quiet=2)


def machine() -> dict[str, Any]:
    import mlpipe

    versions = {"python": platform.python_version(), "mlpipe": mlpipe.__version__}
    for name in ("pydantic", "numpy", "pandas", "pyarrow", "networkx", "fsspec"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # report whatever is installed
            versions[name] = None
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "versions": versions,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="each figure once at reduced size; no pass/fail")
    parser.add_argument("--output", default=str(ROOT / "bench-results.json"))
    parser.add_argument("--only", nargs="*", help="run only these figures (method names)")
    args = parser.parse_args()
    ensure_bytecode()
    workdir = Path(tempfile.mkdtemp(prefix="mlpipe-bench-"))
    bench = Bench(args.quick, workdir)
    order = ["import_time", "first_run", "whole_process_50", "per_step", "cosmetic_edit", "fan_out", "map_items",
             "fingerprint", "graph_scale", "dask_backend", "artifacts", "kubeflow_compile", "scale"]  # fmt: skip
    print(f"mlpipe benchmarks ({'quick' if args.quick else 'full'}) in {workdir}")
    try:
        for name in order:
            if args.only and name not in args.only:
                continue
            getattr(bench, name)()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"mode": "quick" if args.quick else "full", "machine": machine(), "figures": bench.figures}
    Path(args.output).write_text(json.dumps(result, indent=2))
    failed = [n for n, f in bench.figures.items() if f["pass"] is False]
    print(f"wrote {args.output}")
    if args.quick:
        print("quick mode: every benchmark ran; targets are checked only in a full run")
        return 0
    if failed:
        print("FAILED targets: " + "; ".join(failed))
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
