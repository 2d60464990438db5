"""The ``mlpipe`` command line (typer + rich; plain text when not on a terminal).

Exit codes: 0 success, 1 pipeline failed, 2 usage or validation error. Errors
are printed to stderr as one paragraph; ``--debug`` adds the traceback.
Each command is a thin layer over the Python API: nothing here that a user
could not do from Python.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from mlpipe.cli_errors import _fail, _state
from mlpipe.deploy_cli import ci_app as _ci_app
from mlpipe.deploy_cli import deploy_app as _deploy_app
from mlpipe.errors import DefinitionError, MlpipeError
from mlpipe.pipeline import Pipeline
from mlpipe.progress import printable
from mlpipe.serve_cli import serve as _serve_command

app = typer.Typer(
    name="mlpipe",
    help="Typed Python functions as ML pipelines: run locally, compile to Kubeflow, Vertex AI and SageMaker.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish and PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
runs_app = typer.Typer(help="Inspect recorded runs.", no_args_is_help=True)
cache_app = typer.Typer(help="Explain and clean the cache.", no_args_is_help=True)
artifacts_app = typer.Typer(help="Inspect stored artifacts and their lineage.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
app.add_typer(cache_app, name="cache")
app.add_typer(artifacts_app, name="artifacts")
app.command("serve")(_serve_command)
app.add_typer(_deploy_app, name="deploy")
app.add_typer(_ci_app, name="ci")


ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", help="Profile from mlpipe.toml (default: MLPIPE_PROFILE or the file's default)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ParamOpt = Annotated[
    list[str] | None, typer.Option("-p", "--param", help="Pipeline parameter as key=value (repeatable).")
]


def _is_tty() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    tty = (sys.stderr if stderr else sys.stdout).isatty()
    # markup off: record text such as "[red]" is shown as written (control characters: see printable)
    return Console(stderr=stderr, highlight=False, markup=False, width=None if tty else 200)


def load_pipeline(target: str) -> Pipeline:
    """Import ``FILE.py:PIPELINE`` (or ``package.module:PIPELINE``) and return the pipeline.

    ``FILE.py`` alone (or ``package.module``) names the one pipeline defined
    there; with none or several that is an error listing them.
    """
    path, sep, attr = target.rpartition(":")
    if not sep:
        path, attr = target, ""
    if not path or (sep and not attr):
        raise DefinitionError(
            f"expected FILE.py or FILE.py:PIPELINE, got {target!r} (for example pipeline.py:training)"
        )
    if path.endswith(".py") or os.sep in path or "/" in path:
        file = Path(path).resolve()
        if not file.is_file():
            raise DefinitionError(f"pipeline file {path!r} does not exist (looked in {file.parent})")
        module_name, root = _module_name(file)
        if sys.path[:1] != [str(root)]:
            sys.path.insert(0, str(root))
        _forget_other_module(module_name, file, path)
    else:
        module_name = path
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DefinitionError(f"cannot import {module_name!r} from {target!r}: {exc}") from exc
    if not attr:
        return _only_pipeline(module, path)
    obj = getattr(module, attr, None)
    if obj is None:
        found = ", ".join(_pipelines_in(module)) or "(none)"
        raise DefinitionError(f"{path} has no attribute {attr!r}; pipelines defined there: {found}")
    if not isinstance(obj, Pipeline):
        raise DefinitionError(f"{path}:{attr} is a {type(obj).__name__}, not a pipeline; decorate it with @mp.pipeline")
    return obj


def _pipelines_in(module: Any) -> dict[str, Pipeline]:
    """The module's pipelines by attribute name: those defined in it, or if none, those it imports."""
    found: dict[str, Pipeline] = {}
    for name, value in sorted(vars(module).items()):
        if isinstance(value, Pipeline) and all(value is not seen for seen in found.values()):
            found[name] = value
    own = {name: p for name, p in found.items() if getattr(p.fn, "__module__", None) == module.__name__}
    return own or found


def _only_pipeline(module: Any, path: str) -> Pipeline:
    found = _pipelines_in(module)
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise DefinitionError(f"{path} defines no pipeline; decorate a function with @mp.pipeline")
    names = ", ".join(found)
    raise DefinitionError(
        f"{path} defines {len(found)} pipelines ({names}); name one as {path}:PIPELINE, "
        f"for example {path}:{next(iter(found))}"
    )


