"""`mlpipe cache gc --keep-runs N`: N succeeded runs per pipeline survive, failures do not count, a terminal is asked.

Every command runs as a user would type it, in a fresh process; the confirmation
is answered through a real pseudo-terminal.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

PIPES = '''
import mlpipe as mp


@mp.step
def load(n: int) -> list[int]:
    return list(range(n))


@mp.step
def total(values: list[int], fail: bool = False) -> int:
    if fail:
        raise RuntimeError("planted failure")
    return sum(values)


@mp.pipeline
def report(n: int = 4, fail: bool = False) -> int:
    return total(load(n), fail=fail)


@mp.step
def double(n: int) -> int:
    return 2 * n


@mp.pipeline
def other(n: int = 5) -> int:
    return double(n)
'''


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPIPE_", "MLFLOW_"))}
    return {**env, "COLUMNS": "200", "NO_COLOR": "1"}


def mlpipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlpipe", *args], capture_output=True, text=True, env=_env(),
                          timeout=120, check=False)


def _run(*args: str) -> str:
    out = mlpipe("run", *args)
    found = re.search(r"run (\S+) (succeeded|failed) in", out.stdout + out.stderr)
    assert found, out.stdout + out.stderr
    return found.group(1)


def _cached(target: str) -> dict[str, bool]:
    out = mlpipe("run", target)
    assert out.returncode == 0, out.stderr
    lines = re.finditer(r"^\s+(cached|succeeded)\s+(\w+)", out.stdout + out.stderr, re.M)
    return {m.group(2): m.group(1) == "cached" for m in lines}


def test_keep_runs_keeps_succeeded_runs_per_pipeline_after_a_failure() -> None:
    Path("p.py").write_text(PIPES)
    oldest = _run("p.py:report", "-p", "n=3")
    kept_report = _run("p.py:report")
    kept_other = _run("p.py:other")
    failed = _run("p.py:report", "-p", "fail=true")  # the newest run of all, and a failure
    gc = mlpipe("cache", "gc", "--keep-runs", "1", "--grace", "0")  # not a terminal: no question
    assert gc.returncode == 0, gc.stderr
    assert f"will remove run {oldest} (pipeline report, succeeded)" in gc.stdout
    for run_id in (kept_report, kept_other, failed):
        assert run_id not in gc.stdout
    assert re.search(r"removed 1 runs and \d+ cache entries", gc.stdout), gc.stdout
    # the last good results of each pipeline are still served from the cache
    assert _cached("p.py:report") == {"load": True, "total": True}
    assert _cached("p.py:other") == {"double": True}
    listed = mlpipe("runs", "list").stdout
    assert oldest not in listed and failed in listed and kept_other in listed


def _answer(args: list[str], answer: str | None) -> tuple[int, str]:
    """Run ``mlpipe ARGS`` on a pseudo-terminal, answer its question with ``answer``; (exit code, screen)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mlpipe", *args], stdin=slave, stdout=slave, stderr=slave,
                            env={**_env(), "TERM": "xterm"}, close_fds=True)
    os.close(slave)
    screen, answered, deadline = b"", answer is None, time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            if not answered and b"Remove them?" in screen:
                os.write(master, answer.encode() + b"\n")  # type: ignore[union-attr]
                answered = True
            if proc.poll() is not None and not ready:
                break
        return proc.wait(timeout=30), screen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)


def test_gc_asks_on_a_terminal_and_yes_skips_the_question() -> None:
    Path("p.py").write_text(PIPES)
    run_id = _run("p.py:other")
    code, screen = _answer(["cache", "gc", "--keep-runs", "0", "--grace", "0"], "n")
    assert code == 1, screen
    assert f"will remove run {run_id} (pipeline other, succeeded)" in screen
    assert "Remove them? [y/N]" in screen and "nothing removed" in screen
    assert run_id in mlpipe("runs", "list").stdout
    code, screen = _answer(["cache", "gc", "--keep-runs", "0", "--grace", "0", "--yes"], None)
    assert code == 0, screen
    assert "Remove them?" not in screen and "removed 1 runs" in screen
    assert run_id not in mlpipe("runs", "list").stdout
