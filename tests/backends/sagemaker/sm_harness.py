"""Carry out a compiled SageMaker pipeline definition here, as SageMaker would (tests only, not product).

moto stores pipelines and executions but runs nothing, so this plays the part
of SageMaker's executor for the subset the compiler emits: Processing steps in
``DependsOn`` order (independent steps two at a time), each as a subprocess
running exactly the definition's ``ContainerEntrypoint + ContainerArguments``
with exactly its ``Environment`` on top of what a container brings (see
``sm_support.runtime_env``). Parameters, ``Execution.PipelineExecutionId`` and
``Std:Join`` are resolved here. A step whose dependency failed does not run.
A ``Condition`` step (mlpipe's: ``Equals`` over a ``JsonGet`` of a property
file) is decided from the file the tested step wrote to its output's
``LocalPath`` (mapped to a temporary directory, as the job's volume); the
steps of the branch not taken are not executed and, as in SageMaker, not
listed. When a step succeeds its outputs are uploaded to their ``S3Uri`` (on
moto) as ``S3UploadMode: EndOfJob`` does, and its property files are read
back from there; ``ExecutionResult.property_files`` holds them.
"""

from __future__ import annotations

import graphlib
import json
import subprocess
import tempfile
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpipe_sagemaker.validate import flatten, resolve_text


@dataclass
class StepResult:
    name: str
    status: str  # Succeeded, Failed, NotExecuted
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    returncode: int | None = None
    output: str = ""


@dataclass
class ExecutionResult:
    execution_id: str
    steps: dict[str, StepResult]
    property_files: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> file name -> JSON

    @property
    def status(self) -> str:
        return "Failed" if any(s.status != "Succeeded" for s in self.steps.values()) else "Succeeded"

    @property
    def failure_reason(self) -> str | None:
        failed = [s for s in self.steps.values() if s.status == "Failed"]
        return "; ".join(f"step {s.name} exited with {s.returncode}" for s in failed) or None


def command(
    step: Mapping[str, Any], parameters: Mapping[str, Any], execution_id: str
) -> tuple[list[str], dict[str, str]]:
    """The argv and definition environment of one step, every expression resolved."""
    app = step["Arguments"]["AppSpecification"]
    argv = [resolve_text(a, parameters, execution_id) for a in app.get("ContainerEntrypoint", [])]
    argv += [resolve_text(a, parameters, execution_id) for a in app.get("ContainerArguments", [])]
    env = {k: resolve_text(v, parameters, execution_id) for k, v in step["Arguments"].get("Environment", {}).items()}
    return argv, env


def execute(
    definition: Mapping[str, Any],
    *,
    execution_id: str,
    parameters: Mapping[str, str],
    container_env: Mapping[str, str],
    parallel: int = 2,
    timeout: float = 120.0,
) -> ExecutionResult:
    values: dict[str, Any] = {p["Name"]: p["DefaultValue"] for p in definition["Parameters"] if "DefaultValue" in p}
    values.update(parameters)
    missing = [p["Name"] for p in definition["Parameters"] if p["Name"] not in values]
    if missing:
        raise ValueError(f"no value for the parameters {missing}")  # SageMaker refuses to start such an execution
    steps = {s["Name"]: s for s in flatten(definition["Steps"])}
    inside: dict[str, str] = {}  # a branch's step -> its Condition step
    for s in steps.values():
        if s["Type"] == "Condition":
            for branch in ("IfSteps", "ElseSteps"):
                inside.update({inner["Name"]: s["Name"] for inner in s["Arguments"][branch]})
    sorter = graphlib.TopologicalSorter(
        {name: [*s.get("DependsOn", []), *([inside[name]] if name in inside else [])] for name, s in steps.items()}
    )
    sorter.prepare()
    results: dict[str, StepResult] = {}
    volumes = tempfile.TemporaryDirectory(prefix="sm-harness-")
    files: dict[str, dict[str, Any]] = {}  # step -> property file name -> its JSON
    not_taken: set[str] = set()

    def run(name: str) -> StepResult:
        step = steps[name]
        argv, env = command(step, values, execution_id)
        mounts = {}
        for out in (step["Arguments"].get("ProcessingOutputConfig") or {}).get("Outputs", []):
            local = out["S3Output"]["LocalPath"]
            mounts[out["OutputName"]] = f"{volumes.name}/{name}/{out['OutputName']}"
            argv = [a.replace(local, mounts[out["OutputName"]]) for a in argv]
        full_env = {**container_env, **env}
        proc = subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode == 0:  # a failed job uploads nothing
            uploaded = {}
            for out in (step["Arguments"].get("ProcessingOutputConfig") or {}).get("Outputs", []):
                uri = resolve_text(out["S3Output"]["S3Uri"], values, execution_id)
                uploaded[out["OutputName"]] = uri
                _upload(mounts[out["OutputName"]], uri, container_env)
            for pf in step.get("PropertyFiles", []):
                text = _download(f"{uploaded[pf['OutputName']]}/{pf['FilePath']}", container_env)
                files.setdefault(name, {})[pf["PropertyFileName"]] = json.loads(text)
        return StepResult(name, "Succeeded" if proc.returncode == 0 else "Failed", argv, env, proc.returncode,
                          proc.stdout + proc.stderr)

    def decide(name: str) -> None:
        """Evaluate a Condition step and drop the steps of the branch not taken."""
        args = steps[name]["Arguments"]
        holds = True
        for condition in args["Conditions"]:
            assert condition["Type"] == "Equals", condition
            get = condition["LeftValue"]["Std:JsonGet"]
            _, producer, _, file = get["PropertyFile"]["Get"].split(".")
            holds = holds and files[producer][file][get["Path"]] == condition["RightValue"]
        for inner in flatten(args["ElseSteps" if holds else "IfSteps"]):
            not_taken.add(inner["Name"])
        results[name] = StepResult(name, "Succeeded")

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        running: dict[Future[StepResult], str] = {}
        while sorter.is_active():
            for name in sorter.get_ready():
                if name in not_taken:
                    sorter.done(name)
                elif any(results[d].status != "Succeeded" for d in steps[name].get("DependsOn", [])):
                    results[name] = StepResult(name, "NotExecuted")
                    sorter.done(name)
                elif steps[name]["Type"] == "Condition":
                    decide(name)
                    sorter.done(name)
                else:
                    running[pool.submit(run, name)] = name
            if not running:
                continue
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                results[name] = future.result()
                sorter.done(name)
    volumes.cleanup()
    return ExecutionResult(execution_id, {name: results[name] for name in steps if name in results}, files)


def _s3(env: Mapping[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _upload(local_dir: str, uri: str, env: Mapping[str, str]) -> None:
    """Every file the job left under an output's LocalPath, to its S3Uri (what EndOfJob does)."""
    bucket, prefix = _split(uri)
    client = _s3(env)
    for path in sorted(Path(local_dir).rglob("*")) if Path(local_dir).is_dir() else []:
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local_dir).as_posix()}")


def _download(uri: str, env: Mapping[str, str]) -> str:
    bucket, key = _split(uri)
    return _s3(env).get_object(Bucket=bucket, Key=key)["Body"].read().decode()
