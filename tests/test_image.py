"""`mlpipe image`: the Dockerfile, requirements and wheels of the runtime image.

Docker is not available here, so the generated files are checked (base image, pins, wheels, copied modules,
ignore file, CLI), and the closest thing to `docker run`: the generated requirements are installed into a fresh
virtualenv (uv, offline from its cache) that then runs one task of a compiled pipeline against a local store."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlpipe.cli import app, load_pipeline
from mlpipe.errors import DefinitionError
from mlpipe.image import write_image_files

ROOT = Path(__file__).resolve().parent.parent
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
INSTRUCTIONS = {"FROM", "ENV", "WORKDIR", "COPY", "RUN", "CMD"}


def instructions(dockerfile: Path) -> list[str]:
    lines = [ln for ln in dockerfile.read_text().splitlines() if ln and not ln.startswith("#")]
    assert all(ln.split()[0] in INSTRUCTIONS for ln in lines), lines
    return lines


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory holding a copy of the example under a module name of its own (no sys.modules reuse)."""
    shutil.copy(ROOT / "examples" / "training.py", tmp_path / f"{_module(tmp_path)}.py")
    (tmp_path / "requirements.txt").write_text("rich>=13\n\n")
    return tmp_path


def _module(project: Path) -> str:
    return "imgtrain_" + "".join(c if c.isalnum() else "_" for c in project.name)


def _target(project: Path) -> str:
    return str(project / f"{_module(project)}.py") + ":training"


def test_training_image_files(project: Path) -> None:
    pipeline = load_pipeline(_target(project))
    files = write_image_files(pipeline, project / "image", context=project)
    lines = instructions(files.dockerfile)
    assert lines[0] == f"FROM python:{PY}-slim"  # pickled code loads only on the same minor version
    assert lines[2].startswith("RUN python -c ") and f"== ({sys.version_info[0]}, {sys.version_info[1]})" in lines[2]
    assert "COPY image/wheels ./wheels" in lines
    assert "COPY image/requirements.txt ./requirements.txt" in lines
    assert "RUN pip install -r requirements.txt && rm -rf /tmp/mlpipe-build" in lines
    assert f"COPY {_module(project)}.py /app/{_module(project)}.py" in lines
    assert "ENV PYTHONPATH=/app" in lines
    reqs = [ln for ln in files.requirements.read_text().splitlines() if ln and not ln.startswith("#")]
    import mlpipe

    # mlpipe from the checkout's wheel, never by name (the index's `mlpipe` is an unrelated project)
    assert reqs[0] == f"./wheels/mlpipe-{mlpipe.__version__}-py3-none-any.whl"
    assert not any(re.match(r"mlpipe\b", r) for r in reqs)
    assert [w.name for w in files.wheels] == [f"mlpipe-{mlpipe.__version__}-py3-none-any.whl"]
    assert (project / "image" / "wheels" / files.wheels[0].name).is_file()
    for dist in ("pandas", "pyarrow", "scikit-learn", "pydantic"):  # pyarrow: pandas outputs are Parquet
        assert f"{dist}=={importlib.metadata.version(dist)}" in reqs
    assert reqs[-1] == "rich>=13"
    assert "**/.mlpipe" in files.dockerignore.read_text().splitlines()
    assert files.dockerignore.name == "Dockerfile.dockerignore"
    assert files.build_command("reg/x:1") == f"docker build -f {files.dockerfile} -t reg/x:1 {project}"


