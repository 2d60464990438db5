"""How every CLI command reports an error: one paragraph on stderr, the exit code, a traceback with --debug.

Shared by the command modules (:mod:`mlpipe.cli` and the commands it mounts), so
that none of them imports the CLI app to report an error.
"""

from __future__ import annotations

import sys
import traceback
from typing import NoReturn

import typer

from mlpipe.errors import MlpipeError

__all__ = ["_fail", "_state"]

#: Set by the CLI's ``--debug`` option.
_state = {"debug": False}


def _fail(exc: BaseException, code: int | None = None) -> NoReturn:
    if _state["debug"]:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    message = str(exc) if isinstance(exc, MlpipeError) else f"{type(exc).__name__}: {exc}"
    from mlpipe.progress import printable

    print(f"error: {printable(message)}", file=sys.stderr)
    raise typer.Exit(code if code is not None else getattr(exc, "exit_code", 1))
