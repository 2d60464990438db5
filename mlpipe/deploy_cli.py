"""``mlpipe deploy ...``: the commands' logic (the group is added to :mod:`mlpipe.cli`; imports stay lazy)."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Annotated, Any

import typer

__all__ = ["deploy_app"]

deploy_app = typer.Typer(help="Champion/challenger deployments with gated, staged rollout.", no_args_is_help=True)

ProfileOpt = Annotated[str | None, typer.Option("--profile", help="Profile whose store holds the deployments.")]


def _fail(exc: BaseException) -> Any:
    from mlpipe.cli_errors import _fail as fail

    fail(exc)


def _store(profile: str | None) -> str:
    from mlpipe.config import load_profile

    return load_profile(profile).store


def _tracking(profile: str | None, given: str | None) -> str | None:
    from mlpipe.config import load_profile

    return given or load_profile(profile).tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str] | None, what: str) -> dict[str, Any]:
    from mlpipe.deploy._state import DeploymentError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise DeploymentError(f"{what} {item!r} must be KEY=VALUE")
        out[key.strip()] = _value(raw)
    return out


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _traffic(state: Any) -> str:
    parts = [f"{role} {ref.label} {state.traffic.get(role, 0)} %" for role, ref in state.models().items()]
    return ", ".join(parts) + (" (challenger in shadow)" if state.shadow else "")


def _show(state: Any) -> None:
    print(
        f"deployment {state.name}  model {state.model}  target {state.target.kind}  status {state.status}  "
        f"revision {state.revision}"
    )
    print(f"  traffic: {_traffic(state)}")
    if state.status == "rolling":
        print(
            f"  stage {state.stage + 1} of {len(state.stages)} ({', '.join(f'{s} %' for s in state.stages)}), "
            f"since {_when(state.stage_started)}"
        )
    for key, value in state.details.items():
        print(f"  {key}: {value}")


@deploy_app.command("start")
def start_cmd(
    name: Annotated[str, typer.Argument(help="Deployment name (lowercase, digits, dashes).")],
    model: Annotated[str, typer.Option("--model", help="Registered model name.")],
    target: Annotated[str, typer.Option("--target", help="local, kserve or sagemaker.")] = "local",
    option: Annotated[list[str] | None, typer.Option("-o", "--option", help="Target option KEY=VALUE.")] = None,
    champion: Annotated[str, typer.Option("--champion", help="Alias of the champion.")] = "champion",
    challenger: Annotated[str, typer.Option("--challenger", help="Alias of the challenger.")] = "challenger",
    stages: Annotated[str, typer.Option("--stages", help="Challenger traffic per stage, in %.")] = "10,50,100",
    shadow: Annotated[bool, typer.Option("--shadow", help="Mirror traffic to the challenger first.")] = False,
    gate: Annotated[
        list[str] | None,
        typer.Option("--gate", help="error_rate<=0.01, latency<=50, agreement>=0.9, drift:FILE, METRIC>=X."),
    ] = None,
    min_requests: Annotated[int, typer.Option("--min-requests", help="Challenger requests per stage.")] = 0,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="The MLflow registry.")] = None,
    profile: ProfileOpt = None,
) -> None:
    """Deploy MODEL@champion and start rolling out MODEL@challenger."""
    from mlpipe.deploy._gates import parse_gate_option
    from mlpipe.deploy._rollout import start
    from mlpipe.deploy._state import DeploymentError
    from mlpipe.errors import MlpipeError

    try:
        try:
            plan = [int(s) for s in stages.split(",") if s.strip()]
        except ValueError:
            raise DeploymentError(
                f"--stages must be percents separated by commas (10,50,100), got {stages!r}"
            ) from None
        state = start(
            name,
            model,
            target=target,
            target_options=_pairs(option, "target option"),
            champion=champion,
            challenger=challenger,
            stages=plan,
            shadow=shadow,
            gates=[parse_gate_option(g) for g in gate or []],
            min_requests=min_requests,
            store=_store(profile),
            tracking_uri=_tracking(profile, tracking_uri),
        )
    except MlpipeError as exc:
        _fail(exc)
    _show(state)


@deploy_app.command("advance")
def advance_cmd(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    metric: Annotated[list[str] | None, typer.Option("--metric", help="Challenger metric KEY=VALUE.")] = None,
    current: Annotated[
        str | None, typer.Option("--current", help="Parquet/CSV of the challenger's inputs, for a drift gate.")
    ] = None,
    profile: ProfileOpt = None,
) -> None:
    """Check the gates on the live metrics; move to the next stage, wait, or roll back (exit 1)."""
    from mlpipe.deploy._rollout import advance
    from mlpipe.errors import MlpipeError

    try:
        frame = None
        if current:
            import pandas as pd

            frame = pd.read_csv(current) if current.endswith(".csv") else pd.read_parquet(current)
        values = {k: float(v) for k, v in _pairs(metric, "metric").items()}
        decision = advance(name, metrics=values, current=frame, store=_store(profile))
    except (MlpipeError, ValueError, OSError) as exc:
        _fail(exc)
    challenger = decision.metrics.get("challenger", {})
    shown = {
        k: v
        for k, v in challenger.items()
        if k in ("requests", "errors", "error_rate", "latency_p99_ms", "agreement")
        or k not in ("variant", "written", "revision", "compared", "latency_p50_ms")
    }
    print(f"{decision.action}: {_traffic(decision.state)}")
    for reason in decision.reasons:
        print(f"  {reason}")
    if shown:
        print(
            "  challenger metrics: "
            + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
        )
    if decision.action == "rolled_back":
        raise typer.Exit(1)


@deploy_app.command("promote")
def promote_cmd(name: Annotated[str, typer.Argument(help="Deployment name.")], profile: ProfileOpt = None) -> None:
    """Give the challenger all traffic and make it the champion (moves the registry alias)."""
    from mlpipe.deploy._rollout import promote
    from mlpipe.errors import MlpipeError

    try:
        state = promote(name, store=_store(profile))
    except MlpipeError as exc:
        _fail(exc)
    _show(state)


@deploy_app.command("rollback")
def rollback_cmd(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    reason: Annotated[str, typer.Option("--reason", help="Recorded with the rollback.")] = "rolled back by hand",
    profile: ProfileOpt = None,
) -> None:
    """Give the champion all traffic again and remove the challenger."""
    from mlpipe.deploy._rollout import rollback
    from mlpipe.errors import MlpipeError

    try:
        state = rollback(name, reason=reason, store=_store(profile))
    except MlpipeError as exc:
        _fail(exc)
    _show(state)


@deploy_app.command("traffic")
def traffic_cmd(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    split: Annotated[str, typer.Option("--split", help="CHAMPION/CHALLENGER percents, e.g. 90/10.")],
    profile: ProfileOpt = None,
) -> None:
    """Set the champion/challenger split by hand."""
    from mlpipe.deploy._rollout import set_traffic
    from mlpipe.deploy._state import DeploymentError
    from mlpipe.errors import MlpipeError

    try:
        left, sep, right = split.partition("/")
        try:
            champion, challenger = int(left), int(right)
        except ValueError:
            raise DeploymentError(f"--split must be CHAMPION/CHALLENGER percents like 90/10, got {split!r}") from None
        if not sep:
            raise DeploymentError(f"--split must be CHAMPION/CHALLENGER percents like 90/10, got {split!r}")
        state = set_traffic(name, champion, challenger, store=_store(profile))
    except MlpipeError as exc:
        _fail(exc)
    _show(state)


@deploy_app.command("status")
def status_cmd(name: Annotated[str, typer.Argument(help="Deployment name.")], profile: ProfileOpt = None) -> None:
    """Show a deployment: versions, traffic, stage, target details."""
    from mlpipe.deploy._rollout import status
    from mlpipe.errors import MlpipeError

    try:
        state = status(name, store=_store(profile))
    except MlpipeError as exc:
        _fail(exc)
    _show(state)


@deploy_app.command("history")
def history_cmd(name: Annotated[str, typer.Argument(help="Deployment name.")], profile: ProfileOpt = None) -> None:
    """Every change of a deployment: when, which versions from which runs, which traffic, why."""
    from mlpipe.deploy._rollout import history
    from mlpipe.errors import MlpipeError

    try:
        events = history(name, store=_store(profile))
    except MlpipeError as exc:
        _fail(exc)
    for event in events:
        split = ", ".join(f"{role} {event.traffic.get(role, 0)} %" for role in event.traffic)
        print(
            f"r{event.revision:<3} {_when(event.time)}  {event.action:<8} {event.status:<11} {split}"
            + (" (shadow)" if event.shadow else "")
        )
        for role, ref in (("champion", event.champion), ("challenger", event.challenger)):
            if ref is not None:
                run = f" mlpipe run {ref.mlpipe_run_id}" if ref.mlpipe_run_id else ""
                print(f"     {role:<10} {ref.label}  mlflow run {ref.run_id}{run}")
        for reason in event.reasons:
            print(f"     {reason}")


@deploy_app.command("list")
def list_cmd(profile: ProfileOpt = None) -> None:
    """List the deployments in the store."""
    from mlpipe.deploy._state import list_deployments, load_state
    from mlpipe.store import open_store

    store = open_store(_store(profile))
    for name in list_deployments(store):
        state = load_state(store, name)
        print(f"{name:<20} {state.target.kind:<10} {state.status:<11} {_traffic(state)}")


@deploy_app.command("targets")
def targets_cmd() -> None:
    """List the deployment targets installed."""
    from mlpipe.deploy._target import available_targets

    for name, source in available_targets().items():
        print(f"{name:<12} {source}")
    sys.stdout.flush()


ci_app = typer.Typer(help="CI/CD recipes.", no_args_is_help=True)


@ci_app.command("github")
def ci_github(
    ctx: typer.Context,
    pipeline: Annotated[str, typer.Option("--pipeline", help="FILE.py:PIPELINE to test, compile and submit.")],
    profile: Annotated[str, typer.Option("--profile", help="Profile that submit (and deploy) use.")],
    output: Annotated[str, typer.Option("-o", "--output", help="Workflow file.")] = ".github/workflows/mlpipe.yml",
    compile_backend: Annotated[
        str | None, typer.Option("--compile-backend", help="Backend to compile for (default: the profile's).")
    ] = None,
    install: Annotated[str, typer.Option("--install", help="Install command.")] = "pip install -e '.[dev]'",
    test: Annotated[str, typer.Option("--test", help="Test command.")] = "pytest -q",
    branch: Annotated[str, typer.Option("--branch", help="Branch whose pushes submit.")] = "main",
    deployment: Annotated[str | None, typer.Option("--deployment", help="Deployment to roll out.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Registered model of the deployment.")] = None,
    target: Annotated[str, typer.Option("--target", help="Deployment target.")] = "local",
    option: Annotated[list[str] | None, typer.Option("--target-option", help="Target option KEY=VALUE.")] = None,
    gate: Annotated[list[str] | None, typer.Option("--gate", help="Rollout gate (repeatable).")] = None,
    secret: Annotated[
        list[str] | None, typer.Option("--secret", help="Env var taken from repository secrets (repeatable).")
    ] = None,
) -> None:
    """Write a GitHub Actions workflow: test, compile, plan, submit on push, gated deployment."""
    from mlpipe.ci import GithubWorkflow, has_plan_command, write_github_workflow
    from mlpipe.deploy._state import DeploymentError

    if (deployment is None) != (model is None):
        _fail(DeploymentError("--deployment and --model go together"))
    spec = GithubWorkflow(
        pipeline=pipeline,
        profile=profile,
        compile_backend=compile_backend,
        install=install,
        test=test,
        branch=branch,
        deployment=deployment,
        model=model,
        target=target,
        target_options=list(option or []),
        gates=list(gate or []),
        secrets=list(secret) if secret is not None else ["MLFLOW_TRACKING_URI"],
        plan=has_plan_command(getattr(ctx.find_root().command, "commands", {})),
    )
    path = write_github_workflow(spec, output)
    print(f"wrote {path}")