def _forget_other_module(module_name: str, file: Path, path: str) -> None:
    """Make ``import module_name`` load ``file`` even if a module of that name was imported from elsewhere.

    In one process (tests, notebooks) two projects' ``pipe.py`` share a name; a
    file named like a library module (``json.py``) cannot be imported at all.
    """
    from mlpipe.fingerprint import is_user_module

    loaded = sys.modules.get(module_name)
    if loaded is None:
        return
    loaded_file = getattr(loaded, "__file__", None)
    if loaded_file and Path(loaded_file).resolve() == file:
        return
    if not is_user_module(module_name):
        raise DefinitionError(
            f"pipeline file {path!r} is named like the module {module_name!r} that is already imported from "
            f"{loaded_file or 'the interpreter'}; rename the file"
        )
    del sys.modules[module_name]
    importlib.invalidate_caches()


def _module_name(file: Path) -> tuple[str, Path]:
    """Dotted module name of a file and the directory to put on sys.path for it."""
    parts = [file.stem]
    directory = file.parent
    while (directory / "__init__.py").is_file():
        parts.insert(0, directory.name)
        directory = directory.parent
    return ".".join(parts), directory


def parse_params(pipe: Pipeline, items: list[str] | None) -> dict[str, Any]:
    from mlpipe.errors import ParameterError
    from mlpipe.typecheck import parse_cli_value

    out: dict[str, Any] = {}
    out_raw: dict[str, str] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParameterError(f"-p expects key=value, got {item!r}")
        if key in out:
            raise ParameterError(
                f"parameter {key!r} is given twice with -p ({key}={out_raw[key]} and {item}); give it once",
                pipeline=pipe.name,
                argument=key,
            )
        if key not in pipe.params:
            raise ParameterError(
                f"pipeline {pipe.name!r} has no parameter {key!r}; "
                f"its parameters are: {', '.join(pipe.params) or '(none)'}",
                pipeline=pipe.name,
                argument=key,
            )
        out[key] = parse_cli_value(pipe.params[key].annotation, raw)
        out_raw[key] = raw
    return out


