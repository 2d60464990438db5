"""The ``mlpipe`` command line, end to end in subprocesses (``python -m mlpipe ...`` in a temporary directory)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "tests" / "resources"
PIPES = RESOURCES / "cli_pipelines.py"
EXAMPLE = ROOT / "examples" / "training.py"


def _clean_env() -> dict[str, str]:
    """The environment without settings other tests in this session may have left (profiles, tracking)."""
    keep = {"MLPIPE_RETRY_BACKOFF"}
    return {k: v for k, v in os.environ.items()
            if k in keep or not k.startswith(("MLPIPE_", "MLFLOW_"))}


def mlpipe(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m mlpipe ARGS`` in ``cwd``; never raises on a non-zero exit."""
    full_env = {**_clean_env(), "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mlpipe", *args], cwd=cwd, capture_output=True, text=True,
                          env=full_env, timeout=timeout, check=False)


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout


def _run_id(stderr: str) -> str:
    match = re.search(r"run (\d{8}-\d{6}-\d{3}-[0-9a-f]+)", stderr)
    assert match, stderr
    return match.group(1)


@pytest.fixture
def cwd(_isolated_cwd: Path) -> Path:
    return _isolated_cwd


# -- running ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_the_example_twice(cwd: Path) -> None:
    first = mlpipe("run", f"{EXAMPLE}:training", "-p", "n_estimators=20", cwd=cwd, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "evaluate.output = Metrics(accuracy=" in first.stdout
    for step in ("load", "validate", "split", "train", "evaluate"):
        assert re.search(rf"succeeded\s+{step} ", first.stderr), first.stderr
    assert (cwd / ".mlpipe" / "metadata.db").is_file()
    second = mlpipe("run", f"{EXAMPLE}:training", "-p", "n_estimators=20", cwd=cwd, timeout=300)
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("cached ") == 5, second.stderr
    assert second.stdout == first.stdout
    # the parquet materializer stored the DataFrames
    run_id = _run_id(first.stderr)
    shown = mlpipe("runs", "show", run_id, cwd=cwd)
    assert shown.returncode == 0, shown.stderr
    assert "DataFrame" in shown.stdout and "train_df" in shown.stdout


def test_run_a_tiny_pipeline_with_params(cwd: Path) -> None:
    result = mlpipe("run", str(PIPES) + ":ok", "-p", "n=5", "-p", "factor=2", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "scale.output = 22.0"
    assert "pipeline ok, 3 steps" in result.stderr
    assert re.search(r"run \S+ succeeded in", result.stderr)
    again = mlpipe("run", str(PIPES) + ":ok", "-p", "n=5", "-p", "factor=2", cwd=cwd)
    assert again.stderr.count("cached ") == 3
    fresh = mlpipe("run", str(PIPES) + ":ok", "-p", "n=5", "-p", "factor=2", "--no-cache", cwd=cwd)
    assert "cached " not in fresh.stderr


def test_run_by_module_path(cwd: Path) -> None:
    (cwd / "mypipes.py").write_text(PIPES.read_text())
    result = mlpipe("run", "mypipes:ok", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "scale.output = 7.5"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "n=abc"], "error: pipeline 'ok', parameter 'n': expected int, got 'abc' (str)"),
        (["-p", "m=1"], "error: pipeline 'ok' has no parameter 'm'; its parameters are: n, factor"),
        (["-p", "n"], "error: -p expects key=value, got 'n'"),
        (["-p", "factor=[1]"], "error: pipeline 'ok', parameter 'factor': expected float, got [1] (list)"),
    ],
)
def test_bad_parameters_exit_2_without_traceback(cwd: Path, args: list[str], message: str) -> None:
    result = mlpipe("run", str(PIPES) + ":ok", *args, cwd=cwd)
    assert result.returncode == 2
    assert message in result.stderr
    _no_traceback(result)
    assert not (cwd / ".mlpipe" / "runs").exists()  # validated before anything ran


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing.py:ok", "error: pipeline file 'missing.py' does not exist"),
        (f"{PIPES}:nope", "has no attribute 'nope'; pipelines defined there: badstore, badtype, crossing, first, "
                          "mismatched, ok, raising"),
        (f"{PIPES}:not_a_pipeline", "is a int, not a pipeline; decorate it with @mp.pipeline"),
        (str(PIPES), "defines 7 pipelines (badstore, badtype, crossing, first, mismatched, ok, raising); name one as "),
        (f"{PIPES}:", "error: expected FILE.py or FILE.py:PIPELINE"),
        ("no_such_module_xyz:ok", "error: cannot import 'no_such_module_xyz'"),
        (f"{PIPES}:crossing", "error: pipeline 'crossing', step 'after', argument 'x': the output 'output' of step "
                              "'make' belongs to pipeline 'first'; handles cannot cross pipelines"),
        (f"{PIPES}:mismatched", "error: pipeline 'mismatched', step 'after', argument 'x': expected int, got float"),
    ],
)
def test_bad_targets_exit_2_without_traceback(cwd: Path, target: str, message: str) -> None:
    result = mlpipe("run", target, cwd=cwd)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    _no_traceback(result)