def test_package_modules_are_copied_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "imgproj"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "flow.py").write_text(
        "import mlpipe as mp\n\n@mp.step\ndef double(x: int) -> int:\n    return 2 * x\n\n"
        "@mp.pipeline(name='imgflow')\ndef flow(x: int = 1) -> int:\n    return double(x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pipeline = load_pipeline("imgproj.sub.flow:flow")
    files = write_image_files(pipeline, tmp_path / "out", context=tmp_path, base_image="python:3.11")
    lines = instructions(files.dockerfile)
    assert lines[0] == "FROM python:3.11"
    assert "COPY imgproj /app/imgproj" in lines


def test_module_outside_the_context_is_refused(project: Path, tmp_path: Path) -> None:
    pipeline = load_pipeline(_target(project))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(DefinitionError, match="outside the build context"):
        write_image_files(pipeline, elsewhere / "image", context=elsewhere)


def test_missing_requirements_file_is_refused(project: Path) -> None:
    pipeline = load_pipeline(_target(project))
    with pytest.raises(DefinitionError, match="does not exist"):
        write_image_files(pipeline, project / "image", context=project, requirements=project / "nope.txt")


def test_cli_image(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    target = f"{_module(project)}.py:training"
    result = CliRunner().invoke(app, ["image", target, "-o", "img", "--base", "python:3.11"])
    assert result.exit_code == 0, result.output
    assert "build it with: docker build -f" in result.output
    assert (project / "img" / "Dockerfile").read_text().splitlines()[4] == "FROM python:3.11"
    bad = CliRunner().invoke(app, ["image", target, "-o", "new", "--requirements", "missing.txt"])
    assert bad.exit_code == 2
    assert "requirements file missing.txt does not exist" in bad.output
    assert not (project / "new").exists()  # refused before anything is written


@pytest.mark.parametrize("where", ["outside", "file", "context"])
def test_invalid_output_is_refused_before_writing(project: Path, tmp_path: Path, where: str) -> None:
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    output = {"outside": str(outside / "img"), "file": str(project / "requirements.txt" / "img"),
              "context": str(project)}[where]
    result = CliRunner().invoke(app, ["image", _target(project), "-o", output, "--context", str(project)])
    assert result.exit_code == 2, result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("error: ") and ("-o" in message or "output directory" in message)
    assert "Traceback" not in result.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not outside.exists()


def test_store_scheme_adds_its_filesystem(project: Path) -> None:
    pipeline = load_pipeline(_target(project))
    s3 = write_image_files(pipeline, project / "s3", context=project, store="s3://bucket/mlpipe")
    gs = write_image_files(pipeline, project / "gs", context=project, store="gs://bucket/mlpipe")
    s3_reqs = s3.requirements.read_text().splitlines()
    assert f"s3fs=={importlib.metadata.version('s3fs')}" in s3_reqs
    assert not any(r.startswith("gcsfs") for r in s3_reqs)
    gs_reqs = gs.requirements.read_text().splitlines()
    assert any(r == "gcsfs" or r.startswith("gcsfs==") for r in gs_reqs)


@pytest.mark.slow
def test_generated_requirements_run_a_compiled_task(project: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the wheels, install requirements.txt into a fresh venv (uv, offline), run one task with it."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    monkeypatch.chdir(project)
    store = project / "store"
    (project / "mlpipe.toml").write_text(
        f'[profiles.kfp]\nbackend = "kubeflow"\nstore = "{store}"\nimage = "registry.example/train:1"\n'
    )
    target = f"{_module(project)}.py:training"
    started = time.perf_counter()
    made = CliRunner().invoke(app, ["image", target, "-o", "image", "--profile", "kfp"])
    assert made.exit_code == 0, made.output
    wheels = sorted(p.name for p in (project / "image" / "wheels").iterdir())
    assert [w.split("-")[0] for w in wheels] == ["mlpipe", "mlpipe_kubeflow"]  # the profile's backend plugin
    compiled = CliRunner().invoke(app, ["compile", target, "--profile", "kfp", "-o", "spec.yaml", "--upload"])
    assert compiled.exit_code == 0, compiled.output
    digest = re.search(r"--ir'?,?\s*-?\s*'?([0-9a-f]{64})", (project / "spec.yaml").read_text())
    assert digest is not None
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_OFFLINE": "1", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    subprocess.run([uv, "venv", "--python", sys.executable, str(venv)], check=True, env=env, capture_output=True)
    python = venv / "bin" / "python"
    install = subprocess.run([uv, "pip", "install", "--python", str(python), "-r", "requirements.txt"],
                             cwd=project / "image", env=env, capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stderr
    # As in the image: the project's modules on PYTHONPATH (/app), mlpipe from the wheel, not this checkout.
    task_env = {**env, "PYTHONPATH": str(project), "MLFLOW_DISABLE_TELEMETRY": "true"}
    where = subprocess.run([str(python), "-c", "import mlpipe, mlpipe_kubeflow; print(mlpipe.__file__)"],
                           cwd=tmp_path, env=task_env, capture_output=True, text=True, check=True)
    assert str(venv) in where.stdout and str(ROOT) not in where.stdout
    run = subprocess.run(
        [str(python), "-m", "mlpipe.runtime", "--store", str(store), "--ir", digest.group(1), "--run-id",
         "image-test-run", "--step", "load", "--param", "n_estimators=10", "--output-file", str(tmp_path / "o.json")],
        cwd=tmp_path, env=task_env, capture_output=True, text=True, timeout=300, check=False,
    )
    elapsed = time.perf_counter() - started
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "o.json").read_text())["status"] == "succeeded"
    from mlpipe.run import get_run

    recorded = get_run("image-test-run", str(store))
    assert recorded.steps["load"].status == "succeeded"
    assert len(recorded.output("load")) == 569  # the breast-cancer frame, read back from the store
    print(f"image test: wheels + fresh venv + one task in {elapsed:.1f} s")
