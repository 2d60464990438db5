"""Submitting to a KFP API server through kfp.Client, against a fake server on 127.0.0.1 that records requests.

No real KFP API server can run here; the fake answers with the minimal bodies
the generated client accepts, and the tests assert what kfp.Client really
sent: the compiled spec, the run parameters, the experiment, the schedule.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp_fake_server import API, FakeKFP, Server
from mlpipe_kubeflow import KubeflowBackend
from resources import kubeflow_pipelines as kp
from typer.testing import CliRunner

from mlpipe.backend import RunHandle
from mlpipe.cli import app
from mlpipe.errors import BackendError, UnsupportedFeatureError
from mlpipe.run import Run
from mlpipe.store import open_store

ROOT = Path(__file__).resolve().parents[3]
IMAGE = "registry.example/ml/mlpipe:1.0"


@pytest.fixture
def kfp() -> Iterator[FakeKFP]:
    with Server() as fake:
        yield fake


def write_profile(kfp: FakeKFP, **extra: Any) -> None:
    options = {"host": kfp.host, "namespace": "team-a", "experiment": "nightly-exp",
               "service_account": "pipeline-runner", "pipeline_root": "s3://bucket/root", "shared_filesystem": True,
               **extra}
    rendered = ", ".join(f"{k} = {_toml(v)}" for k, v in options.items())
    Path("mlpipe.toml").write_text(
        f'default_profile = "kfp"\n\n[profiles.kfp]\nbackend = "kubeflow"\nstore = "store"\nimage = "{IMAGE}"\n'
        f"options = {{ {rendered} }}\n"
    )


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def test_submit_sends_spec_params_and_experiment(kfp: FakeKFP) -> None:
    write_profile(kfp)
    handle = kp.small.submit(profile="kfp", x=5)

    created = kfp.posted("/experiments")
    assert [r.body for r in created] == [{"display_name": "nightly-exp", "namespace": "team-a"}]
    (run_request,) = kfp.posted("/runs")
    body = run_request.body
    assert body["experiment_id"] == "exp-0001"
    assert body["display_name"] == f"kfp-small-{handle.run_id}"
    # mlpipe's run id travels as a run parameter: the tasks record under it on any KFP version
    assert body["runtime_config"] == {"parameters": {"x": 5, "scale": [1.0, 2.0], "mlpipe_run_id": handle.run_id},
                                      "pipeline_root": "s3://bucket/root"}
    assert body["service_account"] == "pipeline-runner"
    spec = body["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "kfp-small"
    assert set(spec["root"]["dag"]["tasks"]) == {"needs", "needs-2"}
    args = spec["deploymentSpec"]["executors"]["exec-needs"]["container"]["args"]
    store = open_store(str(Path("store").resolve()))
    assert args[args.index("--store") + 1] == store.url
    assert store.has(f"pipelines/{args[args.index('--ir') + 1]}.json")
    assert spec["deploymentSpec"]["executors"]["exec-needs"]["container"]["image"] == IMAGE

    assert handle.backend == "kubeflow" and handle.external_id == "run-0002" and handle.run_id != "run-0002"
    assert handle.url == f"{kfp.host}/#/runs/details/run-0002"
    doc = store.get_json(f"runs/{handle.run_id}/run.json")
    assert doc["handle"]["external_id"] == "run-0002"  # saved by the launcher, for `mlpipe runs show`
    assert doc["params"] == {"x": 5, "scale": [1.0, 2.0]} and doc["status"] == "running"
    assert RunHandle.from_json(handle.to_json()) == handle


def test_runs_show_finds_the_submitted_run_and_asks_the_server(kfp: FakeKFP) -> None:
    write_profile(kfp)
    kfp.states = ["SUCCEEDED"]
    handle = kp.small.submit(profile="kfp")
    result = CliRunner().invoke(app, ["runs", "show", handle.run_id, "--profile", "kfp"])
    assert result.exit_code == 0, result.output
    assert f"run {handle.run_id}" in result.output and "status succeeded" in result.output
    assert "kubeflow id run-0002" in result.output
    assert any(r.method == "GET" and r.path == f"{API}/runs/run-0002" for r in kfp.requests)


def test_run_waits_for_the_server_and_closes_the_record(kfp: FakeKFP) -> None:
    write_profile(kfp)
    run = kp.small.run(profile="kfp")
    assert isinstance(run, Run)
    assert run.status == "succeeded" and run.ended is not None
    polls = [r for r in kfp.requests if r.method == "GET" and r.path.startswith(f"{API}/runs/")]
    assert len(polls) >= 2


def test_failed_run_carries_the_server_message(kfp: FakeKFP) -> None:
    write_profile(kfp)
    kfp.states = ["FAILED"]
    run = kp.small.run(profile="kfp")
    assert run.status == "failed"
    # No task of the fake wrote a record: the first step is blamed with the server's message, the rest skipped.
    assert run.steps["needs"].status == "failed"
    assert "task explode failed" in (run.steps["needs"].error or "") and "task explode failed" in (run.error or "")
    assert run.steps["needs_2"].status == "skipped"


def test_cancelled_cluster_run_records_steps_as_not_run(kfp: FakeKFP) -> None:
    write_profile(kfp)
    kfp.states = ["CANCELED"]
    run = kp.small.run(profile="kfp")
    assert run.status == "cancelled"
    assert {s.status for s in run.steps.values()} == {"skipped"}
    assert run.steps["needs"].error == "not run: the run was cancelled"


def test_cancel_terminates_once_and_is_idempotent(kfp: FakeKFP) -> None:
    write_profile(kfp)
    kfp.states = ["RUNNING"]
    handle = kp.small.submit(profile="kfp")
    backend = KubeflowBackend({"host": kfp.host})
    assert backend.status(handle).state == "running"
    backend.cancel(handle)
    assert backend.status(handle).state == "cancelled"
    backend.cancel(handle)
    assert len(kfp.posted(f"/runs/{handle.external_id}:terminate")) == 1


def test_schedule_creates_a_recurring_run(kfp: FakeKFP) -> None:
    write_profile(kfp, schedule="0 2 * * *", schedule_max_concurrency=2)
    handle = kp.small.submit(profile="kfp", x=7)
    assert not kfp.posted("/runs")
    (request,) = kfp.posted("/recurringruns")
    body = request.body
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert body["experiment_id"] == "exp-0001" and body["no_catchup"] is True
    assert int(body["max_concurrency"]) == 2
    # no mlpipe_run_id: each scheduled run keeps the default and records under its own KFP run id
    assert body["runtime_config"]["parameters"] == {"x": 7, "scale": [1.0, 2.0]}
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "kfp-small"
    assert handle.data["kind"] == "recurring" and handle.external_id == "rr-0002"
    backend = KubeflowBackend({"host": kfp.host})
    assert backend.status(handle).state == "succeeded"
    backend.cancel(handle)
    assert kfp.posted("/recurringruns/rr-0002:disable")


def test_cli_submit_wait_follows_the_run(kfp: FakeKFP) -> None:
    write_profile(kfp)
    kfp.states = ["SUCCEEDED"]
    target = str(ROOT / "tests" / "resources" / "kubeflow_pipelines.py") + ":small"
    ok = CliRunner().invoke(app, ["submit", target, "--profile", "kfp", "-p", "x=3", "--wait"])
    assert ok.exit_code == 0, ok.output
    assert "submitted run " in ok.output and " to kubeflow" in ok.output and "succeeded" in ok.output
    assert kfp.posted("/runs")[0].body["runtime_config"]["parameters"]["x"] == 3
    kfp.states = ["FAILED"]
    failed = CliRunner().invoke(app, ["submit", target, "--profile", "kfp", "--wait"])
    assert failed.exit_code == 1


def test_unreachable_server_is_a_backend_error(tmp_path: Path) -> None:
    backend = KubeflowBackend({"host": "http://127.0.0.1:9", "shared_filesystem": True}, image=IMAGE)
    store = open_store(str(tmp_path / "store"))
    with pytest.raises(BackendError, match=r"kubeflow: .* at http://127.0.0.1:9 failed"):
        backend.submit(kp.small.ir, store, params={"x": 1, "scale": [1.0]}, run_id="r1")


def test_parameter_values_over_budget_are_refused_before_sending(kfp: FakeKFP, tmp_path: Path) -> None:
    backend = KubeflowBackend({"host": kfp.host, "shared_filesystem": True}, image=IMAGE)
    store = open_store(str(tmp_path / "store"))
    with pytest.raises(UnsupportedFeatureError, match="pass large data as a step output") as info:
        backend.submit(kp.small.ir, store, params={"x": 1, "scale": [0.5] * 3000}, run_id="r1")
    assert info.value.argument == "scale"  # type: ignore[attr-defined]
    assert kfp.requests == []


@pytest.mark.parametrize(
    ("options", "image", "store", "words"),
    [
        ({}, IMAGE, "store", "pods cannot reach it"),
        ({"shared_filesystem": True}, IMAGE, "memory://kfp-test", "pods cannot reach it"),
        ({"shared_filesystem": True}, None, "store", "no container image"),
    ],
)
def test_submit_refusals(kfp: FakeKFP, options: dict[str, Any], image: str | None, store: str, words: str) -> None:
    backend = KubeflowBackend({"host": kfp.host, **options}, image=image)
    with pytest.raises(UnsupportedFeatureError, match=words):
        backend.submit(kp.small.ir, open_store(store), params={"x": 1, "scale": [1.0]}, run_id="r1")
    assert kfp.requests == []


def test_submitted_spec_equals_the_compiled_one(kfp: FakeKFP, tmp_path: Path) -> None:
    write_profile(kfp)
    kp.small.submit(profile="kfp")
    kp.small.compile("kubeflow", str(tmp_path / "small.yaml"), profile="kfp")
    compiled = yaml.safe_load((tmp_path / "small.yaml").read_text())
    assert kfp.posted("/runs")[0].body["pipeline_spec"] == compiled


def test_single_value_over_the_argv_limit_is_refused_even_with_a_raised_budget(kfp: FakeKFP, tmp_path: Path) -> None:
    backend = KubeflowBackend({"host": kfp.host, "shared_filesystem": True, "max_parameter_bytes": 10_000_000},
                              image=IMAGE)
    store = open_store(str(tmp_path / "store"))
    with pytest.raises(UnsupportedFeatureError, match="Linux limits to 131,072 bytes") as info:
        backend.submit(kp.small.ir, store, params={"x": 1, "scale": [0.5] * 30_000}, run_id="r1")
    assert info.value.argument == "scale"  # type: ignore[attr-defined]
    assert kfp.requests == []


def test_protected_deployment_token_and_cookies(kfp: FakeKFP, monkeypatch: pytest.MonkeyPatch) -> None:
    """existing_token_env / cookies reach the API server as kfp.Client sends them (Authorization, Cookie)."""
    monkeypatch.setenv("KFP_TEST_TOKEN", "tok-123")
    write_profile(kfp, existing_token_env="KFP_TEST_TOKEN", cookies="authservice_session=abc")
    kp.small.submit(profile="kfp", x=5)
    (run_request,) = kfp.posted("/runs")
    headers = {k.lower(): v for k, v in run_request.headers.items()}
    assert headers.get("authorization") == "Bearer tok-123"
    assert headers.get("cookie") == "authservice_session=abc"


def test_protected_deployment_bad_settings_are_refused(kfp: FakeKFP, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KFP_TEST_TOKEN", raising=False)
    write_profile(kfp, existing_token_env="KFP_TEST_TOKEN")
    result = CliRunner().invoke(app, ["submit", f"{kp.__file__}:small", "--profile", "kfp", "-p", "x=5"])
    assert result.exit_code == 2, result.output
    assert "existing_token_env names KFP_TEST_TOKEN, which is not set" in result.output
    write_profile(kfp, ssl_ca_cert="no-such-ca.pem")
    result = CliRunner().invoke(app, ["submit", f"{kp.__file__}:small", "--profile", "kfp", "-p", "x=5"])
    assert result.exit_code == 2, result.output
    assert "ssl_ca_cert 'no-such-ca.pem' is not a file" in result.output
    assert not kfp.posted("/runs")
