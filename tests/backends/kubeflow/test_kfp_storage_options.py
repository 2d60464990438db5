"""A MinIO-style store for the tasks: the profile's endpoint travels in the spec, its credentials never do.

The store is moto's S3 on 127.0.0.1 (an emulator, not AWS or MinIO). The
tasks' process has no AWS_ENDPOINT_URL: they reach the emulator only through
the ``--storage-options`` the spec carries, and they authenticate with the
environment's AWS_ACCESS_KEY_ID, as pods do with a cluster secret.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlpipe_kubeflow import KubeflowBackend
from resources import kubeflow_pipelines as kp

from mlpipe.run import Run
from mlpipe.store import open_store

BUCKET = "mlpipe-minio"
SECRET = "profile-secret-never-in-a-spec"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="x").create_bucket(Bucket=BUCKET)
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def profile(endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "cluster-key")  # what a pod gets from the cluster's secret
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cluster-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    store = f"s3://{BUCKET}/{uuid.uuid4().hex[:10]}"
    Path("mlpipe.toml").write_text(
        '[profiles.minio]\nbackend = "kubeflow"\n'
        f'store = "{store}"\nimage = "registry.example/ml:1"\noptions = {{ mode = "local" }}\n'
        f'storage_options = {{ endpoint_url = "{endpoint}", key = "profile-key", secret = "{SECRET}" }}\n'
    )
    return store


def test_kfp_local_tasks_reach_the_store_through_the_forwarded_endpoint(profile: str, endpoint: str) -> None:
    with pytest.warns(UserWarning, match="storage_options key, secret look like credentials"):
        run = kp.small.run(profile="minio", x=3)
    assert run.status == "succeeded", run.error
    assert run.output("needs_2") == 12
    store = open_store(profile, {"endpoint_url": endpoint})
    assert {s.status for s in Run.load(store, run.id).steps.values()} == {"succeeded"}


def test_compiled_spec_names_the_endpoint_and_no_credential(profile: str, endpoint: str, tmp_path: Path) -> None:
    target = str(Path(kp.__file__)) + ":small"
    out = tmp_path / "small.yaml"
    proc = subprocess.run([sys.executable, "-m", "mlpipe", "compile", target, "--profile", "minio", "-o", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "storage_options" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: storage_options key, secret look like credentials")
    text = out.read_text()
    assert SECRET not in text and "profile-key" not in text
    spec = next(yaml.safe_load_all(text))
    for executor in spec["deploymentSpec"]["executors"].values():
        args = executor["container"]["args"]
        assert args[args.index("--storage-options") + 1] == f'{{"endpoint_url":"{endpoint}"}}'


def test_no_storage_options_no_argument(tmp_path: Path) -> None:
    backend = KubeflowBackend(image="python:3.11-slim")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = backend.plan(kp.small.ir, open_store(str(tmp_path / "store")))
    assert all("--storage-options" not in plan.runtime_args(t) for t in plan.tasks)
