"""Executing the compiled KFP spec on this machine with kfp's own local runner (``mode = "local"``).

kfp.local's ``SubprocessRunner`` runs only lightweight Python components and
refuses container components ("use DockerRunner"); there is no Docker here,
and mlpipe's components are container components. The adapter below is the
narrowest hook that lets kfp's runner execute them as host subprocesses:

* kfp.local's task dispatcher looks up the handler class for
  ``SubprocessRunner`` as the module attribute
  ``kfp.local.subprocess_task_handler.SubprocessTaskHandler`` on every task.
  :func:`container_components_as_subprocess` swaps that attribute for a
  subclass for the duration of one run (under a lock, then restores it). kfp
  does the same in its own tests (``pipeline_orchestrator_test.py``).
* The subclass drops the two refusals (container component, non-Python
  image), runs ``python`` as this interpreter, and adds ``PYTHONPATH`` so the
  tasks import the user's step modules as this process does.
* kfp.local's condition evaluator (``enhanced_dag_orchestrator.ConditionEvaluator``)
  finds a task output named in ``triggerPolicy.condition`` only when the output is
  called ``Output`` (a lightweight component's return value); any other name
  resolves to nothing and the branch is never taken. :func:`_condition_channels`
  resolves mlpipe's ``mlpipe_when_<k>`` outputs (the task's output in the DAG
  that holds the condition, else the sub-DAG's input of that name), as the KFP
  backend resolves every task input before it evaluates a condition. Its
  ``dsl.ParallelFor`` has the same blind spot for the list it iterates over
  (found only as ``<task>-Output`` or as an input of the enclosing DAG), so
  the list of a mapped step's fan-out task (``mlpipe_items``) is put where
  the loop looks for it before the loop starts; a loop over no items gives
  the fan-in an empty list (kfp.local publishes nothing for it).
* The run id arrives as the run argument ``mlpipe_run_id``, as on a cluster
  (kfp.local resolves ``dsl.PIPELINE_JOB_ID_PLACEHOLDER`` to a random job id
  that it never returns; a run without the argument records under that one).

* kfp.local changes process-wide state for each run and task: it swaps the
  root logger's handlers for one on ``sys.stdout`` (restoring a snapshot
  after) and replaces ``builtins.print`` by an indenting one. Run in a
  background thread, that leaves every other thread's prints indented and the
  logging handlers of whatever ran meanwhile dropped or stale.
  :func:`_kfp_output_to` turns both off for the run (the snapshot swaps and the
  indentation are no-ops) and installs one root handler that takes only the
  records of the thread running kfp.local; that log, kfp's separator lines and
  the tasks' output (read from their pipes here) go to ``log=`` when given,
  else to ``sys.stdout``. Nothing swaps ``sys.stdout``, so the caller's
  output (``mlpipe run``'s pipeline outputs) stays its own.

Everything else is kfp's: loading the YAML, resolving placeholders, the DAG
order, retries, outputs. It relies on private kfp API, hence the pin
``kfp>=2.17,<2.18``. kfp.local runs tasks one at a time and stops at the first
failure; ``background.close_after_engine`` records the steps that never ran as ``skipped``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import IO, Any

__all__ = ["container_components_as_subprocess", "execute_spec"]

_LOCK = threading.Lock()  # kfp.local's configuration and the handler swap are process-wide
_PYTHON = ("python", "python3")


def _python_path() -> str:
    """This process's import path, for tasks that must import the same step modules."""
    entries = [os.getcwd() if p == "" else p for p in sys.path]
    inherited = os.environ.get("PYTHONPATH", "")
    seen: list[str] = []
    for entry in [*entries, *inherited.split(os.pathsep)]:
        if entry and entry not in seen and os.path.isdir(entry):
            seen.append(entry)
    return os.pathsep.join(seen)


def _write(out: IO[str] | None, text: str) -> None:
    stream = sys.stdout if out is None else out
    stream.write(text)
    stream.flush()


class _ThreadLog(logging.Handler):
    """The root logger's handler during a kfp.local run: the records of one thread, written to ``out``."""

    def __init__(self, thread: int, out: IO[str] | None) -> None:
        super().__init__(logging.INFO)
        self.thread, self.out = thread, out

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write(self.out, self.format(record) + "\n")
        except Exception:  # a log line must never fail the run
            self.handleError(record)


