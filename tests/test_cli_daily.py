"""The CLI as a new user meets it: --version, -h, completion, repeated -p, runs list/show --json, attempts, metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mlpipe as mp
from mlpipe._version import __version__
from mlpipe.cli import app

PIPES = Path(__file__).resolve().parent / "resources" / "cli_pipelines.py"


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_version_and_short_help() -> None:
    assert _cli("--version") == (0, f"mlpipe {__version__}\n")
    assert _cli("-V") == (0, f"mlpipe {__version__}\n")
    code, out = _cli("-h")
    assert code == 0 and "Usage: mlpipe [OPTIONS] COMMAND" in out and "report" in out and "verify" in out
    code, out = _cli("runs", "show", "-h")
    assert code == 0 and "--json" in out


def test_shell_completion_script() -> None:
    code, out = _cli("--show-completion", "bash")
    assert code == 0 and "_mlpipe_completion" in out and "complete" in out


def test_a_parameter_given_twice_is_an_error() -> None:
    code, out = _cli("run", f"{PIPES}:ok", "-p", "n=3", "-p", "n=4")
    assert code == 2
    assert "parameter 'n' is given twice with -p (n=3 and n=4); give it once" in out
    assert not Path(".mlpipe/runs").exists()  # nothing ran


@mp.step(retries=2)
def flaky(n: int) -> int:
    marker = Path("flaky-attempts")
    seen = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(seen + 1))
    if seen < 2:
        raise RuntimeError("not yet")
    return n


@mp.step
def scores(n: int) -> dict[str, float]:
    return {"accuracy": 0.5 + n / 100, "loss": 0.25}


@mp.pipeline
def retried(n: int = 3) -> dict[str, float]:
    return scores(flaky(n))


def test_runs_show_prints_attempts_and_metric_values_and_json() -> None:
    run = retried.run()
    assert run.status == "succeeded", run.error
    code, out = _cli("runs", "show", run.id)
    assert code == 0, out
    line = next(row for row in out.splitlines() if row.strip().startswith("flaky"))
    assert line.split()[:4] == ["flaky", "succeeded", "no", "3"]  # three attempts
    assert "metrics scores.output: accuracy=0.53  loss=0.25" in out
    code, out = _cli("runs", "show", run.id[:12], "--json")
    doc = json.loads(out)
    assert doc["run"]["id"] == run.id and doc["run"]["status"] == "succeeded"
    assert doc["steps"]["flaky"]["attempts"] == 3
    assert doc["metrics"] == {"flaky.output": {"value": 3.0}, "scores.output": {"accuracy": 0.53, "loss": 0.25}}
    code, out = _cli("runs", "list", "--json")
    rows = json.loads(out)
    assert code == 0 and rows[0]["id"] == run.id and rows[0]["steps"] == 2 and rows[0]["status"] == "succeeded"


@pytest.mark.parametrize("args", [("runs", "list", "--json"), ("verify", "--json")])
def test_json_output_on_an_empty_store(args: tuple[str, ...]) -> None:
    code, out = _cli(*args)
    assert code == 0
    json.loads(out)


def test_runs_delete_removes_the_records_keeps_the_cache_and_the_ledger_agrees() -> None:
    first = retried.run(n=5)
    Path("flaky-attempts").unlink()
    second = retried.run(n=6)
    code, out = _cli("runs", "delete", first.id[:-3])  # a prefix: runs started in the same second share [:15]
    assert code == 0, out
    assert out.startswith(f"deleted run {first.id} (")
    assert not Path(f".mlpipe/runs/{first.id}/run.json").exists()
    code, out = _cli("runs", "list", "--json")
    assert [r["id"] for r in json.loads(out)] == [second.id]  # the index forgot it too
    code, out = _cli("verify")
    assert code == 0, out  # a deliberate deletion is recorded in the ledger, not reported as tampering
    again = retried.run(n=5)
    assert all(s.cached for s in again.steps.values())  # the deleted run's results still serve the cache
    code, out = _cli("runs", "delete", "nope")
    assert code == 2 and "nope" in out


# -- FILE.py alone, the profile before the module, store errors -------------------------------

TWO = '''
import mlpipe as mp

@mp.step
def inc(n: int) -> int:
    return n + 1

@mp.pipeline
def first(n: int = 1) -> int:
    return inc(n)

@mp.pipeline
def second(n: int = 2) -> int:
    return inc(inc(n))
'''

ONE = '''
from pathlib import Path

import mlpipe as mp
from two import first  # imported, not defined here: FILE.py alone still means this file's own pipeline

Path("imported-{name}").write_text("the module ran")

@mp.step
def double(n: int) -> int:
    return n * 2

@mp.pipeline
def only(n: int = 4) -> int:
    return double(n)
'''


def _project(name: str = "one") -> None:
    Path("two.py").write_text(TWO)
    Path(f"{name}.py").write_text(ONE.format(name=name))


def test_a_file_with_one_pipeline_needs_no_pipeline_name() -> None:
    _project()
    code, out = _cli("run", "one.py")
    assert code == 0, out
    assert "double.output = 8" in out
    code, out = _cli("graph", "one.py")
    assert code == 0 and "double" in out and "inc" not in out
    code, out = _cli("compile", "one.py", "--backend", "kubeflow", "-o", "one.yaml")
    assert code == 0, out
    assert "double" in Path("one.yaml").read_text()


def test_a_file_with_several_or_no_pipelines_lists_them() -> None:
    _project()
    code, out = _cli("run", "two.py")
    assert code == 2
    assert "error: two.py defines 2 pipelines (first, second); name one as two.py:PIPELINE" in out
    assert not Path(".mlpipe/runs").exists()
    Path("empty.py").write_text("x = 1\n")
    code, out = _cli("graph", "empty.py")
    assert code == 2 and "empty.py defines no pipeline; decorate a function with @mp.pipeline" in out
    code, out = _cli("run", "two.py:third")
    assert code == 2 and "two.py has no attribute 'third'; pipelines defined there: first, second" in out


@pytest.mark.parametrize(
    "args",
    [
        ("run", "one.py", "--profile", "prdo"),
        ("submit", "one.py", "--profile", "prdo"),
        ("compile", "one.py", "--profile", "prdo", "-o", "x.json"),
        ("graph", "one.py", "--run", "x", "--profile", "prdo"),
        ("image", "one.py", "--profile", "prdo"),
        ("run", "one.py", "--profile", "typo"),
    ],
)
def test_the_profile_is_checked_before_the_users_module_runs(args: tuple[str, ...]) -> None:
    _project("one")
    Path("mlpipe.toml").write_text('[profiles.prod]\nstore = "store"\n\n[profiles.typo]\nbackend = "locall"\n')
    code, out = _cli(*args)
    assert code == 2, out
    assert "'prdo' is not defined" in out or "locall" in out, out
    assert not Path("imported-one").exists()  # the module's import-time code did not run


def test_a_store_that_cannot_be_created_names_the_profile_and_the_store() -> None:
    import os
    import subprocess
    import sys

    blocker = Path("not-a-dir")
    blocker.write_text("a file where the store's parent directory should be")
    Path("mlpipe.toml").write_text('[profiles.prod]\nstore = "not-a-dir/store"\n')
    _project()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPIPE_", "MLFLOW_"))}
    for args in (["run", "one.py"], ["runs", "list"], ["runs", "list", "--profile", "prod"]):
        result = subprocess.run(
            [sys.executable, "-m", "mlpipe", *args], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        assert result.returncode == 1, result.stderr
        store = Path("not-a-dir/store").resolve()
        assert result.stderr.startswith(f"error: cannot create store '{store}' (profile 'prod'): not a directory;")
        assert "Traceback" not in result.stderr and result.stdout == ""
    assert not Path("imported-one").exists()
    assert blocker.read_text().startswith("a file")


def test_artifacts_show_json_gives_the_producer_its_inputs_reuse_and_consumers() -> None:
    first = retried.run(n=7)
    again = retried.run(n=7)
    digest = first.steps["flaky"].outputs["output"].digest
    code, out = _cli("artifacts", "show", digest[:10], "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["digest"] == digest and doc["type"].endswith("int") and doc["materializer"] == "json"
    made = doc["produced_by"]
    assert (made["run"], made["step"], made["output"]) == (first.id, "flaky", "output")
    assert made["inputs"] == {"n": {"value": 7}}
    assert made["code"]["qualname"] == "flaky" and len(made["code"]["fingerprint"]) >= 16
    assert doc["reused_by"] == [again.id]
    assert {(c["run"], c["step"], c["input"], c["cached"]) for c in doc["consumed_by"]} == {
        (first.id, "scores", "n", False),
        (again.id, "scores", "n", True),
    }
    code, text = _cli("artifacts", "show", digest[:10])
    assert code == 0 and f"produced by run {first.id}, step 'flaky'" in text and "input n = 7" in text
    code, out = _cli("artifacts", "show", "ffffffff", "--json")
    assert code == 2 and "no artifact 'ffffffff'" in out


# -- Ctrl-C -----------------------------------------------------------------------------------

NAPS = '''
import time
from pathlib import Path

import mlpipe as mp

@mp.step
def start(n: int) -> int:
    return n

@mp.step
def nap(x: int, label: str) -> int:
    Path(f"started-{label}").write_text("")
    time.sleep(120)
    return x

@mp.step
def join(a: int, b: int) -> int:
    return a + b

@mp.pipeline
def naps(n: int = 1) -> int:
    s = start(n)
    return join(nap(s, "a"), nap(s, "b"))
'''


def test_ctrl_c_marks_the_running_steps_cancelled_in_the_record_and_runs_show() -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    Path("naps.py").write_text(NAPS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPIPE_", "MLFLOW_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlpipe", "run", "naps.py"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while not (Path("started-a").exists() and Path("started-b").exists()):
            assert proc.poll() is None and time.monotonic() < deadline, "the naps never both started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends
        _out, err = proc.communicate(timeout=60)
    finally:  # a hung run must not outlive the test (nor leave its pipes to a later one)
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert len(re.findall(r"cancelled\s+nap\S* \(\d+ ms\): cancelled while running", err)) == 2, err
    code, out = _cli("runs", "list", "--json")
    run_id = json.loads(out)[0]["id"]
    code, out = _cli("runs", "show", run_id, "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["run"]["status"] == "cancelled"
    steps = doc["steps"]
    assert steps["start"]["status"] == "succeeded"
    naps_ = [s for name, s in steps.items() if name.startswith("nap")]
    assert len(naps_) == 2 and {s["status"] for s in naps_} == {"cancelled"}, steps
    assert {s["error"] for s in naps_} == {"cancelled while running"}
    assert all(s["ended"] > s["started"] for s in naps_)  # they had been running
    assert steps["join"]["status"] == "cancelled" and steps["join"]["error"] == "not run: the run was cancelled"
    code, text = _cli("runs", "show", run_id)
    assert code == 0, text
    rows = [line.split() for line in text.splitlines() if line.strip().startswith("nap")]
    assert [row[1] for row in rows] == ["cancelled", "cancelled"]
    assert "running" not in [row[1] for row in rows] and "failed" not in text
