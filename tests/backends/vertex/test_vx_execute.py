"""The compiled Vertex spec, executed by kfp.local (mode = "local"), against a gs:// store on the GCS emulator.

The conformance suite runs the same pipelines as every backend; each task is
``python -m mlpipe.runtime --store gs://...`` in a subprocess talking to
gcp-storage-emulator (an emulator of the GCS JSON API on 127.0.0.1, not GCS).
A local run and a Vertex-compiled run on the same bucket share the cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlpipe_vertex import VertexBackend

from mlpipe.local import LocalBackend
from mlpipe.run import Run
from mlpipe.store import ArtifactStore, open_store
from mlpipe.testing import BackendConformance, basic, run_on


@pytest.mark.slow
class TestVertexLocalConformanceOnGCS(BackendConformance):
    @pytest.fixture
    def backend(self) -> VertexBackend:
        return VertexBackend({"mode": "local"})

    @pytest.fixture
    def store(self, gs_url: str) -> Iterator[ArtifactStore]:
        yield open_store(gs_url)


def test_local_and_vertex_runs_share_the_cache_on_one_bucket(gs_url: str) -> None:
    store = open_store(gs_url)
    # (local first, then the Vertex spec, is in the conformance suite; here the other way round)
    computed = run_on(VertexBackend({"mode": "local"}), basic, store, n=6, label="shared")
    assert computed.status == "succeeded", computed.error
    assert not any(s.cached for s in computed.steps.values())
    again = run_on(LocalBackend(), basic, store, n=6, label="shared")
    assert all(s.cached for s in again.steps.values())
    assert again.output("describe") == computed.output("describe")

    # Everything lives in the bucket: objects, cache entries, run and step records, the IR.
    fs = store._fs.fs  # type: ignore[union-attr]
    root = gs_url[len("gs://"):]
    listed = {path[len(root) + 1:].split("/", 1)[0] for path in fs.find(root)}
    assert {"objects", "cache", "runs", "pipelines"} <= listed
    doc = store.get_json(f"runs/{computed.id}/run.json")
    assert doc["backend"] == "vertex" and doc["status"] == "succeeded"
    step = store.get_json(f"runs/{computed.id}/steps/describe.json")
    assert step["status"] == "succeeded"
    assert Run.load(store, computed.id).output("summarize", "total") == 30.0


def test_local_mode_submit_returns_at_once_and_wait_follows_it(tmp_path: Path) -> None:
    backend = VertexBackend({"mode": "local"})
    store = open_store(str(tmp_path / "store"))  # local mode also runs against a directory
    handle = backend.submit(basic.ir, store, params=basic.validate_params({"n": 2}), run_id="20261126-080000-abcdef")
    assert handle.data == {"mode": "local"}
    status = backend.wait(handle, poll=0.05, timeout=300)
    assert status.state == "succeeded", status.message
    backend.cancel(handle)  # ended: a no-op
    assert VertexBackend().status(handle).state == "succeeded"  # a later process reads the store
    assert Run.load(store, handle.run_id).output("summarize", "n") == 2


def test_task_retry_policy_restarts_a_task_whose_container_died(tmp_path: Path) -> None:
    """retries=1 on a step whose process dies mid-attempt: only the task's retryPolicy can save the run.

    kfp.local honours ``retryPolicy`` as Vertex does (documented for ``set_retry``); the runtime counts the
    dead attempt in the store, so the retried task runs the code once more, not twice.
    """
    from mlpipe.cli import load_pipeline

    marker = tmp_path / "died"
    module = tmp_path / "dies_once.py"
    module.write_text(
        "import os\nfrom pathlib import Path\n\nimport mlpipe as mp\n\n"
        "@mp.step(retries=1)\ndef dies_once() -> int:\n"
        f"    marker = Path({str(marker)!r})\n"
        "    if not marker.exists():\n"
        "        marker.write_text('died')\n"
        "        os._exit(137)  # killed mid-attempt, as by the OOM killer\n"
        "    return 7\n\n"
        "@mp.pipeline(name='dies-once')\ndef flow() -> int:\n    return dies_once()\n"
    )
    pipeline = load_pipeline(f"{module}:flow")
    store = open_store(str(tmp_path / "store"))
    run = run_on(VertexBackend({"mode": "local", "retry_backoff": "0s"}), pipeline, store)
    assert run.status == "succeeded", run.error
    assert run.output("dies_once") == 7
    attempts = store.listdir(f"runs/{run.id}/attempts/dies_once")
    assert len(attempts) == 2  # one killed, one that succeeded: counted once across the two tasks
