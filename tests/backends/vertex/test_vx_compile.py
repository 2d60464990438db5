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
    # retries=2 on prepare: Vertex's task retryPolicy (the other steps have none); no Kubernetes platform spec
    assert tasks["prepare"]["retryPolicy"] == {"backoffDuration": "30s", "backoffFactor": 2.0,
                                               "backoffMaxDuration": "3600s", "maxRetryCount": 2}
    assert [n for n, t in tasks.items() if "retryPolicy" in t] == ["prepare"]
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


def test_retry_policy_is_what_kfps_set_retry_writes_and_parses_as_a_pipeline_spec(store: ArtifactStore,
                                                                                   tmp_path: Path) -> None:
    """Field by field against kfp's own compiler for ``set_retry`` (the call Vertex documents)."""
    from google.protobuf import json_format
    from kfp import compiler, dsl
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = yaml.safe_load(compile_text(vp.machines, tmp_path / "m.yaml", store, retry_backoff="5s",
                                       retry_backoff_max="120s"))
    ours = spec["root"]["dag"]["tasks"]["prepare"]["retryPolicy"]

    @dsl.container_component
    def op():  # type: ignore[no-untyped-def]  # kfp reads the annotation, a string under __future__ annotations
        return dsl.ContainerSpec(image="x", command=["true"])

    @dsl.pipeline(name="p")
    def reference():  # type: ignore[no-untyped-def]
        op().set_retry(num_retries=2, backoff_duration="5s", backoff_factor=2.0, backoff_max_duration="120s")

    compiler.Compiler().compile(reference, str(tmp_path / "ref.yaml"))
    theirs = yaml.safe_load((tmp_path / "ref.yaml").read_text())["root"]["dag"]["tasks"]["op"]["retryPolicy"]
    assert ours == theirs
    parsed = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    policy = parsed.root.dag.tasks["prepare"].retry_policy
    assert (policy.max_retry_count, policy.backoff_duration.seconds, policy.backoff_factor,
            policy.backoff_max_duration.seconds) == (2, 5, 2.0, 120)


def test_no_per_task_deadline_exists_on_vertex_so_the_runtime_enforces_timeout(store: ArtifactStore,
                                                                                tmp_path: Path) -> None:
    """timeout=600 on prepare: no spec field can carry it, so the stored IR does and the runtime enforces it.

    If kfp's PipelineTaskSpec or Vertex's PipelineJob gain a per-task deadline, this test fails: use it then.
    """
    from google.cloud.aiplatform_v1.types import pipeline_job
    from kfp.pipeline_spec import pipeline_spec_pb2

    fields = [f.name for f in pipeline_spec_pb2.PipelineTaskSpec.DESCRIPTOR.fields]
    assert "retry_policy" in fields and not [f for f in fields if "timeout" in f or "deadline" in f]
    job_fields = list(pipeline_job.PipelineJob.meta.fields)
    assert not [f for f in job_fields if "timeout" in f or "deadline" in f]
    backend = VertexBackend(image=IMAGE)
    spec = build_spec(backend.plan(vp.machines.ir, store))
    assert "activeDeadlineSeconds" not in str(spec)
    args = spec["deploymentSpec"]["executors"]["exec-prepare"]["container"]["args"]
    from mlpipe.records import load_ir

    ir = load_ir(store, args[args.index("--ir") + 1])
    assert (ir.step("prepare").timeout, ir.step("prepare").retries) == (600, 2)


@pytest.mark.parametrize("option", ["retry_backoff", "retry_backoff_max"])
def test_retry_backoff_must_be_whole_seconds(option: str) -> None:
    from mlpipe.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{option}.*whole seconds"):
        VertexBackend({option: "5m"}, image=IMAGE)


def test_store_options_travel_to_every_task_credentials_do_not(gs_url: str, tmp_path: Path) -> None:
    from mlpipe.staging import StagedStore

    store = StagedStore(gs_url, {"endpoint_url": "http://gcs.internal:4443", "project": "p-1",
                                 "token": "/secrets/sa.json"})
    with pytest.warns(UserWarning, match="storage_options token .* not written into the vertex spec"):
        spec = build_spec(VertexBackend(image=IMAGE).plan(vp.machines.ir, store))
    assert "/secrets/sa.json" not in str(spec)
    for executor in spec["deploymentSpec"]["executors"].values():
        args = executor["container"]["args"]
        assert args[args.index("--storage-options") + 1] == '{"endpoint_url":"http://gcs.internal:4443","project":"p-1"}'
    store.discard()
