"""Submitting with boto3 against moto's SageMaker and Scheduler on 127.0.0.1.

moto stores pipelines, executions and schedules but runs nothing: every
execution is "Succeeded" at once and StopPipelineExecution /
ListPipelineExecutionSteps are not implemented. States moto cannot produce
(Executing, Failed, Stopping) are driven with botocore's Stubber.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import sm_pipelines
from botocore.stub import ANY, Stubber
from mlpipe_sagemaker import SageMakerBackend, schedule_pipeline
from sm_support import IMAGE, OPTIONS, ROLE
from typer.testing import CliRunner

from mlpipe.backend import RunHandle
from mlpipe.cli import app
from mlpipe.errors import BackendError, ConfigError
from mlpipe.run import Run
from mlpipe.store import open_store

PIPELINE_FILE = str(Path(sm_pipelines.__file__))


def profile(store: str, **options: Any) -> None:
    opts = ", ".join(f"{k} = {json.dumps(v)}" for k, v in {**OPTIONS, **options}.items())
    Path("mlpipe.toml").write_text(
        f'default_profile = "sm"\n[profiles.sm]\nbackend = "sagemaker"\nstore = "{store}"\nimage = "{IMAGE}"\n'
        f"options = {{ {opts} }}\n"
    )


def test_submit_upserts_starts_and_records_the_run(s3_url: str) -> None:
    backend = SageMakerBackend(OPTIONS, image=IMAGE)
    store = open_store(s3_url)
    handle = backend.submit(sm_pipelines.required.ir, store, params={"x": 4, "limit": None}, run_id="20261126-1-ab",
                            cache=False)
    sm = boto3.client("sagemaker")
    described = sm.describe_pipeline(PipelineName="sm-required")
    definition = json.loads(described["PipelineDefinition"])
    assert [s["Name"] for s in definition["Steps"]] == ["square", "clip", "add"]
    assert described["RoleArn"] == ROLE
    assert handle.external_id and handle.external_id.startswith(described["PipelineArn"] + "/execution/")
    assert handle.run_id == handle.external_id.rsplit("/", 1)[-1]
    assert handle.data["submitted_as"] == "20261126-1-ab"
    passed = sm.list_pipeline_parameters_for_execution(PipelineExecutionArn=handle.external_id)["PipelineParameters"]
    assert {p["Name"]: p["Value"] for p in passed} == {"x": "4", "limit": "null", "cache": "false"}
    execution = sm.describe_pipeline_execution(PipelineExecutionArn=handle.external_id)
    assert execution["PipelineExecutionDisplayName"] == "20261126-1-ab"
    doc = store.get_json(f"runs/{handle.run_id}/run.json")
    assert doc["status"] == "running" and doc["backend"] == "sagemaker" and doc["params"] == {"x": 4, "limit": None}
    args = definition["Steps"][0]["Arguments"]["AppSpecification"]["ContainerArguments"]
    assert store.has(f"pipelines/{args[args.index('--ir') + 1]}.json")
    assert RunHandle.from_json(handle.to_json()) == handle

    status = backend.status(handle)  # moto: "Succeeded" at once
    assert status.state == "succeeded" and status.done
    ended = store.get_json(f"runs/{handle.run_id}/run.json")
    assert ended["status"] == "succeeded" and ended["ended"]


def test_second_submit_updates_the_pipeline(s3_url: str) -> None:
    store = open_store(s3_url)
    SageMakerBackend({**OPTIONS, "pipeline_name": "sm-update"}, image=IMAGE).submit(
        sm_pipelines.required.ir, store, params={"x": 1}, run_id="r-1")
    SageMakerBackend({**OPTIONS, "pipeline_name": "sm-update", "max_parallel_steps": 2}, image=IMAGE + "-v2").submit(
        sm_pipelines.required.ir, store, params={"x": 1}, run_id="r-2")
    sm = boto3.client("sagemaker")
    definition = json.loads(sm.describe_pipeline(PipelineName="sm-update")["PipelineDefinition"])
    assert definition["Steps"][0]["Arguments"]["AppSpecification"]["ImageUri"] == IMAGE + "-v2"
    executions = sm.list_pipeline_executions(PipelineName="sm-update")["PipelineExecutionSummaries"]
    assert len(executions) == 2


def test_submit_refuses_a_store_that_is_not_s3(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs an s3:// store.*s3://my-bucket/mlpipe"):
        SageMakerBackend(OPTIONS, image=IMAGE).submit(sm_pipelines.required.ir, open_store(str(tmp_path)),
                                                      params={"x": 1}, run_id="r")


def test_cli_submit_wait_and_runs_show(s3_url: str) -> None:
    profile(s3_url)
    runner = CliRunner()
    result = runner.invoke(app, ["submit", f"{PIPELINE_FILE}:required", "-p", "x=5", "--wait"])
    assert result.exit_code == 0, result.output
    run_id = result.output.split("submitted run ", 1)[1].split()[0]
    assert f"run {run_id} succeeded" in result.output
    doc = open_store(s3_url).get_json(f"runs/{run_id}/run.json")
    assert doc["handle"]["external_id"].endswith(f"/execution/{run_id}")
    shown = runner.invoke(app, ["runs", "show", run_id])
    assert shown.exit_code == 0, shown.output
    assert f"sagemaker id {doc['handle']['external_id']}" in shown.output


def test_cli_submit_wait_exits_1_when_the_execution_fails(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    profile(s3_url)
    monkeypatch.setattr(SageMakerBackend, "_execution_state",
                        lambda self, handle: ("failed", "Step add failed: ClientError: AlgorithmError"))
    monkeypatch.setattr(SageMakerBackend, "_step_failures", lambda self, handle: {})  # not implemented by moto
    result = CliRunner().invoke(app, ["submit", f"{PIPELINE_FILE}:required", "-p", "x=5", "--wait"])
    assert result.exit_code == 1
    assert "failed: Step add failed" in result.output


def test_pipeline_submit_through_a_profile_saves_the_handle(s3_url: str) -> None:
    profile(s3_url)
    handle = sm_pipelines.required.submit(x=2)
    assert handle.backend == "sagemaker"
    run = Run.load(open_store(s3_url), handle.run_id)
    assert run.doc["handle"]["run_id"] == handle.run_id
    assert set(run.steps) == {"square", "clip", "add"}


def _stubbed(backend: SageMakerBackend) -> tuple[Stubber, RunHandle]:
    client = backend._client("sagemaker")
    arn = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abcdef123456"
    handle = RunHandle(backend="sagemaker", run_id="abcdef123456", pipeline="p", store="s3://b/none",
                       external_id=arn, data={"region": "us-east-1"})
    return Stubber(client), handle


def _described(status: str, reason: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"PipelineExecutionStatus": status}
    if reason:
        out["FailureReason"] = reason
    return out


def test_status_maps_sagemaker_states_and_completes_the_records(s3_url: str) -> None:
    backend = SageMakerBackend(OPTIONS, image=IMAGE)
    store = open_store(s3_url)
    handle = backend.submit(sm_pipelines.required.ir, store, params={"x": 2}, run_id="r-status")
    stub = Stubber(backend._client("sagemaker"))
    arn = {"PipelineExecutionArn": handle.external_id}
    stub.add_response("describe_pipeline_execution", _described("Executing"), arn)
    stub.add_response("describe_pipeline_execution", _described("Stopping"), arn)
    stub.add_response("describe_pipeline_execution", _described("Failed", "Step square failed"), arn)
    stub.add_response("list_pipeline_execution_steps", {"PipelineExecutionSteps": [
        {"StepName": "square", "StepStatus": "Failed", "FailureReason": "CannotPullContainerError: no such image"}]},
        arn)
    stub.add_response("describe_pipeline_execution", _described("Failed", "Step square failed"), arn)
    with stub:
        assert backend.status(handle).state == "running"
        assert backend.status(handle).state == "running"
        failed = backend.status(handle)
        again = backend.status(handle)  # the end is recorded once; no second ListPipelineExecutionSteps
        stub.assert_no_pending_responses()
    assert failed.state == again.state == "failed" and failed.message == "Step square failed"
    assert failed.steps == {"square": "failed", "add": "skipped"}  # clip never started either: it stays pending
    run = Run.load(store, handle.run_id)
    assert run.status == "failed" and "CannotPullContainerError" in (run.error or "")
    assert run.steps["add"].error == "skipped because upstream step 'square' did not succeed"
    assert run.steps["clip"].status == "pending"


def test_cancel_is_idempotent() -> None:
    backend = SageMakerBackend(OPTIONS, image=IMAGE)
    stub, handle = _stubbed(backend)
    arn = {"PipelineExecutionArn": handle.external_id}
    stub.add_response("describe_pipeline_execution", _described("Executing"), arn)
    stub.add_response("stop_pipeline_execution", {"PipelineExecutionArn": handle.external_id},
                      {**arn, "ClientRequestToken": ANY})
    stub.add_response("describe_pipeline_execution", _described("Stopped"), arn)  # cancel again: nothing to do
    stub.add_response("describe_pipeline_execution", _described("Executing"), arn)  # a race with the end:
    stub.add_client_error("stop_pipeline_execution", "ConflictException", "Pipeline execution is not running")
    stub.add_response("describe_pipeline_execution", _described("Succeeded"), arn)
    with stub:
        backend.cancel(handle)
        backend.cancel(handle)
        backend.cancel(handle)
        stub.assert_no_pending_responses()


def test_aws_errors_are_translated() -> None:
    backend = SageMakerBackend(OPTIONS, image=IMAGE)
    stub, handle = _stubbed(backend)
    stub.add_client_error("describe_pipeline_execution", "AccessDeniedException", "not authorized")
    expected = r"DescribePipelineExecution failed: AccessDeniedException.*permission"
    with stub, pytest.raises(BackendError, match=expected):
        backend.status(handle)


def test_unknown_execution_on_moto_is_a_backend_error(aws: str) -> None:
    backend = SageMakerBackend(OPTIONS, image=IMAGE)
    handle = RunHandle(backend="sagemaker", run_id="nope", pipeline="p", store="s3://b/x",
                       external_id="arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/nope")
    with pytest.raises(BackendError, match="DescribePipelineExecution failed"):
        backend.status(handle)


def test_schedule_creates_then_updates_an_eventbridge_schedule(s3_url: str) -> None:
    profile(s3_url, schedule_role="arn:aws:iam::123456789012:role/SchedulerRole")
    arn = schedule_pipeline(sm_pipelines.required, "0 3 * * ? *", timezone="Europe/Berlin", x=7)
    scheduler = boto3.client("scheduler")
    got = scheduler.get_schedule(Name="sm-required")
    assert got["Arn"] == arn
    assert got["ScheduleExpression"] == "cron(0 3 * * ? *)"
    assert got["ScheduleExpressionTimezone"] == "Europe/Berlin"
    assert got["Target"]["Arn"].endswith(":pipeline/sm-required")
    assert got["Target"]["RoleArn"] == "arn:aws:iam::123456789012:role/SchedulerRole"
    params = got["Target"]["SageMakerPipelineParameters"]["PipelineParameterList"]
    assert {p["Name"]: p["Value"] for p in params} == {"x": "7", "limit": "null", "cache": "true"}
    schedule_pipeline(sm_pipelines.required, "rate(1 day)", x=8)
    assert scheduler.get_schedule(Name="sm-required")["ScheduleExpression"] == "rate(1 day)"
    backend = SageMakerBackend(OPTIONS)
    backend.unschedule("sm-required")
    backend.unschedule("sm-required")  # idempotent
    assert not scheduler.list_schedules()["Schedules"]


def test_schedule_needs_required_parameters_and_a_valid_expression(s3_url: str) -> None:
    from mlpipe.errors import ParameterError, UnsupportedFeatureError

    backend = SageMakerBackend(OPTIONS, image=IMAGE)
    with pytest.raises(ParameterError, match="required parameter"):
        backend.schedule(sm_pipelines.required.ir, open_store(s3_url), cron="rate(1 day)")
    with pytest.raises(UnsupportedFeatureError, match="not an EventBridge Scheduler expression"):
        backend.schedule(sm_pipelines.required.ir, open_store(s3_url), cron="0 3 * * *", params={"x": 1})


def test_execution_is_pinned_to_the_version_the_update_wrote(s3_url: str) -> None:
    """An update's PipelineVersionId is passed to StartPipelineExecution (moto returns no version: Stubber, which
    also checks the request against botocore's SageMaker model)."""
    store = open_store(s3_url)
    backend = SageMakerBackend({**OPTIONS, "pipeline_name": "sm-pinned"}, image=IMAGE)
    sm = backend._client("sagemaker")
    arn = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/sm-pinned"
    with Stubber(sm) as stub:
        stub.add_client_error("create_pipeline", "ValidationException", "Pipeline names must be unique within an AWS "
                              "account and region. Pipeline with name (sm-pinned) already exists.")
        stub.add_response("update_pipeline", {"PipelineArn": arn, "PipelineVersionId": 7})
        stub.add_response("start_pipeline_execution", {"PipelineExecutionArn": f"{arn}/execution/abc123"},
                          {"PipelineName": "sm-pinned", "PipelineParameters": ANY, "PipelineExecutionDescription": ANY,
                           "ClientRequestToken": ANY, "PipelineExecutionDisplayName": "pin-1",
                           "PipelineVersionId": 7})
        handle = backend.submit(sm_pipelines.required.ir, store, params={"x": 1}, run_id="pin-1")
        stub.assert_no_pending_responses()
    assert handle.run_id == "abc123"


