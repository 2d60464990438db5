"""Reliability and security cases from the fault campaign: gc races, planted objects, secrets, damaged files.

Every test here failed before its fix; each is bounded in time and stops what it starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlpipe as mp
from mlpipe.gc import collect
from mlpipe.store import open_store

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "tests" / "resources"
sys.path.insert(0, str(RESOURCES))

import reliability_pipelines as rp  # noqa: E402

# -- cache gc racing running pipelines ---------------------------------------------------------------

GC_LOOP = textwrap.dedent(
    """
    import os, sys, time
    from mlpipe.gc import collect
    from mlpipe.store import open_store
    store, stop = open_store(sys.argv[1]), sys.argv[2]
    deadline, rounds = time.monotonic() + 60, 0
    while not os.path.exists(stop) and time.monotonic() < deadline:
        collect(store)
        rounds += 1
    print(rounds)
    """
)


def test_gc_looping_while_pipelines_run_never_loses_their_outputs(tmp_path: Path) -> None:
    store = open_store()
    stop = tmp_path / "stop"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    loop = subprocess.Popen([sys.executable, "-c", GC_LOOP, store.url, str(stop)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        runs = []
        for salt in range(12):
            run = rp.chain.run(salt=salt)
            assert run.status == "succeeded"
            runs.append(run)
            for name in run.steps:
                run.output(name)  # every output of a finished run is still there
    finally:
        stop.touch()
        out, err = loop.communicate(timeout=60)
    assert loop.returncode == 0, err
    assert int(out) > 0
    collect(store)  # the default grace keeps everything recent; all recorded outputs stay reachable anyway
    for run in runs:
        for name in run.steps:
            run.output(name)


def test_gc_grace_keeps_an_unreferenced_new_object_and_zero_grace_removes_it() -> None:
    store = open_store()
    info = store.put_value({"published": "before its record"})
    assert collect(store).items == []
    assert store.exists(info.digest)
    report = collect(store, grace=0)
    assert [rel for rel, _ in report.items] == [store.object_path(info.digest)]
    assert not store.exists(info.digest)


def test_a_writer_reusing_an_old_object_freshens_it_so_gc_keeps_it() -> None:
    store = open_store()
    info = store.put_value({"old": "garbage"})
    path = Path(store.url, store.object_path(info.digest))
    os.utime(path, (0, 0))
    again = store.put_value({"old": "garbage"})  # a running step produces the same bytes again
    assert again.digest == info.digest
    assert time.time() - path.stat().st_mtime < 60
    assert collect(store).items == []
    assert store.exists(info.digest)


def test_gc_keep_runs_never_drops_a_run_that_is_still_running() -> None:
    store = open_store()
    running = rp.chain.run(salt=1)
    finished = rp.chain.run(salt=2)
    doc = store.get_json(f"runs/{running.id}/run.json")
    store.put_json(f"runs/{running.id}/run.json", {**doc, "status": "running", "pid": os.getpid()})
    outputs = [s.outputs["output"].digest for s in running.steps.values()]
    for digest in outputs:
        os.utime(Path(store.url, store.object_path(digest)), (0, 0))
    collect(store, keep_runs=1, grace=0)
    assert store.has(f"runs/{running.id}/run.json")
    assert all(store.exists(d) for d in outputs)
    assert mp.get_run(running.id).output("total") == running.output("total")
    assert mp.get_run(finished.id).status == "succeeded"
    # once that process is gone the run is interrupted, no longer protected
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    store.put_json(f"runs/{running.id}/run.json", {**doc, "status": "running", "pid": int(dead.stdout)})
    collect(store, keep_runs=1, grace=0)
    assert not store.has(f"runs/{running.id}/run.json")

