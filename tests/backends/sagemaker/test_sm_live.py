"""Opt-in smoke test on a real AWS account: skipped unless configured.

Set, besides AWS credentials (a named profile in MLPIPE_SAGEMAKER_LIVE_AWS_PROFILE,
``~/.aws``, or an instance role; tests/conftest.py replaces AWS_ACCESS_KEY_ID
and friends with fake values, so exported keys are not used):

- ``MLPIPE_SAGEMAKER_LIVE_ROLE``: the execution role ARN (see docs/backends/sagemaker.md)
- ``MLPIPE_SAGEMAKER_LIVE_IMAGE``: an ECR image with this Python minor version and ``mlpipe[s3]``
- ``MLPIPE_SAGEMAKER_LIVE_STORE``: ``s3://bucket/prefix`` the role can read and write
- ``MLPIPE_SAGEMAKER_LIVE_REGION`` (optional, default us-east-1)

It runs a two-step pipeline (its steps travel by cloudpickle, so the image
needs no test code), checks the output and that a second run is all cache
hits, and costs two short ml.m5.large Processing jobs per run.
"""

from __future__ import annotations

import os

import pytest

import mlpipe as mp
from mlpipe.launch import new_run_id
from mlpipe.run import Run
from mlpipe.store import open_store

pytestmark = pytest.mark.live

LIVE = {k: os.environ.get(f"MLPIPE_SAGEMAKER_LIVE_{k}") for k in ("ROLE", "IMAGE", "STORE")}


@pytest.mark.skipif(not all(LIVE.values()), reason="set MLPIPE_SAGEMAKER_LIVE_ROLE, _IMAGE and _STORE to run on AWS")
def test_live_smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    import s3fs
    from mlpipe_sagemaker import SageMakerBackend

    for fake in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.delenv(fake, raising=False)
    if os.environ.get("MLPIPE_SAGEMAKER_LIVE_AWS_PROFILE"):
        monkeypatch.setenv("AWS_PROFILE", os.environ["MLPIPE_SAGEMAKER_LIVE_AWS_PROFILE"])
    region = os.environ.get("MLPIPE_SAGEMAKER_LIVE_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", region)
    boto3.setup_default_session()
    s3fs.S3FileSystem.clear_instance_cache()

    @mp.step
    def numbers(n: int) -> list[int]:
        return list(range(n))

    @mp.step
    def total(values: list[int]) -> int:
        return sum(values)

    @mp.pipeline(name="mlpipe-live-smoke")
    def smoke(n: int = 5) -> int:
        return total(numbers(n))

    backend = SageMakerBackend({"role": LIVE["ROLE"], "region": region}, image=LIVE["IMAGE"])
    store = open_store(str(LIVE["STORE"]))
    runs = []
    for _ in range(2):
        values = smoke.validate_params({"n": 5})
        backend.check(smoke.ir)
        handle = backend.submit(smoke.ir, store, params=values, run_id=new_run_id())
        status = backend.wait(handle, timeout=3600, poll=15)
        assert status.state == "succeeded", status.message
        runs.append(Run.load(store, handle.run_id))
    assert runs[0].output("total") == 10
    assert all(s.cached for s in runs[1].steps.values())
