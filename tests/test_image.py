"""`mlpipe image`: the Dockerfile and requirements of the runtime image (Docker is not available here, so the
generated files are checked: base image, pins, copied modules, ignore file, CLI)."""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
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
    assert "COPY image/requirements.txt /tmp/mlpipe-requirements.txt" in lines
    assert "RUN pip install -r /tmp/mlpipe-requirements.txt" in lines
    assert f"COPY {_module(project)}.py /app/{_module(project)}.py" in lines
    assert "ENV PYTHONPATH=/app" in lines
    reqs = [ln for ln in files.requirements.read_text().splitlines() if ln and not ln.startswith("#")]
    import mlpipe

    assert reqs[0] == f"mlpipe=={mlpipe.__version__}"
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
    bad = CliRunner().invoke(app, ["image", target, "--requirements", "missing.txt"])
    assert bad.exit_code == 2
