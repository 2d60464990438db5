"""Progress reporting for runs: a small event interface and two reporters.

Backends call the reporter in the ``REPORTER`` context variable (none by
default, so library use prints nothing). The CLI installs :class:`RichReporter`
on a terminal and :class:`PlainReporter` otherwise (one line per event, easy
to grep in CI logs). rich is imported only by the rich reporter.
"""

from __future__ import annotations

import sys
from contextvars import ContextVar
from typing import IO, Any, ClassVar

__all__ = ["REPORTER", "PlainReporter", "Reporter", "RichReporter"]


class Reporter:
    """Receives run events. Every method is optional to override."""

    def run_started(self, run_id: str, pipeline: str, steps: int) -> None:
        pass

    def step_started(self, name: str) -> None:
        pass

    def step_finished(self, name: str, status: str, cached: bool, duration: float, error: str | None) -> None:
        pass

    def run_finished(self, run_id: str, status: str, duration: float) -> None:
        pass


REPORTER: ContextVar[Reporter | None] = ContextVar("mlpipe_reporter", default=None)


def _label(status: str, cached: bool) -> str:
    return "cached" if cached else status


class PlainReporter(Reporter):
    """One line per event, for logs and pipes."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def run_started(self, run_id: str, pipeline: str, steps: int) -> None:
        self._line(f"run {run_id}: pipeline {pipeline}, {steps} steps")

    def step_finished(self, name: str, status: str, cached: bool, duration: float, error: str | None) -> None:
        tail = f": {error.splitlines()[0]}" if error and status != "succeeded" else ""
        self._line(f"  {_label(status, cached):<9} {name} ({duration * 1000:.0f} ms){tail}")

    def run_finished(self, run_id: str, status: str, duration: float) -> None:
        self._line(f"run {run_id} {status} in {duration:.2f} s")


class RichReporter(Reporter):
    """A live progress bar with one line per finished step, for terminals."""

    _STYLE: ClassVar[dict[str, str]] = {
        "succeeded": "green",
        "cached": "cyan",
        "failed": "bold red",
        "skipped": "yellow",
    }

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task: Any = None

    def run_started(self, run_id: str, pipeline: str, steps: int) -> None:
        self.console.print(f"[bold]run[/] {run_id} · pipeline [bold]{pipeline}[/] · {steps} steps")
        self.progress.start()
        self.task = self.progress.add_task(pipeline, total=steps)

    def step_finished(self, name: str, status: str, cached: bool, duration: float, error: str | None) -> None:
        label = _label(status, cached)
        style = self._STYLE.get(label, "white")
        tail = f" [dim]{error.splitlines()[0]}[/]" if error and status != "succeeded" else ""
        self.progress.console.print(f"  [{style}]{label:<9}[/] {name} [dim]{duration * 1000:.0f} ms[/]{tail}")
        if self.task is not None:
            self.progress.advance(self.task)

    def run_finished(self, run_id: str, status: str, duration: float) -> None:
        self.progress.stop()
        style = "green" if status == "succeeded" else "bold red"
        self.console.print(f"run {run_id} [{style}]{status}[/] in {duration:.2f} s")
