"""The scoring server: FastAPI routes over one model or a champion/challenger pair, run by uvicorn.

``/invocations`` scores (the MLflow scoring protocol, see :mod:`._protocol`),
``/health`` (and ``/ping``) answers 200 once the models are loaded, ``/stats``
shows the live counters. With a deployment, the split between champion and
challenger comes from the deployment's state in the store
(``deployments/<name>/state.json``, written by :mod:`mlpipe.deploy`), re-read
every ``poll`` seconds: a new revision is loaded *before* it takes traffic.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mlpipe.errors import MissingDependencyError, MlpipeError
from mlpipe.serving._log import PredictionLog, as_store
from mlpipe.serving._model import LoadedModel, load_served_model
from mlpipe.serving._protocol import BadRequest, parse_request, predictions_json
from mlpipe.serving._routing import Routing
from mlpipe.store import ArtifactStore

__all__ = ["PortInUseError", "Routing", "ScoringServer", "create_app"]

logger = logging.getLogger("mlpipe.serving")


class PortInUseError(MlpipeError):
    """The server's address is taken (CLI exit 2)."""

    exit_code = 2


@dataclass
class _Live:
    routing: Routing
    loaded: dict[str, LoadedModel]
    roles: list[str] = field(default_factory=list)
    cumulative: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        total = 0
        for role, weight in self.routing.weights.items():
            if weight > 0:
                total += weight
                self.roles.append(role)
                self.cumulative.append(total)

    def pick(self, rng: random.Random) -> str:
        draw = rng.random() * 100
        for role, bound in zip(self.roles, self.cumulative, strict=True):
            if draw < bound:
                return role
        return self.roles[-1]


