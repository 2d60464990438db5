"""`mlpipe compile` is a pure function of the pipeline and the profile: no store I/O, no credentials.

The remote stores here point at a closed port on 127.0.0.1 with no credentials at all: any store access would
fail (after retries), so a zero exit proves none happened. The upload path and the task's refusal of a missing IR
run against a real local store and a real `python -m mlpipe.runtime` subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIPES = ROOT / "tests" / "resources" / "cli_pipelines.py"
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, so any request fails


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPIPE_", "MLFLOW_", "AWS_", "GOOGLE_"))}
    env.update({"AWS_EC2_METADATA_DISABLED": "true", "COLUMNS": "200", "MLFLOW_DISABLE_TELEMETRY": "true",
                "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9", "MLPIPE_RETRY_BACKOFF": "0"})
    return env


def mlpipe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlpipe", *args], cwd=cwd, capture_output=True, text=True,
                          env=_env(), timeout=180, check=False)


PROFILES = f"""
[profiles.kfp]
backend = "kubeflow"
store = "s3://no-such-bucket/mlpipe"
image = "registry.example/train:1"
storage_options = {{ endpoint_url = "{CLOSED}" }}

[profiles.vertex]
backend = "vertex"
store = "gs://no-such-bucket/mlpipe"
image = "europe-docker.pkg.dev/p/r/train:1"
options = {{ project = "my-project", location = "europe-west4" }}
storage_options = {{ endpoint_url = "{CLOSED}", token = "anon" }}

[profiles.sm]
backend = "sagemaker"
store = "s3://no-such-bucket/mlpipe"
image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/train:1"
options = {{ role = "arn:aws:iam::123456789012:role/SageMakerRole", region = "us-east-1" }}
storage_options = {{ endpoint_url = "{CLOSED}" }}

[profiles.local-kfp]
backend = "kubeflow"
store = "store"
"""


@pytest.fixture
def project(_isolated_cwd: Path) -> Path:
    (_isolated_cwd / "mlpipe.toml").write_text(PROFILES)
    return _isolated_cwd


@pytest.mark.parametrize(("profile", "store"), [("kfp", "s3://no-such-bucket/mlpipe"),
                                                ("vertex", "gs://no-such-bucket/mlpipe"),
                                                ("sm", "s3://no-such-bucket/mlpipe")])
def test_compile_touches_no_store(project: Path, profile: str, store: str) -> None:
    result = mlpipe("compile", f"{PIPES}:ok", "--profile", profile, "-o", "spec.out", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "warning" not in result.stderr  # a remote store and a real image: nothing to warn about
    text = (project / "spec.out").read_text()
    digest = re.search(r"the tasks load the IR ([0-9a-f]{12})… from the store: `mlpipe submit` uploads it",
                       result.stdout)
    assert digest, result.stdout
    assert store in text and digest.group(1) in text  # the spec names the store and the IR digest it expects


def test_upload_puts_the_ir_where_the_task_finds_it(project: Path) -> None:
    compiled = mlpipe("compile", f"{PIPES}:ok", "--profile", "local-kfp", "-o", "spec.yaml", cwd=project)
    assert compiled.returncode == 0, compiled.stderr
    assert not (project / "store").exists()  # no store I/O, not even creating the directory
    warnings = [ln for ln in compiled.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 2, compiled.stderr
    assert f"names the store {project / 'store'}, a path on this machine" in warnings[0]
    assert "step(s) after, make, scale have no image, so the spec names a placeholder" in warnings[1]
    digest = re.search(r"--ir\s*-\s*'?([0-9a-f]{64})", (project / "spec.yaml").read_text())
    assert digest is not None
    task = [sys.executable, "-m", "mlpipe.runtime", "--store", str(project / "store"), "--ir", digest.group(1),
            "--run-id", "offline-1", "--step", "make", "--param", "n=4", "--output-file", str(project / "o.json")]
    missing = subprocess.run(task, cwd=project, env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode == 2, missing.stderr
    assert "is not in the store" in missing.stderr
    assert "mlpipe compile FILE:PIPELINE --profile P --upload -o SPEC" in missing.stderr
    assert "Traceback" not in missing.stderr

    uploaded = mlpipe("compile", f"{PIPES}:ok", "--profile", "local-kfp", "-o", "spec2.yaml", "--upload",
                      cwd=project)
    assert uploaded.returncode == 0, uploaded.stderr
    assert f"uploaded the IR {digest.group(1)[:12]}… the tasks load (1 new documents" in uploaded.stdout
    assert (project / "spec2.yaml").read_text() == (project / "spec.yaml").read_text()  # same spec, same digest
    assert (project / "store" / "pipelines" / f"{digest.group(1)}.json").is_file()
    ran = subprocess.run(task, cwd=project, env={**_env(), "PYTHONPATH": str(PIPES.parent)}, capture_output=True,
                         text=True, timeout=120, check=False)  # the module on PYTHONPATH, as /app is in the image
    assert ran.returncode == 0, ran.stderr
    assert json.loads((project / "o.json").read_text())["status"] == "succeeded"


def test_compile_api_is_offline_and_uploads_on_request(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python API: a closure step's code is shipped into the store by upload=True, never by compile."""
    import mlpipe as mp
    from mlpipe.launch import compile_spec
    from mlpipe.store import ArtifactStore

    def build() -> mp.Pipeline:
        suffix = "!"

        @mp.step
        def shout(word: str) -> str:
            return word.upper() + suffix

        @mp.pipeline(name="offline-closure")
        def closure(word: str = "hi") -> str:
            return shout(word)

        return closure

    pipe = build()
    assert not pipe.ir.steps[0].code.importable
    first = compile_spec(pipe.ir, "kubeflow", str(project / "a.yaml"), profile="local-kfp")
    assert first.uploaded is None and not (project / "store").exists()
    second = compile_spec(pipe.ir, "kubeflow", str(project / "b.yaml"), profile="local-kfp", upload=True)
    assert second.ir_digest == first.ir_digest
    assert second.uploaded == 3  # the IR, the pickled code and its sidecar
    store = ArtifactStore(str(project / "store"))
    from mlpipe.records import load_ir

    shipped = load_ir(store, second.ir_digest)
    assert shipped.steps[0].code.pickle_digest  # the code the task loads is in the store
