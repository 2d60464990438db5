"""Everything Vertex would refuse is refused here, before any socket opens: options, store, names, parameters.

``sockets_forbidden`` makes every ``socket.connect`` fail the test, so a check
that ran after the first request (to Vertex, or a write to the bucket) shows up
as an AssertionError instead of the expected error.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
from typing import Any

import pytest
import vertex_pipelines as vp
from mlpipe_vertex import VertexBackend
from mlpipe_vertex import backend as vertex_backend
from mlpipe_vertex.naming import ACCELERATORS, MAX_JOB_ID, REGIONS, job_id
from vx_support import sockets_forbidden, vertex_options

from mlpipe.errors import ConfigError, ParameterError, UnsupportedFeatureError
from mlpipe.store import open_store
from mlpipe.testing import basic

IMAGE = "europe-docker.pkg.dev/my-project/ml/train:1.4"
RUN_ID = "20261126-074301-3f9a1c"
CLOSED = "http://127.0.0.1:9"


def backend(**extra: Any) -> VertexBackend:
    return VertexBackend(vertex_options(api_endpoint=CLOSED, **extra), image=IMAGE)


def submit(b: VertexBackend, store_url: str, params: dict[str, Any] | None = None) -> None:
    """Submit with every socket forbidden (the store object is made first: gcsfs looks for credentials)."""
    values = basic.validate_params({}) | (params or {})
    store = open_store(store_url)
    with sockets_forbidden() as attempts:
        try:
            b.submit(basic.ir, store, params=values, run_id=RUN_ID)
        finally:
            assert attempts == []


@pytest.mark.parametrize(("options", "message"), [
    ({"location": "europe-west4-a"}, "not a Vertex AI Pipelines region .*europe-west4"),
    ({"location": "global"}, "not a Vertex AI Pipelines region"),
    ({"location": "EU"}, "not a Vertex AI Pipelines region"),
    ({"project": "My Project"}, "not a Google Cloud project id"),
    ({"labels": {"Team": "ml"}}, "label key 'Team'"),
    ({"labels": {"team": "ML!"}}, "only lower-case letters"),
    ({"labels": {"team": "x" * 64}}, "more than 63"),
    ({"labels": {"vertex-ai-pipelines-run-billing-id": "1"}}, "reserved"),
    ({"labels": {f"k{i}": "v" for i in range(65)}}, "at most 64"),
    ({"service_account": "runner"}, "not a service account email"),
    ({"network": "vpc"}, "projects/<project number>/global/networks/<name>"),
    ({"encryption_spec_key_name": "projects/p/locations/us-central1/keyRings/r/cryptoKeys/k"},
     "the key in the job's region"),
    ({"encryption_spec_key_name": "my-key"}, "keyRings"),
    ({"pipeline_root": "s3://bucket/root"}, "gs://bucket/path"),
    ({"schedule": "TZ=Europe/Berlin 0 3 * * *"}, "schedule_timezone"),
    ({"schedule": "0 0 3 * * *"}, "5 fields"),
    ({"schedule_timezone": "Mars/Olympus"}, "IANA time zone"),
    ({"transport": "grpc"}, "needs transport"),
    ({"enable_caching": True}, "Extra inputs are not permitted"),
])
def test_options_vertex_would_refuse_are_config_errors(options: dict[str, Any], message: str) -> None:
    with sockets_forbidden() as attempts, pytest.raises(ConfigError, match=message):
        backend(**options)
    assert attempts == []


def test_location_check_matches_aiplatform_and_its_accelerators() -> None:
    """The region and accelerator lists are the installed google-cloud-aiplatform's (read without importing it)."""
    files = importlib.metadata.files("google-cloud-aiplatform") or []
    [constants] = [f for f in files if str(f).endswith("google/cloud/aiplatform/constants/base.py")]
    tree = ast.parse(constants.read_text())
    regions = next(
        ast.literal_eval(node.value.args[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SUPPORTED_REGIONS"
    )
    assert set(regions) - {"global"} == REGIONS
    from google.cloud.aiplatform_v1 import AcceleratorType

    assert {a.name for a in AcceleratorType} - {"ACCELERATOR_TYPE_UNSPECIFIED"} == ACCELERATORS


@pytest.mark.parametrize("name", [
    "training", "GPU_Training-v2", "_2stage", "数据", "x" * 140, "__", "a" + "-" * 60 + "b", vp.awkward_name.ir.name,
])
def test_job_ids_are_valid_for_any_pipeline_name(name: str) -> None:
    jid = job_id(name, RUN_ID)
    assert re.fullmatch(r"[a-z][-a-z0-9]*", jid) and len(jid) <= MAX_JOB_ID  # Vertex's rule for job ids
    assert jid.endswith("-20261126-074301-3f9a1c")


def test_no_project_is_refused_before_any_request(gs_url: str) -> None:
    b = VertexBackend(vertex_options(api_endpoint=CLOSED, project=None), image=IMAGE)
    with pytest.raises(UnsupportedFeatureError, match=r"no project; set options\.project"):
        submit(b, gs_url)


@pytest.mark.parametrize("url", ["local", "memory://vertex-test", "s3://bucket/prefix"])
def test_a_store_vertex_cannot_reach_is_refused(url: str, tmp_path: Any) -> None:
    store_url = str(tmp_path / "store") if url == "local" else url
    with pytest.raises(UnsupportedFeatureError, match="not on Google Cloud Storage, so Vertex tasks cannot read"):
        submit(backend(), store_url)


def test_no_image_is_refused(gs_url: str) -> None:
    b = VertexBackend(vertex_options(api_endpoint=CLOSED))
    with pytest.raises(UnsupportedFeatureError, match="no container image for step"):
        submit(b, gs_url)


@pytest.mark.parametrize(("params", "message"), [
    ({"n": "abc"}, "'n' is declared NUMBER_INTEGER in the Vertex spec, got str 'abc'"),
    ({"n": True}, "'n' is declared NUMBER_INTEGER"),
    ({"scale": "2"}, "'scale' is declared NUMBER_DOUBLE"),
    ({"flags": {"a": 1}}, "'flags' is declared LIST"),
    ({"options": [1]}, "'options' is declared STRUCT"),
    ({"n": 2**60}, "beyond ±2\\*\\*53"),
    ({"nope": 1}, "\\['nope'\\] are not inputs of the Vertex spec"),
])
def test_parameters_are_checked_against_the_spec(params: dict[str, Any], message: str, gs_url: str) -> None:
    with pytest.raises(ParameterError, match=message):
        submit(backend(), gs_url, params)


def test_labels_from_names_stay_valid_and_user_labels_win(gs_url: str) -> None:
    b = backend(labels={"mlpipe-pipeline": "custom"})
    req = b.request(vp.awkward_name.ir, open_store(gs_url), params={"x": 1}, run_id=RUN_ID)
    assert req.body["labels"]["mlpipe-pipeline"] == "custom"
    assert len(req.body["labels"]["mlpipe-run"]) <= 63
    assert req.job_id.startswith("mlpipe-2stage-training-") and len(req.job_id) == MAX_JOB_ID


def test_an_oversized_request_is_refused(gs_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vertex_backend, "MAX_REQUEST_BYTES", 1000)
    with pytest.raises(UnsupportedFeatureError, match="over the 10 MiB Google APIs accept"):
        submit(backend(), gs_url)


def test_parameter_budget(gs_url: str) -> None:
    with pytest.raises(UnsupportedFeatureError, match="parameter budget"):
        submit(backend(max_parameter_bytes=50), gs_url, {"label": "x" * 100})


def test_schedule_in_local_mode_is_refused(gs_url: str) -> None:
    b = VertexBackend({"mode": "local", "schedule": "0 3 * * *"})
    with pytest.raises(UnsupportedFeatureError, match="schedule needs Vertex"):
        b.run(basic.ir, open_store(gs_url), params=basic.validate_params({}), run_id=RUN_ID)


def test_importing_the_plugin_imports_no_google_cloud_client() -> None:
    import subprocess
    import sys

    code = ("import sys, mlpipe_vertex, mlpipe_vertex.backend; from mlpipe.backend import get_backend_class; "
            "assert get_backend_class('vertex') is mlpipe_vertex.VertexBackend; "
            "print(sorted(m for m in sys.modules if m.startswith(('google.cloud.aiplatform', 'kfp'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
