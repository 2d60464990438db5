"""The ``sagemaker`` deployment target: a SageMaker real-time endpoint with one production variant per version.

Each model version becomes a SageMaker ``Model`` (its MLflow model directory
packed as ``model.tar.gz`` under ``model_data``, served by ``image``, an MLflow
pyfunc serving container such as the one ``mlflow sagemaker
build-and-push-container`` pushes). The endpoint has a production variant per
version (``v<version>``) whose weights are the deployment's traffic split; a
stage change is ``UpdateEndpointWeightsAndCapacities`` (no redeployment),
shadow mode is a ``ShadowProductionVariant``, and a change of the variant set
(a new challenger, retiring the loser after promotion or rollback) is a new
endpoint configuration and ``UpdateEndpoint``. Live metrics come from
CloudWatch (``AWS/SageMaker``: ``Invocations``, ``Invocation5XXErrors``,
``ModelLatency`` per variant).
"""

from __future__ import annotations

import io
import re
import tarfile
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from mlpipe.errors import BackendError
from mlpipe.extend import ArtifactStore, DeploymentError, DeploymentState, DeployTarget, ModelRef

__all__ = ["SageMakerTarget"]

_UNSAFE = re.compile(r"[^a-zA-Z0-9-]+")


def _name(*parts: str, limit: int = 63) -> str:
    text = _UNSAFE.sub("-", "-".join(parts)).strip("-")
    return text[:limit].rstrip("-")


def variant_name(ref: ModelRef) -> str:
    return f"v{_UNSAFE.sub('-', ref.version)}"