def _print_version(value: bool) -> None:
    if value:
        from mlpipe._version import __version__

        print(f"mlpipe {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", help="Print mlpipe's version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    _state["debug"] = debug or bool(os.environ.get("MLPIPE_DEBUG"))


@app.command()
def init(
    directory: Annotated[str, typer.Argument(help="Project directory (created if needed).")] = ".",
) -> None:
    """Start a project: an example pipeline, an mlpipe.toml profile and pytest tests (never overwrites a file)."""
    from mlpipe.scaffold import init_project

    try:
        written = init_project(directory)
    except MlpipeError as exc:
        _fail(exc)
    for path in written:
        print(f"created {path}")
    where = "" if Path(directory).resolve() == Path.cwd() else f"cd {directory} && "
    print(f"next: {where}pytest -q && mlpipe run pipeline.py && mlpipe runs list")


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="FILE.py:PIPELINE, or FILE.py alone when it holds one pipeline.")],
    param: ParamOpt = None,
    profile: ProfileOpt = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute every step.")] = False,
) -> None:
    """Run a pipeline and wait for it (exit 1 if it fails)."""
    from mlpipe.launch import resolve
    from mlpipe.progress import REPORTER, PlainReporter, RichReporter

    try:
        _prof, backend, _store = resolve(profile, None)  # before the user's module runs: a bad profile fails fast
        pipe = load_pipeline(target)
        params = parse_params(pipe, param)
        token = REPORTER.set(RichReporter() if _is_tty() else PlainReporter())
        try:
            result = pipe.run(profile=profile, backend=backend, cache=not no_cache, **params)
        finally:
            REPORTER.reset(token)
    except MlpipeError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        # The run is recorded as cancelled and finished steps are cached. Exit now: an orderly
        # interpreter exit would wait for the steps still running in worker threads to end.
        print("interrupted: the run is recorded as cancelled; finished steps are reused next time", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    if result.status != "succeeded":
        for step in result.steps.values():
            if step.status == "failed":
                print(f"\nstep {printable(repr(step.name))} failed:", file=sys.stderr)
                print(printable((step.traceback or step.error or "").rstrip()), file=sys.stderr)
        skipped = [s.name for s in result.steps.values() if s.status == "skipped"]
        if skipped:
            print(f"skipped because of the failure: {', '.join(skipped)}", file=sys.stderr)
        raise typer.Exit(1)
    for step_name, output in result.outputs_ref:
        try:
            value = result.output(step_name, output)
        except MlpipeError as exc:
            _fail(exc)
        text = repr(value)
        print(printable(f"{step_name}.{output} = {text if len(text) < 400 else text[:397] + '...'}"))


@app.command("compile")
def compile_cmd(
    target: Annotated[str, typer.Argument(help="FILE.py:PIPELINE, or FILE.py alone when it holds one pipeline.")],
    output: Annotated[str, typer.Option("-o", "--output", help="File to write.")],
    backend: Annotated[
        str | None, typer.Option("--backend", help="Backend name (kubeflow, vertex, sagemaker).")
    ] = None,
    profile: ProfileOpt = None,
    upload: Annotated[
        bool, typer.Option("--upload", help="Also put what the tasks load (IR, shipped code) into the store.")
    ] = False,
) -> None:
    """Compile a pipeline for a backend and write it to a file.

    Offline: no store I/O and no credentials. The spec's tasks load the IR by
    its digest from the profile's store; `mlpipe submit` puts it there, or
    pass --upload to do it now (to run the file from a UI or with the
    engine's own client).
    """
    from mlpipe.backend import get_backend
    from mlpipe.config import load_profile
    from mlpipe.launch import compile_spec

    try:
        if backend is None and profile is None:
            raise DefinitionError("compile needs --backend B or --profile P")
        prof = load_profile(profile)  # before the user's module runs: a bad profile fails fast
        name = backend or prof.backend
        instance = get_backend(name, prof.options if name == prof.backend else {}, image=prof.image)
        pipe = load_pipeline(target)
        spec = compile_spec(pipe.ir, instance, output, profile=profile, upload=upload)
    except MlpipeError as exc:
        _fail(exc)
    for message in spec.warnings:
        print(f"warning: {message}", file=sys.stderr)
    print(f"wrote {spec.path}")
    if not spec.ir_digest:
        return
    if spec.uploaded is not None:
        print(f"uploaded the IR {spec.ir_digest[:12]}… the tasks load ({spec.uploaded} new documents in the store)")
    else:
        print(
            f"the tasks load the IR {spec.ir_digest[:12]}… from the store: `mlpipe submit` uploads it; to start "
            "this file from a UI or the engine's client, compile again with --upload"
        )


@app.command("plan")
def plan(
    target: Annotated[str, typer.Argument(help="FILE.py:PIPELINE, or FILE.py alone when it holds one pipeline.")],
    profile: ProfileOpt = None,
    param: ParamOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Before anything is sent: which steps are cache hits, and why the others will run."""
    from mlpipe.launch import resolve
    from mlpipe.planning import plan_run

    try:
        _prof, backend, store = resolve(profile, None)  # before the user's module runs: a bad profile fails fast
        pipe = load_pipeline(target)
        values = pipe.validate_params(parse_params(pipe, param))
        backend.check(pipe.ir)
        result = plan_run(pipe.ir, store, values)
    except MlpipeError as exc:
        _fail(exc)
    pruned = result.prunable(pipe.ir) if backend.capabilities.prune else {}
    starts = len(pipe.ir.steps) - len(pruned)
    if json_out:
        doc = {**result.to_dict(), "backend": backend.name, "store": store.url, "pruned": sorted(pruned)}
        print(json.dumps({**doc, "tasks": starts if backend.capabilities.prune else None}, indent=2))
        return
    print(printable(_plan_text(result, pipe.ir, backend.name, store.url, pruned, backend.capabilities.prune)))


def _plan_text(result: Any, ir: Any, backend: str, store: str, pruned: dict[str, str], prunes: bool) -> str:
    hits, runs = len(result.hits), len(result.steps) - len(result.hits)
    lines = [
        f"plan of pipeline {result.pipeline!r} on {backend} (store {store}): "
        f"{hits} cache hit{'s' if hits != 1 else ''}, {runs} step{'s' if runs != 1 else ''} to run"
    ]
    width = max(len(s.step) for s in result.steps)
    for step in result.steps:
        verdict = "HIT" if step.verdict == "hit" else "RUN"
        key = f" (key {step.key[:16]}…)" if step.key else ""
        lines.append(f"  {step.step:<{width}}  {verdict}  {step.reason}{key if step.verdict == 'hit' else ''}")
        pad = " " * (width + 9)
        if step.closest is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(step.closest.get("created") or 0))
            lines.append(
                f"{pad}closest earlier entry: run {step.closest['run_id']} ({when}), key {step.closest['key'][:16]}…"
            )
        for diff in step.differences:
            lines.append(f"{pad}- {diff}")
    if not prunes:
        lines.append(f"the {backend} backend serves the hits from the store without running their code")
    elif len(pruned) == len(ir.steps):
        lines.append(f"every step is a cache hit: submit sends nothing to {backend} and starts no task")
    elif pruned:
        lines.append(
            f"submit leaves the {len(pruned)} hit(s) out of the {backend} spec and starts "
            f"{len(ir.steps) - len(pruned)} task(s); their consumers read them from the store by cache key"
        )
    elif result.hits:
        lines.append(f"submit sends every step to {backend} (mp.when and step.map pipelines are not pruned)")
    return "\n".join(lines)


@app.command()
def submit(
    target: Annotated[str, typer.Argument(help="FILE.py:PIPELINE, or FILE.py alone when it holds one pipeline.")],
    profile: ProfileOpt = None,
    param: ParamOpt = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the run to its end; exit 1 if it fails.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute every step.")] = False,
) -> None:
    """Submit a pipeline to the profile's backend.

    The local backend runs inside this process, so for it submit always waits.
    """
    from mlpipe.launch import resolve

    try:
        _prof, backend, _store = resolve(profile, None)  # before the user's module runs: a bad profile fails fast
        pipe = load_pipeline(target)
        params = parse_params(pipe, param)
        handle = pipe.submit(profile=profile, backend=backend, cache=not no_cache, **params)
        if handle.data.get("kind") == "cached":
            print(f"run {handle.run_id}: every step is a cache hit; nothing was submitted to {handle.backend}")
        else:
            left_out = handle.data.get("pruned") or []
            print(
                f"submitted run {handle.run_id} to {handle.backend}"
                + (f" ({len(left_out)} cached step(s) left out: {', '.join(left_out)})" if left_out else "")
                + (f": {handle.url}" if handle.url else "")
            )
        if not wait and backend.name != "local":
            return
        last = ""
        status = backend.status(handle)
        while not status.done:
            if status.state != last:
                print(f"  {status.state}", file=sys.stderr)
                last = status.state
            time.sleep(0.2 if backend.name == "local" else 2.0)
            status = backend.status(handle)
    except MlpipeError as exc:
        _fail(exc)
    print(f"run {handle.run_id} {status.state}" + (f": {status.message}" if status.message else ""))
    if status.state != "succeeded":
        raise typer.Exit(1)


@app.command()
def graph(
    target: Annotated[str | None, typer.Argument(help="FILE.py:PIPELINE or FILE.py (optional with --run).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="mermaid, dot or html")] = "mermaid",
    output: Annotated[str | None, typer.Option("-o", "--output", help="Write to a file instead of stdout.")] = None,
    run_id: Annotated[
        str | None, typer.Option("--run", help="Colour the steps by this run's status and cache hits.")
    ] = None,
    profile: ProfileOpt = None,
) -> None:
    """Print the pipeline's graph as Mermaid, DOT or a self-contained HTML page."""
    from mlpipe.graph import render

    try:
        if target is None and run_id is None:
            raise DefinitionError("graph needs FILE.py:PIPELINE, or --run RUN_ID to draw a recorded run")
        states = None
        store = _store(profile) if run_id is not None else None  # before the user's module runs
        ir = load_pipeline(target).ir if target is not None else None
        if store is not None and run_id is not None:
            from mlpipe.graphview import StepState
            from mlpipe.records import load_ir
            from mlpipe.run import get_run

            run = get_run(run_id, store)
            if ir is None:
                ir = load_ir(store, run.doc["ir"])
            states = {name: StepState.from_record(s.record or {"status": s.status}) for name, s in run.steps.items()}
        assert ir is not None
        text = render(ir, fmt, states=states)
    except MlpipeError as exc:
        _fail(exc)
    if output:
        Path(output).write_text(text)
        print(f"wrote {output}")
    else:
        sys.stdout.write(text)


@app.command()
def backends() -> None:
    """List installed backends (from the mlpipe.backends entry point group)."""
    from mlpipe.backend import available_backends

    for name, source in available_backends().items():
        print(f"{name:<12} {source}")


def _store(profile: str | None) -> Any:
    from mlpipe.config import load_profile
    from mlpipe.launch import profile_store

    return profile_store(load_profile(profile))


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


@runs_app.command("list")
def runs_list(
    profile: ProfileOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 20,
    pipeline: Annotated[str | None, typer.Option("--pipeline")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Recent runs, newest first."""
    from rich.table import Table

    from mlpipe.run import runs as list_runs

    try:
        found = list_runs(_store(profile), limit=limit, pipeline=pipeline)
    except MlpipeError as exc:
        _fail(exc)
    if json_out:
        rows = [
            {
                "id": r.id,
                "pipeline": r.pipeline,
                "status": r.status,
                "backend": r.backend,
                "steps": len(r.steps),
                "cached": sum(1 for s in r.steps.values() if s.cached),
                "started": r.started,
                "ended": r.ended,
                "duration": r.duration if r.ended else None,
            }
            for r in found
        ]
        print(json.dumps(rows, indent=2))
        return
    table = Table("run", "pipeline", "status", "steps", "cached", "started", "duration", box=None)
    for r in found:
        cached = sum(1 for s in r.steps.values() if s.cached)
        table.add_row(
            printable(r.id),
            printable(r.pipeline),
            printable(r.status),
            str(len(r.steps)),
            str(cached),
            _fmt_time(r.started),
            f"{r.duration:.2f} s" if r.ended else "-",
        )
    _console().print(table)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A run's steps: status, cache hits, attempts, durations, artifact addresses and sizes, metric values."""
    from rich.table import Table

    from mlpipe.run import get_run

    try:
        store = _store(profile)
        r = get_run(run_id, store)
        _refresh_remote(store, r)
        r = get_run(r.id, store)
    except MlpipeError as exc:
        _fail(exc)
    metrics = _metric_values(store, r)
    if json_out:
        doc = {
            "run": {**r.doc, "status": r.status},
            "steps": {name: s.record or {"step": name, "status": s.status} for name, s in r.steps.items()},
            "metrics": metrics,
        }
        print(json.dumps(doc, indent=2, default=str))
        return
    console = _console()
    console.print(printable(f"run {r.id}  pipeline {r.pipeline}  backend {r.backend}  status {r.status}"))
    console.print(printable(f"started {_fmt_time(r.started)}  duration {r.duration:.2f} s  params {r.params}"))
    if r.error and r.status != "succeeded":
        console.print(printable(f"error: {r.error}"), soft_wrap=True)
    handle = r.doc.get("handle")
    if handle and handle.get("external_id"):
        console.print(
            printable(
                f"{handle['backend']} id {handle['external_id']}" + (f"  {handle['url']}" if handle.get("url") else "")
            )
        )
    from mlpipe.tracking import tracking_link

    link = tracking_link(store, r.id)
    if link:
        console.print(printable(link), soft_wrap=True)
    table = Table("step", "status", "cached", "attempts", "duration", "output", "address", "size", "type", box=None)
    for s in r.steps.values():
        first = True
        attempts = str(s.attempts or s.record.get("attempts") or "-")
        for name, info in (s.outputs or {}).items():
            table.add_row(
                printable(s.name) if first else "",
                printable(s.status) if first else "",
                ("yes" if s.cached else "no") if first else "",
                attempts if first else "",
                f"{s.duration * 1000:.0f} ms" if first else "",
                printable(name),
                printable(info.digest[:16]),
                _fmt_size(info.size),
                printable(info.type.split(":")[-1]),
            )
            first = False
        if first:
            table.add_row(
                printable(s.name),
                printable(s.status),
                "yes" if s.cached else "no",
                attempts,
                f"{s.duration * 1000:.0f} ms",
                "-",
                "-",
                "-",
                printable((s.error or "")[:60]),
            )
    console.print(table)
    for label, values in metrics.items():
        shown = "  ".join(f"{k}={v:.6g}" for k, v in values.items())
        console.print(printable(f"metrics {label}: {shown}"), soft_wrap=True)
    for s in r.steps.values():
        for key, value in (s.record.get("reports") or {}).items():
            console.print(printable(f"report {s.name}.{key}: {value}"))


def _metric_values(store: Any, run: Any) -> dict[str, dict[str, float]]:
    """Numbers among a run's small JSON outputs: a metrics model or dict, or a single number, by ``step.output``."""
    found: dict[str, dict[str, float]] = {}
    for s in run.steps.values():
        if s.status != "succeeded":
            continue
        for name, info in (s.outputs or {}).items():
            if info.materializer not in ("json", "pydantic.json") or (info.size or 0) > 65536:
                continue
            try:
                value = json.loads(bytes(store.read_verified(info.digest)))
            except (MlpipeError, ValueError):
                continue  # gone or corrupted: `runs show` lists the address, `mlpipe verify` says what happened
            numbers = {"value": value} if isinstance(value, int | float) else value
            if (
                isinstance(numbers, dict)
                and numbers
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers.values())
            ):
                found[f"{s.name}.{name}"] = {k: float(v) for k, v in numbers.items()}
    return found


@runs_app.command("delete")
def runs_delete(
    run_ids: Annotated[list[str], typer.Argument(help="Run ids (unique prefixes are enough).")],
    profile: ProfileOpt = None,
) -> None:
    """Delete runs' records from the store and the index (their cache entries and objects stay until cache gc)."""
    from mlpipe.ledger import record_removal
    from mlpipe.metadata import open_index
    from mlpipe.run import get_run

    try:
        store = _store(profile)
        runs = [get_run(run_id, store) for run_id in run_ids]
        active = [r for r in runs if r.status in ("running", "pending")]
        if active:
            raise DefinitionError(
                f"run {active[0].id} is {active[0].status}; wait for it to end (or cancel it) before deleting it"
            )
        removed = {}
        for r in runs:
            files = [rel for rel, _size in store.walk_files(f"runs/{r.id}")]
            for rel in files:
                store.delete(rel)
            removed[r.id] = len(files)
        record_removal(store, list(removed), "runs delete")
        open_index(store).rebuild(store)
    except MlpipeError as exc:
        _fail(exc)
    for run_id, count in removed.items():
        print(f"deleted run {run_id} ({count} files); its cache entries and objects stay until `mlpipe cache gc`")


def _refresh_remote(store: Any, run: Any) -> None:
    """For a run submitted to a remote backend, ask the backend for its state and sync its records."""
    handle = run.doc.get("handle")
    if not handle or handle.get("backend") == "local" or run.status in ("succeeded", "failed", "cancelled"):
        return
    from mlpipe.backend import RunHandle, get_backend
    from mlpipe.metadata import open_index
    from mlpipe.records import RunRecord

    h = RunHandle.model_validate(handle)
    try:
        status = get_backend(h.backend).status(h)
    except MlpipeError as exc:
        print(f"note: could not reach {h.backend} for the run's state: {exc}", file=sys.stderr)
        return
    record = RunRecord.load(store, run.id)  # as the backend's status() may just have written it
    if record.doc.get("status") != status.state or (status.done and not record.doc.get("ended")):
        record.doc["status"] = status.state
        if status.done and not record.doc.get("ended"):
            record.doc["ended"] = time.time()
        if status.message and status.state == "failed" and not record.doc.get("error"):
            record.doc["error"] = status.message
        record.write()
    open_index(store).sync_run(store, run.id)


@cache_app.command("explain")
def cache_explain(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    step: Annotated[str, typer.Argument(help="Step name.")],
    profile: ProfileOpt = None,
) -> None:
    """Why a step ran or was served from the cache."""
    from mlpipe.explain import explain

    try:
        text = explain(_store(profile), run_id, step)
    except MlpipeError as exc:
        _fail(exc)
    print(printable(text))


@cache_app.command("gc")
def cache_gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed, with sizes.")] = False,
    keep_runs: Annotated[
        int | None,
        typer.Option(
            "--keep-runs",
            help="Keep only the N most recent succeeded runs of each pipeline (and runs newer than those, "
            "and running ones), with their cache entries.",
        ),
    ] = None,
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            help="Keep objects written or reused less than this long ago ('1h', '30m', '90s', or 0), "
            "so pipelines running now never lose their outputs.",
        ),
    ] = "1h",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation on a terminal.")] = False,
    profile: ProfileOpt = None,
) -> None:
    """Remove objects unreachable from kept runs and cache entries.

    Shows what will go first; on a terminal it asks before removing anything (--yes skips the question).
    """
    from mlpipe.errors import ConfigError
    from mlpipe.gc import GcReport, collect
    from mlpipe.step import parse_duration

    if keep_runs is not None and keep_runs < 0:
        _fail(ConfigError(f"--keep-runs must be 0 or more, got {keep_runs}"))
    try:
        grace_seconds = 0.0 if grace.strip() in ("0", "0s") else (parse_duration(grace) or 0.0)
        store = _store(profile)
        preview = collect(store, keep_runs=keep_runs, dry_run=True, grace=grace_seconds)
    except MlpipeError as exc:
        _fail(exc)

    def summary(report: GcReport, verb: str) -> str:
        runs = f"{len(report.runs)} runs and {report.entries} cache entries, " if keep_runs is not None else ""
        return f"{verb} {runs}{len(report.items)} files, {_fmt_size(report.bytes)}; kept {report.kept_objects} objects"

    if not dry_run and not preview.items:
        print(f"nothing to remove; kept {preview.kept_objects} objects")
        return
    if dry_run:
        for run_id, pipeline, status in preview.runs:
            print(f"would remove run {run_id} (pipeline {pipeline}, {status})")
        for rel, size in preview.items:
            print(f"would remove {rel} ({_fmt_size(size)})")
        print(summary(preview, "would remove"))
        return
    for run_id, pipeline, status in preview.runs:
        print(f"will remove run {run_id} (pipeline {pipeline}, {status})")
    objects = [(rel, size) for rel, size in preview.items if not rel.startswith("runs/")]
    for rel, size in objects:
        print(f"will remove {rel} ({_fmt_size(size)})")
    print(summary(preview, "will remove"))
    ask = not yes and sys.stdin.isatty() and sys.stdout.isatty()  # scripts and CI are not asked
    if ask and not typer.confirm("Remove them?", default=False):
        print("nothing removed")
        raise typer.Exit(1)
    try:
        report = collect(store, keep_runs=keep_runs, dry_run=False, grace=grace_seconds)
    except MlpipeError as exc:
        _fail(exc)
    print(summary(report, "removed"))


