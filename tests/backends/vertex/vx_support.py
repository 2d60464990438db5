"""Test support for the Vertex backend: a recording fake of the Vertex REST API and a GCS emulator.

The fixtures are re-exported by conftest.py; both servers listen on 127.0.0.1 only.

``fake_vertex`` answers the handful of ``aiplatform_v1`` REST calls the
backend makes (create/get/cancel pipeline jobs, create/pause schedules) the
way the service's wire format does (checked against the real client in
/work/research/cloud/REPORT.md §3) and records every request. A job's states
are scripted per job id (``fake.script(job_id, [...])``); once the script is
used up the last state repeats.

``gcs`` is gcp-storage-emulator (an emulator of the GCS JSON API, not GCS)
started in this process; ``STORAGE_EMULATOR_HOST`` points gcsfs, and the
task subprocesses kfp.local starts, at it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

BUCKET = "mlpipe-vertex-test"
PROJECT = "my-project"
LOCATION = "europe-west4"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeVertex:
    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedules: dict[str, dict[str, Any]] = field(default_factory=dict)
    scripts: dict[str, list[Any]] = field(default_factory=dict)

    def script(self, job_id: str, states: list[Any]) -> None:
        """States answered to successive GETs of the job: a state name, or (state, error message)."""
        self.scripts[job_id] = list(states)

    def calls(self, method: str, suffix: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    def _state(self, job_id: str) -> tuple[str, str | None]:
        script = self.scripts.get(job_id) or ["PIPELINE_STATE_SUCCEEDED"]
        item = script.pop(0) if len(script) > 1 else script[0]
        return (item, None) if isinstance(item, str) else (item[0], item[1])


def _handler(fake: FakeVertex) -> type[BaseHTTPRequestHandler]:
    parent = r"projects/[^/]+/locations/[^/]+"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, code: int, document: Any) -> None:
            data = json.dumps(document).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, status: str, message: str) -> None:
            self._reply(code, {"error": {"code": code, "status": status, "message": message}})

        def _record(self) -> tuple[str, dict[str, list[str]], Any]:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            query = parse_qs(parts.query)
            fake.requests.append(Recorded(self.command, parts.path, query, dict(self.headers), body))
            return parts.path, query, body

        def do_POST(self) -> None:
            path, query, body = self._record()
            if m := re.fullmatch(rf"/v1/({parent})/pipelineJobs", path):
                job_id = query["pipelineJobId"][0]
                name = f"{m.group(1)}/pipelineJobs/{job_id}"
                if name in fake.jobs:
                    return self._error(409, "ALREADY_EXISTS", f"{name} already exists")
                fake.jobs[name] = {**body, "name": name, "state": "PIPELINE_STATE_PENDING"}
                return self._reply(200, fake.jobs[name])
            if m := re.fullmatch(rf"/v1/({parent}/pipelineJobs/[^/:]+):cancel", path):
                if m.group(1) not in fake.jobs:
                    return self._error(404, "NOT_FOUND", m.group(1))
                fake.script(m.group(1).rsplit("/", 1)[1], ["PIPELINE_STATE_CANCELLING", "PIPELINE_STATE_CANCELLED"])
                return self._reply(200, {})
            if m := re.fullmatch(rf"/v1/({parent})/schedules", path):
                name = f"{m.group(1)}/schedules/{len(fake.schedules) + 1}"
                fake.schedules[name] = {**body, "name": name, "state": "ACTIVE"}
                return self._reply(200, fake.schedules[name])
            if m := re.fullmatch(rf"/v1/({parent}/schedules/[^/:]+):pause", path):
                if fake.schedules.get(m.group(1), {}).get("state") == "PAUSED":
                    return self._error(400, "FAILED_PRECONDITION", "schedule is already paused")
                fake.schedules[m.group(1)]["state"] = "PAUSED"
                return self._reply(200, {})
            self._error(404, "NOT_FOUND", path)

        def do_GET(self) -> None:
            path, _query, _body = self._record()
            if (m := re.fullmatch(rf"/v1/({parent}/schedules/[^/:]+)", path)) and m.group(1) in fake.schedules:
                return self._reply(200, fake.schedules[m.group(1)])
            m = re.fullmatch(rf"/v1/({parent}/pipelineJobs/([^/:]+))", path)
            if m and m.group(1) in fake.jobs:
                state, message = fake._state(m.group(2))
                answer: dict[str, Any] = {"name": m.group(1), "state": state}
                if message:
                    answer["error"] = {"code": 9, "message": message}
                return self._reply(200, answer)
            self._error(404, "NOT_FOUND", path)

    return Handler


@pytest.fixture
def fake_vertex() -> Iterator[FakeVertex]:
    fake = FakeVertex()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-vertex", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="session")
def gcs() -> Iterator[str]:
    """gcp-storage-emulator on 127.0.0.1 with one bucket; the emulator's URL."""
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{server._api._httpd.server_address[1]}"
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url  # read by gcsfs here and in every task subprocess
    try:
        yield url
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        server.stop()


@pytest.fixture
def gs_url(gcs: str) -> str:
    """A fresh prefix in the emulated bucket."""
    return f"gs://{BUCKET}/t-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def sockets_forbidden() -> Iterator[list[Any]]:
    """Any socket connection attempt inside the block fails the test; the attempts are recorded."""
    attempts: list[Any] = []
    real = socket.socket.connect

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        self.close()
        raise AssertionError(f"a socket was opened to {address} before validation finished")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    try:
        yield attempts
    finally:
        socket.socket.connect = real  # type: ignore[method-assign]


def vertex_options(fake: FakeVertex | None = None, **extra: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"project": PROJECT, "location": LOCATION, "credentials": "anonymous",
                               "poll_interval": 0.01}
    if fake is not None:
        options["api_endpoint"] = fake.url
    options.update(extra)
    return options
