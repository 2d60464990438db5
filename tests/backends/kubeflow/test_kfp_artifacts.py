"""Typed output artifacts: the compiled spec declares them, kfp.local runs it, kfp's own reader gives them back.

Each step output is a ``system.*`` artifact (Dataset, Model, Metrics, HTML,
Artifact) whose URI is the output's object in the mlpipe store: nothing is
copied. The runtime writes them into the task's ``executor_output.json`` as
a KFP container component does; the test reads that file with kfp's own
``kfp.local.executor_output_utils`` (what kfp.local hands to the next task).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlpipe_kubeflow import KubeflowBackend
from mlpipe_kubeflow.compiler import write_spec
from mlpipe_kubeflow.local_runner import execute_spec
from resources.artifact_pipelines import Scores, artifacts

from mlpipe.run import Run
from mlpipe.runtime import executor_output, metric_values
from mlpipe.store import ArtifactStore, ObjectInfo, open_store

KINDS = {
    "load": "system.Dataset",
    "features": "system.Dataset",
    "train": "system.Model",
    "evaluate": "system.Metrics",
    "report": "system.HTML",
    "summary": "system.Artifact",
}


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return open_store(str(tmp_path / "store"))


def compiled(store: ArtifactStore, tmp_path: Path) -> Path:
    backend = KubeflowBackend(image="registry.example/ml/mlpipe:1.0")
    spec = tmp_path / "artifacts.yaml"
    write_spec(backend.plan(artifacts.ir, store), str(spec))
    return spec


def arguments(store: ArtifactStore, run_id: str) -> dict[str, Any]:
    plan = KubeflowBackend(image="registry.example/ml/mlpipe:1.0").plan(artifacts.ir, store)
    return plan.arguments(artifacts.validate_params({"n": 8}), run_id)


def test_spec_declares_typed_artifacts_that_kfp_loads(store: ArtifactStore, tmp_path: Path) -> None:
    from kfp import components

    spec = compiled(store, tmp_path)
    loaded = components.load_component_from_file(str(spec)).pipeline_spec
    for task, schema in KINDS.items():
        outputs = loaded.components[f"comp-{task}"].output_definitions
        assert outputs.artifacts["output"].artifact_type.schema_title == schema
        assert outputs.artifacts["output"].artifact_type.schema_version == "0.0.1"
        assert "mlpipe_record" in outputs.parameters
        args = list(loaded.deployment_spec.fields["executors"].struct_value.fields[f"exec-{task}"]
                    .struct_value.fields["container"].struct_value.fields["args"].list_value.values)
        assert [a.string_value for a in args[-2:]] == ["--executor-input", "{{$}}"]
    assert store.listdir("objects") == []  # compiling wrote nothing into the store


def read_back(root: Path) -> dict[str, Any]:
    """Each task's output artifact, as kfp.local's own reader builds it from executor_output.json."""
    from kfp.local import executor_output_utils
    from kfp.pipeline_spec import pipeline_spec_pb2

    found: dict[str, Any] = {}
    for path in root.rglob("executor_output.json"):
        task = path.parent.name
        out = executor_output_utils.load_executor_output(str(path))
        for name, listed in out.artifacts.items():
            # kfp.local adds the type from the ExecutorInput; the spec's type is the same (checked above)
            listed.artifacts[0].type.CopyFrom(
                pipeline_spec_pb2.ArtifactTypeSchema(schema_title=KINDS[task], schema_version="0.0.1"))
            found[task] = executor_output_utils.artifact_list_to_dsl_artifact(listed, is_artifact_list=False)
            assert name == "output"
    return found


def test_kfp_local_run_produces_artifacts_pointing_into_the_store(store: ArtifactStore, tmp_path: Path) -> None:
    from kfp import dsl

    spec = compiled(store, tmp_path)
    root = tmp_path / "kfp-root"
    assert execute_spec(str(spec), arguments(store, "run-artifacts-1"), "run-artifacts-1",
                        pipeline_root=str(root)) is None
    run = Run.load(store, "run-artifacts-1")
    got = read_back(root)
    assert sorted(got) == sorted(KINDS)
    for task, artifact in got.items():
        assert isinstance(artifact, dsl.Artifact)
        info = run.steps[task].outputs["output"]
        assert artifact.uri == f"{store.url}/objects/{info.digest[:2]}/{info.digest}"
        assert Path(artifact.uri).is_file()  # the store's object itself: no copy under kfp's pipeline root
        assert not list(root.rglob(f"{task}/output"))
    # Metrics: the pydantic fields that are numbers, nested ones dotted; the URI is the stored JSON.
    scores = run.output("evaluate")
    assert isinstance(scores, Scores)
    assert got["evaluate"].metadata == {"accuracy": scores.accuracy, "rows": 8.0,
                                        "per_class.0": scores.accuracy, "per_class.1": scores.accuracy}
    assert json.loads(Path(got["evaluate"].uri).read_bytes())["accuracy"] == scores.accuracy
    assert Path(got["report"].uri).read_text().startswith("<html><body><h1>accuracy")
    model_meta = got["train"].metadata
    assert model_meta["digest"] == run.steps["train"].outputs["output"].digest
    assert model_meta["step"] == "train" and model_meta["run_id"] == "run-artifacts-1"
    assert model_meta["cached"] is False
    # A second run is served from the cache and points at the same objects.
    root2 = tmp_path / "kfp-root-2"
    assert execute_spec(str(spec), arguments(store, "run-artifacts-2"), "run-artifacts-2",
                        pipeline_root=str(root2)) is None
    again = read_back(root2)
    assert {t: a.uri for t, a in again.items()} == {t: a.uri for t, a in got.items()}
    assert again["train"].metadata["cached"] is True


def test_metric_values_keeps_numbers_only() -> None:
    doc = {"a": 1, "b": 0.5, "ok": True, "none": None, "s": "x", "nan": float("nan"), "n": {"c": 2, "d": {"e": 3.5}},
           "xs": [1, 2]}
    assert metric_values(doc) == {"a": 1, "b": 0.5, "n.c": 2, "n.d.e": 3.5}


@pytest.mark.parametrize(
    ("backend", "store_url", "uri_kept"),
    [
        ("kubeflow", "s3://bucket/mlpipe", False),  # KFP's launcher refuses an s3:// URI outside the run's root
        ("kubeflow", "gs://bucket/mlpipe", False),
        ("vertex", "gs://bucket/mlpipe", True),  # Vertex records the URI the task gives
        ("kubeflow", "/shared/mlpipe", True),  # a path: the launcher leaves it alone
    ],
)
def test_store_uri_or_metadata_by_engine(backend: str, store_url: str, uri_kept: bool) -> None:
    class Named:
        url = store_url

    spec = artifacts.ir.step("train")
    info = ObjectInfo(digest="ab" + "0" * 30, size=10, materializer="cloudpickle", type="LogisticRegression")
    executor_input = {"outputs": {"artifacts": {"output": {"artifacts": [{"name": "projects/p/artifacts/1"}]}},
                                  "outputFile": "/tmp/x"}}
    doc = executor_output(Named(), spec, {"output": info}, executor_input,  # type: ignore[arg-type]
                          run_id="r", backend=backend, cached=False)
    entry = doc["artifacts"]["output"]["artifacts"][0]
    assert entry["name"] == "projects/p/artifacts/1"
    object_uri = f"{store_url}/objects/ab/{info.digest}"
    if uri_kept:
        assert entry["uri"] == object_uri and "store_uri" not in entry["metadata"]
    else:
        assert entry["uri"] == "" and entry["metadata"]["store_uri"] == object_uri
