"""The ``vertex`` deployment target: a Vertex AI Endpoint whose ``traffic_split`` is the deployment's.

Each model version becomes a Vertex ``Model`` (its MLflow model directory
copied under ``artifact_uri``, served by ``image``, an MLflow pyfunc serving
container answering ``/invocations`` and ``/ping`` on port 8080). The
endpoint (id: the deployment's name) has one deployed model per version; a
new challenger is deployed with no traffic, then every stage is one
``UpdateEndpoint`` of ``traffic_split`` (deployed model id -> percent), and
after promotion or rollback the losing deployed model is undeployed
(``retire``). Vertex endpoints have no shadow traffic: a shadow rollout is
refused. Live metrics are not read (Cloud Monitoring is not queried), so
gates on this target see no traffic figures; see docs/deployment.md.

Only the GAPIC ``aiplatform_v1`` ``ModelServiceClient`` and
``EndpointServiceClient`` are used (imported on first use), with the same
endpoint, transport and credential options as the Vertex pipelines backend.
"""

from __future__ import annotations

import json
import re
import tempfile
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from mlpipe.errors import BackendError
from mlpipe.extend import ArtifactStore, DeploymentError, DeploymentState, DeployTarget, ModelRef

__all__ = ["VertexEndpointTarget", "deployed_name", "model_id"]

_UNSAFE = re.compile(r"[^a-z0-9-]+")


def _id(*parts: str, limit: int = 63) -> str:
    text = _UNSAFE.sub("-", "-".join(parts).lower()).strip("-")[:limit].rstrip("-")
    return text if text[:1].isalpha() else f"m-{text}"[:limit]


def model_id(state: DeploymentState, ref: ModelRef) -> str:
    """The Vertex Model id of one version: ``<deployment>-<model>-v<version>``."""
    return _id(state.name, ref.name, f"v{ref.version}")


def deployed_name(ref: ModelRef) -> str:
    """The display name of a version's deployed model on the endpoint: ``v<version>``."""
    return f"v{ref.version}"