@contextlib.contextmanager
def _kfp_output_to(out: IO[str] | None) -> Iterator[None]:
    """kfp.local's log, separators and indentation for one run in this thread, without process-wide swaps."""
    from kfp.local import logging_utils

    def print_line() -> None:
        _write(out, "-" * 80 + "\n")

    root = logging.getLogger()
    handler = _ThreadLog(threading.get_ident(), out)
    handler.setFormatter(logging_utils.MillisecondFormatter(fmt="%(asctime)s - %(levelname)s - %(message)s",
                                                            datefmt="%H:%M:%S.%f"))  # fmt: skip
    patched = {
        "local_logger_context": _unchanged,
        "indented_print": _unchanged,
        "print_horizontal_line": print_line,
    }
    saved = {name: getattr(logging_utils, name) for name in patched}
    level = root.level
    for name, value in patched.items():
        setattr(logging_utils, name, value)
    root.addHandler(handler)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        if root.level == logging.INFO:
            root.setLevel(level)
        for name, value in saved.items():
            setattr(logging_utils, name, value)
        if out is not None:
            out.flush()


@contextlib.contextmanager
def _unchanged(*args: Any, **kwargs: Any) -> Iterator[None]:
    yield


def _run_task(command: list[str], env: Mapping[str, str], out: IO[str] | None) -> int:
    """One task's process, its output (stdout and stderr) copied line by line to ``out`` (None: sys.stdout)."""
    import subprocess

    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env={**os.environ, **env}
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            _write(out, line)
        return process.wait()


@contextlib.contextmanager
def container_components_as_subprocess(
    run_id: str, cancel: threading.Event | None = None, log: IO[str] | None = None
) -> Iterator[None]:
    """Let kfp.local's SubprocessRunner run mlpipe's container components as subprocesses of this interpreter.

    kfp.local's log and the tasks' output go to ``log`` when given, else to ``sys.stdout``.
    """
    from kfp.local import status
    from kfp.local import subprocess_task_handler as sth

    env = {"PYTHONPATH": _python_path()}
    stop = cancel or threading.Event()

    class ContainerAsSubprocessHandler(sth.SubprocessTaskHandler):  # type: ignore[misc]
        def validate_image(self, image: str) -> None:
            """The image is not used here; the task runs with this interpreter."""

        def validate_not_container_component(self, full_command: list[str]) -> None:
            """The refusal this adapter exists to lift."""

        def run(self) -> Any:
            if stop.is_set():
                print(f"mlpipe: run {run_id} was cancelled; not starting {self.full_command[-1:]}", file=sys.stderr)
                return status.Status.FAILURE
            command = list(self.full_command)
            # Only argv[0]: kfp's own replace_python_executable rewrites 'python3' inside every argument.
            if command and command[0] in _PYTHON:
                command[0] = sys.executable
            code = _run_task(command, {**env, **self.env_vars}, log)
            return status.Status.SUCCESS if code == 0 else status.Status.FAILURE

    with _LOCK:
        original = sth.SubprocessTaskHandler
        sth.SubprocessTaskHandler = ContainerAsSubprocessHandler
        try:
            with _condition_channels(), _kfp_output_to(log):
                yield
        finally:
            sth.SubprocessTaskHandler = original


_WHEN_CHANNEL = re.compile(r"pipelinechannel--(.+)-(mlpipe_when_\d+)")
_ITEMS_CHANNEL = re.compile(r"pipelinechannel--(.+)-(mlpipe_items)")


