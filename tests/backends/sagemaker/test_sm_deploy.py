"""The ``sagemaker`` deployment target against moto's server on 127.0.0.1 (an emulator: no instance runs).

moto keeps the models, endpoint configurations and endpoints, applies variant weights, and answers
CloudWatch metric queries, so a rollout can be driven end to end: create the endpoint with two weighted
production variants, move the weights stage by stage on (injected) CloudWatch metrics, promote, and roll
back. moto does not implement UpdateEndpoint, so the variant-set changes that need it are checked with
botocore's Stubber, which validates each request against the SageMaker API model.
"""

from __future__ import annotations

import io
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from resources.serving_helpers import Registry, make_registry
from sm_support import BUCKET, ROLE

from mlpipe import deploy
from mlpipe.deploy import ErrorRate

pytest.importorskip("mlflow.server", reason="needs the full mlflow package (sqlite registry)")

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlflow-pyfunc:3.17.2"


@pytest.fixture(scope="module")
def _registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return make_registry(tmp_path_factory)


@pytest.fixture
def reg(_registry: Registry) -> Registry:
    from mlflow import MlflowClient

    client = MlflowClient(_registry.uri)
    client.set_registered_model_alias("scorer", "champion", "1")
    client.set_registered_model_alias("scorer", "challenger", "2")
    return _registry


def _options(**extra: Any) -> dict[str, Any]:
    return {"role_arn": ROLE, "image": IMAGE, "model_data": f"s3://{BUCKET}/models", "region": "us-east-1",
            "retire": False, "wait": 10, **extra}


def _weights(endpoint: str) -> dict[str, float]:
    sm = boto3.client("sagemaker", region_name="us-east-1")
    variants = sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"]
    return {v["VariantName"]: v.get("CurrentWeight", v.get("DesiredWeight")) for v in variants}


def _traffic(endpoint: str, variant: str, invocations: int, errors: int = 0) -> None:
    cw = boto3.client("cloudwatch", region_name="us-east-1")
    dims = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant}]
    now = datetime.now(tz=UTC)
    cw.put_metric_data(Namespace="AWS/SageMaker", MetricData=[
        {"MetricName": "Invocations", "Dimensions": dims, "Timestamp": now, "Value": invocations, "Unit": "Count"},
        {"MetricName": "Invocation5XXErrors", "Dimensions": dims, "Timestamp": now, "Value": errors, "Unit": "Count"},
        {"MetricName": "ModelLatency", "Dimensions": dims, "Timestamp": now, "Value": 4200.0, "Unit": "Microseconds"},
    ])


def test_rollout_on_a_sagemaker_endpoint(aws: str, reg: Registry, tmp_path: Path) -> None:
    store = tmp_path / "store"
    state = deploy.start("sm-scorer", "scorer", target="sagemaker", target_options=_options(),
                         gates=[ErrorRate(max=0.05)], min_requests=100, store=store, tracking_uri=reg.uri)
    assert state.details["change"] == "created"
    assert _weights("sm-scorer") == {"v1": 90.0, "v2": 10.0}
    sm = boto3.client("sagemaker", region_name="us-east-1")
    model = sm.describe_model(ModelName="sm-scorer-scorer-v2")
    assert model["PrimaryContainer"]["Image"] == IMAGE and model["ExecutionRoleArn"] == ROLE
    url = model["PrimaryContainer"]["ModelDataUrl"]
    assert url == f"s3://{BUCKET}/models/scorer/2/model.tar.gz"
    body = boto3.client("s3").get_object(Bucket=BUCKET, Key="models/scorer/2/model.tar.gz")["Body"].read()
    names = tarfile.open(fileobj=io.BytesIO(body)).getnames()
    assert "MLmodel" in names and "model.skops" in names  # the MLflow model directory, at the archive's root

    time.sleep(1.1)  # CloudWatch timestamps are whole seconds: the data points come after the stage began
    _traffic("sm-scorer", "v2", 40)
    held = deploy.advance("sm-scorer", store=store)
    assert held.action == "held" and "40 of 100 requests" in held.reasons[0]
    _traffic("sm-scorer", "v2", 160, errors=2)
    _traffic("sm-scorer", "v1", 1800, errors=1)
    moved = deploy.advance("sm-scorer", store=store)
    assert moved.action == "advanced", moved.reasons
    assert moved.metrics["challenger"]["requests"] == 200 and moved.metrics["challenger"]["errors"] == 2
    assert moved.metrics["challenger"]["latency_avg_ms"] == pytest.approx(4.2)
    assert _weights("sm-scorer") == {"v1": 50.0, "v2": 50.0} and moved.state.details["change"] == "weights"

    time.sleep(1.1)
    _traffic("sm-scorer", "v2", 500, errors=3)
    done = deploy.advance("sm-scorer", store=store)
    assert done.action == "promoted"
    assert _weights("sm-scorer") == {"v1": 0.0, "v2": 100.0}
    assert done.state.details["idle_variants"] == ["v1"]  # retire=False: v1 keeps its instances, no traffic

    # the next challenger (v1 again, as if retrained) fails on errors: rollback to v2, by weights
    from mlflow import MlflowClient

    MlflowClient(reg.uri).set_registered_model_alias("scorer", "challenger", "1")
    again = deploy.start("sm-scorer", "scorer", target="sagemaker", target_options=_options(),
                         gates=[ErrorRate(max=0.05)], min_requests=100, store=store, tracking_uri=reg.uri)
    assert again.champion.label == "scorer/2" and _weights("sm-scorer") == {"v1": 10.0, "v2": 90.0}
    time.sleep(1.1)
    _traffic("sm-scorer", "v1", 300, errors=45)
    rolled = deploy.advance("sm-scorer", store=store)
    assert rolled.action == "rolled_back" and "error rate 15.00% > 5.00%" in rolled.reasons[0]
    assert _weights("sm-scorer") == {"v1": 0.0, "v2": 100.0}
    actions = [(e.action, e.details.get("weights")) for e in deploy.history("sm-scorer", store=store)]
    assert actions[0] == ("start", {"v1": 90.0, "v2": 10.0}) and actions[-1][0] == "rollback"


