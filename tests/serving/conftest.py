"""Serving tests: a real sqlite MLflow registry (``scorer`` v1 = champion, v2 = challenger); servers on 127.0.0.1."""

from __future__ import annotations

import pytest
from resources.serving_helpers import Registry, make_registry

pytest.importorskip("mlflow.server", reason="the serving tests need the full mlflow package (sqlite registry)")
pytest.importorskip("fastapi")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return make_registry(tmp_path_factory)