def test_step_returning_the_wrong_type_exits_1(cwd: Path) -> None:
    result = mlpipe("run", f"{PIPES}:badtype", cwd=cwd)
    assert result.returncode == 1
    assert "pipeline 'badtype', step 'wrong': output expected int, got str ('oops')" in result.stderr
    _no_traceback(result)


def test_unstorable_output_exits_1_naming_the_type_and_the_fix(cwd: Path) -> None:
    result = mlpipe("run", f"{PIPES}:badstore", cwd=cwd)
    assert result.returncode == 1
    assert "pipeline 'badstore', step 'unstorable', output: no materializer can store a value of type Holder" in (
        result.stderr)
    assert "mp.register_materializer" in result.stderr
    _no_traceback(result)


def test_a_raising_step_shows_its_traceback_once_and_skips_dependents(cwd: Path) -> None:
    result = mlpipe("run", f"{PIPES}:raising", cwd=cwd)
    assert result.returncode == 1
    assert result.stderr.count("Traceback (most recent call last)") == 1
    assert result.stderr.count('raise ValueError(f"kaboom {x}")') == 1
    assert "ValueError: kaboom 2" in result.stderr
    assert "mlpipe/executor.py" not in result.stderr  # the user's frames only
    assert "step 'boom' failed:" in result.stderr
    assert re.search(r"skipped\s+after ", result.stderr)
    assert "skipped because of the failure: after" in result.stderr
    assert re.search(r"succeeded\s+after_2 ", result.stderr)


def test_debug_shows_the_traceback(cwd: Path) -> None:
    result = mlpipe("--debug", "run", f"{PIPES}:ok", "-p", "n=abc", cwd=cwd)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "ParameterError" in result.stderr
    assert "error: pipeline 'ok', parameter 'n'" in result.stderr


def test_unknown_profile_exits_2(cwd: Path) -> None:
    result = mlpipe("run", f"{PIPES}:ok", "--profile", "prod", cwd=cwd)
    assert result.returncode == 2
    assert "error: profile 'prod' is not defined" in result.stderr
    _no_traceback(result)


def test_profile_from_mlpipe_toml(cwd: Path) -> None:
    (cwd / "mlpipe.toml").write_text('[profiles.dev]\nstore = "elsewhere"\n')
    sub = cwd / "sub"
    sub.mkdir()
    result = mlpipe("run", f"{PIPES}:ok", cwd=sub)
    assert result.returncode == 0, result.stderr
    assert (cwd / "elsewhere" / "runs").is_dir()
    (cwd / "mlpipe.toml").write_text('[profiles.dev]\nstorage = "elsewhere"\n')
    bad = mlpipe("run", f"{PIPES}:ok", cwd=sub)
    assert bad.returncode == 2
    assert "storage: unknown key. Valid keys: backend, store, image, options, storage_options" in bad.stderr
    _no_traceback(bad)


def test_usage_errors_exit_2(cwd: Path) -> None:
    result = mlpipe("run", cwd=cwd)
    assert result.returncode == 2
    assert "Missing argument" in result.stderr
    result = mlpipe("frobnicate", cwd=cwd)
    assert result.returncode == 2


# -- graph ----------------------------------------------------------------------------------------


def test_graph_mermaid(cwd: Path) -> None:
    result = mlpipe("graph", f"{PIPES}:raising", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "flowchart TD\n"
        '    make["make"]\n'
        '    boom["boom"]\n'
        '    after["after"]\n'
        '    after_2["after_2"]\n'
        "    make -->|x| boom\n"
        "    boom -->|x| after\n"
        "    make -->|x| after_2\n"
    )


