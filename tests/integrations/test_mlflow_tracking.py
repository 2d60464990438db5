"""MLflow tracking of pipeline runs, against a real ``mlflow server`` and a plain sqlite URI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from resources import mlflow_pipelines as mpl
from resources.mlflow_helpers import Tracked, write_profile

import mlpipe as mp
from mlpipe.errors import TrackingError
from mlpipe.launch import new_run_id
from mlpipe.runtime import write_ir
from mlpipe.store import open_store
from mlpipe.tracking import active_step, for_run, output_metrics, run_scope

ROOT = Path(__file__).resolve().parents[2]


def test_parent_and_child_runs_with_tags_params_and_metrics(tracked: Tracked, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPIPE_GIT_COMMIT", "0123456789abcdef")
    run = mpl.branches.run(n=5)
    assert run.status == "succeeded"
    parent, children = tracked.tree(run.id)

    assert parent.info.status == "FINISHED"
    assert parent.data.params == {"n": "5", "pause": "0.3"}
    assert parent.data.tags["mlpipe.pipeline"] == "branches"
    assert parent.data.tags["mlpipe.backend"] == "local"
    assert parent.data.tags["mlpipe.status"] == "succeeded"
    assert parent.data.tags["mlflow.source.git.commit"] == "0123456789abcdef"

    assert set(children) == {"source", "left", "right", "pair"}
    store_url = run.store.url.rstrip("/")
    for name, child in children.items():
        tags = child.data.tags
        step = run.steps[name]
        assert child.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["mlpipe.run_id"] == run.id
        assert tags["mlpipe.pipeline"] == "branches"
        assert tags["mlpipe.cache_key"] == step.key
        assert tags["mlpipe.code_fingerprint"] == step.record["code"]["fingerprint"]
        assert tags["mlpipe.cache_hit"] == "false"
        assert tags["mlpipe.status"] == "succeeded"
        for output, info in step.outputs.items():
            assert tags[f"mlpipe.output.{output}"] == f"{store_url}/objects/{info.digest[:2]}/{info.digest}"
    source_digest = run.steps["source"].outputs["output"].digest
    assert children["left"].data.tags["mlpipe.input.values"].endswith(source_digest)

    # mp.log_metric, mp.log_params and plain mlflow.log_metric land in their own step's child run,
    # although `left` and `right` ran at the same time in different threads
    assert children["source"].data.metrics == {"rows": 5.0}
    assert children["source"].data.params == {"n": "5"}
    left, right = children["left"].data, children["right"].data
    assert left.params["side"] == "left" and right.params["side"] == "right"
    assert left.params["thread"] != right.params["thread"]
    assert left.metrics == {"only_left": 1.0, "accuracy": 1.0, "n": 5.0}  # pydantic output: numbers, not bool/str
    assert right.metrics == {"only_right": 2.0, "loss": pytest.approx(1 / 3)}
    history = tracked.client.get_metric_history(children["right"].info.run_id, "loss")
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 1.0), (1, 0.5), (2, 0.333)]
    # several outputs: the output's name prefixes the field
    assert children["pair"].data.metrics == {"first.accuracy": 1.0, "first.n": 5.0}


def test_runs_show_links_the_mlflow_run(tracked: Tracked) -> None:
    run = mpl.branches.run(n=2)
    parent, _children = tracked.tree(run.id)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    shown = subprocess.run([sys.executable, "-m", "mlpipe", "runs", "show", run.id], cwd=tracked.work, env=env,
                           capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0, shown.stderr
    pid, exp = parent.info.run_id, parent.info.experiment_id
    if tracked.uri.startswith("http"):
        assert f"mlflow run {pid}  {tracked.uri.rstrip('/')}/#/experiments/{exp}/runs/{pid}" in shown.stdout
    else:
        assert f"mlflow run {pid} (experiment {exp}) at {tracked.uri}" in shown.stdout


def test_no_header_warnings_from_the_sagemaker_plugin(served: Tracked, caplog: pytest.LogCaptureFixture) -> None:
    # sagemaker installs sagemaker-mlflow, whose header provider fails for every non-SageMaker URI
    pytest.importorskip("sagemaker_mlflow", reason="the sagemaker-mlflow plugin is not installed")
    import logging

    from mlflow.tracking.request_header.registry import resolve_request_headers

    from mlpipe.integrations.mlflow import _tracker

    caplog.set_level(logging.WARNING, logger="mlflow.tracking.request_header.registry")
    logger = logging.getLogger("mlflow.tracking.request_header.registry")
    for noise in [f for f in logger.filters if isinstance(f, _tracker._SageMakerHeaderNoise)]:
        logger.removeFilter(noise)
    resolve_request_headers()  # without mlpipe's filter: the plugin's failure is logged
    assert "Encountered unexpected error during resolving request headers" in caplog.text
    caplog.clear()
    run = mpl.branches.run(n=2)  # mlpipe's tracker installs the filter
    assert run.status == "succeeded"
    assert "resolving request headers" not in caplog.text


def test_cached_steps_are_hits_pointing_at_the_producing_run(tracked: Tracked) -> None:
    first = mpl.branches.run(n=3, pause=0.0)
    second = mpl.branches.run(n=3, pause=0.0)
    assert all(s.cached for s in second.steps.values())
    _, produced = tracked.tree(first.id)
    parent, hits = tracked.tree(second.id)
    assert parent.info.status == "FINISHED"
    for name, hit in hits.items():
        tags = hit.data.tags
        assert tags["mlpipe.cache_hit"] == "true"
        assert tags["mlpipe.cached_from_run_id"] == first.id
        assert tags["mlpipe.cached_from_mlflow_run_id"] == produced[name].info.run_id
        assert tags["mlpipe.cache_key"] == produced[name].data.tags["mlpipe.cache_key"]
        assert "Cache hit" in tags["mlflow.note.content"]
        assert hit.data.metrics == {} and hit.data.params == {}  # not re-logged as training
        assert hit.info.status == "FINISHED"


def test_failed_step_fails_its_child_and_the_parent(served: Tracked) -> None:
    run = mpl.failing.run()
    assert run.status == "failed"
    parent, children = served.tree(run.id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["mlpipe.status"] == "failed"
    assert children["source"].info.status == "FINISHED"
    assert children["boom"].info.status == "FAILED"
    assert "planted failure" in children["boom"].data.tags["mlpipe.error"]
    skipped = children["after"]  # never ran, but the UI shows it, and why
    assert (skipped.info.status, skipped.data.tags["mlpipe.status"]) == ("KILLED", "skipped")
    assert skipped.data.tags["mlpipe.error"] == "skipped because upstream step 'boom' did not succeed"
    assert skipped.data.tags["mlpipe.cache_key"] == "" and not skipped.data.params and not skipped.data.metrics


def test_kubeflow_local_mode_tracks_every_step_including_skipped(served: Tracked) -> None:
    (served.work / "mlpipe.toml").write_text(
        f'[profiles.kfp]\nbackend = "kubeflow"\nstore = ".mlpipe"\nimage = "python:3.11-slim"\n'
        f'options = {{ mode = "local" }}\ntracking_uri = "{served.uri}"\nexperiment = "{served.experiment}"\n'
    )
    run = mpl.failing.run(profile="kfp", n=2)  # each step a kfp.local task running python -m mlpipe.runtime
    assert run.status == "failed" and run.backend == "kubeflow"
    parent, children = served.tree(run.id)
    assert {n: c.info.status for n, c in children.items()} == {"source": "FINISHED", "boom": "FAILED",
                                                                "after": "KILLED"}
    assert children["after"].data.tags["mlpipe.status"] == "skipped"
    assert children["after"].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert for_run(run.id) is None


@pytest.mark.parametrize("backend", ["local", "kubeflow"])
def test_mapped_items_and_branches_not_taken_are_child_runs(served: Tracked, backend: str) -> None:
    (served.work / "mlpipe.toml").write_text(
        f'[profiles.p]\nbackend = "{backend}"\nstore = ".mlpipe"\n'
        + ('options = { mode = "local" }\n' if backend == "kubeflow" else "")
        + f'tracking_uri = "{served.uri}"\nexperiment = "{served.experiment}"\n'
    )
    run = mpl.mapped.run(profile="p", n=3)
    assert run.status == "succeeded", run.error
    parent, children = served.tree(run.id)
    assert {f"halve[{i}]" for i in range(3)} <= set(children)  # one child run per item, under its own name
    assert children["halve[1]"].data.tags["mlpipe.status"] == "succeeded"
    assert children["after_2"].data.tags["mlpipe.status"] == "skipped"  # the branch not taken
    assert children["after_2"].data.tags["mlflow.parentRunId"] == parent.info.run_id
    (served.work / "mlpipe.toml").unlink()


def test_dask_backend_tracks_every_step_including_skipped(served: Tracked) -> None:
    """Steps run in the worker processes of a local Dask cluster: their child runs join the launcher's parent."""
    pytest.importorskip("distributed")
    from mlpipe_dask import DaskBackend

    (served.work / "mlpipe.toml").write_text(
        f'[profiles.dask]\nbackend = "dask"\nstore = ".mlpipe"\noptions = {{ n_workers = 2 }}\n'
        f'tracking_uri = "{served.uri}"\nexperiment = "{served.experiment}"\n'
    )
    try:
        run = mpl.failing.run(profile="dask", n=2)
        assert run.status == "failed" and run.backend == "dask"
        parent, children = served.tree(run.id)
        assert {n: c.info.status for n, c in children.items()} == {"source": "FINISHED", "boom": "FAILED",
                                                                    "after": "KILLED"}
        assert children["after"].data.tags["mlpipe.status"] == "skipped"
        assert children["source"].data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert parent.info.status == "FAILED"
        again = mpl.failing.run(profile="dask", n=2)
        _, hits = served.tree(again.id)
        assert hits["source"].data.tags["mlpipe.cache_hit"] == "true"
        assert hits["source"].data.tags["mlpipe.cache_key"] == children["source"].data.tags["mlpipe.cache_key"]
    finally:
        DaskBackend({"n_workers": 2}).close()  # the local cluster this profile started
    (served.work / "mlpipe.toml").unlink()


