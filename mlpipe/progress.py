"""Progress reporting for runs: a small event interface and two reporters.

Backends call the reporter in the ``REPORTER`` context variable (none by
default, so library use prints nothing). The CLI installs :class:`RichReporter`
on a terminal and :class:`PlainReporter` otherwise (one line per event, easy
to grep in CI logs). rich is imported only by the rich reporter. In a Jupyter
kernel, ``pipeline.run()`` installs :class:`NotebookReporter` (see
:func:`default_reporter`): one HTML output updated in place as steps finish.
"""

from __future__ import annotations

import html
import re
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import IO, Any, ClassVar

__all__ = [
    "REPORTER",
    "NotebookReporter",
    "PlainReporter",
    "Reporter",
    "RichReporter",
    "default_reporter",
    "printable",
]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """``text`` with terminal control characters (ESC sequences, bells, C1 codes) shown escaped, never raw.

    Records come from a store anyone with access can write; printing one must
    not let it move the cursor, rename the terminal or hide other output.
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


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

    def note(self, message: str) -> None:
        """A line about the run that is not a step event (where a backend's own log went)."""


REPORTER: ContextVar[Reporter | None] = ContextVar("mlpipe_reporter", default=None)


def _label(status: str, cached: bool) -> str:
    return "cached" if cached else status


class PlainReporter(Reporter):
    """One line per event, for logs and pipes."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr

    def _line(self, text: str) -> None:
        print(printable(text), file=self.stream, flush=True)

    def run_started(self, run_id: str, pipeline: str, steps: int) -> None:
        self._line(f"run {run_id}: pipeline {pipeline}, {steps} steps")

    def step_finished(self, name: str, status: str, cached: bool, duration: float, error: str | None) -> None:
        tail = f": {error.splitlines()[0]}" if error and status != "succeeded" else ""
        self._line(f"  {_label(status, cached):<9} {name} ({duration * 1000:.0f} ms){tail}")

    def run_finished(self, run_id: str, status: str, duration: float) -> None:
        self._line(f"run {run_id} {status} in {duration:.2f} s")

    def note(self, message: str) -> None:
        self._line(f"  {message}")


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
        from rich.markup import escape

        tail = f" [dim]{escape(printable(error.splitlines()[0]))}[/]" if error and status != "succeeded" else ""
        shown = escape(printable(name))
        self.progress.console.print(f"  [{style}]{label:<9}[/] {shown} [dim]{duration * 1000:.0f} ms[/]{tail}")
        if self.task is not None:
            self.progress.advance(self.task)

    def run_finished(self, run_id: str, status: str, duration: float) -> None:
        self.progress.stop()
        style = "green" if status == "succeeded" else "bold red"
        self.console.print(f"run {run_id} [{style}]{status}[/] in {duration:.2f} s")

    def note(self, message: str) -> None:
        from rich.markup import escape

        self.progress.console.print(f"  [dim]{escape(printable(message))}[/]")


_NB_COLOURS = {
    "succeeded": "#1a7f37",
    "cached": "#0969da",
    "failed": "#cf222e",
    "skipped": "#9a6700",
    "cancelled": "#9a6700",
}


class NotebookReporter(Reporter):
    """Progress as one HTML output in a Jupyter notebook, updated in place: a bar and a line per finished step.

    Args:
        display: ``IPython.display.display`` (or a stand-in taking ``(obj, display_id=True)`` and
            returning a handle with ``update(obj)``); found in the running kernel when None.
        interval: Least seconds between two updates while the run goes on (the end is always shown).
    """

    def __init__(self, display: Callable[..., Any] | None = None, *, interval: float = 0.25) -> None:
        if display is None:
            import IPython.display

            display = IPython.display.display
        self._display = display
        self._handle: Any = None
        self._interval = interval
        self._last = 0.0
        self.run_id = ""
        self.pipeline = ""
        self.total = 0
        self.status = "running"
        self.duration: float | None = None
        self.running: list[str] = []
        self.finished: list[tuple[str, str, float, str | None]] = []

    def html(self) -> str:
        """The current state as HTML (what the output shows)."""
        done = len(self.finished)
        share = done / self.total if self.total else 1.0
        colour = _NB_COLOURS.get(self.status, "#0969da") if self.duration is not None else "#0969da"
        head = (
            f"<b>run {html.escape(self.run_id)}</b> · pipeline <b>{html.escape(self.pipeline)}</b> · "
            f"{done}/{self.total} steps"
        )
        if self.duration is not None:
            head += f' · <b style="color:{colour}">{html.escape(self.status)}</b> in {self.duration:.2f} s'
        elif self.running:
            head += f" · running {html.escape(', '.join(self.running[:4]))}{' …' if len(self.running) > 4 else ''}"
        bar = (
            '<div style="background:#eaeef2;border-radius:4px;height:8px;width:420px;margin:4px 0 6px">'
            f'<div style="background:{colour};height:8px;border-radius:4px;width:{share * 100:.1f}%"></div></div>'
        )
        rows = "".join(
            f'<div><span style="color:{_NB_COLOURS.get(label, "#57606a")};display:inline-block;width:80px">'
            f"{html.escape(label)}</span>{html.escape(name)} "
            f'<span style="color:#57606a">{duration * 1000:.0f} ms{html.escape(tail)}</span></div>'
            for name, label, duration, tail in (
                (n, lbl, d, f": {e.splitlines()[0]}" if e else "") for n, lbl, d, e in self.finished
            )
        )
        style = "font-family:system-ui,sans-serif;font-size:13px"
        return f'<div class="mlpipe-progress" style="{style}">{head}{bar}{rows}</div>'

    def _show(self, force: bool = False) -> None:
        import IPython.display

        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        html_type: Any = IPython.display.HTML  # untyped library
        display: Any = self._display
        if self._handle is None:
            self._handle = display(html_type(self.html()), display_id=True)
        else:
            self._handle.update(html_type(self.html()))

    def run_started(self, run_id: str, pipeline: str, steps: int) -> None:
        self.run_id, self.pipeline, self.total = run_id, pipeline, steps
        self._show(force=True)

    def step_started(self, name: str) -> None:
        self.running.append(name)
        self._show()

    def step_finished(self, name: str, status: str, cached: bool, duration: float, error: str | None) -> None:
        if name in self.running:
            self.running.remove(name)
        self.finished.append((name, _label(status, cached), duration, error if status != "succeeded" else None))
        self._show()

    def run_finished(self, run_id: str, status: str, duration: float) -> None:
        self.status, self.duration = status, duration
        self._show(force=True)


def default_reporter() -> Reporter | None:
    """The reporter for a run started from Python: :class:`NotebookReporter` inside a Jupyter kernel, else None.

    Never imports IPython itself: only when the process already runs a kernel.
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    shell = ipython.get_ipython()
    if shell is None or "IPKernelApp" not in getattr(shell, "config", {}):
        return None
    return NotebookReporter()
