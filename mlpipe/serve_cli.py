"""``mlpipe serve``: the command's logic (registered in :mod:`mlpipe.cli`; imports stay lazy)."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Annotated

import typer

__all__ = ["serve"]


def serve(
    model: Annotated[
        str | None, typer.Argument(help="NAME@ALIAS, a models:/ or runs:/ URI, or a model directory.")
    ] = None,
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: a free one).")] = 8080,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    deployment: Annotated[
        str | None, typer.Option("--deployment", help="Serve this deployment's champion/challenger split.")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Name of the prediction log (default: the model's).")
    ] = None,
    sample: Annotated[float, typer.Option("--sample", help="Share of request rows logged, 0 to 1.")] = 1.0,
    max_batches: Annotated[int, typer.Option("--max-batches", help="Logged batches kept (1,000 rows each).")] = 100,
    no_log: Annotated[bool, typer.Option("--no-log", help="Log no inputs or predictions.")] = False,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow registry (default: the profile's or MLFLOW_TRACKING_URI)."),
    ] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="Profile whose store receives the log.")] = None,
) -> None:
    """Serve a model over HTTP: POST /invocations (MLflow scoring protocol), GET /health."""
    from mlpipe.cli_errors import _fail
    from mlpipe.config import load_profile
    from mlpipe.errors import MlpipeError
    from mlpipe.serving._server import ScoringServer

    try:
        prof = load_profile(profile)
        server = ScoringServer(
            model,
            host=host,
            port=port,
            store=prof.store,
            service=name,
            sample=sample,
            max_batches=max_batches,
            tracking_uri=tracking_uri or prof.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
            deployment=deployment,
            log=not no_log,
        )
    except MlpipeError as exc:
        _fail(exc)
    logging.basicConfig(format="%(message)s", level=logging.WARNING)
    models = ", ".join(
        f"{m.label} ({role}, {server.engine.live.routing.weights.get(role, 0)} %)"
        for role, m in server.engine.live.loaded.items()
    )
    if len(server.engine.live.loaded) == 1:
        models = next(iter(server.engine.live.loaded.values())).label
    print(
        f"serving {models} on {server.url} (POST /invocations, GET /health); log: "
        f"{'off' if no_log else f'{server.service} in {prof.store}'}",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn handles SIGINT/SIGTERM while it runs, then raises the signal again once it has stopped.
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, _Stopped):
        pass
    print("stopped", file=sys.stderr)


class _Stopped(Exception):
    """SIGTERM after the server has shut down cleanly."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped
