"""Submitting with the real ``google.cloud.aiplatform_v1`` client to a recording fake of the Vertex REST API.

What arrives is asserted field by field: the spec round-trips unchanged, and
the runtime config, parameters, service account, network, labels and CMEK key
are the profile's. States are scripted to follow a job to success, failure and
cancellation; schedules are created through the ScheduleService.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlpipe_vertex import VertexBackend
from typer.testing import CliRunner
from vx_support import LOCATION, PROJECT, FakeVertex, vertex_options

from mlpipe.backend import RunHandle
from mlpipe.cli import app
from mlpipe.errors import BackendError
from mlpipe.launch import save_handle
from mlpipe.run import Run
from mlpipe.store import open_store
from mlpipe.testing import basic

IMAGE = "europe-docker.pkg.dev/my-project/ml/train:1.4"
SA = "runner@my-project.iam.gserviceaccount.com"
KEY = f"projects/{PROJECT}/locations/{LOCATION}/keyRings/ml/cryptoKeys/pipelines"
NETWORK = "projects/123456/global/networks/vpc"
RUN_ID = "20261126-074301-3f9a1c"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"


def floats(value: Any) -> Any:
    """What a google.protobuf.Struct does to numbers: every one becomes a double."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [floats(v) for v in value]
    return {k: floats(v) for k, v in value.items()}


def full_backend(fake: FakeVertex, **extra: Any) -> VertexBackend:
    options = vertex_options(fake, service_account=SA, network=NETWORK, encryption_spec_key_name=KEY,
                             labels={"team": "ml", "cost-center": "r_and_d"}, **extra)
    return VertexBackend(options, image=IMAGE)


def submit(backend: VertexBackend, gs_url: str, **params: Any) -> RunHandle:
    values = basic.validate_params(params)
    backend.check(basic.ir)
    return backend.submit(basic.ir, open_store(gs_url), params=values, run_id=RUN_ID)