@artifacts_app.command("show")
def artifacts_show(
    address: Annotated[str, typer.Argument(help="Artifact digest (a unique prefix is enough).")],
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """What produced an artifact and what consumed it."""
    from mlpipe.explain import artifact_lineage, describe_artifact

    try:
        store = _store(profile)
        if json_out:
            print(json.dumps(artifact_lineage(store, address), indent=2, default=str))
            return
        text = describe_artifact(store, address)
    except MlpipeError as exc:
        _fail(exc)
    print(printable(text))


@app.command()
def index(
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Drop the index and recreate it from the store.")] = False,
    profile: ProfileOpt = None,
) -> None:
    """Bring the metadata index (metadata.db) up to date with the store's records.

    Without --rebuild, runs recorded in the store but missing from the index
    (written by remote tasks or other machines) are added; with it, the whole
    index is recreated.
    """
    from mlpipe.metadata import open_index

    try:
        store = _store(profile)
        idx = open_index(store)
        if rebuild:
            runs_count, entries = idx.rebuild(store)
            if idx.aside:
                print(f"warning: the index was damaged; moved it to {idx.aside}", file=sys.stderr)
            for problem in idx.skipped:
                print(f"warning: skipped {problem}", file=sys.stderr)
            print(f"indexed {runs_count} runs and {entries} cache entries from {store.url}")
        else:
            added = idx.sync(store)
            print(f"added {added} runs from {store.url} to the index")
    except MlpipeError as exc:
        _fail(exc)


@app.command()
def image(
    target: Annotated[str, typer.Argument(help="FILE.py:PIPELINE, or FILE.py alone when it holds one pipeline.")],
    output: Annotated[str, typer.Option("-o", "--output", help="Directory for the generated files.")] = "mlpipe-image",
    base: Annotated[str | None, typer.Option("--base", help="Base image (default: python:<version>-slim).")] = None,
    requirements: Annotated[str | None, typer.Option("--requirements", help="The project's requirements.")] = None,
    context: Annotated[str | None, typer.Option("--context", help="Build context (default: this directory).")] = None,
    profile: ProfileOpt = None,
) -> None:
    """Write a Dockerfile, requirements and wheels for the runtime image remote backends run (Docker is not invoked).

    mlpipe and the profile's backend plugin are installed in the image from
    wheels built from this checkout; the profile's store scheme adds its
    filesystem package (s3fs, gcsfs).
    """
    from mlpipe.config import load_profile
    from mlpipe.image import write_image_files

    try:
        prof = load_profile(profile)
        files = write_image_files(
            load_pipeline(target),
            output,
            context=context,
            base_image=base,
            requirements=requirements,
            store=prof.store,
            backend=prof.backend,
        )
    except MlpipeError as exc:
        _fail(exc)
    wheels = ", ".join(w.name for w in files.wheels)
    print(f"wrote {files.dockerfile}, {files.requirements}, {files.dockerignore} and wheels ({wheels})")
    print(f"build it with: {files.build_command('IMAGE')}")


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="Run id (a unique prefix is enough).")],
    output: Annotated[str | None, typer.Option("-o", "--output", help="File to write (default: stdout).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="html (audit report) or markdown (model card).")] = "html",
    profile: ProfileOpt = None,
) -> None:
    """The audit report of a run: model, data, code, parameters, metrics, quality, registry, integrity."""
    from mlpipe.audit import collect, render_html, render_markdown

    if fmt not in ("html", "markdown"):
        _fail(DefinitionError(f"--format must be html or markdown, got {fmt!r}"), 2)
    try:
        audit = collect(_store(profile), run_id)
    except MlpipeError as exc:
        _fail(exc)
    text = render_html(audit) if fmt == "html" else render_markdown(audit)
    if output is None:
        sys.stdout.write(text)
        return
    Path(output).write_text(text, encoding="utf-8")
    print(f"wrote the {'audit report' if fmt == 'html' else 'model card'} of run {audit.run_id} to {output}")


@app.command()
def verify(
    profile: ProfileOpt = None,
    no_objects: Annotated[
        bool, typer.Option("--no-objects", help="Check that objects exist without re-hashing their bytes.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check the run ledger: report every record or object changed after its run was sealed (exit 1 if any)."""
    from mlpipe.integrity import verify as verify_ledger

    try:
        report = verify_ledger(_store(profile), objects=not no_objects)
    except MlpipeError as exc:
        _fail(exc)
    if json_out:
        import json

        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_text())
    if not report.ok:
        raise typer.Exit(1)


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """Warnings (a repaired store or index, a skipped damaged record) as one line on stderr."""
    print(f"warning: {printable(message)}", file=sys.stderr)


def main() -> None:
    """Console-script entry point.

    ``mlpipe run`` executes steps in this process, where a step calling
    ``os._exit()`` (or a crash in native code) would end the CLI with whatever
    status it chose. On POSIX the command therefore runs in a forked child; the
    parent reports a child that ended without finishing the command (exit 1,
    the run shows as ``interrupted``) and otherwise passes its status on.
    """
    warnings.showwarning = _show_warning
    if _command(sys.argv[1:]) == "run" and hasattr(os, "fork") and not os.environ.get("MLPIPE_NO_FORK"):
        _guarded(_cli_main)
    else:
        _cli_main()


def _command(args: list[str]) -> str | None:
    return next((a for a in args if not a.startswith("-")), None)


def _guarded(body: Any) -> NoReturn:
    """Run ``body`` in a forked child that must say it finished; see :func:`main`."""
    import signal

    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: the ordinary CLI
        # Its own process group, so a terminal's Ctrl-C reaches it once, forwarded by the parent.
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        os.close(read_end)
        code: Any = 0
        try:
            body()
        except SystemExit as exc:
            code = exc.code
        finally:  # not reached when a step calls os._exit() or the process is killed
            sys.stdout.flush()
            sys.stderr.flush()
            os.write(write_end, b"1")
            os.close(write_end)
        sys.exit(code)
    os.close(write_end)

    def forward(signum: int, _frame: Any) -> None:  # Ctrl-C, a kill: the child handles and reports it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries waitpid itself
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    finished = os.read(read_end, 1) == b"1"
    os.close(read_end)
    code = os.waitstatus_to_exitcode(status)
    if finished or code == 130:  # 130: the child's own Ctrl-C exit, already reported by it
        sys.exit(code)
    how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
    print(
        f"error: the pipeline process {how} before the run finished: a step called os._exit() or the process "
        "crashed or was killed. The run is left unfinished and shows as interrupted (`mlpipe runs list`)",
        file=sys.stderr,
    )
    sys.exit(code if code > 0 else 1)


def _cli_main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # the user's module or pipeline function raised while being loaded or traced
        if _state["debug"]:
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        print(f"error: {_user_error(exc)}", file=sys.stderr)
        sys.exit(2)


def _user_error(exc: BaseException) -> str:
    """``Type: message (file, line N)``, pointing at where the exception was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames and not isinstance(exc, SyntaxError) else ""
    hint = "" if _state["debug"] else "; run with --debug for the traceback"
    return f"{type(exc).__name__}: {exc}{where}{hint}"


if __name__ == "__main__":
    main()
