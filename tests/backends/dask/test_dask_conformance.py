"""The Dask backend on a real cluster (a scheduler and two workers, subprocesses) passes the shared suite."""

from __future__ import annotations

import pytest

from mlpipe.testing import BackendConformance


class TestDaskConformance(BackendConformance):
    @pytest.fixture
    def backend(self, dask_backend):  # type: ignore[no-untyped-def]
        return dask_backend
