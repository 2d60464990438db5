"""A small fake of the KFP v2beta1 REST API on 127.0.0.1 that records every request ``kfp.Client`` sends.

It answers only what the mlpipe backend uses (experiments, runs, recurring
runs, terminate, disable) with the minimal bodies the generated client
accepts. Runs report the states queued in ``FakeKFP.states`` one poll at a
time (the last one sticks); a terminated run reports ``CANCELED``.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeKFP:
    host: str = ""
    requests: list[Request] = field(default_factory=list)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, list[str]] = field(default_factory=dict)
    states: list[str] = field(default_factory=lambda: ["RUNNING", "SUCCEEDED"])
    _count: int = 0

    def next_id(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}-{self._count:04d}"

    def posted(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == "POST" and r.path == API + path]

    def answer(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if method == "GET" and path == f"{API}/experiments":
            return 200, {}  # none found: the client creates it
        if method == "POST" and path == f"{API}/experiments":
            eid = self.next_id("exp")
            self.experiments[eid] = body
            return 200, {"experiment_id": eid, "display_name": body.get("display_name")}
        if method == "POST" and path == f"{API}/runs":
            rid = self.next_id("run")
            self.runs[rid] = list(self.states)
            return 200, {"run_id": rid, "display_name": body.get("display_name")}
        if method == "POST" and path == f"{API}/recurringruns":
            return 200, {"recurring_run_id": self.next_id("rr")}
        if (m := re.fullmatch(rf"{API}/recurringruns/([^/:]+):disable", path)) and method == "POST":
            return 200, {}
        if (m := re.fullmatch(rf"{API}/runs/([^/:]+):terminate", path)) and method == "POST":
            self.runs[m[1]] = ["CANCELED"]
            return 200, {}
        if (m := re.fullmatch(rf"{API}/runs/([^/:]+)", path)) and method == "GET":
            queue = self.runs.get(m[1])
            if queue is None:
                return 404, {"error": f"run {m[1]} not found", "code": 5}
            state = queue.pop(0) if len(queue) > 1 else queue[0]
            reply: dict[str, Any] = {"run_id": m[1], "state": state}
            if state == "FAILED":
                reply["error"] = {"code": 2, "message": "task explode failed"}
            return 200, reply
        return 404, {"error": f"not faked: {method} {path}", "code": 5}


def _handler(fake: FakeKFP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw and "json" in self.headers.get("Content-Type", "") else None
            url = urlsplit(self.path)
            fake.requests.append(Request(self.command, url.path, parse_qs(url.query), body, dict(self.headers)))
            code, reply = fake.answer(self.command, url.path, body)
            data = json.dumps(reply).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _handle

    return Handler


class Server:
    """The fake on a free port of 127.0.0.1, served from a daemon thread."""

    def __init__(self) -> None:
        self.fake = FakeKFP()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.fake))
        self.fake.host = f"http://127.0.0.1:{self._httpd.server_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-kfp", daemon=True)

    def __enter__(self) -> FakeKFP:
        self._thread.start()
        return self.fake

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