class SageMakerTarget(DeployTarget):
    """Deploy to a SageMaker real-time endpoint.

    Options:
        role_arn: Execution role of the models (reads ``model_data``, pulls ``image``).
        image: The serving container: an MLflow pyfunc image in ECR.
        model_data: ``s3://bucket/prefix`` where each version's ``model.tar.gz`` is uploaded.
        endpoint_name: Default: the deployment's name.
        instance_type / instance_count: Per variant.
        region / endpoint_url: For boto3 (default: its own configuration, ``AWS_ENDPOINT_URL``).
        retire: After promotion or rollback, remove the losing variant (``UpdateEndpoint``); when
            false its weight is 0 and it keeps its instances until the next rollout.
        wait: Seconds to wait for the endpoint to be ``InService`` after each change (0: do not wait).
        period: CloudWatch period of the metrics, in seconds (a multiple of 60).
    """

    kind = "sagemaker"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        role_arn: str
        image: str
        model_data: str
        endpoint_name: str | None = None
        instance_type: str = "ml.m5.large"
        instance_count: int = 1
        region: str | None = None
        endpoint_url: str | None = None
        retire: bool = True
        wait: float = 1800.0
        period: int = 60

    options: Options  # type: ignore[assignment]

    # -- clients -----------------------------------------------------------------------------
    def _client(self, service: str) -> Any:
        import boto3

        kwargs: dict[str, Any] = {}
        if self.options.region:
            kwargs["region_name"] = self.options.region
        if self.options.endpoint_url:
            kwargs["endpoint_url"] = self.options.endpoint_url
        return boto3.client(service, **kwargs)

    def endpoint(self, state: DeploymentState) -> str:
        return self.options.endpoint_name or _name(state.name)

    # -- models ------------------------------------------------------------------------------
    def _model_name(self, state: DeploymentState, ref: ModelRef) -> str:
        return _name(self.endpoint(state), ref.name, f"v{ref.version}")

    def _ensure_model(self, sm: Any, state: DeploymentState, ref: ModelRef) -> str:
        from botocore.exceptions import ClientError

        name = self._model_name(state, ref)
        try:
            sm.describe_model(ModelName=name)
            return name
        except ClientError as exc:
            if "Could not find model" not in str(exc):
                raise
        url = self._upload(state, ref)
        sm.create_model(
            ModelName=name,
            PrimaryContainer={
                "Image": self.options.image,
                "ModelDataUrl": url,
                "Environment": {"MLFLOW_DEPLOYMENT_FLAVOR_NAME": "python_function", "SERVING_ENVIRONMENT": "SageMaker"},
            },
            ExecutionRoleArn=self.options.role_arn,
            Tags=[
                {"Key": "mlpipe.model", "Value": ref.label},
                {"Key": "mlpipe.mlflow_run_id", "Value": ref.run_id or "-"},
            ],
        )
        return name

    def _upload(self, state: DeploymentState, ref: ModelRef) -> str:
        """Pack the version's MLflow model directory as model.tar.gz (files at the root) and upload it."""
        import mlflow

        bucket, _, prefix = self.options.model_data.removeprefix("s3://").partition("/")
        if not self.options.model_data.startswith("s3://") or not bucket:
            raise DeploymentError(f"model_data must be s3://bucket/prefix, got {self.options.model_data!r}")
        key = "/".join(p for p in (prefix.strip("/"), ref.name, ref.version, "model.tar.gz") if p)
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=self._location(state, ref), dst_path=tmp, tracking_uri=state.tracking_uri
            )
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                for path in sorted(Path(local).rglob("*")):
                    tar.add(path, arcname=str(path.relative_to(local)), recursive=False)
        self._client("s3").put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
        return f"s3://{bucket}/{key}"

    @staticmethod
    def _location(state: DeploymentState, ref: ModelRef) -> str:
        import mlflow

        uri = state.tracking_uri
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri) if uri else mlflow.MlflowClient()
        mv = client.get_model_version(ref.name, ref.version)
        model_id = getattr(mv, "model_id", None)
        if model_id:
            return str(client.get_logged_model(model_id).artifact_location)
        return str(client.get_model_version_download_uri(ref.name, ref.version))

    # -- endpoint ----------------------------------------------------------------------------
    def _variant(self, model: str, name: str, weight: float) -> dict[str, Any]:
        return {
            "VariantName": name,
            "ModelName": model,
            "InitialInstanceCount": self.options.instance_count,
            "InstanceType": self.options.instance_type,
            "InitialVariantWeight": float(weight),
        }

    def apply(self, state: DeploymentState, store: ArtifactStore) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._apply(state)
        except (ClientError, BotoCoreError) as exc:
            raise BackendError(
                f"sagemaker: deploying {state.name!r} (revision {state.revision}) to endpoint "
                f"{self.endpoint(state)!r} failed: {exc}; check the role, image and model_data options and the "
                "endpoint's state (aws sagemaker describe-endpoint)",
                backend="sagemaker",
            ) from exc

    def _apply(self, state: DeploymentState) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        sm = self._client("sagemaker")
        endpoint = self.endpoint(state)
        models = {role: self._ensure_model(sm, state, ref) for role, ref in state.models().items()}
        names = {role: variant_name(ref) for role, ref in state.models().items()}
        shadow_role = "challenger" if state.shadow and state.challenger is not None else None
        production = {names[r]: (models[r], state.traffic.get(r, 0)) for r in models if r != shadow_role}
        shadow = {names[r]: (models[r], 100) for r in models if r == shadow_role}
        try:
            current = sm.describe_endpoint(EndpointName=endpoint)
        except ClientError as exc:
            if "Could not find endpoint" not in str(exc):
                raise
            current = None
        details: dict[str, Any] = {"endpoint": endpoint, "models": {names[r]: m for r, m in models.items()}}
        if current is not None:
            live = {v["VariantName"] for v in current.get("ProductionVariants", [])}
            live_shadow = {v["VariantName"] for v in current.get("ShadowProductionVariants", [])}
            keep = set(production) <= live and set(shadow) == live_shadow
            if keep and (live == set(production) or not self.options.retire):
                weights = [
                    {"VariantName": v, "DesiredWeight": float(production.get(v, ("", 0))[1])} for v in sorted(live)
                ]
                sm.update_endpoint_weights_and_capacities(EndpointName=endpoint, DesiredWeightsAndCapacities=weights)
                details.update(change="weights", weights={w["VariantName"]: w["DesiredWeight"] for w in weights})
                idle = sorted(live - set(production))
                if idle:
                    details["idle_variants"] = idle
                self._wait(sm, endpoint)
                return details
        config = _name(endpoint, f"r{state.revision}", f"{int(time.time())}")
        request: dict[str, Any] = {
            "EndpointConfigName": config,
            "ProductionVariants": [self._variant(m, v, w) for v, (m, w) in sorted(production.items())],
            "Tags": [
                {"Key": "mlpipe.deployment", "Value": state.name},
                {"Key": "mlpipe.revision", "Value": str(state.revision)},
            ],
        }
        if shadow:
            request["ShadowProductionVariants"] = [self._variant(m, v, w) for v, (m, w) in shadow.items()]
        sm.create_endpoint_config(**request)
        if current is None:
            sm.create_endpoint(
                EndpointName=endpoint,
                EndpointConfigName=config,
                Tags=[{"Key": "mlpipe.deployment", "Value": state.name}],
            )
            details["change"] = "created"
        else:
            sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=config)
            details["change"] = "new endpoint configuration"
        details["endpoint_config"] = config
        details["weights"] = {v: float(w) for v, (_m, w) in production.items()}
        if shadow:
            details["shadow_variants"] = sorted(shadow)
        self._wait(sm, endpoint)
        return details

    def _wait(self, sm: Any, endpoint: str) -> None:
        deadline = time.monotonic() + self.options.wait
        delay = 0.05
        while True:
            status = sm.describe_endpoint(EndpointName=endpoint)
            state = status.get("EndpointStatus")
            if state == "InService" or self.options.wait <= 0:
                return
            if state == "Failed":
                raise BackendError(
                    f"sagemaker: endpoint {endpoint!r} failed: {status.get('FailureReason')}", backend="sagemaker"
                )
            if time.monotonic() > deadline:
                raise BackendError(
                    f"sagemaker: endpoint {endpoint!r} is still {state} after {self.options.wait:g} s",
                    backend="sagemaker",
                )
            time.sleep(delay)
            delay = min(delay * 2, 15.0)

    # -- metrics -----------------------------------------------------------------------------
    def live_metrics(self, state: DeploymentState, store: ArtifactStore) -> dict[str, dict[str, Any]]:
        cw = self._client("cloudwatch")
        endpoint = self.endpoint(state)
        start = datetime.fromtimestamp(state.stage_started, tz=UTC)
        end = datetime.now(tz=UTC) + timedelta(seconds=60)  # the current period is still filling
        period = self.options.period
        out: dict[str, dict[str, Any]] = {}
        for role, ref in state.models().items():
            dims = [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": variant_name(ref)}]

            def stat(metric: str, statistic: str, dims: list[dict[str, str]] = dims) -> list[float]:
                answer = cw.get_metric_statistics(
                    Namespace="AWS/SageMaker",
                    MetricName=metric,
                    Dimensions=dims,
                    StartTime=start,
                    EndTime=end,
                    Period=period,
                    Statistics=[statistic],
                )
                return [float(p[statistic]) for p in answer.get("Datapoints", []) if statistic in p]

            requests = sum(stat("Invocations", "Sum"))
            errors = sum(stat("Invocation5XXErrors", "Sum"))
            latency = stat("ModelLatency", "Average")  # microseconds
            peak = stat("ModelLatency", "Maximum")
            out[role] = {
                "requests": int(requests),
                "errors": int(errors),
                "error_rate": errors / requests if requests else 0.0,
                "latency_avg_ms": sum(latency) / len(latency) / 1000 if latency else None,
                "latency_max_ms": max(peak) / 1000 if peak else None,
            }
        return out