def test_cache_hits_are_left_out_of_the_execution_and_a_fully_cached_run_starts_none(s3_url: str) -> None:
    from mlpipe.local import LocalBackend
    from mlpipe.testing import run_on

    store = open_store(s3_url)
    assert run_on(LocalBackend(), sm_pipelines.required, store, x=3, limit=5).status == "succeeded"
    backend = SageMakerBackend({**OPTIONS, "pipeline_name": "sm-prune"}, image=IMAGE)
    written: list[dict[str, Any]] = []
    upsert = backend._upsert

    def recording(ir: Any, definition: Any) -> Any:
        written.append(json.loads(json.dumps(definition)))
        return upsert(ir, definition)

    backend._upsert = recording  # type: ignore[method-assign]
    handle = backend.submit(sm_pipelines.required.ir, store, params={"x": 3, "limit": 5}, run_id="prune-1")
    assert written == []  # fully cached: no pipeline written, no execution started
    sm = boto3.client("sagemaker")
    assert not [p for p in sm.list_pipelines()["PipelineSummaries"] if p["PipelineName"] == "sm-prune"]
    assert handle.data["kind"] == "cached" and handle.run_id == "prune-1"
    assert backend.status(handle).state == "succeeded"
    assert all(s.cached for s in Run.load(store, "prune-1").steps.values())

    handle = backend.submit(sm_pipelines.required.ir, store, params={"x": 3, "limit": 2}, run_id="prune-2")
    pruned, restored = written  # the execution's definition, then the whole one again for schedules and the console
    steps = {s["Name"]: s for s in pruned["Steps"]}
    assert sorted(steps) == ["add", "clip"]  # square is a hit: no Processing job for it
    add_args = steps["add"]["Arguments"]["AppSpecification"]["ContainerArguments"]
    key = add_args[add_args.index("--cached") + 1]
    assert key.startswith("square=") and len(key) == len("square=") + 64
    assert steps["add"]["DependsOn"] == ["clip"]  # no longer waits for square: it reads square's output by key
    assert "--cached" not in steps["clip"]["Arguments"]["AppSpecification"]["ContainerArguments"]
    assert [s["Name"] for s in restored["Steps"]] == ["square", "clip", "add"]
    latest = json.loads(sm.describe_pipeline(PipelineName="sm-prune")["PipelineDefinition"])
    assert [s["Name"] for s in latest["Steps"]] == ["square", "clip", "add"]
    doc = store.get_json(f"runs/{handle.run_id}/run.json")
    assert doc["sagemaker"]["pruned"] == ["square"]
    assert Run.load(store, handle.run_id).steps["square"].cached
