"""Fixtures for the MLflow integration tests: one real ``mlflow server`` per session, and sqlite URIs.

The server runs on 127.0.0.1 on a free port with a sqlite backend and a local
artifact destination in a temporary directory, one worker, no job execution
and no telemetry. It is started once (readiness: ``/health``, at most 120 s)
and stopped at the end of the session. Its start time is printed in the
terminal summary.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from resources.mlflow_helpers import Tracked, write_profile

pytest.importorskip("mlflow.server", reason="the MLflow tests need the full mlflow package (pip install mlflow)")

READY_TIMEOUT = 120.0
_timings: dict[str, float] = {}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _server(root: Path) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 with its own sqlite database and artifacts under ``root``."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    log_path = root / "server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - started > READY_TIMEOUT:
                pytest.fail(f"mlflow server not ready after {READY_TIMEOUT:g} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        _timings.setdefault("mlflow server start (s)", time.monotonic() - started)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real MLflow tracking server, shared by the session."""
    with _server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture
def fresh_mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second real MLflow server, new and empty, for this test only (stopped at its end)."""
    with _server(tmp_path_factory.mktemp("mlflow-fresh")) as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A plain ``sqlite:///`` tracking URI (no server), shared by the session."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow-sqlite') / 'mlflow.db'}"


@pytest.fixture(params=["server", "sqlite"])
def tracked(request: pytest.FixtureRequest, _isolated_cwd: Path) -> Tracked:
    """Tracking on, against the session's server and against a sqlite URI (each test runs for both)."""
    uri = request.getfixturevalue("mlflow_server" if request.param == "server" else "sqlite_uri")
    experiment = f"test-{uuid.uuid4().hex[:10]}"
    write_profile(_isolated_cwd, uri, experiment)
    return Tracked(uri, experiment, _isolated_cwd)


@pytest.fixture
def served(mlflow_server: str, _isolated_cwd: Path) -> Tracked:
    """Tracking on, against the session's server only."""
    experiment = f"test-{uuid.uuid4().hex[:10]}"
    write_profile(_isolated_cwd, mlflow_server, experiment)
    return Tracked(mlflow_server, experiment, _isolated_cwd)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for name, seconds in _timings.items():
        terminalreporter.write_line(f"{name}: {seconds:.1f}")