def test_bad_options_and_refusals_are_clear(aws: str, reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(deploy.DeploymentError, match=r"invalid options for the sagemaker target.*role_arn"):
        deploy.start("sm-x", "scorer", target="sagemaker", target_options={"image": IMAGE}, store=tmp_path,
                     tracking_uri=reg.uri)
    from mlpipe.errors import BackendError

    with pytest.raises(BackendError, match=r"sagemaker: deploying 'sm-y'.*NoSuchBucket"):
        deploy.start("sm-y", "scorer", target="sagemaker", target_options=_options(model_data="s3://no-such-bucket/m"),
                     store=tmp_path, tracking_uri=reg.uri)
    with pytest.raises(deploy.DeploymentError, match="no deployment 'sm-y'"):
        deploy.status("sm-y", store=tmp_path)  # a refused deployment leaves no state behind


def test_variant_set_changes_use_update_endpoint(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promotion with retire=True, and shadow mode, as requests validated against the SageMaker API model."""
    from botocore.stub import ANY, Stubber
    from mlpipe_sagemaker.deploy import SageMakerTarget

    from mlpipe.deploy import DeploymentState, ModelRef, TargetSpec

    sm = boto3.client("sagemaker", region_name="us-east-1")
    stub = Stubber(sm)
    target = SageMakerTarget(**_options(retire=True, wait=0))
    monkeypatch.setattr(target, "_client", lambda service: sm)
    v1 = ModelRef(name="scorer", version="1", uri="models:/scorer/1")
    v2 = ModelRef(name="scorer", version="2", uri="models:/scorer/2")
    promoted = DeploymentState(name="sm-z", model="scorer", target=TargetSpec(kind="sagemaker"), champion=v2,
                               traffic={"champion": 100}, revision=4, status="promoted")
    for name in ("sm-z-scorer-v2",):
        stub.add_response("describe_model", {"ModelName": name, "PrimaryContainer": {}, "CreationTime": datetime.now(),
                                             "ModelArn": f"arn:aws:sagemaker:us-east-1:1:model/{name}"},
                          {"ModelName": name})
    live = {"EndpointName": "sm-z", "EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/sm-z",
            "EndpointConfigName": "old", "EndpointStatus": "InService", "CreationTime": datetime.now(),
            "LastModifiedTime": datetime.now(),
            "ProductionVariants": [{"VariantName": "v1"}, {"VariantName": "v2"}]}
    stub.add_response("describe_endpoint", live, {"EndpointName": "sm-z"})
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:1:x/y"}, {
        "EndpointConfigName": ANY,
        "ProductionVariants": [{"VariantName": "v2", "ModelName": "sm-z-scorer-v2", "InitialInstanceCount": 1,
                                "InstanceType": "ml.m5.large", "InitialVariantWeight": 100.0}],
        "Tags": ANY,
    })
    stub.add_response("update_endpoint", {"EndpointArn": live["EndpointArn"]},
                      {"EndpointName": "sm-z", "EndpointConfigName": ANY})
    stub.add_response("describe_endpoint", live, {"EndpointName": "sm-z"})
    with stub:
        details = target.apply(promoted, None)  # type: ignore[arg-type]
    stub.assert_no_pending_responses()
    assert details["change"] == "new endpoint configuration" and details["weights"] == {"v2": 100.0}

    shadow = DeploymentState(name="sm-z", model="scorer", target=TargetSpec(kind="sagemaker"), champion=v1,
                             challenger=v2, shadow=True, traffic={"champion": 100, "challenger": 0}, revision=5,
                             status="rolling")
    stub = Stubber(sm)
    for name in ("sm-z-scorer-v1", "sm-z-scorer-v2"):
        stub.add_response("describe_model", {"ModelName": name, "PrimaryContainer": {}, "CreationTime": datetime.now(),
                                             "ModelArn": f"arn:aws:sagemaker:us-east-1:1:model/{name}"},
                          {"ModelName": name})
    stub.add_response("describe_endpoint", {**live, "ProductionVariants": [{"VariantName": "v1"}]},
                      {"EndpointName": "sm-z"})
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:1:x/z"}, {
        "EndpointConfigName": ANY,
        "ProductionVariants": [{"VariantName": "v1", "ModelName": "sm-z-scorer-v1", "InitialInstanceCount": 1,
                                "InstanceType": "ml.m5.large", "InitialVariantWeight": 100.0}],
        "ShadowProductionVariants": [{"VariantName": "v2", "ModelName": "sm-z-scorer-v2", "InitialInstanceCount": 1,
                                      "InstanceType": "ml.m5.large", "InitialVariantWeight": 100.0}],
        "Tags": ANY,
    })
    stub.add_response("update_endpoint", {"EndpointArn": live["EndpointArn"]},
                      {"EndpointName": "sm-z", "EndpointConfigName": ANY})
    stub.add_response("describe_endpoint", live, {"EndpointName": "sm-z"})
    with stub:
        details = target.apply(shadow, None)  # type: ignore[arg-type]
    stub.assert_no_pending_responses()
    assert details["shadow_variants"] == ["v2"]
