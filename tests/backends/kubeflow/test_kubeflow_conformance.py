"""The compiled KFP spec, executed by kfp.local (mode = "local"), passes the shared conformance suite."""

from __future__ import annotations

import pytest
from mlpipe_kubeflow import KubeflowBackend

from mlpipe.testing import BackendConformance


class TestKubeflowLocalConformance(BackendConformance):
    @pytest.fixture
    def backend(self) -> KubeflowBackend:
        return KubeflowBackend({"mode": "local"})
