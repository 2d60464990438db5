"""The cache end to end, in a temporary project and fresh processes: helper edits, __main__, concurrency, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mlpipe.store import ArtifactStore

HELPERS = '''
"""Helpers of the project: the cache must notice edits here."""

SCALE = 10


def normalize(values):
    return [v * SCALE for v in values]


def label(total):
    return f"total={total}"
'''

PIPE = '''
import time

import mlpipe as mp
import helpers
from helpers import label


@mp.step
def load(n: int) -> list[int]:
    return list(range(n))


@mp.step
def clean(values: list[int]) -> list[int]:
    return helpers.normalize(values)


@mp.step
def total(values: list[int]) -> int:
    return sum(values)


@mp.step
def count(values: list[int]) -> int:
    return len(values)


@mp.step
def describe(t: int) -> str:
    return label(t)


@mp.step
def nap(values: list[int], seconds: float = 0.0, marker: str = "") -> int:
    if marker:
        open(marker, "w").close()
    time.sleep(seconds)
    return len(values)


@mp.pipeline
def project(n: int = 4) -> str:
    values = load(n)
    count(values)
    return describe(total(clean(values)))


@mp.pipeline
def sleepy(n: int = 4, seconds: float = 0.3, marker: str = "") -> int:
    values = load(n)
    count(values)
    total(values)
    return nap(values, seconds=seconds, marker=marker)
'''

REPORT = '''
import json
import mlpipe as mp

run = mp.runs(limit=1)[0]
print(json.dumps({"id": run.id, "status": run.status,
                  "cached": {name: step.cached for name, step in run.steps.items()},
                  "status_by_step": {name: step.status for name, step in run.steps.items()}}))
'''


def _clean_env() -> dict[str, str]:
    """The environment without settings other tests in this session may have left (profiles, tracking)."""
    return {k: v for k, v in os.environ.items()
            if k == "MLPIPE_RETRY_BACKOFF" or not k.startswith(("MLPIPE_", "MLFLOW_"))}


def _python(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = _clean_env()
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


def _mlpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _python("-m", "mlpipe", *args, cwd=cwd)


def _last_run(cwd: Path) -> dict[str, Any]:
    result = _python("-c", REPORT, cwd=cwd)
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _reran(report: dict[str, Any]) -> set[str]:
    return {name for name, cached in report["cached"].items() if not cached}


@pytest.fixture
def project(_isolated_cwd: Path) -> Path:
    (_isolated_cwd / "helpers.py").write_text(HELPERS)
    (_isolated_cwd / "pipe.py").write_text(PIPE)
    return _isolated_cwd


def _verify_store(root: Path) -> ArtifactStore:
    """Every object in the store hashes to its name and has a sidecar; every cache entry's objects exist."""
    store = ArtifactStore(str(root / ".mlpipe"))
    objects = list(store.iter_objects())
    assert objects
    for digest, _size in objects:
        store.read_verified(digest)
        assert store.meta(digest)["digest"] == digest
    for rel, _size in store.walk_files("cache"):
        if ".tmp-" in rel:
            continue
        entry = store.get_json(rel)
        for info in entry["outputs"].values():
            assert store.exists(info["digest"]), rel
    return store


def test_editing_a_helper_reruns_exactly_the_affected_steps(project: Path) -> None:
    first = _mlpipe("run", "pipe.py:project", cwd=project)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "describe.output = 'total=60'"
    assert _reran(_last_run(project)) == {"load", "count", "clean", "total", "describe"}

    # a cosmetic edit of the helper module: everything is a hit
    (project / "helpers.py").write_text(HELPERS.replace("def normalize(values):\n",
                                                        "def normalize(values):\n    # scale up\n"))
    cosmetic = _mlpipe("run", "pipe.py:project", cwd=project)
    assert cosmetic.returncode == 0, cosmetic.stderr
    assert _reran(_last_run(project)) == set()

    # a semantic edit of a helper that only `clean` reaches
    (project / "helpers.py").write_text(HELPERS.replace("return [v * SCALE for v in values]",
                                                        "return [v * SCALE + 1 for v in values]"))
    edited = _mlpipe("run", "pipe.py:project", cwd=project)
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.strip() == "describe.output = 'total=64'"
    report = _last_run(project)
    assert _reran(report) == {"clean", "total", "describe"}
    explained = _mlpipe("cache", "explain", report["id"], "clean", cwd=project)
    assert explained.returncode == 0, explained.stderr
    assert f"step 'clean' of run {report['id']}: MISS" in explained.stdout
    assert "function helpers.normalize changed" in explained.stdout
    assert "1 component of the cache key changed" in explained.stdout
    downstream = _mlpipe("cache", "explain", report["id"], "total", cwd=project)
    assert "input 'values' from step 'clean' changed" in downstream.stdout

    # a module constant only `clean` reaches (through the helper)
    (project / "helpers.py").write_text(HELPERS.replace("SCALE = 10", "SCALE = 11"))
    constant = _mlpipe("run", "pipe.py:project", cwd=project)
    assert constant.returncode == 0, constant.stderr
    report = _last_run(project)
    assert _reran(report) == {"clean", "total", "describe"}
    explained = _mlpipe("cache", "explain", report["id"], "clean", cwd=project)
    assert "constant helpers.SCALE changed" in explained.stdout
    # the closest earlier entry is the first run's (same normalize body): only the constant differs
    assert "1 component of the cache key changed" in explained.stdout

    # a helper imported with `from helpers import label`, reached only by `describe`
    (project / "helpers.py").write_text(HELPERS.replace("SCALE = 10", "SCALE = 11")
                                        .replace('f"total={total}"', 'f"sum={total}"'))
    label_edit = _mlpipe("run", "pipe.py:project", cwd=project)
    assert label_edit.stdout.strip() == "describe.output = 'sum=66'"
    report = _last_run(project)
    assert _reran(report) == {"describe"}
    explained = _mlpipe("cache", "explain", report["id"], "describe", cwd=project)
    assert "function helpers.label changed" in explained.stdout


