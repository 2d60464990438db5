"""Resolving and loading the model a scoring server serves: ``name@alias``, ``models:/...``, ``runs:/...``, a path.

Everything here imports mlflow lazily, and turns MLflow's errors into
:class:`~mlpipe.errors.MlpipeError` messages that name the model and the fix.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from mlpipe.errors import MissingDependencyError, MlpipeError

__all__ = ["LoadedModel", "ModelLoadError", "UnknownModelError", "load_served_model", "model_uri", "resolve_version"]


class UnknownModelError(MlpipeError):
    """The registry has no such model, version or alias (CLI exit 2)."""

    exit_code = 2


class ModelLoadError(MlpipeError):
    """The model exists but cannot be loaded (CLI exit 1)."""

    exit_code = 1


_NAME_AT_ALIAS = re.compile(r"^(?P<name>[^:/@\s][^:@\s]*)@(?P<alias>[A-Za-z0-9_\-]+)$")


def model_uri(reference: str) -> str:
    """The MLflow URI of ``reference``: ``churn@champion`` -> ``models:/churn@champion``; URIs and paths unchanged."""
    if _NAME_AT_ALIAS.match(reference):
        return f"models:/{reference}"
    return reference


@dataclass(frozen=True)
class VersionInfo:
    """Where a registered model version comes from (for lineage)."""

    name: str | None
    version: str | None
    run_id: str | None
    source: str | None


@dataclass
class LoadedModel:
    """A pyfunc model ready to predict, with what it is."""

    uri: str
    info: VersionInfo
    pyfunc: Any

    @property
    def label(self) -> str:
        if self.info.name and self.info.version:
            return f"{self.info.name}/{self.info.version}"
        return self.uri


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise MissingDependencyError(
            f"serving a model needs mlflow ({exc}); install it with: pip install 'mlpipe[serve]'", extra="serve"
        ) from exc
    return mlflow


def _client(tracking_uri: str | None) -> Any:
    mlflow = _mlflow()
    if tracking_uri is None:
        return mlflow.MlflowClient()
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def resolve_version(uri: str, tracking_uri: str | None = None) -> VersionInfo:
    """The registered version behind a ``models:/name@alias`` or ``models:/name/version`` URI.

    Raises:
        UnknownModelError: no such registered model, version or alias; the message lists what exists.
    """
    if not uri.startswith("models:/") or uri.startswith("models:/m-"):
        return VersionInfo(None, None, None, uri)
    from mlflow.exceptions import MlflowException

    rest = uri[len("models:/") :]
    client = _client(tracking_uri)
    if "@" in rest:
        name, alias = rest.split("@", 1)
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            raise UnknownModelError(_unknown(client, name, f"alias {alias!r}", exc), model=name, alias=alias) from None
    else:
        name, _, version = rest.partition("/")
        try:
            mv = client.get_model_version(name, version)
        except MlflowException as exc:
            raise UnknownModelError(
                _unknown(client, name, f"version {version!r}", exc), model=name, version=version
            ) from None
    return VersionInfo(str(mv.name), str(mv.version), mv.run_id, mv.source)


def _unknown(client: Any, name: str, what: str, exc: Exception) -> str:
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        return (
            f"the model registry at {client.tracking_uri} has no model named {name!r}; register it first "
            "(mlpipe.integrations.mlflow.register_model), or check the name and the tracking URI"
        )
    aliases = getattr(registered, "aliases", {}) or {}
    known = ", ".join(f"{a} (v{v})" for a, v in sorted(aliases.items())) or "none"
    return (
        f"model {name!r} has no {what} in the registry at {client.tracking_uri} (its aliases: {known}); "
        f"use one of them, or set it with MlflowClient().set_registered_model_alias({name!r}, ALIAS, VERSION)"
    )


def load_served_model(reference: str, *, tracking_uri: str | None = None) -> LoadedModel:
    """Load ``reference`` (``name@alias``, a ``models:/`` or ``runs:/`` URI, or a local path) as pyfunc.

    Raises:
        UnknownModelError: the registry has no such model, version or alias.
        ModelLoadError: the model's files cannot be loaded (missing flavor, broken files, missing library).
    """
    uri = model_uri(reference)
    mlflow = _mlflow()
    if "://" not in uri and ":/" not in uri and not os.path.exists(uri):
        raise UnknownModelError(
            f"model {reference!r} is neither NAME@ALIAS, a models:/ or runs:/ URI, nor an existing path",
            model=reference,
        )
    info = resolve_version(uri, tracking_uri)
    try:
        model = _load(mlflow, uri, tracking_uri)
    except Exception as exc:  # any failure of the model's own loader: report it with the model's name
        raise ModelLoadError(
            f"model {reference!r} cannot be loaded: {type(exc).__name__}: {str(exc)[:500]}; check that it was "
            "logged with an MLflow flavor (mlflow.sklearn, mlflow.pyfunc...) and that its libraries are installed "
            "here (its requirements.txt lists them)",
            model=reference,
        ) from exc
    return LoadedModel(uri, info, model)


def _load(mlflow: Any, uri: str, tracking_uri: str | None) -> Any:
    """``mlflow.pyfunc.load_model`` with ``models:/`` resolved in ``tracking_uri``'s registry, not the global one."""
    if tracking_uri and uri.startswith("models:/") and not uri.startswith("models:/m-"):
        client = _client(tracking_uri)
        rest = uri[len("models:/") :]
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = client.get_model_version_by_alias(name, alias)
        else:
            name, _, version = rest.partition("/")
            mv = client.get_model_version(name, version)
        uri = artifact_location(client, mv)
    if tracking_uri and uri.startswith("models:/m-"):
        uri = _client(tracking_uri).get_logged_model(uri[len("models:/") :]).artifact_location
    return mlflow.pyfunc.load_model(uri)


def artifact_location(client: Any, mv: Any) -> str:
    """Where a registered version's model files are (its logged model's artifact location in MLflow 3)."""
    model_id = getattr(mv, "model_id", None)
    if model_id:
        return str(client.get_logged_model(model_id).artifact_location)
    return str(client.get_model_version_download_uri(mv.name, mv.version))
