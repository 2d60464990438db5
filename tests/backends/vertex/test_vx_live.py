"""Opt-in smoke test against real Vertex AI and GCS. Skipped unless configured; never run in CI here.

Set ``GOOGLE_CLOUD_PROJECT``, ``MLPIPE_VERTEX_BUCKET`` (``gs://bucket/prefix``,
a regional bucket in the job's region), ``MLPIPE_VERTEX_IMAGE`` (an image with
mlpipe, gcsfs and these tests' ``mlpipe.testing`` pipelines), optionally
``MLPIPE_VERTEX_LOCATION`` (default ``us-central1``) and
``MLPIPE_VERTEX_SERVICE_ACCOUNT``; Application Default Credentials are used.
It checks what no fake can: that Vertex accepts the spec and the request,
resolves ``{{$.pipeline_job_name}}`` to the job id (so the records land under
the handle's run id), and that tasks can read and write the bucket.
"""

from __future__ import annotations

import os

import pytest
from mlpipe_vertex import VertexBackend

from mlpipe.launch import new_run_id
from mlpipe.run import Run
from mlpipe.store import open_store
from mlpipe.testing import basic

PROJECT = os.environ.get("GOOGLE_CLOUD_PROJECT")
BUCKET = os.environ.get("MLPIPE_VERTEX_BUCKET")
IMAGE = os.environ.get("MLPIPE_VERTEX_IMAGE")

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(not (PROJECT and BUCKET and IMAGE),
                       reason="live Vertex test: set GOOGLE_CLOUD_PROJECT, MLPIPE_VERTEX_BUCKET, "
                              "MLPIPE_VERTEX_IMAGE"),
]


def test_basic_pipeline_runs_on_vertex() -> None:
    assert PROJECT and BUCKET and IMAGE
    options = {"project": PROJECT, "location": os.environ.get("MLPIPE_VERTEX_LOCATION", "us-central1"),
               "labels": {"purpose": "mlpipe-smoke-test"}, "poll_interval": 15.0, "wait_timeout": 3600.0}
    if os.environ.get("MLPIPE_VERTEX_SERVICE_ACCOUNT"):
        options["service_account"] = os.environ["MLPIPE_VERTEX_SERVICE_ACCOUNT"]
    backend = VertexBackend(options, image=IMAGE)
    store = open_store(f"{BUCKET.rstrip('/')}/live-{new_run_id()}")
    backend.check(basic.ir)
    handle = backend.submit(basic.ir, store, params=basic.validate_params({"n": 4}), run_id=new_run_id())
    status = backend.wait(handle, timeout=3600, poll=15.0)
    assert status.state == "succeeded", status.message
    run = Run.load(store, handle.run_id)  # the tasks recorded themselves under the job id
    assert run.status == "succeeded"
    assert run.output("summarize", "total") == 12.0
