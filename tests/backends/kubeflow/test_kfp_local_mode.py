"""mode = "local": the compiled spec executed by kfp.local, through profiles, the CLI and the adapter."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlpipe_kubeflow import KubeflowBackend
from mlpipe_kubeflow.background import close_after_engine
from mlpipe_kubeflow.local_runner import container_components_as_subprocess
from resources import kubeflow_pipelines as kp
from typer.testing import CliRunner

import mlpipe as mp
from mlpipe.cli import app
from mlpipe.errors import UnsupportedFeatureError
from mlpipe.extend import RunRecord
from mlpipe.run import Run, runs
from mlpipe.store import open_store

PROFILE = """default_profile = "dev"

[profiles.dev]
backend = "local"
store = ".mlpipe"

[profiles.kfp-test]
backend = "kubeflow"
store = ".mlpipe"
image = "python:3.11-slim"
options = { mode = "local" }
"""


@pytest.fixture
def profile() -> None:
    Path("mlpipe.toml").write_text(PROFILE)


def test_profile_run_returns_the_local_backends_run(profile: None) -> None:
    run = kp.small.run(profile="kfp-test", x=3)
    assert isinstance(run, Run)
    assert run.status == "succeeded" and run.backend == "kubeflow"
    assert run.output("needs_2") == 12
    assert [s.name for s in run.steps.values()] == ["needs", "needs_2"]
    assert run.params == {"x": 3, "scale": [1.0, 2.0]}
    local = kp.small.run(profile="dev", x=3)  # same store: the local backend hits what kfp.local computed
    assert all(s.cached for s in local.steps.values())
    assert local.output("needs_2") == run.output("needs_2")
    assert [r.id for r in runs(".mlpipe", pipeline="kfp-small")] == [local.id, run.id]  # indexed for the CLI


def test_user_module_outside_any_package_is_importable_in_tasks(profile: None) -> None:
    Path("userflow.py").write_text(
        "import mlpipe as mp\n\n@mp.step\ndef greet(name: str) -> str:\n    return f'hello {name}'\n\n"
        "@mp.pipeline(name='userflow')\ndef flow(name: str = 'kfp') -> str:\n    return greet(name)\n"
    )
    result = CliRunner().invoke(app, ["run", "userflow.py:flow", "--profile", "kfp-test", "-p", "name=local"])
    assert result.exit_code == 0, result.output
    assert "greet.output = 'hello local'" in result.output


def test_kfp_task_retries_do_not_multiply_the_steps_attempts(profile: None, tmp_path: Path) -> None:
    # retries=1: the runtime tries twice in the task, then kfp.local retries the task (set_retry);
    # the retried task finds both attempts spent and does not run the code again. The pipeline
    # and its step share the name `flaky`, which kfp's spec loader used to take for the step.
    calls = tmp_path / "calls.txt"
    Path("flaky.py").write_text(
        "from pathlib import Path\n\nimport mlpipe as mp\n\n"
        "@mp.step(retries=1)\ndef flaky() -> int:\n"
        f"    calls = Path({str(calls)!r})\n"
        "    calls.write_text((calls.read_text() if calls.exists() else '') + 'x')\n"
        "    raise RuntimeError('always broken')\n\n"
        "@mp.pipeline(name='flaky')\ndef flow() -> int:\n    return flaky()\n"
    )
    Path("mlpipe.toml").write_text(PROFILE.replace('options = { mode = "local" }',
                                                   'options = { mode = "local", retry_backoff = "0s" }'))
    result = CliRunner().invoke(app, ["run", "flaky.py:flow", "--profile", "kfp-test"])
    assert result.exit_code == 1, result.output
    assert calls.read_text() == "xx", "retries=1 means two runs of the code in the whole run"
    run = runs(".mlpipe", pipeline="flaky")[0]
    error = run.steps["flaky"].error or ""
    assert "already ran 2 time(s) in this run, in earlier tasks (retries=1)" in error
    assert "RuntimeError: always broken" in error


def test_cli_run_failure_exits_1_with_skipped_steps(profile: None) -> None:
    result = CliRunner().invoke(app, ["run", str(Path(kp.__file__)) + ":small", "--profile", "kfp-test",
                                      "-p", "x=-1"])
    assert result.exit_code == 1
    assert "step 'needs' failed" in result.output and "ValueError: negative" in result.output
    assert "skipped because of the failure: needs_2" in result.output


def test_submit_then_status_until_done(tmp_path: Path) -> None:
    backend = KubeflowBackend({"mode": "local"})
    store = open_store(str(tmp_path / "store"))
    handle = backend.submit(kp.small.ir, store, params={"x": 1, "scale": [1.0]}, run_id="r-submit")
    assert handle.data == {"mode": "local"}
    status = backend.wait(handle, timeout=120, poll=0.2)
    assert status.state == "succeeded"
    assert KubeflowBackend({"mode": "local"}).status(handle).steps == {"needs": "succeeded", "needs_2": "succeeded"}


@mp.step
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@mp.pipeline(name="naps")
def naps(seconds: float = 1.5) -> float:
    return nap.with_options(name="second")(nap.with_options(name="first")(seconds))


def test_cancel_stops_before_the_next_task(tmp_path: Path) -> None:
    backend = KubeflowBackend({"mode": "local"})
    store = open_store(str(tmp_path / "store"))
    handle = backend.submit(naps.ir, store, params={"seconds": 1.5}, run_id="r-cancel")
    time.sleep(0.5)
    backend.cancel(handle)
    backend.cancel(handle)  # idempotent
    assert backend.wait(handle, timeout=120, poll=0.2).state == "cancelled"
    run = Run.load(store, "r-cancel")
    assert run.status == "cancelled"
    assert run.steps["second"].status == "skipped"


def test_kfp_global_state_is_restored(tmp_path: Path) -> None:
    from kfp.local import config
    from kfp.local import subprocess_task_handler as sth

    before, handler = config.LocalExecutionConfig.instance, sth.SubprocessTaskHandler
    KubeflowBackend({"mode": "local"}).run(kp.small.ir, open_store(str(tmp_path / "s")),
                                           params={"x": 1, "scale": [1.0]}, run_id="r-state")
    assert config.LocalExecutionConfig.instance is before
    assert sth.SubprocessTaskHandler is handler
    with container_components_as_subprocess("r"):
        assert sth.SubprocessTaskHandler is not handler
    assert sth.SubprocessTaskHandler is handler


@mp.step
def hold(started: str, go: str) -> str:
    Path(started).touch()
    deadline = time.monotonic() + 60
    while not Path(go).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"


@mp.pipeline(name="held")
def held(started: str, go: str) -> str:
    return hold(started, go)


def test_a_background_run_leaves_other_threads_print_and_logging_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # kfp.local swaps builtins.print and the root logger's handlers during each task; from a
    # background thread that used to indent every print of the process and drop or revive
    # other callers' log handlers.
    import builtins
    import logging

    root = logging.getLogger()
    handlers, level, printer = root.handlers[:], root.level, builtins.print
    started, go = tmp_path / "started", tmp_path / "go"
    backend = KubeflowBackend({"mode": "local"})
    handle = backend.submit(held.ir, open_store(str(tmp_path / "store")),
                            params={"started": str(started), "go": str(go)}, run_id="r-held")  # fmt: skip
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert started.exists(), "the task never started"
    try:
        assert builtins.print is printer
        print("from the main thread")
        assert capsys.readouterr().out == "from the main thread\n"
        assert [h for h in root.handlers if h not in handlers] == [root.handlers[-1]]  # the run's own, only
        logging.getLogger("elsewhere").warning("not kfp's")
        assert "not kfp's" not in capsys.readouterr().out
    finally:
        go.touch()
    assert backend.wait(handle, timeout=120, poll=0.1).state == "succeeded"
    assert root.handlers == handlers and root.level == level and builtins.print is printer


@pytest.mark.parametrize(("options", "store", "words"), [
    ({"mode": "local", "schedule": "0 2 * * *"}, "dir", "schedule needs a cluster"),
    ({"mode": "local"}, "memory://kfp-local", "cannot see the in-memory store"),
])
def test_local_mode_refusals(options: dict[str, str], store: str, words: str, tmp_path: Path) -> None:
    url = str(tmp_path / "s") if store == "dir" else store
    with pytest.raises(UnsupportedFeatureError, match=words):
        KubeflowBackend(options).run(kp.small.ir, open_store(url), params={"x": 1, "scale": [1.0]}, run_id="r")


def test_task_that_dies_before_recording_is_failed_and_dependents_skipped(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s"))
    record = RunRecord.open(store, kp.small.ir, "r-dead", backend="kubeflow", params={"x": 1})
    closed = close_after_engine(store, kp.small.ir, record,
                                engine_error="Pipeline 'kfp-small' finished with status FAILURE.")
    run = Run.load(store, "r-dead")
    assert closed["status"] == run.status == "failed"
    assert run.steps["needs"].status == "failed"
    assert "without writing its record" in (run.steps["needs"].error or "")
    assert run.steps["needs_2"].status == "skipped"
    assert "upstream step 'needs'" in (run.steps["needs_2"].error or "")


def test_spec_started_without_mlpipe_run_id_records_under_the_engines_run_id(tmp_path: Path) -> None:
    """A run started from the KFP UI or a schedule: mlpipe_run_id keeps its default, kfp.local resolves its job id."""
    from mlpipe_kubeflow.compiler import write_spec
    from mlpipe_kubeflow.local_runner import execute_spec

    store = open_store(str(tmp_path / "store"))
    backend = KubeflowBackend({"mode": "local"}, image="python:3.11-slim")
    plan = backend.plan(kp.small.ir, store)
    spec = write_spec(plan, str(tmp_path / "small.yaml"))
    assert execute_spec(spec, plan.arguments({"x": 2}), "unused") is None
    (engine_id,) = store.listdir("runs")  # kfp.local's own job id, one folder for the whole run
    assert "{" not in engine_id
    assert {s.status for s in Run.load(store, engine_id).steps.values()} == {"succeeded"}
    assert execute_spec(spec, plan.arguments({"x": 2}, "given-id"), "given-id") is None
    assert sorted(store.listdir("runs")) == sorted([engine_id, "given-id"])
    assert all(s.cached for s in Run.load(store, "given-id").steps.values())


def test_cli_run_prints_the_run_id_and_keeps_kfps_log_off_stdout(profile: None) -> None:
    import os
    import re
    import subprocess
    import sys

    Path("userflow.py").write_text(
        "import mlpipe as mp\n\n@mp.step\ndef greet(name: str) -> str:\n    return f'hello {name}'\n\n"
        "@mp.step\ndef shout(text: str) -> str:\n    print('TASK SAYS', text)\n    return text.upper()\n\n"
        "@mp.pipeline(name='userflow')\ndef flow(name: str = 'kfp') -> str:\n    return shout(greet(name))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPIPE_", "MLFLOW_"))}
    result = subprocess.run(
        [sys.executable, "-m", "mlpipe", "run", "userflow.py", "--profile", "kfp-test", "-p", "name=local"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "shout.output = 'HELLO LOCAL'\n"  # nothing of kfp's: no log lines, no colours
    match = re.search(r"^run (\S+): pipeline userflow, 2 steps$", result.stderr, re.M)
    assert match, result.stderr
    run_id = match[1]
    assert re.search(r"^  succeeded greet \(\d+ ms\)$", result.stderr, re.M)
    assert re.search(rf"^run {run_id} succeeded in [\d.]+ s$", result.stderr, re.M)
    log = Path(".mlpipe", "runs", run_id, "kfp-local.log").resolve()
    assert f"kfp.local's log: {log}" in result.stderr
    text = log.read_text()
    assert "Executing task" in text and "TASK SAYS hello local" in text  # kfp's log, with the tasks' output
    assert "Running pipeline" not in result.stderr
    shown = CliRunner().invoke(app, ["runs", "show", run_id, "--json"])
    assert json.loads(shown.output)["run"]["backend"] == "kubeflow"
    assert CliRunner().invoke(app, ["verify"]).exit_code == 0  # the log is no record: the ledger is intact