def test_server_down_fails_before_the_pipeline_starts(_isolated_cwd: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    write_profile(_isolated_cwd, uri, "never")
    start = time.monotonic()
    with pytest.raises(TrackingError, match="cannot be reached") as info:
        mpl.branches.run()
    assert time.monotonic() - start < 10
    assert uri in str(info.value) and info.value.uri == uri
    assert not (_isolated_cwd / ".mlpipe" / "runs").exists()  # nothing ran


def test_tracking_uri_from_the_environment(served: Tracked, monkeypatch: pytest.MonkeyPatch) -> None:
    (served.work / "mlpipe.toml").unlink()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", served.uri)
    run = mpl.failing.run(n=2)
    exp = served.client.get_experiment_by_name("mlpipe/failing")
    found = served.client.search_runs([exp.experiment_id], filter_string=f"tags.`mlpipe.run_id` = '{run.id}'")
    assert len(found) == 4  # the parent, source, boom and the skipped `after`
    monkeypatch.setenv("MLPIPE_TRACKING", "off")
    untracked = mpl.failing.run(n=2)
    assert not served.client.search_runs([exp.experiment_id], filter_string=f"tags.`mlpipe.run_id` = '{untracked.id}'")


def test_tracking_state_is_released_after_the_run(served: Tracked) -> None:
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    run = mpl.branches.run(n=2, pause=0.0)
    assert for_run(run.id) is None
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
    assert mlflow.active_run() is None


def test_remote_tasks_join_the_parent_run(served: Tracked) -> None:
    """``python -m mlpipe.runtime`` per step, as a remote backend runs it: children join the launcher's parent."""
    from mlpipe.config import load_profile

    profile = load_profile(None)
    store = open_store(profile.store)
    ir = mpl.failing.ir
    digest = write_ir(store, ir)
    run_id = new_run_id()
    with run_scope(profile, ir, store, run_id=run_id, params={"n": 2}, backend="fake-remote", detached=True):
        pass
    assert for_run(run_id) is not None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    for step in ("source", "boom"):
        proc = subprocess.run(
            [sys.executable, "-m", "mlpipe.runtime", "--store", store.url, "--ir", digest,
             "--run-id", run_id, "--step", step, "--param", "n=2"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == (0 if step == "source" else 1), proc.stderr
    parent, children = served.tree(run_id)
    assert set(children) == {"source", "boom"}
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())
    assert children["source"].data.metrics == {"rows": 2.0}
    assert children["boom"].info.status == "FAILED"
    assert parent.info.status == "FAILED"  # the failing task closed the detached parent


def test_submitted_run_is_closed_by_its_last_step(served: Tracked) -> None:
    from mlpipe.local import LocalBackend

    backend = LocalBackend()
    handle = mpl.branches.submit(backend=backend, n=2, pause=0.0)
    assert backend.wait(handle, timeout=60).state == "succeeded"
    parent, children = served.tree(handle.run_id)
    assert set(children) == {"source", "left", "right", "pair"}
    assert parent.info.status == "FINISHED" and parent.data.tags["mlpipe.status"] == "succeeded"
    assert for_run(handle.run_id) is None


def test_a_task_joins_from_environment_variables_alone(served: Tracked, monkeypatch: pytest.MonkeyPatch) -> None:
    """An orchestrator that created the parent itself passes MLPIPE_MLFLOW_* to the task; no store file needed."""
    from mlpipe.runtime import execute_remote_step

    client = served.client
    experiment_id = client.create_experiment(served.experiment)
    parent = client.create_run(experiment_id, run_name="made by an orchestrator")
    store = open_store(".mlpipe")
    ir = mpl.failing.ir
    run_id = new_run_id()
    monkeypatch.setenv("MLPIPE_MLFLOW_TRACKING_URI", served.uri)
    monkeypatch.setenv("MLPIPE_MLFLOW_PARENT_RUN_ID", parent.info.run_id)
    monkeypatch.setenv("MLPIPE_MLFLOW_EXPERIMENT_ID", experiment_id)
    outcome = execute_remote_step(store, ir, write_ir(store, ir), run_id, "source", {"n": "3"})
    assert outcome.status == "succeeded"
    assert not store.has(f"runs/{run_id}/tracking.json")
    (child,) = client.search_runs([experiment_id], filter_string=f"tags.`mlpipe.run_id` = '{run_id}'")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["mlpipe.step"] == "source" and child.data.metrics == {"rows": 3.0}
    joined = for_run(run_id)
    assert joined is not None
    joined.close("succeeded")
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_the_readme_example_is_tracked(served: Tracked, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_training", ROOT / "examples" / "training.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "readme_training", module)  # its annotations resolve through it
    spec.loader.exec_module(module)
    run = module.training.run(n_estimators=10)
    assert run.status == "succeeded"
    parent, children = served.tree(run.id)
    assert list(children) == ["load", "validate", "split", "train", "evaluate"]
    assert parent.data.params == {"n_estimators": "10", "test_size": "0.25", "seed": "0"}
    metrics = run.output("evaluate")
    assert children["evaluate"].data.metrics == {
        "accuracy": metrics.accuracy, "f1": metrics.f1, "roc_auc": metrics.roc_auc, "n_test": float(metrics.n_test)
    }  # fmt: skip
    assert children["train"].data.params == {"n_estimators": "10", "seed": "0"}


def test_log_calls_do_nothing_without_tracking() -> None:
    assert active_step() is None
    mp.log_metric("x", 1.0)
    mp.log_metrics({"y": 2.0})
    mp.log_params({"z": 3})
    run = mpl.failing.run(n=2)  # `source` calls mp.log_metric: a no-op here
    assert run.steps["source"].status == "succeeded"


def test_output_metrics_of_pydantic_outputs() -> None:
    spec = mpl.branches.ir.step("left")
    scores = mpl.Scores(accuracy=0.5, n=2, passed=True, label="x")
    assert output_metrics(spec, scores) == {"accuracy": 0.5, "n": 2.0}
    assert output_metrics(spec, 3.0) == {}
    assert output_metrics(mpl.branches.ir.step("pair"), mpl.Pair(scores, 1.0)) == {
        "first.accuracy": 0.5,
        "first.n": 2.0,
    }


def test_untracked_runs_never_import_mlflow(_isolated_cwd: Path) -> None:
    code = (
        "import sys\n"
        "from resources import mlflow_pipelines as mpl\n"
        "assert mpl.failing.run(n=2).status == 'failed'\n"
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_sqlite_uri_in_a_missing_directory_is_refused(_isolated_cwd: Path) -> None:
    uri = f"sqlite:///{_isolated_cwd / 'no' / 'such' / 'dir' / 'mlflow.db'}"
    write_profile(_isolated_cwd, uri, "never")
    with pytest.raises(TrackingError, match="does not exist") as info:
        mpl.failing.run()
    assert info.value.uri == uri


def test_a_deleted_experiment_is_refused_before_the_run(served: Tracked) -> None:
    client = served.client
    client.delete_experiment(client.create_experiment(served.experiment))
    with pytest.raises(TrackingError, match="is deleted") as info:
        mpl.failing.run()
    assert served.uri in str(info.value)
    assert not (served.work / ".mlpipe" / "runs").exists()


def test_missing_mlflow_names_the_extra(_isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlpipe.errors import MissingDependencyError

    write_profile(_isolated_cwd, "http://127.0.0.1:9", "never")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'mlpipe\[mlflow\]'"):
        mpl.failing.run()
