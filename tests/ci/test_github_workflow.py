"""`mlpipe ci github`: the workflow parses as GitHub Actions YAML, and every command in it runs here.

The test writes a small project (a pipeline, a test, a profile), generates the workflow with a deployment,
then runs each job's `run:` lines in order in that project, with the repository secrets the workflow
names set in the environment (a sqlite MLflow registry holding the model).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from resources.serving_helpers import Registry, make_registry

from mlpipe.ci import GithubWorkflow, has_plan_command, render_github_workflow

pytest.importorskip("mlflow.server", reason="needs the full mlflow package (sqlite registry)")
pytest.importorskip("kfp")

PIPELINE = '''
import mlpipe as mp


@mp.step
def double(n: int = 2) -> int:
    return n * 2


@mp.pipeline
def ci_demo(n: int = 2) -> int:
    return double(n=n)
'''

TEST = '''
from pipe import double


def test_double():
    assert double(3) == 6
'''


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return make_registry(tmp_path_factory)


def _project(root: Path) -> Path:
    (root / "pipe.py").write_text(PIPELINE)
    (root / "test_pipe.py").write_text(TEST)
    (root / "requirements.txt").write_text("")
    (root / "mlpipe.toml").write_text('[profiles.ci]\nbackend = "local"\nstore = ".mlpipe"\n')
    return root


def test_the_workflow_is_valid_and_every_command_runs(registry: Registry, _isolated_cwd: Path) -> None:
    project = _project(_isolated_cwd)
    written = subprocess.run(
        [sys.executable, "-m", "mlpipe", "ci", "github", "--pipeline", "pipe.py:ci_demo", "--profile", "ci",
         "--compile-backend", "kubeflow", "--install", f"{sys.executable} -m pip install -r requirements.txt"
         if _has_pip() else "python -c 'import mlpipe'", "--test", "pytest -q -p no:cacheprovider test_pipe.py",
         "--deployment", "ci-demo", "--model", "scorer", "--target", "kserve",
         "--target-option", "storage_uri=s3://models/{name}/{version}", "--gate", "error_rate<=0.01"],
        cwd=project, capture_output=True, text=True, timeout=120, check=False,
    )
    assert written.returncode == 0, written.stderr
    workflow = yaml.safe_load((project / ".github/workflows/mlpipe.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert triggers["push"]["branches"] == ["main"] and "pull_request" in triggers and "schedule" in triggers
    assert set(workflow["jobs"]) == {"test", "submit", "deploy", "rollout"}
    assert workflow["jobs"]["submit"]["needs"] == "test" and workflow["jobs"]["deploy"]["needs"] == "submit"
    assert "refs/heads/main" in workflow["jobs"]["submit"]["if"] and workflow["env"]["MLFLOW_TRACKING_URI"]
    commands = {job: [s["run"] for s in spec["steps"] if "run" in s] for job, spec in workflow["jobs"].items()}
    from typer.main import get_command

    from mlpipe.cli import app

    cli_has_plan = has_plan_command(getattr(get_command(app), "commands", {}))
    assert any(c.startswith("mlpipe plan ") for c in commands["test"]) == cli_has_plan
    for spec in workflow["jobs"].values():
        uses = [s["uses"] for s in spec["steps"] if "uses" in s]
        assert uses == ["actions/checkout@v4", "actions/setup-python@v5"]

    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran = []
    last = ""
    for job in ("test", "submit", "deploy", "rollout"):
        for command in commands[job]:
            result = subprocess.run(["bash", "-c", command], cwd=project, env=env, capture_output=True, text=True,
                                    timeout=300, check=False)
            assert result.returncode == 0, f"{job}: {command}\n{result.stdout}\n{result.stderr}"
            ran.append(command)
            last = result.stdout
    assert (project / "build" / "pipeline.yaml").is_file()
    assert any(c.startswith("mlpipe submit pipe.py:ci_demo --profile ci --wait") for c in ran)
    status = subprocess.run([sys.executable, "-m", "mlpipe", "deploy", "history", "ci-demo", "--profile", "ci"],
                            cwd=project, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert [line.split()[3] for line in status.stdout.splitlines() if line.startswith("r")] == ["start"]
    # KServe reports no live metrics: the error-rate gate waits for them, the rollout holds at 10 %
    assert last.startswith("held: champion scorer/1 90 %, challenger scorer/2 10 %") and "WAIT no error rate" in last


def _has_pip() -> bool:
    return (Path(sys.executable).parent / "pip").exists()


def test_without_a_deployment_there_are_two_jobs() -> None:
    text = render_github_workflow(GithubWorkflow(pipeline="p.py:train", profile="prod", plan=True))
    workflow = yaml.safe_load(text)
    assert set(workflow["jobs"]) == {"test", "submit"} and "schedule" not in workflow[True]
    runs = [s["run"] for s in workflow["jobs"]["test"]["steps"] if "run" in s]
    assert runs == [
        "pip install -e '.[dev]'",
        "pytest -q",
        "mlpipe compile p.py:train --profile prod -o build/pipeline.yaml",
        "mlpipe plan p.py:train --profile prod",
    ]
