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
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: int = 0
    next_deployed_id: int = 7_000_000_000_000_000_000

    def operation(self, parent: str, response_type: str, response: dict[str, Any]) -> dict[str, Any]:
        """A finished long-running operation, as Vertex answers one (the client reads ``response`` at once)."""
        self.operations += 1
        any_response = {"@type": f"type.googleapis.com/google.cloud.aiplatform.v1.{response_type}", **response}
        return {"name": f"{parent}/operations/{self.operations}", "done": True, "response": any_response}

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
            if self._endpoint_post(path, query, body):
                return
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

        def _endpoint_post(self, path: str, query: dict[str, list[str]], body: Any) -> bool:
            """The Model and Endpoint calls of the ``vertex`` deployment target; True when answered."""
            if re.match(r"/v1/projects/[^/]+/locations/[^/]+/(models|endpoints)", path) and not path.startswith(
                f"/v1/projects/{PROJECT}/"
            ):
                self._error(403, "PERMISSION_DENIED", f"Permission denied on resource project {path.split('/')[3]}")
                return True
            if m := re.fullmatch(rf"/v1/({parent})/models:upload", path):
                name = f"{m.group(1)}/models/{body['modelId']}"
                if name in fake.models:
                    self._error(409, "ALREADY_EXISTS", f"{name} already exists")
                    return True
                fake.models[name] = {**body["model"], "name": name}
                self._reply(200, fake.operation(m.group(1), "UploadModelResponse", {"model": name}))
                return True
            if m := re.fullmatch(rf"/v1/({parent})/endpoints", path):
                name = f"{m.group(1)}/endpoints/{query['endpointId'][0]}"
                if name in fake.endpoints:
                    self._error(409, "ALREADY_EXISTS", f"{name} already exists")
                    return True
                fake.endpoints[name] = {**body, "name": name, "deployedModels": [], "trafficSplit": {}}
                self._reply(200, fake.operation(m.group(1), "Endpoint", fake.endpoints[name]))
                return True
            m = re.fullmatch(rf"/v1/(({parent})/endpoints/[^/:]+):(deployModel|undeployModel)", path)
            if not m:
                return False
            endpoint = fake.endpoints.get(m.group(1))
            if endpoint is None:
                self._error(404, "NOT_FOUND", m.group(1))
                return True
            split = {k: int(v) for k, v in (body.get("trafficSplit") or {}).items()}
            if split and sum(split.values()) != 100:
                self._error(400, "INVALID_ARGUMENT", f"traffic split {split} does not sum to 100")
                return True
            if m.group(3) == "deployModel":
                deployed = body["deployedModel"]
                if deployed["model"] not in fake.models:
                    self._error(400, "INVALID_ARGUMENT", f"model {deployed['model']} does not exist")
                    return True
                fake.next_deployed_id += 1
                deployed = {**deployed, "id": str(fake.next_deployed_id)}
                endpoint["deployedModels"].append(deployed)
                endpoint["trafficSplit"] = {deployed["id"] if k == "0" else k: v for k, v in split.items()}
                self._reply(200, fake.operation(m.group(2), "DeployModelResponse", {"deployedModel": deployed}))
                return True
            gone = body["deployedModelId"]
            current = endpoint["trafficSplit"].get(gone, 0) if not split else split.get(gone, 0)
            if current:
                self._error(400, "FAILED_PRECONDITION", f"deployed model {gone} still has {current}% of the traffic")
                return True
            endpoint["deployedModels"] = [d for d in endpoint["deployedModels"] if d["id"] != gone]
            endpoint["trafficSplit"] = split or {k: v for k, v in endpoint["trafficSplit"].items() if k != gone}
            self._reply(200, fake.operation(m.group(2), "UndeployModelResponse", {}))
            return True

        def do_PATCH(self) -> None:
            path, query, body = self._record()
            m = re.fullmatch(rf"/v1/({parent}/endpoints/[^/:]+)", path)
            if not m or m.group(1) not in fake.endpoints:
                return self._error(404, "NOT_FOUND", path)
            if query.get("updateMask") not in (["trafficSplit"], ["traffic_split"]):
                return self._error(400, "INVALID_ARGUMENT", f"unsupported update mask {query.get('updateMask')}")
            endpoint = fake.endpoints[m.group(1)]
            split = {k: int(v) for k, v in body.get("trafficSplit", {}).items()}
            ids = {d["id"] for d in endpoint["deployedModels"]}
            if sum(split.values()) != 100 or not set(split) <= ids:
                return self._error(400, "INVALID_ARGUMENT", f"traffic split {split} (deployed: {sorted(ids)})")
            endpoint["trafficSplit"] = split
            self._reply(200, endpoint)

        def do_GET(self) -> None:
            path, _query, _body = self._record()
            if path in {f"/v1/{n}" for n in (*fake.models, *fake.endpoints)}:
                name = path[len("/v1/") :]
                return self._reply(200, fake.models.get(name) or fake.endpoints[name])
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
