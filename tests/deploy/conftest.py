"""Deployment tests: a real sqlite MLflow registry with two versions of a model, aliases reset per test."""

from __future__ import annotations

import pytest
from resources.serving_helpers import Registry, make_registry

pytest.importorskip("mlflow.server", reason="the deployment tests need the full mlflow package (sqlite registry)")
pytest.importorskip("fastapi")


@pytest.fixture(scope="session")
def _registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return make_registry(tmp_path_factory)


@pytest.fixture
def reg(_registry: Registry) -> Registry:
    """The registry with champion -> v1 and challenger -> v2 again (tests promote and move aliases)."""
    from mlflow import MlflowClient

    client = MlflowClient(_registry.uri)
    client.set_registered_model_alias("scorer", "champion", "1")
    client.set_registered_model_alias("scorer", "challenger", "2")
    return _registry