def test_early_cutoff_across_processes(project: Path) -> None:
    assert _mlpipe("run", "pipe.py:project", cwd=project).returncode == 0
    # normalize changes but produces the same values: clean re-runs, everything after it is a hit
    (project / "helpers.py").write_text(HELPERS.replace("return [v * SCALE for v in values]",
                                                        "return [SCALE * v for v in values]"))
    assert _mlpipe("run", "pipe.py:project", cwd=project).returncode == 0
    report = _last_run(project)
    assert _reran(report) == {"clean"}


MAIN_SCRIPT = '''
import json
import sys

import mlpipe as mp

OFFSET = {offset}


def shift(x):
    return x + OFFSET


@mp.step
def base(n: int) -> int:
    return n * 2


@mp.step
def shifted(x: int) -> int:
    return shift(x)


@mp.pipeline
def main_pipeline(n: int = 3) -> int:
    return shifted(base(n))


if __name__ == "__main__":
    run = main_pipeline.run()
    print(json.dumps({{"id": run.id, "status": run.status, "value": run.output("shifted"),
                      "cached": {{name: s.cached for name, s in run.steps.items()}}}}))
'''


def test_steps_defined_in_main(_isolated_cwd: Path) -> None:
    script = _isolated_cwd / "script.py"

    def run(offset: int, comment: str = "") -> dict[str, Any]:
        script.write_text(MAIN_SCRIPT.format(offset=offset) + comment)
        result = _python(str(script), cwd=_isolated_cwd)
        assert result.returncode == 0, result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    first = run(1)
    assert first["value"] == 7 and not any(first["cached"].values())
    assert all(run(1, "\n# a comment\n")["cached"].values())
    edited = run(2)
    assert edited["value"] == 8
    assert edited["cached"] == {"base": True, "shifted": False}
    explained = _mlpipe("cache", "explain", edited["id"], "shifted", cwd=_isolated_cwd)
    assert "constant __main__.OFFSET changed" in explained.stdout


def test_two_processes_on_one_store_both_succeed(project: Path) -> None:
    env = _clean_env()
    cmd = [sys.executable, "-m", "mlpipe", "run", "pipe.py:sleepy", "-p", "seconds=0.5"]
    procs = [subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == "nap.output = 4"
    _verify_store(project)
    listed = _python("-c", "import mlpipe as mp; print(len(mp.runs()), [r.status for r in mp.runs()])", cwd=project)
    assert listed.stdout.split(" ", 1)[0] == "2"
    assert listed.stdout.count("succeeded") == 2
    # no entry was lost: a third run is served entirely from the cache
    third = _mlpipe("run", "pipe.py:sleepy", "-p", "seconds=0.5", cwd=project)
    assert third.returncode == 0, third.stderr
    assert _reran(_last_run(project)) == set()


def test_sigkill_mid_step_leaves_a_valid_store_and_finished_steps_are_reused(project: Path) -> None:
    marker = project / "nap-started"
    env = _clean_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlpipe", "run", "pipe.py:sleepy", "-p", "seconds=60", "-p", f"marker={marker}"],
        cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the run ended before the long step started"
            assert time.monotonic() < deadline, "the long step never started"
            time.sleep(0.05)
        time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    store = _verify_store(project)
    entries = [rel for rel, _ in store.walk_files("cache") if rel.endswith(".json") and ".tmp-" not in rel]
    assert len(entries) == 3  # load, count, total finished before the kill

    again = _mlpipe("run", "pipe.py:sleepy", "-p", "seconds=0", cwd=project)
    assert again.returncode == 0, again.stderr
    report = _last_run(project)
    assert report["status"] == "succeeded"
    assert _reran(report) == {"nap"}
    _verify_store(project)


def test_ctrl_c_records_the_run_cancelled_and_exits_without_waiting_for_the_step(project: Path) -> None:
    marker = project / "nap-started"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlpipe", "run", "pipe.py:sleepy", "-p", "seconds=60", "-p", f"marker={marker}"],
        cwd=project, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        _out, err = proc.communicate(timeout=50)
    finally:  # a hung run must not outlive the test (nor leave its pipes to a later one)
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    assert time.monotonic() - started < 30  # not the 60 s the step would take
    assert proc.returncode == 130
    assert "interrupted: the run is recorded as cancelled" in err
    report = _last_run(project)
    assert report["status"] == "cancelled"
    _verify_store(project)
    again = _mlpipe("run", "pipe.py:sleepy", "-p", "seconds=0", cwd=project)
    assert again.returncode == 0, again.stderr
    assert _reran(_last_run(project)) == {"nap"}
