"""The KServe target: an ``InferenceService`` manifest whose canary is the challenger.

KServe's canary rollout works on revisions of one InferenceService: the spec
describes the *latest* revision, and ``canaryTrafficPercent`` sends that share
of traffic to it while the previously rolled-out revision keeps the rest. So
the challenger is the spec (``storageUri``) with ``canaryTrafficPercent`` set
to its stage, promotion drops the field (100 % to the latest revision), and
rollback writes the champion back as the spec without a canary. mlpipe
writes the manifest (to the store, and to ``output`` if given); applying it
(``kubectl apply -f``) is the cluster's side. :func:`validate_manifest`
checks it against the InferenceService CRD's OpenAPI schema.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from mlpipe.deploy._state import DeploymentError, DeploymentState, ModelRef
from mlpipe.deploy._target import DeployTarget
from mlpipe.store import ArtifactStore

__all__ = ["KServeTarget", "manifest", "validate_manifest"]


class KServeTarget(DeployTarget):
    """Writes a KServe ``InferenceService`` (``serving.kserve.io/v1beta1``).

    Options:
        namespace: Kubernetes namespace.
        storage_uri: Where KServe finds a version's MLflow model files, with ``{name}`` and
            ``{version}`` (e.g. ``s3://models/{name}/{version}``). Default: the registry's source of
            the version, which must then be cloud storage KServe can read.
        model_format: The serving runtime's model format (``mlflow``).
        protocol_version: ``v2`` (Open Inference Protocol, what KServe's MLflow runtime speaks) or ``v1``.
        service_account: Service account with access to the storage.
        min_replicas / max_replicas: Predictor scaling.
        output: Also write the manifest to this file.
    """

    kind = "kserve"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        namespace: str = "default"
        storage_uri: str | None = None
        model_format: str = "mlflow"
        protocol_version: str = "v2"
        service_account: str | None = None
        min_replicas: int | None = None
        max_replicas: int | None = None
        output: str | None = None

    options: Options  # type: ignore[assignment]

    def apply(self, state: DeploymentState, store: ArtifactStore) -> dict[str, Any]:
        document = manifest(state, self.options)
        import yaml  # type: ignore[import-untyped]

        text = yaml.safe_dump(document, sort_keys=False)
        rel = f"deployments/{state.name}/kserve/{state.revision:06d}.yaml"
        store.put_bytes(rel, text.encode())
        details: dict[str, Any] = {"manifest": f"{store.url}/{rel}"}
        if self.options.output:
            path = Path(self.options.output)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            details["output"] = str(path)
        canary = document["spec"]["predictor"].get("canaryTrafficPercent")
        details["canaryTrafficPercent"] = canary
        return details


def _storage(ref: ModelRef, options: KServeTarget.Options) -> str:
    if options.storage_uri:
        return options.storage_uri.format(name=ref.name, version=ref.version)
    source = ref.source or ""
    if source.split("://", 1)[0] in ("s3", "gs", "gcs", "pvc", "https", "hf", "oci", "azure"):
        return source
    raise DeploymentError(
        f"{ref.label}'s files are at {source or '(unknown)'}, which KServe cannot read; set the kserve option "
        "storage_uri (e.g. storage_uri=s3://models/{name}/{version}) to where a copy of the model directory is",
        model=ref.label,
    )


def manifest(state: DeploymentState, options: KServeTarget.Options) -> dict[str, Any]:
    """The InferenceService for ``state``: the challenger as canary, or the champion alone."""
    canary: int | None = None
    if state.challenger is not None and state.traffic.get("challenger", 0) > 0 and not state.shadow:
        latest = state.challenger
        canary = state.traffic["challenger"]
    else:
        latest = state.champion
    model: dict[str, Any] = {
        "modelFormat": {"name": options.model_format},
        "protocolVersion": options.protocol_version,
        "storageUri": _storage(latest, options),
    }
    predictor: dict[str, Any] = {}
    if options.min_replicas is not None:
        predictor["minReplicas"] = options.min_replicas
    if options.max_replicas is not None:
        predictor["maxReplicas"] = options.max_replicas
    if options.service_account:
        predictor["serviceAccountName"] = options.service_account
    if canary is not None and canary < 100:
        predictor["canaryTrafficPercent"] = canary
    predictor["model"] = model
    annotations = {
        "mlpipe.dev/deployment": state.name,
        "mlpipe.dev/revision": str(state.revision),
        "mlpipe.dev/champion": state.champion.label,
        "mlpipe.dev/latest": latest.label,
    }
    if state.challenger is not None:
        annotations["mlpipe.dev/challenger"] = state.challenger.label
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": state.name,
            "namespace": options.namespace,
            "labels": {"app.kubernetes.io/managed-by": "mlpipe", "mlpipe.dev/model": _label(state.model)},
            "annotations": annotations,
        },
        "spec": {"predictor": predictor},
    }


def _label(value: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in value)[:63].strip("-_.")
    return cleaned or "model"


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused (what ``kubectl apply --validate=strict`` does)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if schema.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def validate_manifest(document: dict[str, Any], crd: str | os.PathLike[str]) -> list[str]:
    """Problems of an InferenceService against a CRD file (YAML, optionally .gz); empty when valid.

    The CRD is the one your cluster runs (``kubectl get crd inferenceservices.serving.kserve.io -o yaml``)
    or KServe's release file ``serving.kserve.io_inferenceservices.yaml``. Needs ``jsonschema`` and ``pyyaml``.
    """
    import gzip

    import jsonschema  # type: ignore[import-untyped]
    import yaml  # type: ignore[import-untyped]

    path = os.fspath(crd)
    opener: Any = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        definition = yaml.safe_load(handle)
    api_version = document.get("apiVersion", "")
    version = api_version.rsplit("/", 1)[-1]
    for entry in definition["spec"]["versions"]:
        if entry["name"] == version:
            schema = _strict(entry["schema"]["openAPIV3Schema"])
            break
    else:
        return [f"apiVersion {api_version!r}: the CRD defines no version {version!r}"]
    if api_version != f"{definition['spec']['group']}/{version}":
        return [f"apiVersion {api_version!r} is not {definition['spec']['group']}/{version}"]
    if document.get("kind") != definition["spec"]["names"]["kind"]:
        return [f"kind {document.get('kind')!r} is not {definition['spec']['names']['kind']}"]
    body = {k: v for k, v in document.items() if k not in ("apiVersion", "kind", "metadata")}
    schema = {
        **schema,
        "properties": {
            k: v for k, v in schema.get("properties", {}).items() if k not in ("apiVersion", "kind", "metadata")
        },
    }
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))
    ]
