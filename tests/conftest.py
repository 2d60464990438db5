"""Test-wide settings: every client stays offline, every test gets its own working directory."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Offline and deterministic, whatever the developer's environment says.
os.environ.update(
    {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "MLPIPE_RETRY_BACKOFF": "0.01",
        # the trust key file (mlpipe.trust) of this test session, never the developer's ~/.config
        "XDG_CONFIG_HOME": tempfile.mkdtemp(prefix="mlpipe-test-config-"),
    }
)
os.environ.pop("MLPIPE_PROFILE", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test runs in its own empty directory, so the default store `.mlpipe/` is private to it."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work
