"""Compiling for Vertex: the Kubeflow spec plus Vertex settings; golden files; the spec is a valid PipelineSpec.

Golden files live next to this module in golden/; the store URL and the IR
digest are normalised. Regenerate them with
``MLPIPE_UPDATE_GOLDEN=1 pytest tests/backends/vertex/test_compile.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import vertex_pipelines as vp
import yaml
from mlpipe_vertex import VertexBackend
from mlpipe_vertex.compiler import build_spec

import mlpipe as mp
from mlpipe.cli import load_pipeline
from mlpipe.errors import UnsupportedFeatureError
from mlpipe.store import ArtifactStore, open_store

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).resolve().parent / "golden"
IMAGE = "europe-docker.pkg.dev/my-project/ml/train:1.4"


def normalised(text: str, store: ArtifactStore) -> str:
    lines = text.replace(store.url, "<STORE>").splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.strip() == "- --ir":
            indent = line[: len(line) - len(line.lstrip())]
            lines[i + 1] = f"{indent}- <IR>"
    return "\n".join(line for line in lines if not line.startswith("sdkVersion:")) + "\n"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MLPIPE_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path}; run with MLPIPE_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"compiled spec differs from {path}; review and regenerate"


def compile_text(pipeline: mp.Pipeline, path: Path, store: ArtifactStore, **options: Any) -> str:
    backend = VertexBackend(options, image=IMAGE)
    backend.check(pipeline.ir)
    backend.compile(pipeline.ir, str(path), store=store)
    return path.read_text()


@pytest.fixture
def store(gs_url: str) -> ArtifactStore:
    return open_store(gs_url)


def test_training_example_matches_golden(store: ArtifactStore, tmp_path: Path) -> None:
    training = load_pipeline(str(ROOT / "examples" / "training.py") + ":training")
    check_golden("training.yaml", normalised(compile_text(training, tmp_path / "t.yaml", store), store))


def test_machine_resources_match_golden_and_are_limits_only(store: ArtifactStore, tmp_path: Path) -> None:
    text = compile_text(vp.machines, tmp_path / "m.yaml", store)
    check_golden("machines.yaml", normalised(text, store))
    [spec] = list(yaml.safe_load_all(text))
    executors = spec["deploymentSpec"]["executors"]
    assert executors["exec-prepare"]["container"]["resources"] == {
        "cpuLimit": 8.0, "memoryLimit": 34.359738368, "resourceCpuLimit": "8", "resourceMemoryLimit": "32Gi"}
    fit = executors["exec-fit"]["container"]
    assert fit["resources"]["accelerator"] == {"count": "2", "resourceCount": "2", "resourceType": "NVIDIA_L4",
                                               "type": "NVIDIA_L4"}
    assert fit["resources"]["cpuLimit"] == 4.0 and fit["resources"]["memoryLimit"] == 16.0
    assert {"name": "TF_CPP", "value": "1"} in fit["env"]
    assert executors["exec-score"]["container"]["resources"]["accelerator"]["type"] == "NVIDIA_TESLA_T4"
    assert "resources" not in executors["exec-report"]["container"]
    assert not any(k.endswith("Request") for e in executors.values() for k in e["container"].get("resources", {}))
    tasks = spec["root"]["dag"]["tasks"]
    # retries and timeouts are enforced by the runtime inside the task; no Kubernetes platform spec
    assert not any("retryPolicy" in t for t in tasks.values())
    assert "platforms" not in spec
    assert all(t["cachingOptions"] == {} for t in tasks.values())  # Vertex caching off, task by task
    assert spec["pipelineInfo"]["name"] == "gpu-training-v2"
    assert spec["pipelineInfo"]["displayName"] == "GPU_Training-v2"


def test_caching_option_sets_each_task_but_respects_cache_false(store: ArtifactStore, tmp_path: Path) -> None:
    spec = yaml.safe_load(compile_text(vp.machines, tmp_path / "m.yaml", store, caching=True))
    caching = {name: t["cachingOptions"] for name, t in spec["root"]["dag"]["tasks"].items()}
    assert caching == {"prepare": {"enableCache": True}, "fit": {"enableCache": True},
                       "score": {"enableCache": True}, "report": {}}  # report is @mp.step(cache=False)


def test_spec_is_a_valid_pipeline_spec_and_loads_in_kfp(store: ArtifactStore, tmp_path: Path) -> None:
    from google.protobuf import json_format
    from kfp import components
    from kfp.pipeline_spec import pipeline_spec_pb2

    path = tmp_path / "m.yaml"
    spec = yaml.safe_load(compile_text(vp.machines, path, store))
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())  # unknown or misspelt fields would raise
    component = components.load_component_from_file(str(path))
    assert {n: i.type for n, i in component.component_spec.inputs.items()} == {
        "n": "Integer", "lr": "Float", "label": "String", "mlpipe_run_id": "String"}
    # A job that a schedule starts keeps the default and records under its job id (the engine's run id).
    assert spec["root"]["inputDefinitions"]["parameters"]["mlpipe_run_id"]["defaultValue"] == "{{$.pipeline_job_name}}"
    for task in spec["root"]["dag"]["tasks"].values():
        assert task["inputs"]["parameters"]["mlpipe_engine_run_id"] == {
            "runtimeValue": {"constant": "{{$.pipeline_job_name}}"}}


def test_the_ir_the_tasks_read_is_in_the_bucket(store: ArtifactStore) -> None:
    backend = VertexBackend(image=IMAGE)
    spec = build_spec(backend.plan(vp.machines.ir, store))
    args = spec["deploymentSpec"]["executors"]["exec-fit"]["container"]["args"]
    digest = args[args.index("--ir") + 1]
    assert store.has(f"pipelines/{digest}.json")


@pytest.mark.parametrize("store_url", ["local", "memory://x", "s3://bucket/prefix"])
def test_compile_refuses_a_store_vertex_cannot_reach(store_url: str, tmp_path: Path) -> None:
    url = str(tmp_path / "store") if store_url == "local" else store_url
    backend = VertexBackend(image=IMAGE)
    with pytest.raises(UnsupportedFeatureError, match=r"not on Google Cloud Storage.*gs://bucket/prefix store"):
        backend.compile(vp.machines.ir, str(tmp_path / "x.yaml"), store=open_store(url))
    with pytest.raises(UnsupportedFeatureError, match="not on Google Cloud Storage"):
        backend.compile(vp.machines.ir, str(tmp_path / "x.yaml"))


@pytest.mark.parametrize(("pipeline", "option", "message"), [
    (vp.too_many_cpus, "resources.cpu", "more than the 96 vCPUs"),
    (vp.too_much_memory, "resources.memory", "more than the 624 GB"),
    (vp.too_many_gpus, "resources.gpu", "no Vertex machine has more than 8 NVIDIA_L4"),
    (vp.unknown_accelerator, "resources.accelerator", "'nvidia-gtx-1080' is not a Vertex accelerator type"),
    (vp.instance_type, "resources.instance_type", "chooses the machine type from the cpu, memory and accelerator"),
])
def test_resource_refusals_name_the_step_and_option(pipeline: mp.Pipeline, option: str, message: str) -> None:
    with pytest.raises(UnsupportedFeatureError, match=message) as info:
        VertexBackend(image=IMAGE).check(pipeline.ir)
    assert info.value.step == "big"  # type: ignore[attr-defined]
    assert info.value.option == option  # type: ignore[attr-defined]
    assert info.value.exit_code == 2


def test_sixteen_a100s_fit_one_machine() -> None:
    VertexBackend(image=IMAGE).check(vp.a100_x16.ir)


def test_cli_compile_with_a_vertex_profile(gs_url: str, _isolated_cwd: Path) -> None:
    from typer.testing import CliRunner

    from mlpipe.cli import app

    (_isolated_cwd / "mlpipe.toml").write_text(
        'default_profile = "dev"\n[profiles.dev]\nbackend = "local"\n'
        f'[profiles.prod]\nbackend = "vertex"\nstore = "{gs_url}"\nimage = "{IMAGE}"\n'
        'options = { project = "my-project", location = "europe-west4" }\n')
    (_isolated_cwd / "pipe.py").write_text("from vertex_pipelines import machines\n")
    out = _isolated_cwd / "machines.yaml"
    result = CliRunner().invoke(app, ["compile", f"{_isolated_cwd / 'pipe.py'}:machines", "--profile", "prod",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load(out.read_text())
    fit = spec["deploymentSpec"]["executors"]["exec-fit"]["container"]
    assert fit["resources"]["accelerator"]["type"] == "NVIDIA_L4"
    refused = CliRunner().invoke(app, ["compile", f"{_isolated_cwd / 'pipe.py'}:machines", "--backend", "vertex",
                                       "-o", str(out)])
    assert refused.exit_code == 2
    assert "not on Google Cloud Storage" in refused.output
