"""Compiled definitions executed step by step as SageMaker would, against the moto S3 store.

``HarnessBackend`` is the real :class:`SageMakerBackend` (it upserts the
pipeline and starts the execution on moto, writes the run's records, reads the
state, records the end); only the executor differs: where AWS would launch one
Processing job per step, the harness (sm_harness.py) runs each step's exact
container command and environment as a subprocess, taking the definition and
the parameter values back from moto (what SageMaker would execute), and the
execution id from the execution ARN.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import boto3
import pytest
import sm_pipelines
from mlpipe_sagemaker import SageMakerBackend
from sm_harness import ExecutionResult, execute
from sm_support import IMAGE, OPTIONS, runtime_env

from mlpipe.backend import RunHandle
from mlpipe.ir import PipelineIR
from mlpipe.local import LocalBackend
from mlpipe.store import ArtifactStore, open_store
from mlpipe.testing import BackendConformance, run_on


class HarnessBackend(SageMakerBackend):
    """SageMaker backend whose executions the test harness carries out (moto only records them)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(OPTIONS, image=IMAGE)
        self.endpoint = endpoint
        self.results: dict[str, ExecutionResult] = {}

    def submit(self, ir: PipelineIR, store: ArtifactStore, *, params: Mapping[str, Any], run_id: str,
               cache: bool = True) -> RunHandle:
        handle = super().submit(ir, store, params=params, run_id=run_id, cache=cache)
        if handle.data.get("kind") == "cached":  # every step a cache hit: no execution was started
            assert handle.external_id is None
            return handle
        sm = boto3.client("sagemaker")
        arn = handle.external_id
        definition = json.loads(sm.describe_pipeline_definition_for_execution(PipelineExecutionArn=arn)
                                ["PipelineDefinition"])
        passed = sm.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)["PipelineParameters"]
        self.results[handle.run_id] = execute(
            definition, execution_id=handle.run_id, parameters={p["Name"]: p["Value"] for p in passed},
            container_env=runtime_env(self.endpoint),
        )
        return handle

    def _execution_state(self, handle: RunHandle) -> tuple[str, str | None]:
        result = self.results[handle.run_id]
        return ("succeeded" if result.status == "Succeeded" else "failed"), result.failure_reason


class TestSageMakerConformance(BackendConformance):
    @pytest.fixture
    def backend(self, aws: str) -> HarnessBackend:
        return HarnessBackend(aws)

    @pytest.fixture
    def store(self, s3_url: str) -> Iterator[ArtifactStore]:
        yield open_store(s3_url)


def test_training_pipeline_equals_the_local_backend(aws: str, s3_url: str, tmp_path: Any) -> None:
    backend = HarnessBackend(aws)
    params = {"n": 6, "scale": 2, "epochs": 5, "full": True, "flags": {"lr": 0.5, "layers": [3]}}
    run = run_on(backend, sm_pipelines.training, open_store(s3_url), **params)
    assert run.status == "succeeded", run.error
    reference = run_on(LocalBackend(), sm_pipelines.training, open_store(str(tmp_path / "ref")), **params)
    for step in ("load", "featurize", "train", "stats", "report"):
        assert run.output(step) == reference.output(step), step
        assert run.steps[step].key == reference.steps[step].key, step  # same cache keys as a local run
    assert run.output("report") == "5.000 over 6 (full)"
    result = backend.results[run.id]
    train = result.steps["train"]
    assert train.argv[:3] == ["python", "-m", "mlpipe.runtime"]
    assert train.argv[train.argv.index("--run-id") + 1] == run.id
    assert "scale=2.0" in train.argv and "flags={\"layers\":[3],\"lr\":0.5}" in train.argv
    assert train.env == {"OMP_NUM_THREADS": "4", "PYTHONUNBUFFERED": "1"}


def test_required_and_none_parameters_reach_the_steps(aws: str, s3_url: str) -> None:
    backend = HarnessBackend(aws)
    store = open_store(s3_url)
    run = run_on(backend, sm_pipelines.required, store, x=3)
    assert run.status == "succeeded", run.error
    assert run.output("add") == 12  # limit=None travelled as the JSON text "null"
    assert run.params == {"x": 3, "limit": None}
    clip = backend.results[run.id].steps["clip"]
    assert "limit=null" in clip.argv and "x=3" in clip.argv


@pytest.mark.parametrize(("x", "ran", "not_taken"), [
    (4, {"square", "add", "is_big", "clip"}, {"clip_2": "not (is_big.output)", "add_2": "not (square.output > 10)",
                                              "square_2": "square.output >= 100"}),
    (2, {"square", "add_2"}, {"add": "square.output > 10", "is_big": "square.output > 10",
                              "clip": "square.output > 10", "clip_2": "square.output > 10",
                              "square_2": "square.output >= 100"}),
])
def test_condition_steps_take_one_branch_and_the_others_are_recorded_skipped(
    aws: str, s3_url: str, x: int, ran: set[str], not_taken: dict[str, str]
) -> None:
    backend = HarnessBackend(aws)
    run = run_on(backend, sm_pipelines.branches, open_store(s3_url), x=x)
    assert run.status == "succeeded", run.error
    assert {n for n, s in run.steps.items() if s.status == "succeeded"} == ran
    for name, condition in not_taken.items():
        assert run.steps[name].status == "skipped"
        assert f"condition {condition} is false" in (run.steps[name].error or ""), run.steps[name].error
    executed = backend.results[run.id].steps
    assert set(executed) == ran | {"when-1", "when-2", "when-3"} - ({"when-2"} if x == 2 else set())
    local = run_on(LocalBackend(), sm_pipelines.branches, open_store(s3_url), x=x)  # same keys: all hits
    assert all(s.cached for s in local.steps.values() if s.status == "succeeded")
    assert {n: s.status for n, s in local.steps.items()} == {n: s.status for n, s in run.steps.items()}


@pytest.mark.parametrize(("n", "promoted"), [(8, True), (2, False)])
def test_metrics_reach_sagemaker_as_a_property_file_on_s3(aws: str, s3_url: str, n: int, promoted: bool) -> None:
    backend = HarnessBackend(aws)
    store = open_store(s3_url)
    run = run_on(backend, sm_pipelines.evaluated, store, n=n)
    assert run.status == "succeeded", run.error
    accuracy = round(1 - 1 / (n + 2), 4)
    expected = {"output": {"accuracy": accuracy, "samples": n, "per_class": {"positive": accuracy, "negative": 0.5}}}
    result = backend.results[run.id]
    assert result.property_files["evaluate"]["mlpipe-metrics"] == expected  # what JsonGet reads, from S3
    assert result.property_files["evaluate"]["mlpipe-when"] == {"mlpipe_when_0": promoted}
    bucket, _, prefix = s3_url.removeprefix("s3://").partition("/")
    uploaded = boto3.client("s3").get_object(Bucket=bucket, Key=f"{prefix}/runs/{run.id}/metrics/evaluate/metrics.json")
    assert json.loads(uploaded["Body"].read()) == expected
    assert "promote" not in result.property_files  # a str output: no metrics file
    assert run.steps["promote"].status == ("succeeded" if promoted else "skipped")
    assert run.output("evaluate") == sm_pipelines.evaluate.fn(n)
    local = run_on(LocalBackend(), sm_pipelines.evaluated, store, n=n)  # the uploads do not disturb the store
    assert all(s.cached for s in local.steps.values() if s.status == "succeeded")