@contextlib.contextmanager
def _condition_channels() -> Iterator[None]:
    """Let kfp.local's conditions and loops read mlpipe's ``mlpipe_when_<k>`` and ``mlpipe_items`` outputs.

    See the module docstring.
    """
    from kfp.local.orchestrator import enhanced_dag_orchestrator as eo

    evaluator = eo.ConditionEvaluator
    original = evaluator.__dict__["_resolve_pipeline_channel"]

    def resolve(channel_ref: str, io_store: Any) -> Any:
        match = _WHEN_CHANNEL.fullmatch(channel_ref)
        if match is None:
            return original.__func__(channel_ref, io_store)
        try:
            return io_store.get_task_output(match[1], match[2])
        except (KeyError, ValueError):
            pass
        try:
            return io_store.get_parent_input(channel_ref)
        except (KeyError, ValueError):
            return None

    run_loop = eo._run_parallel_for_task

    def loop(*, task_spec: Any, io_store: Any, **rest: Any) -> Any:
        items = task_spec.parameter_iterator.items
        if task_spec.WhichOneof("iterator") == "parameter_iterator" and items.HasField("input_parameter"):
            match = _ITEMS_CHANNEL.fullmatch(items.input_parameter)
            if match is not None:
                try:
                    value = io_store.get_task_output(match[1], match[2])
                except (KeyError, ValueError):
                    value = None  # then it is an input of the enclosing DAG, where kfp looks by itself
                if value is not None:
                    io_store.put_parent_input(items.input_parameter, value)
                if value == []:  # kfp.local publishes no outputs for a loop of no iterations: the fan-in gets []
                    outputs = rest["components"][task_spec.component_ref.name].output_definitions.parameters
                    for key in outputs:
                        io_store.put_task_output(rest["task_name"], key, [])
                    io_store.put_task_status(rest["task_name"], "SUCCEEDED")
                    return False
        return run_loop(task_spec=task_spec, io_store=io_store, **rest)

    evaluator._resolve_pipeline_channel = staticmethod(resolve)
    eo._run_parallel_for_task = loop
    try:
        yield
    finally:
        evaluator._resolve_pipeline_channel = original
        eo._run_parallel_for_task = run_loop


def _unambiguous_spec(spec_path: str) -> str:
    """The spec's text, with the pipeline renamed when a step's component has its name.

    kfp's loader reads a spec as the component ``comp-<pipeline name>`` when
    one exists (that is how a compiled single component looks), so a pipeline
    ``flaky`` with a step ``flaky`` would be called with that step's inputs.
    The pipeline's name only names kfp.local's output directory, so it is
    changed here, for local execution only; the compiled file is untouched.
    """
    import yaml  # type: ignore[import-untyped]
    from kfp.dsl import utils

    with open(spec_path) as f:
        text = f.read()
    documents = list(yaml.safe_load_all(text))
    spec = documents[0]
    name = spec["pipelineInfo"]["name"]
    if utils.sanitize_component_name(name) not in spec.get("components", {}):
        return text
    spec["pipelineInfo"]["name"] = f"{name}-pipeline"
    return str(yaml.safe_dump_all(documents, sort_keys=False))


def execute_spec(
    spec_path: str,
    arguments: Mapping[str, Any],
    run_id: str,
    *,
    pipeline_root: str | None = None,
    cancel: threading.Event | None = None,
    log: IO[str] | None = None,
) -> str | None:
    """Run the compiled spec at ``spec_path`` with kfp.local; None on success, else kfp's failure message.

    kfp.local's own output (its log, the tasks' streamed output) goes to
    ``log`` when given, else to stdout as kfp prints it.

    The tasks write mlpipe's records into the store named in the spec; close
    the run with ``background.close_after_engine`` and read it with ``Run.load``.
    """
    from kfp import components, local
    from kfp.local import config

    component = components.load_component_from_text(_unambiguous_spec(spec_path))
    with tempfile.TemporaryDirectory(prefix="mlpipe-kfp-local-") as scratch:
        root = pipeline_root or os.path.join(scratch, "pipeline_root")
        with container_components_as_subprocess(run_id, cancel, log):
            previous = config.LocalExecutionConfig.instance
            try:
                local.init(
                    runner=local.SubprocessRunner(use_venv=False),
                    pipeline_root=root,
                    workspace_root=os.path.join(scratch, "workspace"),
                    raise_on_error=True,
                )
                # kfp.local says that resources, accelerators and display names have no effect locally:
                # expected, and said once in the docs instead of once per task. The filter is added, not
                # scoped with catch_warnings: that saves and restores the process's filters, which a run in a
                # background thread must not do to the other threads.
                warnings.filterwarnings("ignore", message=r"Task .* no effect in the current local runner")
                component(**arguments)
            except RuntimeError as exc:  # kfp.local: "Pipeline 'x' finished with status FAILURE. Inner task ..."
                return str(exc)
            finally:
                config.LocalExecutionConfig.instance = previous
    return None