def test_request_carries_spec_runtime_config_and_job_settings(fake_vertex: FakeVertex, gs_url: str) -> None:
    backend = full_backend(fake_vertex)
    store = open_store(gs_url)
    expected = backend.request(basic.ir, store, params=basic.validate_params({"n": 7}), run_id=RUN_ID)
    handle = submit(backend, gs_url, n=7)

    [create] = fake_vertex.calls("POST", "/pipelineJobs")
    job_id = f"conformance-basic-{RUN_ID}"
    assert create.path == f"/v1/{PARENT}/pipelineJobs"
    assert create.query["pipelineJobId"] == [job_id]
    assert "Authorization" not in create.headers  # anonymous credentials: nothing leaks to a fake
    body = create.body
    assert body["pipelineSpec"] == floats(expected.body["pipelineSpec"])  # unchanged but for Struct's doubles
    assert body["runtimeConfig"] == {
        "gcsOutputDirectory": f"{gs_url}/vertex",
        "parameterValues": {"n": 7.0, "scale": 2.0, "label": "demo", "options": {"k": 1.0}, "flags": [1.0, 2.0],
                            "mlpipe_run_id": job_id},  # the tasks record under it, not under a placeholder
        "failurePolicy": 1,  # PIPELINE_FAILURE_POLICY_FAIL_SLOW, enums travel as ints
    }
    assert body["serviceAccount"] == SA
    assert body["network"] == NETWORK
    assert body["encryptionSpec"] == {"kmsKeyName": KEY}
    assert body["labels"] == {"team": "ml", "cost-center": "r_and_d", "mlpipe-pipeline": "conformance-basic",
                              "mlpipe-run": job_id}
    assert body["displayName"] == "conformance-basic"
    assert "enableCaching" not in json.dumps(body)  # no job-wide caching override

    spec = body["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    assert {t["cachingOptions"].get("enableCache", False) for t in tasks.values()} == {False}
    assert {t["inputs"]["parameters"]["mlpipe_run_id"]["componentInputParameter"] for t in tasks.values()} == {
        "mlpipe_run_id"}
    assert {t["inputs"]["parameters"]["mlpipe_engine_run_id"]["runtimeValue"]["constant"]
            for t in tasks.values()} == {"{{$.pipeline_job_name}}"}
    for executor in spec["deploymentSpec"]["executors"].values():
        args = executor["container"]["args"]
        assert args[args.index("--store") + 1] == gs_url
        assert args[args.index("--backend") + 1] == "vertex"
        assert executor["container"]["image"] == IMAGE

    assert handle.run_id == job_id
    assert handle.external_id == f"{PARENT}/pipelineJobs/{job_id}"
    assert handle.data["requested_run_id"] == RUN_ID
    assert RunHandle.from_json(handle.to_json()) == handle
    doc = open_store(gs_url).get_json(f"runs/{job_id}/run.json")
    assert doc["backend"] == "vertex" and doc["status"] == "pending" and doc["params"]["n"] == 7


def test_fail_fast_and_caching_option_are_per_job_and_per_task(fake_vertex: FakeVertex, gs_url: str) -> None:
    submit(VertexBackend(vertex_options(fake_vertex, failure_policy="fast", caching=True), image=IMAGE), gs_url)
    body = fake_vertex.calls("POST", "/pipelineJobs")[0].body
    assert body["runtimeConfig"]["failurePolicy"] == 2  # FAIL_FAST
    tasks = body["pipelineSpec"]["root"]["dag"]["tasks"]
    assert all(t["cachingOptions"] == {"enableCache": True} for t in tasks.values())
    assert "serviceAccount" not in body and "encryptionSpec" not in body and "network" not in body


def test_wait_follows_states_to_success(fake_vertex: FakeVertex, gs_url: str) -> None:
    backend = VertexBackend(vertex_options(fake_vertex), image=IMAGE)
    handle = submit(backend, gs_url)
    fake_vertex.script(handle.run_id, ["PIPELINE_STATE_QUEUED", "PIPELINE_STATE_PENDING", "PIPELINE_STATE_RUNNING",
                                       "PIPELINE_STATE_RUNNING", "PIPELINE_STATE_SUCCEEDED"])
    seen = []
    real = backend.status

    def spy(h: RunHandle) -> Any:
        status = real(h)
        seen.append(status.state)
        return status

    backend.status = spy  # type: ignore[method-assign]
    status = backend.wait(handle, poll=0.01, timeout=30)
    assert status.state == "succeeded"
    assert seen == ["pending", "pending", "running", "running", "succeeded"]
    gets = fake_vertex.calls("GET", f"/pipelineJobs/{handle.run_id}")
    assert len(gets) == 5
    doc = open_store(gs_url).get_json(f"runs/{handle.run_id}/run.json")
    assert doc["status"] == "succeeded" and doc["ended"]


def test_wait_follows_states_to_failure_with_the_service_message(fake_vertex: FakeVertex, gs_url: str) -> None:
    backend = VertexBackend(vertex_options(fake_vertex), image=IMAGE)
    handle = submit(backend, gs_url)
    fake_vertex.script(handle.run_id, ["PIPELINE_STATE_RUNNING",
                                       ("PIPELINE_STATE_FAILED", "The DAG failed because some tasks failed.")])
    status = backend.wait(handle, poll=0.01, timeout=30)
    assert status.state == "failed"
    assert status.message == "The DAG failed because some tasks failed."
    doc = open_store(gs_url).get_json(f"runs/{handle.run_id}/run.json")
    assert doc["status"] == "failed" and "some tasks failed" in doc["error"]


def test_cancel_is_idempotent(fake_vertex: FakeVertex, gs_url: str) -> None:
    backend = VertexBackend(vertex_options(fake_vertex), image=IMAGE)
    handle = submit(backend, gs_url)
    fake_vertex.script(handle.run_id, ["PIPELINE_STATE_RUNNING"])
    backend.cancel(handle)
    assert [c.path for c in fake_vertex.calls("POST", ":cancel")] == [f"/v1/{handle.external_id}:cancel"]
    assert backend.wait(handle, poll=0.01, timeout=30).state == "cancelled"
    backend.cancel(handle)  # ended: no second cancel request
    assert len(fake_vertex.calls("POST", ":cancel")) == 1


def test_status_in_a_later_process_uses_the_handle_not_the_profile(fake_vertex: FakeVertex, gs_url: str) -> None:
    handle = submit(VertexBackend(vertex_options(fake_vertex), image=IMAGE), gs_url)
    fake_vertex.script(handle.run_id, [("PIPELINE_STATE_FAILED", "quota")])
    later = VertexBackend()  # what `mlpipe runs show` builds: no options at all
    assert later.status(RunHandle.from_json(handle.to_json())).state == "failed"
    assert fake_vertex.calls("GET")[-1].path == f"/v1/{handle.external_id}"


def test_duplicate_job_and_unreachable_endpoint_are_backend_errors(fake_vertex: FakeVertex, gs_url: str) -> None:
    backend = VertexBackend(vertex_options(fake_vertex), image=IMAGE)
    submit(backend, gs_url)
    with pytest.raises(BackendError, match="Conflict") as info:
        submit(backend, gs_url)
    assert info.value.reason == "Conflict"  # type: ignore[attr-defined]
    closed = VertexBackend(vertex_options(api_endpoint="http://127.0.0.1:9"), image=IMAGE)
    with pytest.raises(BackendError, match=r"creating pipeline job .* at http://127\.0\.0\.1:9 failed"):
        submit(closed, gs_url)


def test_schedule_is_created_with_the_job_request(fake_vertex: FakeVertex, gs_url: str) -> None:
    backend = full_backend(fake_vertex, schedule="0 3 * * *", schedule_timezone="Europe/Berlin",
                           schedule_max_concurrency=2, schedule_max_runs=30)
    handle = submit(backend, gs_url, n=4)
    assert not fake_vertex.calls("POST", "/pipelineJobs")
    [create] = fake_vertex.calls("POST", "/schedules")
    assert create.path == f"/v1/{PARENT}/schedules"
    body = create.body
    assert body["cron"] == "TZ=Europe/Berlin 0 3 * * *"
    assert body["maxConcurrentRunCount"] == "2" and body["maxRunCount"] == "30"  # int64 as strings
    job = body["createPipelineJobRequest"]["pipelineJob"]
    assert body["createPipelineJobRequest"]["parent"] == PARENT
    assert job["runtimeConfig"]["parameterValues"]["n"] == 4.0
    # each job the schedule starts records under its own job id ({{$.pipeline_job_name}}), not a shared one
    assert "mlpipe_run_id" not in job["runtimeConfig"]["parameterValues"]
    assert job["serviceAccount"] == SA and job["encryptionSpec"] == {"kmsKeyName": KEY}
    assert job["labels"] == {"team": "ml", "cost-center": "r_and_d", "mlpipe-pipeline": "conformance-basic"}
    assert handle.data["kind"] == "schedule" and handle.external_id == f"{PARENT}/schedules/1"
    assert backend.status(handle).state == "succeeded"
    backend.cancel(handle)
    backend.cancel(handle)  # pausing a paused schedule is a no-op
    assert fake_vertex.schedules[handle.external_id]["state"] == "PAUSED"


def write_profile(work: Path, gs_url: str, fake: FakeVertex) -> None:
    options = ", ".join(f"{k} = {json.dumps(v)}" for k, v in vertex_options(fake).items())
    (work / "mlpipe.toml").write_text(
        f'[profiles.prod]\nbackend = "vertex"\nstore = "{gs_url}"\nimage = "{IMAGE}"\noptions = {{ {options} }}\n')


def test_cli_submit_wait_and_runs_show(fake_vertex: FakeVertex, gs_url: str, _isolated_cwd: Path) -> None:
    write_profile(_isolated_cwd, gs_url, fake_vertex)
    pipeline_file = _isolated_cwd / "pipe.py"
    pipeline_file.write_text("from mlpipe.testing import basic\n")
    runner = CliRunner()
    result = runner.invoke(app, ["submit", f"{pipeline_file}:basic", "--profile", "prod", "-p", "n=3", "--wait"])
    assert result.exit_code == 0, result.output
    assert "succeeded" in result.output
    run_id = result.output.split("submitted run ", 1)[1].split()[0]
    assert run_id.startswith("conformance-basic-")
    store = open_store(gs_url)
    assert store.get_json(f"runs/{run_id}/run.json")["handle"]["external_id"].endswith(f"/pipelineJobs/{run_id}")



def test_cli_submit_wait_exits_1_when_the_job_fails(fake_vertex: FakeVertex, gs_url: str, _isolated_cwd: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write_profile(_isolated_cwd, gs_url, fake_vertex)
    (_isolated_cwd / "pipe.py").write_text("from mlpipe.testing import basic\n")
    monkeypatch.setattr(FakeVertex, "_state", lambda self, job_id: ("PIPELINE_STATE_FAILED", "task explode failed"))
    monkeypatch.setattr("time.sleep", lambda s: None)
    result = CliRunner().invoke(app, ["submit", f"{_isolated_cwd / 'pipe.py'}:basic", "--profile", "prod", "--wait"])
    assert result.exit_code == 1, result.output
    assert "failed: task explode failed" in result.output


def test_runs_show_finds_the_job_later(fake_vertex: FakeVertex, gs_url: str, _isolated_cwd: Path) -> None:
    write_profile(_isolated_cwd, gs_url, fake_vertex)
    backend = VertexBackend(vertex_options(fake_vertex), image=IMAGE)
    handle = submit(backend, gs_url)
    store = open_store(gs_url)
    save_handle(store, handle)
    fake_vertex.script(handle.run_id, ["PIPELINE_STATE_SUCCEEDED"])
    result = CliRunner().invoke(app, ["runs", "show", handle.run_id, "--profile", "prod"])
    assert result.exit_code == 0, result.output
    assert handle.external_id in result.output
    assert Run.load(store, handle.run_id).status == "succeeded"


def test_run_completes_the_records_of_a_failed_job(fake_vertex: FakeVertex, gs_url: str) -> None:
    backend = VertexBackend(vertex_options(fake_vertex), image=IMAGE)
    job_id = f"conformance-basic-{RUN_ID}"
    fake_vertex.script(job_id, ["PIPELINE_STATE_RUNNING", ("PIPELINE_STATE_FAILED", "image pull failed")])
    run = backend.run(basic.ir, open_store(gs_url), params=basic.validate_params({}), run_id=RUN_ID)
    assert run.id == job_id and run.status == "failed"
    assert run.steps["make_numbers"].status == "failed"
    assert "image pull failed" in (run.steps["make_numbers"].error or "")
    assert run.steps["summarize"].status == run.steps["describe"].status == "skipped"


def test_cache_hits_are_left_out_of_the_job_and_a_fully_cached_run_creates_none(fake_vertex: FakeVertex,
                                                                                 gs_url: str) -> None:
    from mlpipe.local import LocalBackend
    from mlpipe.testing import run_on

    store = open_store(gs_url)
    assert run_on(LocalBackend(), basic, store, n=7).status == "succeeded"  # every step is now in the cache
    handle = submit(full_backend(fake_vertex), gs_url, n=7)
    assert not fake_vertex.calls("POST", "/pipelineJobs")  # no job at all
    assert handle.data["kind"] == "cached" and handle.external_id is None
    backend = full_backend(fake_vertex)
    assert backend.status(handle).state == "succeeded"
    run = Run.load(store, handle.run_id)
    assert run.status == "succeeded" and all(s.cached for s in run.steps.values())

    # label only reaches describe: make_numbers and summarize are hits, describe runs and reads them by key
    handle = backend.submit(basic.ir, store, params=basic.validate_params({"n": 7, "label": "new"}),
                            run_id="20261126-080000-abcdef")
    [create] = fake_vertex.calls("POST", "/pipelineJobs")
    spec = create.body["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == ["describe"] and "dependentTasks" not in tasks["describe"]
    assert set(spec["components"]) == {"comp-describe"}
    args = spec["deploymentSpec"]["executors"]["exec-describe"]["container"]["args"]
    cached = [args[i + 1].split("=")[0] for i, a in enumerate(args) if a == "--cached"]
    assert cached == ["summarize"]  # describe's only upstream; make_numbers feeds summarize alone
    doc = store.get_json(f"runs/{handle.run_id}/run.json")
    assert doc["vertex"]["pruned"] == ["make_numbers", "summarize"]
    steps = Run.load(store, handle.run_id).steps
    assert steps["make_numbers"].cached and steps["summarize"].cached