def test_graph_dot(cwd: Path) -> None:
    result = mlpipe("graph", f"{PIPES}:ok", "--format", "dot", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('digraph "ok" {')
    assert '"make" -> "after" [label="x"];' in result.stdout
    assert '"after" -> "scale" [label="x"];' in result.stdout


def test_graph_html_is_self_contained(cwd: Path) -> None:
    result = mlpipe("graph", f"{PIPES}:raising", "--format", "html", "-o", "graph.html", cwd=cwd)
    assert result.returncode == 0, result.stderr
    page = (cwd / "graph.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<svg" in page and ">after_2</text>" in page
    assert "http" not in page and "//" not in page  # nothing fetched from anywhere
    assert "<script" not in page and "<link" not in page


def test_graph_unknown_format(cwd: Path) -> None:
    result = mlpipe("graph", f"{PIPES}:ok", "--format", "svg", cwd=cwd)
    assert result.returncode == 2
    assert "unknown graph format 'svg'; use mermaid, dot or html" in result.stderr


# -- backends ----------------------------------------------------------------------------------------


def test_backends_lists_entry_points(cwd: Path) -> None:
    # Discovery is patched inside the subprocess; nothing is installed.
    script = cwd / "list_backends.py"
    script.write_text(
        "import importlib.metadata as md\n"
        "from mlpipe.cli import main\n"
        "fake = md.EntryPoint(name='fake', value='fake_backend_pkg:FakeBackend', group='mlpipe.backends')\n"
        "md.entry_points = lambda group=None, **kw: [fake] if group == 'mlpipe.backends' else []\n"
        "import sys\n"
        "sys.argv = ['mlpipe', 'backends']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=60,
                            check=False, env=_clean_env())
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["fake", "?", "(fake_backend_pkg:FakeBackend)"]
    assert lines[1].split()[:2] == ["local", "mlpipe"]
    plain = mlpipe("backends", cwd=cwd, env={"MLPIPE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert plain.stdout.split() == ["local", "mlpipe", "(mlpipe.local:LocalBackend)"]


# -- runs, artifacts, cache ---------------------------------------------------------------------------


def _records(cwd: Path) -> list[dict[str, Any]]:
    script = (
        "import json, mlpipe as mp\n"
        "print(json.dumps([{'id': r.id, 'status': r.status, "
        "'steps': {n: [s.status, s.cached, s.outputs[next(iter(s.outputs))].digest if s.outputs else None] "
        "for n, s in r.steps.items()}} for r in mp.runs()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, check=True,
                         env=_clean_env())
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


def test_runs_artifacts_and_cache_commands(cwd: Path) -> None:
    first = mlpipe("run", f"{PIPES}:ok", "-p", "n=3", cwd=cwd)
    second = mlpipe("run", f"{PIPES}:ok", "-p", "n=3", "-p", "factor=3", cwd=cwd)
    assert first.returncode == second.returncode == 0
    first_id, second_id = _run_id(first.stderr), _run_id(second.stderr)

    listed = mlpipe("runs", "list", cwd=cwd)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines() if re.match(r"\s*\d{8}-", line)]
    assert [r[0] for r in rows] == [second_id, first_id]
    assert rows[0][1:5] == ["ok", "succeeded", "3", "2"]  # make and after were hits

    shown = mlpipe("runs", "show", second_id[:-2], cwd=cwd)  # a unique prefix
    assert shown.returncode == 0, shown.stderr
    assert f"run {second_id}  pipeline ok  backend local  status succeeded" in shown.stdout
    assert "params {'factor': 3.0, 'n': 3}" in shown.stdout
    step_rows = {line.split()[0]: line.split() for line in shown.stdout.splitlines()
                 if line.strip().split(" ")[0] in ("make", "after", "scale")}
    assert step_rows["make"][1:3] == ["succeeded", "yes"]
    assert step_rows["scale"][1:3] == ["succeeded", "no"]
    assert "output" in step_rows["scale"] and "float" in step_rows["scale"]

    records = _records(cwd)
    digest = records[-1]["steps"]["make"][2]
    art = mlpipe("artifacts", "show", digest[:10], cwd=cwd)
    assert art.returncode == 0, art.stderr
    assert f"artifact {digest}" in art.stdout
    assert "type builtins:int  materializer json" in art.stdout
    assert f"produced by run {first_id}, step 'make'" in art.stdout
    assert "input n = 3" in art.stdout
    assert f"served from the cache in 1 later run(s): {second_id}" in art.stdout
    assert f"run {first_id}, step 'after' as 'x'" in art.stdout

    explained = mlpipe("cache", "explain", second_id, "scale", cwd=cwd)
    assert explained.returncode == 0, explained.stderr
    assert f"step 'scale' of run {second_id}: MISS" in explained.stdout
    assert f"closest earlier entry: run {first_id}" in explained.stdout
    assert "parameter 'factor': 1.5 → 3.0" in explained.stdout
    hit = mlpipe("cache", "explain", second_id, "make", cwd=cwd)
    assert "HIT" in hit.stdout and f"served from the cache entry written by run {first_id}" in hit.stdout

    missing = mlpipe("runs", "show", "19990101-000000-abcdef", cwd=cwd)
    assert missing.returncode == 2
    assert "error: no run '19990101-000000-abcdef'" in missing.stderr
    _no_traceback(missing)
    no_art = mlpipe("artifacts", "show", "ffffffff", cwd=cwd)
    assert no_art.returncode == 2 and "no artifact 'ffffffff'" in no_art.stderr
    no_step = mlpipe("cache", "explain", second_id, "nope", cwd=cwd)
    assert no_step.returncode == 2 and "has no step 'nope'" in no_step.stderr


def test_cache_gc_dry_run_and_index_rebuild(cwd: Path) -> None:
    assert mlpipe("run", f"{PIPES}:ok", cwd=cwd).returncode == 0
    orphan = subprocess.run(
        [sys.executable, "-c", "import mlpipe as mp; print(mp.ArtifactStore('.mlpipe').put_value({'x': 1}).digest)"],
        cwd=cwd, capture_output=True, text=True, check=True, env=_clean_env(),
    ).stdout.strip()
    dry = mlpipe("cache", "gc", "--dry-run", "--grace", "0", cwd=cwd)
    assert dry.returncode == 0, dry.stderr
    assert f"would remove objects/{orphan[:2]}/{orphan} (7 B)" in dry.stdout
    assert "would remove 1 files, 7 B; kept 3 objects" in dry.stdout
    assert (cwd / ".mlpipe" / "objects" / orphan[:2] / orphan).exists()
    real = mlpipe("cache", "gc", "--grace", "0", cwd=cwd)
    assert "removed 1 files" in real.stdout
    assert not (cwd / ".mlpipe" / "objects" / orphan[:2] / orphan).exists()

    for suffix in ("", "-wal", "-shm"):
        (cwd / ".mlpipe" / f"metadata.db{suffix}").unlink(missing_ok=True)
    assert mlpipe("runs", "list", cwd=cwd).stdout.count("succeeded") == 0
    rebuilt = mlpipe("index", "--rebuild", cwd=cwd)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert re.search(r"indexed 1 runs and 3 cache entries from .*\.mlpipe", rebuilt.stdout)
    assert mlpipe("runs", "list", cwd=cwd).stdout.count("succeeded") == 1
    again = mlpipe("run", f"{PIPES}:ok", cwd=cwd)
    assert again.stderr.count("cached ") == 3


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import mlpipe as mp\n\n@mp.pipeline\ndef p():\n    return undefined_step()\n",
         "error: NameError: name 'undefined_step' is not defined ("),
        ("import mlpipe as mp\ndef broken(:\n", "error: SyntaxError: invalid syntax (user_code.py, line 2)"),
        ("raise RuntimeError('settings missing')\n", "error: RuntimeError: settings missing ("),
    ],
)
def test_errors_in_the_users_module_exit_2_with_a_location(cwd: Path, source: str, message: str) -> None:
    (cwd / "user_code.py").write_text(source)
    result = mlpipe("run", "user_code.py:p", cwd=cwd)
    assert result.returncode == 2
    assert message in result.stderr
    assert "run with --debug for the traceback" in result.stderr
    _no_traceback(result)
    debug = mlpipe("--debug", "run", "user_code.py:p", cwd=cwd)
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr


