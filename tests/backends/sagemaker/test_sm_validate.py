"""Early validation: what neither the SDK nor moto checks fails at compile time with the step named."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import sm_pipelines
from mlpipe_sagemaker import DefinitionValidationError, SageMakerBackend, choose_instance_type, validate_definition
from sm_support import IMAGE, OPTIONS

import mlpipe as mp
from mlpipe.errors import UnsupportedFeatureError
from mlpipe.ir import PipelineIR
from mlpipe.store import open_store

GOLDEN = json.loads((Path(__file__).parent / "golden" / "training.json").read_text())


def broken(edit: Any) -> dict[str, Any]:
    definition = copy.deepcopy(GOLDEN)
    edit(definition)
    return definition


def step(definition: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in definition["Steps"] if s["Name"] == name)


def test_the_golden_definition_is_valid() -> None:
    validate_definition(GOLDEN, pipeline_name="sm-training")


@pytest.mark.parametrize(
    ("edit", "message", "where"),
    [
        (lambda d: step(d, "stats").update(Name="stats step"), r"step name 'stats step' must match", "stats step"),
        (lambda d: step(d, "stats").update(Name="s" * 65), r"must match", "s" * 65),
        (lambda d: step(d, "stats").update(Name="load"), r"used twice", "load"),
        (lambda d: step(d, "load").update(DependsOn=["report"]), r"cycle: .*load", None),
        (lambda d: step(d, "load").update(DependsOn=["ghost"]), r"unknown step 'ghost'", "load"),
        (lambda d: step(d, "train")["Arguments"]["AppSpecification"]["ContainerArguments"].append("x" * 257),
         r"container argument 'x+\.\.\.' is 257 characters", "train"),
        (lambda d: d["Parameters"][4].update(DefaultValue="y" * 300), r"container argument 'flags=yyy.*is 306", "load"),
        (lambda d: step(d, "train")["Arguments"]["Environment"].update(EPOCHS={"Get": "Parameters.epochs"}),
         r"environment variable 'EPOCHS' is the Integer parameter 'epochs'.*Std:Join", "train"),
        (lambda d: step(d, "train")["Arguments"]["Environment"].update(EPOCHS=3), r"must be strings", "train"),
        (lambda d: step(d, "train")["Arguments"]["Environment"].update(LONG="v" * 257), r"257 characters", "train"),
        (lambda d: step(d, "train")["Arguments"]["Environment"].update(TAG={"Get": "Parameters.nope"}),
         r"parameter 'nope', which the pipeline does not declare", "train"),
        (lambda d: d["Parameters"].append({"Name": "n", "Type": "Integer"}), r"'n' is declared twice", None),
        (lambda d: d["Parameters"].append({"Name": "bad name", "Type": "String"}), r"parameter name", None),
        (lambda d: d["Parameters"].append({"Name": "m", "Type": "List"}), r"type 'List'", None),
        (lambda d: d["Parameters"][0].update(DefaultValue="8"), r"type Integer has the default '8'", None),
        (lambda d: step(d, "load")["Arguments"]["ProcessingResources"]["ClusterConfig"].update(InstanceType="m5.large"),
         r"instance type 'm5.large'", "load"),
        (lambda d: step(d, "load")["Arguments"].update(RoleArn="SageMakerRole"), r"not an IAM role ARN", "load"),
        (lambda d: step(d, "load")["Arguments"].update(StoppingCondition={"MaxRuntimeInSeconds": 0}),
         r"MaxRuntimeInSeconds 0", "load"),
        (lambda d: step(d, "stats")["RetryPolicies"][0].update(MaxAttempts=21), r"MaxAttempts 21", "stats"),
        (lambda d: step(d, "stats")["RetryPolicies"][0].update(ExceptionType=["Step.OOPS"]), r"Step.OOPS", "stats"),
        (lambda d: d["Steps"].extend(copy.deepcopy(d["Steps"][0]) | {"Name": f"c{i}"} for i in range(1200)),
         r"1048576", None),
    ],
)
def test_invalid_definitions_fail_naming_the_step(edit: Any, message: str, where: str | None) -> None:
    with pytest.raises(DefinitionValidationError, match=message) as info:
        validate_definition(broken(edit))
    if where is not None:
        assert info.value.step == where  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "message"), [
    ("my_pipeline!", "must be letters, digits and single '-'"),
    ("p" * 83, "more than 82"),
])
def test_pipeline_names(name: str, message: str) -> None:
    with pytest.raises(DefinitionValidationError, match=message):
        validate_definition(GOLDEN, pipeline_name=name)


def test_cycle_in_the_ir_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    ir = sm_pipelines.required.ir
    steps = list(ir.steps)
    steps[0] = steps[0].model_copy(update={"upstream": ("add",)})
    cyclic = PipelineIR(name=ir.name, params=ir.params, steps=tuple(steps), outputs=ir.outputs)
    store = open_store(str(tmp_path / "store"))
    with pytest.raises(DefinitionValidationError, match=r"cycle: square -> add -> square|cycle"):
        SageMakerBackend(OPTIONS, image=IMAGE).compile(cyclic, str(tmp_path / "p.json"), store=store)
    assert not store.has("pipelines")  # refused before the IR was written


def test_step_name_from_with_options_is_checked_at_check_time() -> None:
    renamed = sm_pipelines.square.with_options(name="square_" + "v" * 60)

    @mp.pipeline(name="dotted")
    def dotted(x: int = 1) -> int:
        return renamed(x)

    with pytest.raises(UnsupportedFeatureError) as info:
        SageMakerBackend(OPTIONS, image=IMAGE).check(dotted.ir)
    assert info.value.step == "square_" + "v" * 60  # type: ignore[attr-defined]
    assert "must match" in str(info.value)


def test_a_parameter_value_too_long_for_an_argument_is_refused_at_submit(s3_url: str) -> None:
    backend = SageMakerBackend(OPTIONS, image=IMAGE)
    with pytest.raises(DefinitionValidationError, match=r"parameter 'label' is 300 characters"):
        backend.submit(sm_pipelines_basic_ir(), open_store(s3_url), params={"label": "z" * 300}, run_id="r1")


def sm_pipelines_basic_ir() -> PipelineIR:
    from mlpipe.testing import basic

    return basic.ir


@pytest.mark.parametrize(("resources", "expected"), [
    ({}, "ml.m5.large"),
    ({"cpu": 1}, "ml.c5.large"),
    ({"cpu": 2, "memory": "8Gi"}, "ml.m5.large"),
    ({"memory": "100Gi"}, "ml.r5.4xlarge"),
    ({"cpu": 90}, "ml.m5.24xlarge"),
    ({"gpu": 1}, "ml.g4dn.xlarge"),
    ({"gpu": 4, "accelerator": "nvidia-tesla-v100"}, "ml.p3.8xlarge"),
    ({"gpu": 2}, "ml.g4dn.12xlarge"),
    ({"instance_type": "ml.trn1.2xlarge", "cpu": 1}, "ml.trn1.2xlarge"),
])
def test_instance_mapping(resources: dict[str, Any], expected: str) -> None:
    assert choose_instance_type("s", resources) == expected


@pytest.mark.parametrize(("resources", "message"), [
    ({"cpu": 500}, "no SageMaker instance in mlpipe's table fits Resources\\(cpu=500\\)"),
    ({"gpu": 1, "accelerator": "tpu-v5"}, "accelerator 'tpu-v5'"),
    ({"instance_type": "m5.large"}, "did you mean 'ml.m5.large'"),
])
def test_instance_mapping_errors_name_the_step(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(UnsupportedFeatureError, match=message) as info:
        choose_instance_type("train", resources)
    assert info.value.step == "train"  # type: ignore[attr-defined]
    assert "step 'train'" in str(info.value)


def test_profile_instance_type_is_checked() -> None:
    with pytest.raises(UnsupportedFeatureError, match="profile option instance_types"):
        choose_instance_type("s", {}, overrides={"s": "large"})


def test_role_is_required_to_compile() -> None:
    from mlpipe.errors import ConfigError

    with pytest.raises(ConfigError, match=r"options\.role"):
        SageMakerBackend({}, image=IMAGE).check(sm_pipelines.training.ir)
