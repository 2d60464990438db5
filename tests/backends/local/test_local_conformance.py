"""The local backend passes the shared conformance suite."""

import pytest

from mlpipe.local import LocalBackend
from mlpipe.testing import BackendConformance


class TestLocalConformance(BackendConformance):
    @pytest.fixture
    def backend(self) -> LocalBackend:
        return LocalBackend()
