"""Fixtures for the Dask backend: a real cluster (``dask scheduler`` + two ``dask worker``) and moto's S3.

The cluster is shared by the session: worker ``w0`` declares ``gpu=1`` besides
``cpu=1`` and 4 GB of ``memory``, ``w1`` only cpu and memory. moto is an S3
emulator on 127.0.0.1 (no real S3 can run here); the workers get its address
and fake credentials in their environment.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from resources.dask_cluster import DaskCluster

pytest.importorskip("distributed")

BUCKET = "mlpipe-dask-tests"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> Iterator[DaskCluster]:
    started = DaskCluster(
        tmp_path_factory.mktemp("dask-cluster"),
        resources=["cpu=1,memory=4e9,gpu=1", "cpu=1,memory=4e9"],
        env={"AWS_ENDPOINT_URL": moto_endpoint},
    ).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def dask_backend(cluster: DaskCluster) -> Iterator[object]:
    from mlpipe_dask import DaskBackend

    backend = DaskBackend({"address": cluster.address})
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def s3_url(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh prefix in the test bucket; this process's s3fs talks to moto too."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"
