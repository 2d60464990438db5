"""CI/CD recipes: ``mlpipe ci github`` writes a GitHub Actions workflow for a pipeline.

The workflow has four jobs:

- ``test`` (every push and pull request): install, run the tests, compile the
  pipeline for its backend, and show the plan (which steps are cache hits), when
  this mlpipe has ``mlpipe plan``;
- ``submit`` (push to the main branch): run the pipeline on the profile's
  backend and wait; it fails when a step or a quality gate fails, and the
  promotion gates run inside the pipeline (``mpm.promote``);
- ``deploy`` (after ``submit`` succeeds, with a deployment): start rolling
  out the new ``challenger`` version against the ``champion``;
- ``rollout`` (on a schedule): ``mlpipe deploy advance``, which moves the
  rollout on, or rolls back (and fails the job) when a live gate fails.

Nothing here imports more than the standard library.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["GithubWorkflow", "render_github_workflow", "write_github_workflow"]


@dataclass
class GithubWorkflow:
    """What the workflow runs.

    Attributes:
        pipeline: ``FILE.py:PIPELINE``.
        profile: The profile ``submit`` uses (its backend and store).
        compile_backend: Backend to compile for in the ``test`` job (default: the profile's).
        install: The install command (``pip install -e '.[dev]'``, ``pip install -r requirements.txt``...).
        test: The test command.
        branch: The branch whose pushes submit.
        python: Python version.
        deployment: Deployment name; with ``model``, adds the ``deploy`` and ``rollout`` jobs.
        model: Registered model to deploy.
        target: Deployment target (``local``, ``kserve``, ``sagemaker``, ``vertex``).
        target_options: ``KEY=VALUE`` options of the target.
        gates: Rollout gates (``error_rate<=0.01``...).
        stages: Challenger traffic per stage.
        schedule: Cron of the ``rollout`` job.
        secrets: Environment variables every job gets from repository secrets (``MLFLOW_TRACKING_URI``...).
        plan: Include ``mlpipe plan`` (the CLI sets it when it has the command).
    """

    pipeline: str
    profile: str
    compile_backend: str | None = None
    install: str = "pip install -e '.[dev]'"
    test: str = "pytest -q"
    branch: str = "main"
    python: str = "3.11"
    deployment: str | None = None
    model: str | None = None
    target: str = "local"
    target_options: Sequence[str] = ()
    gates: Sequence[str] = ()
    stages: str = "10,50,100"
    schedule: str = "0 * * * *"
    secrets: Sequence[str] = ("MLFLOW_TRACKING_URI",)
    plan: bool | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


def has_plan_command(commands: Iterable[str]) -> bool:
    """Whether the CLI whose command names are ``commands`` has ``mlpipe plan`` (the CLI passes its own)."""
    return "plan" in set(commands)


def _q(value: str) -> str:
    return shlex.quote(value)


def _yaml_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _run(command: str, indent: int = 6) -> str:
    pad = " " * indent
    return f"{pad}- run: {_yaml_str(command)}\n"


def render_github_workflow(spec: GithubWorkflow) -> str:
    """The workflow's YAML text."""
    plan = bool(spec.plan)
    compile_target = (
        f"--backend {_q(spec.compile_backend)}" if spec.compile_backend else f"--profile {_q(spec.profile)}"
    )
    env_lines = "".join(f"  {name}: ${{{{ secrets.{name} }}}}\n" for name in spec.secrets)
    env_lines += "".join(f"  {k}: {_yaml_str(v)}\n" for k, v in spec.extra_env.items())
    setup = (
        "      - uses: actions/checkout@v4\n"
        "      - uses: actions/setup-python@v5\n"
        "        with:\n"
        f"          python-version: {_yaml_str(spec.python)}\n" + _run(spec.install)
    )
    on_main = f"github.event_name == 'push' && github.ref == 'refs/heads/{spec.branch}'"
    text = (
        "# Written by `mlpipe ci github`; edit freely, or re-run it to start again.\n"
        "name: mlpipe\n"
        "on:\n"
        "  push:\n"
        f"    branches: [{spec.branch}]\n"
        "  pull_request:\n"
    )
    if spec.deployment and spec.model:
        text += f"  schedule:\n    - cron: {_yaml_str(spec.schedule)}\n"
    text += "  workflow_dispatch:\n"
    text += "permissions:\n  contents: read\n"
    text += "concurrency:\n  group: mlpipe-${{ github.ref }}\n  cancel-in-progress: false\n"
    if env_lines:
        text += "env:\n" + env_lines
    text += (
        "jobs:\n"
        "  test:\n"
        "    if: github.event_name != 'schedule'\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        + setup
        + _run(spec.test)
        + _run(f"mlpipe compile {_q(spec.pipeline)} {compile_target} -o build/pipeline.yaml")
    )
    if plan:
        text += _run(f"mlpipe plan {_q(spec.pipeline)} --profile {_q(spec.profile)}")
    text += (
        "  submit:\n"
        "    needs: test\n"
        f"    if: {on_main}\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n" + setup + _run(f"mlpipe submit {_q(spec.pipeline)} --profile {_q(spec.profile)} --wait")
    )
    if spec.deployment and spec.model:
        options = "".join(f" -o {_q(o)}" for o in spec.target_options)
        gates = "".join(f" --gate {_q(g)}" for g in spec.gates)
        text += (
            "  deploy:\n"
            "    needs: submit\n"
            f"    if: {on_main}\n"
            "    runs-on: ubuntu-latest\n"
            "    environment: production\n"
            "    steps:\n"
            + setup
            + _run(
                f"mlpipe deploy start {_q(spec.deployment)} --model {_q(spec.model)} --target {_q(spec.target)}"
                f"{options} --stages {_q(spec.stages)}{gates} --profile {_q(spec.profile)}"
            )
            + "  rollout:\n"
            "    if: github.event_name == 'schedule'\n"
            "    runs-on: ubuntu-latest\n"
            "    environment: production\n"
            "    steps:\n"
            + setup
            + _run(f"mlpipe deploy status {_q(spec.deployment)} --profile {_q(spec.profile)}")
            + _run(f"mlpipe deploy advance {_q(spec.deployment)} --profile {_q(spec.profile)}")
        )
    return text


def write_github_workflow(spec: GithubWorkflow, path: str | Path = ".github/workflows/mlpipe.yml") -> Path:
    """Write the workflow to ``path`` (directories created) and return it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_github_workflow(spec))
    return out
