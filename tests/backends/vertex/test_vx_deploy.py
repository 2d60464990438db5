"""The ``vertex`` deployment target: champion and challenger on one Vertex AI Endpoint, split by ``traffic_split``.

The real ``aiplatform_v1`` clients (REST transport) talk to the recording fake of the Vertex API on
127.0.0.1 (``vx_support``), which keeps models and endpoints, refuses a split that does not sum to 100,
a split naming a model not deployed, and undeploying a model that still has traffic, as the service does.
The model files go to gcp-storage-emulator. The registry is a real sqlite MLflow registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from resources.serving_helpers import Registry, make_registry
from vx_support import BUCKET, LOCATION, PROJECT, FakeVertex

from mlpipe import deploy
from mlpipe.deploy import Metric

pytest.importorskip("mlflow.server", reason="needs the full mlflow package (sqlite registry)")

IMAGE = "europe-docker.pkg.dev/my-project/serving/mlflow-pyfunc:3"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
ENDPOINT = f"{PARENT}/endpoints/vx-scorer"


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


def _options(fake: FakeVertex, **extra: Any) -> dict[str, Any]:
    return {"project": PROJECT, "location": LOCATION, "image": IMAGE, "artifact_uri": f"gs://{BUCKET}/models",
            "api_endpoint": fake.url, "transport": "rest", "credentials": "anonymous", **extra}  # fmt: skip


def _split(fake: FakeVertex) -> dict[str, int]:
    """The endpoint's traffic split by deployed model display name (v1, v2)."""
    endpoint = fake.endpoints[ENDPOINT]
    names = {d["id"]: d["displayName"] for d in endpoint["deployedModels"]}
    return {names[k]: int(v) for k, v in endpoint["trafficSplit"].items()}


def test_rollout_on_a_vertex_endpoint(fake_vertex: FakeVertex, gcs: str, reg: Registry, tmp_path: Path) -> None:
    import fsspec

    store = tmp_path / "store"
    gates = [Metric(name="accuracy", min=0.8)]
    state = deploy.start("vx-scorer", "scorer", target="vertex", target_options=_options(fake_vertex),
                         gates=gates, store=store, tracking_uri=reg.uri)  # fmt: skip
    assert _split(fake_vertex) == {"v1": 90, "v2": 10}
    model = fake_vertex.models[f"{PARENT}/models/vx-scorer-scorer-v2"]
    assert model["containerSpec"]["imageUri"] == IMAGE and model["containerSpec"]["predictRoute"] == "/invocations"
    assert model["artifactUri"] == f"gs://{BUCKET}/models/scorer/2"
    files = {p.rsplit("/", 1)[1] for p in fsspec.filesystem("gs").find(f"{BUCKET}/models/scorer/2")}
    assert "MLmodel" in files  # the MLflow model directory, MLmodel at its root
    assert state.details["endpoint"] == ENDPOINT and set(state.details["deployed_models"]) == {"champion", "challenger"}
    deploys = fake_vertex.calls("POST", ":deployModel")
    assert deploys[0].body["trafficSplit"] == {"0": 100}  # the endpoint's first model takes all the traffic
    assert deploys[1].body["trafficSplit"] == {_id(fake_vertex, "v1"): 100, "0": 0}  # the challenger: none, yet
    assert deploys[0].body["deployedModel"]["dedicatedResources"]["machineSpec"]["machineType"] == "n1-standard-2"

    # the same state again changes nothing (apply is idempotent): no new upload, deploy or split
    before = len(fake_vertex.requests)
    deploy.set_traffic("vx-scorer", 90, 10, store=store)
    assert not [r for r in fake_vertex.requests[before:] if r.method in ("POST", "PATCH")]

    moved = deploy.advance("vx-scorer", metrics={"accuracy": 0.91}, store=store)
    assert moved.action == "advanced" and _split(fake_vertex) == {"v1": 50, "v2": 50}
    patch = fake_vertex.calls("PATCH")[-1]
    assert patch.query["updateMask"] in (["trafficSplit"], ["traffic_split"])
    done = deploy.advance("vx-scorer", metrics={"accuracy": 0.92}, store=store)
    assert done.action == "promoted"
    assert _split(fake_vertex) == {"v2": 100}  # v1 undeployed once it had no traffic (retire)
    assert [d["displayName"] for d in fake_vertex.endpoints[ENDPOINT]["deployedModels"]] == ["v2"]

    # the next challenger (v1 again) fails its gate: rolled back to v2, and v1 undeployed again
    from mlflow import MlflowClient

    MlflowClient(reg.uri).set_registered_model_alias("scorer", "challenger", "1")
    again = deploy.start("vx-scorer", "scorer", target="vertex", target_options=_options(fake_vertex),
                         gates=gates, store=store, tracking_uri=reg.uri)  # fmt: skip
    assert again.champion.label == "scorer/2" and _split(fake_vertex) == {"v1": 10, "v2": 90}
    assert len(fake_vertex.calls("POST", "models:upload")) == 2  # v1's Model was reused, not uploaded again
    rolled = deploy.advance("vx-scorer", metrics={"accuracy": 0.5}, store=store)
    assert rolled.action == "rolled_back"
    assert _split(fake_vertex) == {"v2": 100}
    actions = [e.action for e in deploy.history("vx-scorer", store=store)]
    assert actions[0] == "start" and actions[-1] == "rollback"


def _id(fake: FakeVertex, display: str) -> str:
    return next(d["id"] for d in fake.endpoints[ENDPOINT]["deployedModels"] if d["displayName"] == display)


def test_shadow_bad_options_and_service_errors_are_clear(
    fake_vertex: FakeVertex, gcs: str, reg: Registry, tmp_path: Path
) -> None:
    from mlpipe.errors import BackendError

    with pytest.raises(deploy.DeploymentError, match=r"invalid options for the vertex target.*image"):
        deploy.start("vx-a", "scorer", target="vertex", target_options={"project": PROJECT, "location": LOCATION},
                     store=tmp_path, tracking_uri=reg.uri)  # fmt: skip
    with pytest.raises(deploy.DeploymentError, match=r"Vertex AI endpoints have no shadow traffic"):
        deploy.start("vx-b", "scorer", target="vertex", target_options=_options(fake_vertex), shadow=True,
                     store=tmp_path, tracking_uri=reg.uri)  # fmt: skip
    with pytest.raises(deploy.DeploymentError, match=r"artifact_uri must be gs://bucket/prefix"):
        deploy.start("vx-c", "scorer", target="vertex", target_options=_options(fake_vertex, artifact_uri="s3://x"),
                     store=tmp_path, tracking_uri=reg.uri)  # fmt: skip
    fake_vertex.endpoints.clear()
    wrong = _options(fake_vertex, project="other-project")  # the fake answers 403 to another project's uploads
    with pytest.raises(BackendError, match=r"vertex: deploying 'vx-d' \(revision 1\) to projects/other-project"):
        deploy.start("vx-d", "scorer", target="vertex", target_options=wrong, store=tmp_path, tracking_uri=reg.uri)
    with pytest.raises(deploy.DeploymentError, match="no deployment 'vx-d'"):
        deploy.status("vx-d", store=tmp_path)  # a refused deployment leaves no state behind
