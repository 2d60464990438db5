"""Compiling to a SageMaker pipeline definition: golden files, equality with the SDK's definition(), determinism."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import sm_pipelines
from mlpipe_sagemaker import SageMakerBackend, SageMakerOptions, build_definition, dumps, validate_definition
from mlpipe_sagemaker.compiler import encode_value
from sm_support import IMAGE, OPTIONS, ROLE
from typer.testing import CliRunner

import mlpipe as mp
from mlpipe.cli import app
from mlpipe.errors import ConfigError, UnsupportedFeatureError
from mlpipe.runtime import decode_param
from mlpipe.store import open_store
from mlpipe.testing import basic, branching, cutoff, failing

GOLDEN = Path(__file__).parent / "golden"
STORE = "s3://mlpipe-golden/store"
DIGEST = "ab" * 32
PIPELINES = {
    "training": sm_pipelines.training,
    "required": sm_pipelines.required,
    "conformance_basic": basic,
    "conformance_cutoff": cutoff,
    "conformance_failure": failing,
    "conformance_branch": branching,
    "branches": sm_pipelines.branches,
    "evaluated": sm_pipelines.evaluated,
}


def emit(pipeline: mp.Pipeline, **options: object) -> str:
    opts = SageMakerOptions(**{**OPTIONS, **options})
    return dumps(build_definition(pipeline.ir, store_url=STORE, ir_digest=DIGEST, role=ROLE, image=IMAGE,
                                  options=opts))


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_golden_definition(name: str) -> None:
    text = emit(PIPELINES[name])
    path = GOLDEN / f"{name}.json"
    if os.environ.get("MLPIPE_UPDATE_GOLDEN"):
        path.write_text(json.dumps(json.loads(text), indent=1) + "\n")
    assert json.loads(text) == json.loads(path.read_text()), f"regenerate with MLPIPE_UPDATE_GOLDEN=1 and review {path}"


@pytest.fixture(scope="module")
def sdk_definition():  # type: ignore[no-untyped-def]
    pytest.importorskip("sagemaker.mlops.workflow.pipeline")
    from sm_oracle import sdk_definition

    return sdk_definition


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_byte_identical_to_sdk_definition(name: str, sdk_definition) -> None:  # type: ignore[no-untyped-def]
    pipeline = PIPELINES[name]
    ours = emit(pipeline)
    theirs = sdk_definition(pipeline.ir, store_url=STORE, ir_digest=DIGEST, options=SageMakerOptions(**OPTIONS),
                            image=IMAGE)
    assert ours == theirs


def test_definition_shape() -> None:
    definition = json.loads(emit(sm_pipelines.training))
    params = {p["Name"]: p for p in definition["Parameters"]}
    assert params["n"] == {"Name": "n", "Type": "Integer", "DefaultValue": 8}
    assert params["scale"] == {"Name": "scale", "Type": "Float", "DefaultValue": 0.5}
    assert params["full"] == {"Name": "full", "Type": "Boolean", "DefaultValue": False}
    assert params["flags"] == {"Name": "flags", "Type": "String", "DefaultValue": '{"layers":[8,4],"lr":0.1}'}
    assert params["cache"] == {"Name": "cache", "Type": "String", "DefaultValue": "true"}
    steps = {s["Name"]: s for s in definition["Steps"]}
    assert list(steps) == [s.name for s in sm_pipelines.training.ir.steps]
    assert steps["report"]["DependsOn"] == ["train", "stats"]
    assert "DependsOn" not in steps["load"]
    assert all(s["CacheConfig"] == {"Enabled": False} for s in steps.values())
    app_spec = steps["load"]["Arguments"]["AppSpecification"]
    assert app_spec["ContainerEntrypoint"] == ["python", "-m", "mlpipe.runtime"]
    args = app_spec["ContainerArguments"]
    assert args[args.index("--run-id") + 1] == {"Get": "Execution.PipelineExecutionId"}
    assert args[args.index("--store") + 1] == STORE and args[args.index("--ir") + 1] == DIGEST
    assert {"Std:Join": {"On": "", "Values": ["n=", {"Get": "Parameters.n"}]}} in args
    cluster = {n: s["Arguments"]["ProcessingResources"]["ClusterConfig"]["InstanceType"] for n, s in steps.items()}
    assert cluster == {"load": "ml.m5.large", "featurize": "ml.m5.xlarge", "train": "ml.g5.2xlarge",
                       "stats": "ml.c5.9xlarge", "report": "ml.m5.large"}
    assert steps["train"]["Arguments"]["AppSpecification"]["ImageUri"].endswith("/gpu:2.0")
    assert steps["train"]["Arguments"]["Environment"] == {"OMP_NUM_THREADS": "4", "PYTHONUNBUFFERED": "1"}
    # timeout 30 min, 3 attempts, 2 backoffs of at most 60 s, 300 s grace
    assert steps["featurize"]["Arguments"]["StoppingCondition"] == {"MaxRuntimeInSeconds": 3 * 1800 + 120 + 300}
    assert "StoppingCondition" not in steps["load"]["Arguments"]
    assert [p["MaxAttempts"] for p in steps["featurize"]["RetryPolicies"]] == [2, 2]
    assert [p["MaxAttempts"] for p in steps["stats"]["RetryPolicies"]] == [20, 20]  # SageMaker's maximum
    assert "RetryPolicies" not in steps["load"]


def test_profile_overrides_instance_types() -> None:
    definition = json.loads(emit(sm_pipelines.training, default_instance_type="ml.t3.medium",
                                 instance_types={"stats": "ml.m5.xlarge"}, volume_size_gb=50, python="python3"))
    steps = {s["Name"]: s["Arguments"] for s in definition["Steps"]}
    assert steps["load"]["ProcessingResources"]["ClusterConfig"] == {
        "InstanceType": "ml.t3.medium", "InstanceCount": 1, "VolumeSizeInGB": 50}
    assert steps["stats"]["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.m5.xlarge"
    assert steps["featurize"]["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.m5.xlarge"
    assert steps["load"]["AppSpecification"]["ContainerEntrypoint"][0] == "python3"


def test_required_and_none_parameters() -> None:
    params = {p["Name"]: p for p in json.loads(emit(sm_pipelines.required))["Parameters"]}
    assert params["x"] == {"Name": "x", "Type": "Integer"}  # required: no default, given at start
    assert params["limit"] == {"Name": "limit", "Type": "String", "DefaultValue": "null"}


@pytest.mark.parametrize("pipeline", [basic, sm_pipelines.training])
def test_values_round_trip_through_the_runtime(pipeline: mp.Pipeline) -> None:
    values = {"n": 7, "scale": 3, "label": "a b=c", "options": {"z": [1, 2.5], "a": None}, "flags": [1],
              "epochs": 2, "full": True}
    for spec in pipeline.ir.params:
        value = values[spec.name]
        assert decode_param(spec, encode_value(spec, value)) == value, spec.name


def test_compile_twice_gives_identical_json_and_stores_the_ir(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    backend = SageMakerBackend(OPTIONS, image=IMAGE)
    first = backend.compile(sm_pipelines.training.ir, str(tmp_path / "a.json"), store=store)
    second = backend.compile(sm_pipelines.training.ir, str(tmp_path / "b.json"), store=store)
    assert Path(first).read_bytes() == Path(second).read_bytes()
    args = json.loads(Path(first).read_text())["Steps"][0]["Arguments"]["AppSpecification"]["ContainerArguments"]
    digest = args[args.index("--ir") + 1]
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert store.has(f"pipelines/{digest}.json")
    assert args[args.index("--store") + 1] == store.url


def test_cli_compile_with_a_profile(tmp_path: Path) -> None:
    Path("mlpipe.toml").write_text(
        '[profiles.sm]\nbackend = "sagemaker"\nstore = ".mlpipe"\n'
        f'image = "{IMAGE}"\noptions = {{ role = "{ROLE}", region = "us-east-1" }}\n'
    )
    target = f"{Path(sm_pipelines.__file__)}:training"
    result = CliRunner().invoke(app, ["compile", target, "--profile", "sm", "-o", "out/pipeline.json"])
    assert result.exit_code == 0, result.output
    definition = json.loads(Path("out/pipeline.json").read_text())
    assert [s["Name"] for s in definition["Steps"]] == ["load", "featurize", "train", "stats", "report"]


def test_cli_compile_without_role_is_a_clear_usage_error() -> None:
    target = f"{Path(sm_pipelines.__file__)}:training"
    result = CliRunner().invoke(app, ["compile", target, "--backend", "sagemaker", "-o", "p.json"])
    assert result.exit_code == 2
    assert "options.role" in result.output


def test_missing_image_names_the_step(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFeatureError, match=r"step 'load' has no image.*profile"):
        SageMakerBackend(OPTIONS).compile(sm_pipelines.training.ir, str(tmp_path / "p.json"),
                                          store=open_store(str(tmp_path / "s")))


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="not an IAM role ARN"):
        SageMakerBackend({"role": "SageMakerRole"})
    with pytest.raises(ConfigError, match="Valid options: role, region"):
        SageMakerBackend({"rolee": ROLE})


def test_backend_is_found_by_entry_point() -> None:
    from mlpipe.backend import available_backends, get_backend_class

    assert get_backend_class("sagemaker") is SageMakerBackend
    assert "mlpipe-sagemaker" in available_backends()["sagemaker"]


def test_importing_the_plugin_does_not_import_boto3_or_the_sdk() -> None:
    import subprocess
    import sys

    code = ("import sys, mlpipe_sagemaker; "
            "print(sorted(m for m in ('boto3', 'botocore', 'sagemaker') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_public_api_is_pinned() -> None:
    import mlpipe_sagemaker

    assert mlpipe_sagemaker.__all__ == [
        "INSTANCE_TABLE",
        "DefinitionValidationError",
        "SageMakerBackend",
        "SageMakerOptions",
        "build_definition",
        "choose_instance_type",
        "dumps",
        "schedule_pipeline",
        "validate_definition",
    ]
    assert SageMakerBackend.capabilities.schedules and SageMakerBackend.capabilities.gates
    assert not SageMakerBackend.capabilities.map and SageMakerBackend.capabilities.conditions


def test_store_endpoint_travels_to_every_job_credentials_do_not(tmp_path: Path) -> None:
    from mlpipe.staging import StagedStore

    store = StagedStore("s3://bucket/mlpipe", {"endpoint_url": "http://minio:9000", "key": "AKIAIOSFODNN7EXAMPLE",
                                               "secret": "wJalrXUtnFEMI-not-in-any-definition"})
    with pytest.warns(UserWarning, match="storage_options key, secret .* not written into the sagemaker spec"):
        path = SageMakerBackend(OPTIONS, image=IMAGE).compile(sm_pipelines.training.ir, str(tmp_path / "d.json"),
                                                              store=store)
    text = Path(path).read_text()
    assert "AKIAIOSFODNN7EXAMPLE" not in text and "wJalrXUtnFEMI" not in text
    for step in json.loads(text)["Steps"]:
        args = step["Arguments"]["AppSpecification"]["ContainerArguments"]
        assert args[args.index("--storage-options") + 1] == '{"endpoint_url":"http://minio:9000"}'
    store.discard()


def test_conditions_are_condition_steps_over_a_property_file_and_validate() -> None:
    from mlpipe_sagemaker.validate import DefinitionValidationError

    definition = json.loads(emit(sm_pipelines.branches))
    validate_definition(definition, pipeline_name="sm-branches")
    square, when_1, when_3 = definition["Steps"]
    assert square["PropertyFiles"] == [{"PropertyFileName": "mlpipe-when", "OutputName": "mlpipe-when",
                                        "FilePath": "when.json"}]
    assert square["Arguments"]["AppSpecification"]["ContainerArguments"][-2:] == [
        "--when-json", "/opt/ml/processing/mlpipe-when/when.json"]
    assert when_1["Type"] == "Condition" and when_1["DependsOn"] == ["square"]
    assert [s["Name"] for s in when_1["Arguments"]["IfSteps"]] == ["add", "is_big", "when-2"]
    assert [s["Name"] for s in when_1["Arguments"]["ElseSteps"]] == ["add_2"]  # ~(sq > 10): the else of one test
    assert when_3["Arguments"]["Conditions"][0]["LeftValue"]["Std:JsonGet"]["Path"] == "mlpipe_when_1"
    when_1["Arguments"]["Conditions"][0]["Type"] = "Matches"
    with pytest.raises(DefinitionValidationError, match="condition type 'Matches'"):
        validate_definition(definition)


def test_conditions_need_an_s3_store() -> None:
    with pytest.raises(UnsupportedFeatureError, match="the store must be an s3:// URL"):
        build_definition(sm_pipelines.branches.ir, store_url="/tmp/store", ir_digest=DIGEST, role=ROLE, image=IMAGE,
                         options=SageMakerOptions(**OPTIONS))
