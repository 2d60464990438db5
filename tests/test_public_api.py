"""The public surface of ``mlpipe``: pinned names, a lazy facade, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mlpipe as mp
from mlpipe import errors

# The contract of DESIGN.md. Adding a name is a decision: add it here too.
CORE_API = {
    "ArtifactStore",
    "Backend",
    "BackendOptions",
    "Capabilities",
    "Materializer",
    "MlpipeError",
    "Pipeline",
    "PipelineIR",
    "Profile",
    "Resources",
    "Run",
    "RunHandle",
    "RunStatus",
    "Step",
    "StepRun",
    "__version__",
    "get_run",
    "pipeline",
    "register_materializer",
    "runs",
    "step",
}

HEAVY = ["pandas", "pyarrow", "numpy", "kfp", "sagemaker", "google.cloud.aiplatform", "mlflow", "networkx", "sklearn"]


def test_all_is_sorted_unique_and_contains_the_contract() -> None:
    assert mp.__all__ == sorted(mp.__all__)
    assert len(mp.__all__) == len(set(mp.__all__))
    assert CORE_API <= set(mp.__all__)
    assert dir(mp) == sorted(mp.__all__)


@pytest.mark.parametrize("name", sorted(CORE_API))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(mp, name) is not None


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="module 'mlpipe' has no attribute 'nope'"):
        mp.nope


def test_facade_objects_are_the_implementations() -> None:
    from mlpipe.backend import Backend
    from mlpipe.run import Run, get_run
    from mlpipe.store import ArtifactStore

    assert mp.ArtifactStore is ArtifactStore
    assert mp.Backend is Backend
    assert mp.Run is Run
    assert mp.get_run is get_run


def test_error_hierarchy() -> None:
    assert set(errors.__all__) == {name for name in vars(errors) if name.endswith("Error")}
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.MlpipeError)
    assert issubclass(errors.StepSignatureError, TypeError)
    assert issubclass(errors.TypeMismatchError, TypeError) and issubclass(errors.TypeMismatchError, ValueError)
    assert issubclass(errors.ParameterError, ValueError)
    assert issubclass(errors.ObjectNotFoundError, FileNotFoundError)
    assert issubclass(errors.BackendNotFoundError, LookupError)
    assert issubclass(errors.MissingDependencyError, ImportError)
    assert issubclass(errors.StepFailedError, RuntimeError)
    assert errors.ParameterError("x").exit_code == 2
    assert errors.StepFailedError("x").exit_code == 1
    err = errors.GraphError("message", pipeline="p", step="s")
    assert (str(err), err.pipeline, err.step) == ("message", "p", "s")


def _modules_after(code: str) -> list[str]:
    script = (
        "import sys\n"
        f"{code}\n"
        "import json\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def test_import_mlpipe_is_light() -> None:
    assert _modules_after("import mlpipe") == []


def test_defining_building_and_running_a_pipeline_stays_light() -> None:
    code = (
        "import mlpipe as mp\n"
        "@mp.step\n"
        "def a(n: int) -> list[int]:\n"
        "    return [n]\n"
        "@mp.pipeline\n"
        "def p(n: int = 1) -> list[int]:\n"
        "    return a(n)\n"
        "p.ir\n"
        "import os, tempfile\n"
        "os.chdir(tempfile.mkdtemp())\n"
        "assert p.run().status == 'succeeded'\n"
    )
    assert _modules_after(code) == []


def test_the_cli_module_imports_no_heavy_library() -> None:
    assert _modules_after("import mlpipe.cli") == []


def test_serving_and_deploy_packages_import_no_heavy_library() -> None:
    code = "import mlpipe.serving, mlpipe.deploy, mlpipe.serve_cli, mlpipe.deploy_cli"
    assert _modules_after(code) == []
    script = f"import sys\n{code}\nprint([m for m in ('fastapi', 'uvicorn', 'starlette', 'yaml') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