def test_progress_is_rich_on_a_terminal_and_plain_lines_otherwise(cwd: Path) -> None:
    import pty
    import select

    plain = mlpipe("run", f"{PIPES}:ok", cwd=cwd)
    assert "\x1b[" not in plain.stderr  # no escape codes when stderr is not a terminal
    assert re.search(r"^  succeeded make \(\d+ ms\)$", plain.stderr, re.MULTILINE)

    master, slave = pty.openpty()
    env = {**_clean_env(), "TERM": "xterm-256color", "COLUMNS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "mlpipe", "run", f"{PIPES}:ok", "-p", "n=9"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    assert out.decode().strip() == "scale.output = 28.5"
    text = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in text  # styled by rich
    assert "pipeline" in text and "ok" in text and "succeeded" in text


def test_compile_and_submit_on_the_local_backend(cwd: Path) -> None:
    no_form = mlpipe("compile", f"{PIPES}:ok", "--backend", "local", "-o", "out.yaml", cwd=cwd)
    assert no_form.returncode == 2
    assert "error: backend 'local' has no compiled form" in no_form.stderr
    no_backend = mlpipe("compile", f"{PIPES}:ok", "-o", "out.yaml", cwd=cwd)
    assert no_backend.returncode == 2 and "compile needs --backend B or --profile P" in no_backend.stderr
    unknown = mlpipe("compile", f"{PIPES}:ok", "--backend", "nosuchbackend", "-o", "out.yaml", cwd=cwd,
                     env={"MLPIPE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert unknown.returncode == 2
    assert "no backend named 'nosuchbackend' is installed (installed: local)" in unknown.stderr
    _no_traceback(unknown)
    submitted = mlpipe("submit", f"{PIPES}:ok", "-p", "n=4", "--wait", cwd=cwd)
    assert submitted.returncode == 0, submitted.stderr
    run_id = re.search(r"submitted run (\S+) to local", submitted.stdout)
    assert run_id and f"run {run_id.group(1)} succeeded" in submitted.stdout
    shown = mlpipe("runs", "show", run_id.group(1), cwd=cwd)
    assert "status succeeded" in shown.stdout


def test_load_pipeline_from_two_files_with_the_same_name_in_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlpipe.cli import load_pipeline
    from mlpipe.errors import DefinitionError

    monkeypatch.setattr(sys, "path", [*sys.path])

    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "samename_pipe.py").write_text(
            f"import mlpipe as mp\n\n@mp.step\ndef s() -> int:\n    return 1\n\n@mp.pipeline\ndef {name}() -> int:\n"
            "    return s()\n"
        )
    assert load_pipeline(f"{tmp_path / 'one' / 'samename_pipe.py'}:one").name == "one"
    assert load_pipeline(f"{tmp_path / 'two' / 'samename_pipe.py'}:two").name == "two"
    assert load_pipeline(f"{tmp_path / 'one' / 'samename_pipe.py'}:one").name == "one"
    (tmp_path / "json.py").write_text("x = 1\n")
    with pytest.raises(DefinitionError, match="is named like the module 'json' that is already imported"):
        load_pipeline(f"{tmp_path / 'json.py'}:x")
    sys.modules.pop("samename_pipe", None)


# -- mlpipe init ------------------------------------------------------------------------------


def test_init_scaffolds_a_project_whose_tests_pass_and_whose_pipeline_runs(cwd: Path) -> None:
    made = mlpipe("init", "proj", cwd=cwd)
    assert made.returncode == 0, made.stderr
    project = cwd / "proj"
    for rel in ("pipeline.py", "mlpipe.toml", "tests/test_pipeline.py", "tests/conftest.py", ".gitignore"):
        assert f"created proj/{rel}" in made.stdout and (project / rel).is_file()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=project,
                           capture_output=True, text=True, env=_clean_env(), timeout=300, check=False)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout
    assert not (project / ".mlpipe").exists()  # the tests used a store of their own
    ran = mlpipe("run", "pipeline.py", cwd=project)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("evaluate.output = Metrics(accuracy=")
    assert (project / ".mlpipe" / "runs").is_dir()  # the dev profile's store, next to mlpipe.toml
    again = mlpipe("run", "../pipeline.py", "-p", "n=500", cwd=project / "tests")  # from a subdirectory: same store
    assert again.returncode == 0 and again.stderr.count("cached ") == 4, again.stderr


def test_init_never_overwrites_a_file(cwd: Path) -> None:
    (cwd / "pipeline.py").write_text("# mine\n")
    refused = mlpipe("init", cwd=cwd)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: not overwriting pipeline.py: `mlpipe init` only creates new files")
    _no_traceback(refused)
    assert (cwd / "pipeline.py").read_text() == "# mine\n"
    assert sorted(p.name for p in cwd.iterdir()) == ["pipeline.py"]  # nothing else was written either