class VertexEndpointTarget(DeployTarget):
    """Deploy to a Vertex AI endpoint, champion and challenger split by ``traffic_split``.

    Options:
        project / location: Where the endpoint and models live.
        image: The serving container (an MLflow pyfunc image in Artifact Registry).
        artifact_uri: ``gs://bucket/prefix`` where each version's MLflow model directory is copied.
        endpoint_id: Default: the deployment's name.
        machine_type / min_replicas / max_replicas: Of each deployed model.
        api_endpoint: Default ``<location>-aiplatform.googleapis.com``.
        transport: ``grpc`` or ``rest``.
        credentials: ``default`` (Application Default Credentials) or ``anonymous`` (an emulator).
        retire: After promotion or rollback, undeploy the losing version; when false it keeps 0 %.
        timeout: Seconds to wait for each long-running operation (upload, deploy, undeploy).
    """

    kind = "vertex"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        project: str
        location: str
        image: str
        artifact_uri: str
        endpoint_id: str | None = None
        machine_type: str = "n1-standard-2"
        min_replicas: int = 1
        max_replicas: int = 1
        api_endpoint: str | None = None
        transport: Literal["grpc", "rest"] = "grpc"
        credentials: Literal["default", "anonymous"] = "default"
        retire: bool = True
        timeout: float = 1800.0

    options: Options  # type: ignore[assignment]

    # -- clients -----------------------------------------------------------------------------
    @property
    def parent(self) -> str:
        return f"projects/{self.options.project}/locations/{self.options.location}"

    def _kwargs(self) -> dict[str, Any]:
        from google.api_core.client_options import ClientOptions

        endpoint = self.options.api_endpoint or f"{self.options.location}-aiplatform.googleapis.com"
        kwargs: dict[str, Any] = {
            "client_options": ClientOptions(api_endpoint=endpoint),
            "transport": self.options.transport,
        }
        if self.options.credentials == "anonymous":
            from google.auth.credentials import AnonymousCredentials

            kwargs["credentials"] = AnonymousCredentials()  # type: ignore[no-untyped-call]
        return kwargs

    def _clients(self) -> tuple[Any, Any]:
        from google.cloud.aiplatform_v1 import EndpointServiceClient, ModelServiceClient

        kwargs = self._kwargs()
        return ModelServiceClient(**kwargs), EndpointServiceClient(**kwargs)

    def endpoint_name(self, state: DeploymentState) -> str:
        return f"{self.parent}/endpoints/{self.options.endpoint_id or _id(state.name)}"

    # -- the contract ------------------------------------------------------------------------
    def apply(self, state: DeploymentState, store: ArtifactStore) -> dict[str, Any]:
        """Make the endpoint serve ``state``: models uploaded, deployed, ``traffic_split`` set, losers retired."""
        from google.api_core import exceptions as api_exceptions
        from google.auth import exceptions as auth_exceptions

        if state.shadow:
            raise DeploymentError(
                f"deployment {state.name!r}: Vertex AI endpoints have no shadow traffic (every deployed model "
                "answers its share of requests); roll out in traffic stages instead (--stages 10,50,100)",
                target=self.kind,
            )
        try:
            return self._apply(state)
        except (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError, OSError) as exc:
            raise BackendError(
                f"vertex: deploying {state.name!r} (revision {state.revision}) to {self.endpoint_name(state)} "
                f"failed: {type(exc).__name__}: {exc}. Check the project, location, image and artifact_uri options "
                "and the caller's roles/aiplatform.user",
                backend="vertex",
            ) from exc

    def _apply(self, state: DeploymentState) -> dict[str, Any]:
        from google.api_core import exceptions as api_exceptions

        models_client, endpoints = self._clients()
        models = {role: self._ensure_model(models_client, state, ref) for role, ref in state.models().items()}
        name = self.endpoint_name(state)
        try:
            endpoint = endpoints.get_endpoint(name=name)
        except api_exceptions.NotFound:
            endpoint = self._create_endpoint(endpoints, state, name)
        deployed = {d.model: d.id for d in endpoint.deployed_models}
        split = {str(k): int(v) for k, v in dict(endpoint.traffic_split).items()}
        for role, model in models.items():
            if model not in deployed:  # a new version: deployed with no traffic, then the split below moves it
                deployed[model] = self._deploy(endpoints, name, model, state.models()[role], split)
                split = {str(k): int(v) for k, v in dict(endpoints.get_endpoint(name=name).traffic_split).items()}
        wanted = {deployed[models[role]]: int(state.traffic.get(role, 0)) for role in models}
        losers = [d for m, d in deployed.items() if m not in models.values()]
        target = {**dict.fromkeys(losers, 0), **wanted}
        if split != target:
            self._set_split(endpoints, name, target)
        if self.options.retire:  # versions the state no longer names: 0 % by now
            for loser in losers:
                self._undeploy(endpoints, name, loser, wanted)
        return {
            "endpoint": name,
            "models": dict(models),
            "deployed_models": {role: deployed[model] for role, model in models.items()},
            "traffic_split": wanted,
        }

    # -- models ------------------------------------------------------------------------------
    def _ensure_model(self, client: Any, state: DeploymentState, ref: ModelRef) -> str:
        from google.api_core import exceptions as api_exceptions
        from google.cloud.aiplatform_v1 import Model, UploadModelRequest

        mid = model_id(state, ref)
        name = f"{self.parent}/models/{mid}"
        try:
            return str(client.get_model(name=name).name)
        except api_exceptions.NotFound:
            pass
        artifacts = self._copy_artifacts(state, ref)
        model = Model.from_json(
            json.dumps(
                {
                    "displayName": f"{ref.name} v{ref.version}"[:128],
                    "artifactUri": artifacts,
                    "containerSpec": {
                        "imageUri": self.options.image,
                        "predictRoute": "/invocations",
                        "healthRoute": "/ping",
                        "ports": [{"containerPort": 8080}],
                        "env": [{"name": "MLFLOW_DEPLOYMENT_FLAVOR_NAME", "value": "python_function"}],
                    },
                    "labels": {
                        "mlpipe-deployment": _id(state.name),
                        "mlpipe-model": _id(ref.name),
                        "mlpipe-version": _id(ref.version) if not ref.version.isdigit() else ref.version,
                    },
                }
            )
        )
        operation = client.upload_model(request=UploadModelRequest(parent=self.parent, model=model, model_id=mid))
        return str(operation.result(timeout=self.options.timeout).model) or name

    def _copy_artifacts(self, state: DeploymentState, ref: ModelRef) -> str:
        """Copy the version's MLflow model directory (MLmodel at its root) to ``artifact_uri``."""
        import fsspec
        import mlflow

        base = self.options.artifact_uri.rstrip("/")
        if not base.startswith("gs://") or len(base) <= len("gs://"):
            raise DeploymentError(f"artifact_uri must be gs://bucket/prefix, got {self.options.artifact_uri!r}")
        destination = f"{base}/{ref.name}/{ref.version}"
        uri = state.tracking_uri
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri) if uri else mlflow.MlflowClient()
        version = client.get_model_version(ref.name, ref.version)
        logged = getattr(version, "model_id", None)  # MLflow 3: the logged model holds the files
        if logged:
            location = str(client.get_logged_model(logged).artifact_location)
        else:
            location = str(client.get_model_version_download_uri(ref.name, ref.version))
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp, tracking_uri=uri)
            fs = fsspec.filesystem("gs")
            fs.put(f"{local.rstrip('/')}/", destination, recursive=True)
        return destination

    # -- the endpoint ------------------------------------------------------------------------
    def _create_endpoint(self, client: Any, state: DeploymentState, name: str) -> Any:
        from google.cloud.aiplatform_v1 import Endpoint

        endpoint = Endpoint(display_name=state.name[:128], labels={"mlpipe-deployment": _id(state.name)})
        operation = client.create_endpoint(parent=self.parent, endpoint=endpoint, endpoint_id=name.rsplit("/", 1)[1])
        operation.result(timeout=self.options.timeout)
        return client.get_endpoint(name=name)

    def _deploy(self, client: Any, endpoint: str, model: str, ref: ModelRef, split: dict[str, int]) -> str:
        from google.cloud.aiplatform_v1 import DeployedModel

        deployed = DeployedModel.from_json(
            json.dumps(
                {
                    "model": model,
                    "displayName": deployed_name(ref),
                    "dedicatedResources": {
                        "machineSpec": {"machineType": self.options.machine_type},
                        "minReplicaCount": self.options.min_replicas,
                        "maxReplicaCount": self.options.max_replicas,
                    },
                }
            )
        )
        # "0" is the model being deployed; an endpoint's first model must take all the traffic.
        traffic = {**split, "0": 0} if split else {"0": 100}
        operation = client.deploy_model(endpoint=endpoint, deployed_model=deployed, traffic_split=traffic)
        return str(operation.result(timeout=self.options.timeout).deployed_model.id)

    def _set_split(self, client: Any, endpoint: str, split: dict[str, int]) -> None:
        from google.cloud.aiplatform_v1 import Endpoint
        from google.protobuf import field_mask_pb2

        if sum(split.values()) != 100:
            raise DeploymentError(f"traffic split {split} for {endpoint} does not sum to 100")
        client.update_endpoint(
            endpoint=Endpoint(name=endpoint, traffic_split=split),
            update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]),
        )

    def _undeploy(self, client: Any, endpoint: str, deployed_id: str, remaining: dict[str, int]) -> None:
        operation = client.undeploy_model(endpoint=endpoint, deployed_model_id=deployed_id, traffic_split=remaining)
        operation.result(timeout=self.options.timeout)