class _Engine:
    """Routing, prediction and logging, shared by the HTTP routes."""

    def __init__(
        self,
        routing: Routing,
        log: PredictionLog | None,
        tracking_uri: str | None,
        seed: int | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.log = log
        self._cache: dict[str, LoadedModel] = {}
        self._rng = random.Random(seed)
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlpipe-shadow")
        self.live = self._prepare(routing)
        if log is not None:
            log.start_revision(routing.revision)

    def _prepare(self, routing: Routing) -> _Live:
        loaded = {}
        for role, reference in routing.models.items():
            model = self._cache.get(reference)
            if model is None:
                model = self._cache[reference] = load_served_model(reference, tracking_uri=self.tracking_uri)
            loaded[role] = model
        return _Live(routing, loaded)

    def switch(self, routing: Routing) -> None:
        """Load the new revision's models, then route by it."""
        live = self._prepare(routing)
        if self.log is not None:
            self.log.start_revision(routing.revision)
        self.live = live
        wanted = set(routing.models.values())
        for reference in list(self._cache):
            if reference not in wanted:
                del self._cache[reference]

    def score(self, body: bytes, content_type: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        try:
            inputs, params = parse_request(body, content_type)
        except BadRequest as exc:
            return 400, {"error_code": "BAD_REQUEST", "message": str(exc)}, {}
        live = self.live
        role = live.pick(self._rng)
        model = live.loaded[role]
        request_id = uuid.uuid4().hex[:16]
        started = time.perf_counter()
        try:
            raw = model.pyfunc.predict(inputs, params=params) if params else model.pyfunc.predict(inputs)
            predictions = predictions_json(raw)
        except Exception as exc:  # the model raised on this input: a 500 that says why, counted as an error
            latency = (time.perf_counter() - started) * 1000
            if self.log is not None:
                self.log.record_error(role, latency)
            message = f"model {model.label} ({role}) failed on this input: {type(exc).__name__}: {str(exc)[:500]}"
            return 500, {"error_code": "MODEL_ERROR", "message": message}, {"X-Mlpipe-Variant": role}
        latency = (time.perf_counter() - started) * 1000
        if self.log is not None:
            self.log.record(role, model.label, request_id, inputs, predictions, latency)
        shadow = live.routing.shadow
        if shadow is not None and shadow != role:
            self._shadow_pool.submit(self._shadow, live, shadow, inputs, params, predictions, request_id)
        headers = {"X-Mlpipe-Variant": role, "X-Mlpipe-Model": model.label, "X-Request-Id": request_id}
        return 200, {"predictions": predictions}, headers

    def _shadow(self, live: _Live, role: str, inputs: Any, params: Any, answered: Any, request_id: str) -> None:
        model = live.loaded[role]
        started = time.perf_counter()
        try:
            raw = model.pyfunc.predict(inputs, params=params) if params else model.pyfunc.predict(inputs)
            predictions = predictions_json(raw)
        except Exception:  # a failing shadow model must not affect the answer; it is counted
            if self.log is not None:
                self.log.record_error(role, (time.perf_counter() - started) * 1000)
            return
        latency = (time.perf_counter() - started) * 1000
        if self.log is not None:
            self.log.record(role, model.label, request_id, inputs, predictions, latency)
            if isinstance(predictions, list) and isinstance(answered, list) and len(predictions) == len(answered):
                same = sum(1 for a, b in zip(predictions, answered, strict=True) if a == b)
                self.log.record_comparison(role, same, len(predictions))

    def health(self) -> dict[str, Any]:
        live = self.live
        return {
            "status": "ok",
            "revision": live.routing.revision,
            "models": {role: m.label for role, m in live.loaded.items()},
            "traffic": dict(live.routing.weights),
            "shadow": live.routing.shadow,
        }

    def stats(self) -> dict[str, Any]:
        if self.log is None:
            return {"revision": self.live.routing.revision, "variants": {}}
        return {
            "revision": self.log.revision,
            "variants": {name: s.summary() for name, s in list(self.log.stats.items())},
        }

    def close(self) -> None:
        self._shadow_pool.shutdown(wait=True)
        if self.log is not None:
            self.log.flush(force=True)


def _fastapi() -> Any:
    try:
        import fastapi
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"the scoring server needs fastapi and uvicorn ({exc}); install them with: pip install 'mlpipe[serve]'",
            extra="serve",
        ) from exc
    return fastapi


def create_app(engine: _Engine) -> Any:
    """The FastAPI application of a scoring server."""
    fastapi = _fastapi()
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    app = fastapi.FastAPI(title="mlpipe scoring server", docs_url=None, redoc_url=None, openapi_url=None)

    async def invocations(request: Any) -> Any:
        body = await request.body()
        code, document, headers = await run_in_threadpool(
            engine.score, body, request.headers.get("content-type", "application/json")
        )
        return JSONResponse(document, status_code=code, headers=headers)

    # A plain Starlette endpoint: the body is read as bytes and parsed by the protocol module.
    app.router.add_route("/invocations", invocations, methods=["POST"])

    async def health(request: Any) -> Any:
        return JSONResponse(engine.health())

    async def stats(request: Any) -> Any:
        return JSONResponse(engine.stats())

    app.router.add_route("/health", health, methods=["GET"])
    app.router.add_route("/ping", health, methods=["GET"])
    app.router.add_route("/stats", stats, methods=["GET"])
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: a free port), or :class:`PortInUseError`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on connections whose socket says
    # it is TCP, and accepted sockets inherit the listener's proto. With 0, every answer (headers, then body)
    # waited for the client's delayed ACK: 40-50 ms a request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is already in use; choose another with --port, or stop what listens there "
                f"(lsof -i :{port})",
                port=port,
                host=host,
            ) from None
        raise PortInUseError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", port=port, host=host) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class ScoringServer:
    """An HTTP scoring server for one model, or for a deployment's champion and challenger.

    Args:
        model: ``name@alias``, a ``models:/`` or ``runs:/`` URI, or a model directory.
            Leave it out with ``deployment=``.
        host: Address to listen on (127.0.0.1 by default: expose it deliberately).
        port: Port; 0 picks a free one (see :attr:`url`).
        store: The mlpipe store that receives the prediction log (None: no log).
        service: The log's name (default: the model's or the deployment's name).
        sample: Share of request rows kept in the log.
        batch_rows: Rows per logged batch.
        max_batches: Batches kept in the log.
        flush_interval: Seconds between writes of the log and counters.
        tracking_uri: The MLflow tracking server of ``models:/`` URIs (default: mlflow's).
        deployment: Serve this deployment's split (``mlpipe deploy start --target local``).
        poll: Seconds between reads of the deployment's state.
        seed: Seed of the traffic split and the sampler (tests).

    Raises:
        UnknownModelError, ModelLoadError: when the model cannot be found or loaded.
        PortInUseError: when the port is taken.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        store: str | os.PathLike[str] | ArtifactStore | None = None,
        service: str | None = None,
        sample: float = 1.0,
        batch_rows: int = 1000,
        max_batches: int = 100,
        flush_interval: float = 2.0,
        tracking_uri: str | None = None,
        deployment: str | None = None,
        poll: float = 1.0,
        seed: int | None = None,
        log: bool = True,
    ) -> None:
        if (model is None) == (deployment is None):
            raise MlpipeError("give a model to serve, or a deployment (not both)")
        self.host = host
        self.deployment = deployment
        self.poll = poll
        self._store = as_store(store) if store is not None or deployment is not None else None
        if deployment is not None:
            from mlpipe.deploy._state import load_state

            assert self._store is not None
            state = load_state(self._store, deployment)
            if state.target.kind != "local":
                raise MlpipeError(
                    f"deployment {deployment!r} targets {state.target.kind}, not the local server; "
                    "serve it where it is deployed",
                    deployment=deployment,
                )
            routing = state.routing()
            name = service or deployment
            tracking_uri = tracking_uri or state.tracking_uri
        else:
            assert model is not None
            routing = Routing(0, {"primary": model}, {"primary": 100})
            name = service or _service_name(model)
        self.service = name
        plog = None
        if log and self._store is not None:
            plog = PredictionLog(
                self._store,
                name,
                sample=sample,
                batch_rows=batch_rows,
                max_batches=max_batches,
                flush_interval=flush_interval,
                seed=seed,
                background=True,  # written by the flusher thread below, never in a request
            )
        self.engine = _Engine(routing, plog, tracking_uri, seed)
        self._socket = bind(host, port)
        self.port = int(self._socket.getsockname()[1])
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._flusher: threading.Thread | None = None
        self.flush_interval = flush_interval

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _uvicorn(self) -> Any:
        import uvicorn

        config = uvicorn.Config(
            create_app(self.engine), log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        return self._server

    def _background(self) -> None:
        if self.deployment is not None:
            self._watcher = threading.Thread(target=self._watch, name="mlpipe-deploy-watch", daemon=True)
            self._watcher.start()
        if self.engine.log is not None:
            self._flusher = threading.Thread(target=self._flush_loop, name="mlpipe-log-flush", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        log = self.engine.log
        assert log is not None
        while not self._stop.is_set():
            log.wake.wait(self.flush_interval)  # the interval, or sooner when a batch is full
            log.wake.clear()
            if self._stop.is_set():
                break  # _close writes the rest
            try:
                log.flush()
            except Exception as exc:  # the store failing must not take the server down; say so
                logger.warning("mlpipe serve: writing the prediction log failed: %s", exc)

    def _watch(self) -> None:
        from mlpipe.deploy._state import load_state

        assert self._store is not None and self.deployment is not None
        while not self._stop.wait(self.poll):
            try:
                routing = load_state(self._store, self.deployment).routing()
                if routing.revision != self.engine.live.routing.revision:
                    self.engine.switch(routing)
                    logger.warning(
                        "mlpipe serve: deployment %s revision %d: traffic %s%s",
                        self.deployment,
                        routing.revision,
                        dict(routing.weights),
                        f", shadow {routing.shadow}" if routing.shadow else "",
                    )
            except Exception as exc:  # a bad revision keeps the current one serving, and says why
                logger.warning("mlpipe serve: cannot switch deployment %s: %s", self.deployment, exc)

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C / SIGTERM)."""
        self._background()
        try:
            self._uvicorn().run(sockets=[self._socket])
        finally:
            self._close()

    def start(self, timeout: float = 30.0) -> ScoringServer:
        """Serve in a background thread; return once ``/health`` would answer."""
        server = self._uvicorn()
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._socket]}, name="mlpipe-serve", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise MlpipeError(f"the scoring server did not start on {self.url} within {timeout:g} s")
            time.sleep(0.01)
        self._background()
        return self

    def stop(self) -> None:
        """Stop serving, write the log, release the port (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None
        self._close()

    def _close(self) -> None:
        self._stop.set()
        if self.engine.log is not None:
            self.engine.log.wake.set()
        for thread in (self._watcher, self._flusher):
            if thread is not None:
                thread.join(10)
        self._watcher = self._flusher = None
        self.engine.close()
        with contextlib.suppress(OSError):
            self._socket.close()

    def __enter__(self) -> ScoringServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _service_name(model: str) -> str:
    ref = model[len("models:/") :] if model.startswith("models:/") else model
    base = ref.split("@", 1)[0].split("/", 1)[0].rstrip("/")
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in base).strip(".-")
    return cleaned or "model"


@contextlib.contextmanager
def serving(model: str, **options: Any) -> Iterator[ScoringServer]:
    """``with serving("churn@champion", port=0, store=".mlpipe") as server: ... server.url``."""
    server = ScoringServer(model, **options).start()
    try:
        yield server
    finally:
        server.stop()
