"""Compiling to a KFP v2 spec: golden files, kfp loads the spec, graph and parameters, every refusal.

Golden files live in tests/resources/golden/kubeflow/; the store path and the
IR digest (which follows the code fingerprint) are normalised, and kfp's
header comment is dropped (see ``normalised``). Regenerate
them with ``MLPIPE_UPDATE_GOLDEN=1 pytest tests/backends/kubeflow``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlpipe_kubeflow import KubeflowBackend
from mlpipe_kubeflow.compiler import plan
from mlpipe_kubeflow.naming import k8s_name
from resources import kubeflow_pipelines as kp
from typer.testing import CliRunner

import mlpipe as mp
from mlpipe.cli import app, load_pipeline
from mlpipe.errors import ConfigError, UnsupportedFeatureError
from mlpipe.store import ArtifactStore, open_store

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "resources" / "golden" / "kubeflow"

SETTINGS_OPTIONS: dict[str, Any] = {
    "env": {"TEAM": "ml"},
    "secrets_as_env": {"wandb": {"api-key": "WANDB_API_KEY"}},
    "node_selector": {"pool": "training"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "image_pull_policy": "IfNotPresent",
    "image_pull_secrets": ["regcred"],
}


def compile_to(pipeline: mp.Pipeline, path: Path, store: ArtifactStore, options: dict[str, Any] | None = None,
               image: str | None = "registry.example/ml/mlpipe:1.0") -> str:
    backend = KubeflowBackend(options or {}, image=image)
    backend.check(pipeline.ir)
    backend.compile(pipeline.ir, str(path), store=store)
    return path.read_text()


def normalised(text: str, store: ArtifactStore) -> str:
    """The spec without what varies between machines and runs.

    kfp's header comment renders dict defaults from a protobuf map, whose order
    is not stable between processes, so the comment lines are left out (the
    defaults themselves are compared in the spec body).
    """
    lines = [line for line in text.replace(store.url, "<STORE>").splitlines() if not line.startswith("#")]
    for i, line in enumerate(lines[:-1]):
        if line.strip() == "- --ir":
            indent = line[: len(line) - len(line.lstrip())]
            lines[i + 1] = f"{indent}- <IR>"
    return "\n".join(lines) + "\n"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MLPIPE_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path}; run with MLPIPE_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"compiled spec differs from {path}; review and regenerate"


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return open_store(str(tmp_path / "store"))


@pytest.fixture(scope="module")
def training() -> mp.Pipeline:
    return load_pipeline(str(ROOT / "examples" / "training.py") + ":training")


def test_training_matches_golden(training: mp.Pipeline, store: ArtifactStore, tmp_path: Path) -> None:
    text = compile_to(training, tmp_path / "training.yaml", store)
    check_golden("training.yaml", normalised(text, store))


def _example_pipelines() -> list[str]:
    import re

    found = []
    for file in sorted((ROOT / "examples").glob("*.py")):
        for match in re.finditer(r"@mp\.pipeline(?:\([^)]*\))?\s*\ndef (\w+)", file.read_text()):
            found.append(f"{file.name}:{match[1]}")
    return found


@pytest.mark.parametrize("target", [t for t in _example_pipelines() if t != "training.py:training"])
def test_every_example_compiles_to_its_golden_or_is_refused_for_gates(target: str, store: ArtifactStore,
                                                                       tmp_path: Path) -> None:
    pipeline = load_pipeline(str(ROOT / "examples" / target))
    if any(s.gate for s in pipeline.ir.steps):  # quality gates: refused, see docs/backends/kubeflow.md
        with pytest.raises(UnsupportedFeatureError, match="quality gate"):
            KubeflowBackend().check(pipeline.ir)
        return
    text = compile_to(pipeline, tmp_path / "example.yaml", store)
    check_golden(target.replace(".py:", "-") + ".yaml", normalised(text, store))


def test_settings_match_golden(store: ArtifactStore, tmp_path: Path) -> None:
    text = compile_to(kp.settings, tmp_path / "settings.yaml", store, SETTINGS_OPTIONS)
    check_golden("settings.yaml", normalised(text, store))


def test_small_matches_golden_without_cache(store: ArtifactStore, tmp_path: Path) -> None:
    backend = KubeflowBackend({"caching": True}, image="python:3.11-slim")
    from mlpipe_kubeflow.compiler import write_spec

    spec = write_spec(backend.plan(kp.small.ir, store, cache=False), str(tmp_path / "small.yaml"))
    text = Path(spec).read_text()
    assert "--no-cache" in text
    check_golden("small.yaml", normalised(text, store))


def _spec_documents(text: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    docs = list(yaml.safe_load_all(text))
    return docs[0], (docs[1] if len(docs) > 1 else None)


def test_spec_loads_in_kfp_with_graph_params_and_names(training: mp.Pipeline, store: ArtifactStore,
                                                       tmp_path: Path) -> None:
    from kfp import components

    path = tmp_path / "training.yaml"
    compile_to(training, path, store)
    component = components.load_component_from_file(str(path))
    inputs = component.component_spec.inputs
    assert {n: (i.type, i.default) for n, i in inputs.items()} == {
        "n_estimators": ("Integer", 100),
        "test_size": ("Float", 0.25),
        "seed": ("Integer", 0),
        # mlpipe's run id, set by submit; left at the placeholder, the task records under KFP's run id
        "mlpipe_run_id": ("String", "{{$.pipeline_job_uuid}}"),
    }
    spec, platform = _spec_documents(path.read_text())
    assert platform is None
    tasks = spec["root"]["dag"]["tasks"]
    ir = training.ir
    assert set(tasks) == {k8s_name(s.name) for s in ir.steps}
    for step in ir.steps:
        task = tasks[k8s_name(step.name)]
        assert task["taskInfo"]["name"] == step.name
        assert sorted(task.get("dependentTasks", [])) == sorted(k8s_name(u) for u in step.upstream)
        inputs = task["inputs"]["parameters"]
        assert inputs["mlpipe_run_id"] == {"componentInputParameter": "mlpipe_run_id"}
        assert inputs["mlpipe_engine_run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
        assert "enableCache" not in task["cachingOptions"]  # KFP caching off by default
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train["command"] == ["python", "-m", "mlpipe.runtime"]
    assert train["args"][:4] == ["--store", store.url, "--ir", train["args"][3]]
    assert store.has(f"pipelines/{train['args'][3]}.json")  # the IR the tasks read is in the profile's store
    assert train["resources"]["resourceCpuLimit"] == "2" and train["resources"]["resourceMemoryLimit"] == "2Gi"


def test_settings_are_mapped(store: ArtifactStore, tmp_path: Path) -> None:
    spec, platform = _spec_documents(compile_to(kp.settings, tmp_path / "s.yaml", store, SETTINGS_OPTIONS))
    executors = spec["deploymentSpec"]["executors"]
    fit = executors["exec-fit"]["container"]
    assert fit["image"] == "registry.example/ml/train:1.0"  # the step's image wins over the profile's
    assert executors["exec-report"]["container"]["image"] == "registry.example/ml/mlpipe:1.0"
    assert fit["resources"]["resourceCpuLimit"] == "500m"
    assert fit["resources"]["resourceMemoryLimit"] == str(int(1.5 * 2**30))  # KFP refuses "1.5Gi"
    assert fit["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert fit["resources"]["accelerator"]["resourceCount"] == "1"
    assert {e["name"]: e["value"] for e in fit["env"]} == {"TEAM": "ml", "MLPIPE_LOG": "debug"}
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["fit"]["retryPolicy"]["maxRetryCount"] == 2
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["label"] == {"defaultValue": "null", "isOptional": True, "parameterType": "STRING"}
    assert params["cfg"]["parameterType"] == "STRUCT" and params["tags"]["parameterType"] == "LIST"
    assert spec["pipelineInfo"] == {"name": "resource-settings", "displayName": "Resource_Settings",
                                    "description": spec["pipelineInfo"]["description"]}
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]  # type: ignore[index]
    assert k8s["exec-fit"]["activeDeadlineSeconds"] == str(272 + 300)  # 3 attempts of 90.5 s + start-up
    assert k8s["exec-fit"]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-t4", "pool": "training"}
    assert k8s["exec-prepare"]["nodeSelector"]["labels"] == {
        "node.kubernetes.io/instance-type": "m5.xlarge", "pool": "training"}
    assert k8s["exec-report"]["secretAsEnv"][0]["secretName"] == "wandb"
    assert k8s["exec-report"]["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu",
                                                  "operator": "Exists"}]
    assert k8s["exec-report"]["imagePullPolicy"] == "IfNotPresent"


def test_kfp_caching_only_when_asked_and_never_for_uncached_steps(store: ArtifactStore, tmp_path: Path) -> None:
    spec, _ = _spec_documents(compile_to(kp.settings, tmp_path / "s.yaml", store, {"caching": True}))
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["fit"]["cachingOptions"] == {"enableCache": True}
    assert tasks["prepare"]["cachingOptions"] == {}  # @mp.step(cache=False)


def test_cli_compile_writes_a_spec(training: mp.Pipeline, tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    result = CliRunner().invoke(app, ["compile", str(ROOT / "examples" / "training.py") + ":training",
                                      "--backend", "kubeflow", "-o", str(out)])
    assert result.exit_code == 0, result.output
    spec, _ = _spec_documents(out.read_text())
    assert spec["pipelineInfo"]["name"] == "training"
    assert spec["deploymentSpec"]["executors"]["exec-load"]["container"]["image"] == "mlpipe-runtime:latest"


def test_pipeline_compile_api(tmp_path: Path) -> None:
    path = kp.small.compile("kubeflow", str(tmp_path / "small.yaml"))
    assert Path(path).is_file()


def test_import_does_not_import_kfp() -> None:
    import subprocess
    import sys

    code = "import sys, mlpipe_kubeflow; mlpipe_kubeflow.KubeflowOptions; print('kfp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_compile_does_not_import_kfp(tmp_path: Path) -> None:
    """The whole `mlpipe compile --backend kubeflow` path runs without kfp (no second of imports)."""
    import subprocess
    import sys

    code = ("import sys; from mlpipe.cli import main; sys.argv = ['mlpipe', 'compile', sys.argv[1], '-o', sys.argv[2],"
            " '--backend', 'kubeflow']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m == 'kfp' or m.startswith('kfp.')))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "examples" / "training.py") + ":training",
                          str(tmp_path / "t.yaml")], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         check=False,
                         env={**os.environ, "MLPIPE_STORE": str(tmp_path / "store")})
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
    assert (tmp_path / "t.yaml").read_text().startswith("# PIPELINE DEFINITION")


def test_entry_point_finds_the_backend() -> None:
    from mlpipe.backend import available_backends, get_backend_class

    assert get_backend_class("kubeflow") is KubeflowBackend
    assert "mlpipe-kubeflow" in available_backends()["kubeflow"]


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pipeline", "options", "step", "option", "words"),
    [
        (kp.collide, {}, "train__model", "name", "both become the KFP task 'train-model'"),
        (kp.long_name, {}, "s" * 64, "name", "more than the 63"),
        (kp.no_letters, {}, "数据", "name", "no letters or digits"),
        (kp.bad_pipeline_name, {}, None, "name", "KFP needs a pipeline name"),
        (kp.big_default, {}, None, "max_parameter_bytes", "pass large data as a step output"),
        (kp.reserved, {}, None, "params", "'mlpipe_run_id' is used by mlpipe"),
        (kp.bad_env_pipeline, {}, "bad_env", "env", "not valid in Kubernetes"),
        (kp.tiny_cpu_pipeline, {}, "tiny_cpu", "resources.cpu", "finer than KFP's millicpu"),
        (kp.gpu_pipeline, {"node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}, "gpu_step",
         "resources.accelerator", "drop one of them"),
        (kp.small, {"env": {"TOKEN": "x"}, "secrets_as_env": {"s": {"k": "TOKEN"}}}, "needs", "env",
         "both as plain env and from a secret"),
        (kp.small, {"steps": {"needs": {"env": {"TOKEN": "x"}, "secrets_as_env": {"s": {"k": "TOKEN"}}}}}, "needs",
         "env", "both as plain env and from a secret"),
        (kp.small, {"steps": {"neds": {}}}, None, "steps", "names ['neds'], which are not steps of it"),
    ],
)
def test_compile_refusals_name_step_and_option(pipeline: mp.Pipeline, options: dict[str, Any], step: str | None,
                                               option: str, words: str, store: ArtifactStore,
                                               tmp_path: Path) -> None:
    backend = KubeflowBackend(options)
    with pytest.raises(UnsupportedFeatureError) as info:
        backend.compile(pipeline.ir, str(tmp_path / "x.yaml"), store=store)
    err = info.value
    assert words in str(err)
    assert err.option == option  # type: ignore[attr-defined]
    assert err.backend == "kubeflow"  # type: ignore[attr-defined]
    if step is not None:
        assert err.step == step  # type: ignore[attr-defined]
        assert repr(step) in str(err)
    assert not (tmp_path / "x.yaml").exists()
    with pytest.raises(UnsupportedFeatureError):  # the launcher's check() refuses before anything is stored
        backend.check(pipeline.ir)


def test_refusal_comes_before_kfp_is_needed() -> None:
    with pytest.raises(UnsupportedFeatureError, match="both become"):
        plan(kp.collide.ir, KubeflowBackend().opts, store="s", ir_digest="d")


def test_cli_compile_refusal_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["compile", str(ROOT / "tests" / "resources" / "kubeflow_pipelines.py")
                                      + ":collide", "--backend", "kubeflow", "-o", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2
    assert "both become the KFP task" in result.output


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"colour": "blue"}, "Valid options"),
        ({"mode": "docker"}, "mode"),
        ({"schedule": "every day"}, "cron"),
        ({"node_selector": {"pool": "bad value!"}}, "not a valid Kubernetes label"),
        ({"env": {"1 BAD": "x"}}, "invalid environment variable"),
        ({"secrets_as_env": {"s": {"k": "BAD NAME"}}}, "invalid environment variable"),
        ({"retry_backoff": "1m"}, "whole seconds"),
        ({"tolerations": [{"effect": "Sometimes"}]}, "tolerations"),
        ({"run_name": "{pipeline}-{user}"}, "run_name may use"),
    ],
)
def test_invalid_options_are_config_errors(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        KubeflowBackend(options)


def test_cron_gets_kfp_seconds_field() -> None:
    assert KubeflowBackend({"schedule": "0 2 * * *"}).opts.kfp_cron == "0 0 2 * * *"
    assert KubeflowBackend({"schedule": "30 0 2 * * *"}).opts.kfp_cron == "30 0 2 * * *"


# -- the fast writer equals kfp's compiler ----------------------------------------------------


def _chain(n: int) -> mp.Pipeline:
    def body(x: int = 0) -> int:
        value = kp.one(x)
        for _ in range(n - 1):
            value = kp.one(value)
        return value

    body.__name__ = body.__qualname__ = f"chain_{n}"
    return mp.pipeline(body)


OVERRIDES: dict[str, Any] = {
    **SETTINGS_OPTIONS, "retry_backoff": "7s", "env": {"TEAM": "ml", "EMPTY": ""},
    "tolerations": [{"key": "spot", "operator": "Equal", "value": "yes", "effect": "NoExecute",
                     "toleration_seconds": 0}, {"operator": "Exists"}],
    "steps": {"fit": {"secrets_as_env": {"hf": {"token": "HF_TOKEN", "org": "HF_ORG"}},
                      "node_selector": {"pool": "gpu"}}},
}


@pytest.mark.parametrize("case", ["training", "settings", "small", "chain", "unicode", "overrides", "required"])
def test_spec_writer_equals_kfp_compiler_output(case: str, training: mp.Pipeline, store: ArtifactStore,
                                                tmp_path: Path) -> None:
    from kfp import compiler
    from mlpipe_kubeflow.compiler import build, write_spec

    pipelines = {"training": (training, {}), "settings": (kp.settings, SETTINGS_OPTIONS), "small": (kp.small, {}),
                 "chain": (_chain(60), {}), "unicode": (kp.unicode_names, {}), "overrides": (kp.settings, OVERRIDES),
                 "required": (kp.required_params, {})}
    pipeline, options = pipelines[case]
    backend = KubeflowBackend(options, image="registry.example/ml/mlpipe:1.0")
    p = backend.plan(pipeline.ir, store)
    ours, theirs = tmp_path / "ours.yaml", tmp_path / "kfp.yaml"
    write_spec(p, str(ours))
    compiler.Compiler().compile(build(p), package_path=str(theirs))
    assert_same_as_kfp(ours.read_text(), theirs.read_text())


def assert_same_as_kfp(ours: str, theirs: str) -> None:
    """Byte for byte, but for the order of keys in dict defaults in the header comment.

    kfp renders those from a protobuf map, whose iteration order is not insertion order (nor stable
    between processes); the comment lines are compared as values there.
    """
    import ast

    def split(text: str) -> tuple[list[Any], str]:
        lines = text.splitlines(keepends=True)
        header = [line for line in lines if line.startswith("#")]
        parsed: list[Any] = []
        for line in header:
            if "[Default: {" in line:
                name, _, default = line.partition(" [Default: ")
                parsed.append((name, ast.literal_eval(default.rstrip().removesuffix("]"))))
            else:
                parsed.append(line)
        return parsed, "".join(lines[len(header):])

    assert split(ours) == split(theirs)
    assert ours.encode() == theirs.encode() or "[Default: {" in theirs


def test_spec_with_platform_document_loads_in_kfp(store: ArtifactStore, tmp_path: Path) -> None:
    from kfp import components

    path = tmp_path / "settings.yaml"
    compile_to(kp.settings, path, store, SETTINGS_OPTIONS)
    component = components.load_component_from_file(str(path))
    assert component.name == "resource-settings"
    assert component.platform_spec.platforms["kubernetes"]  # the kfp-kubernetes document survives loading
    assert component.component_spec.inputs["label"].default == "null"


@pytest.mark.parametrize(("cpu", "expected"), [(0.1, "100m"), (0.3, "300m"), (1.5, "1500m"), (2, "2"), (0.001, "1m")])
def test_cpu_quantities(cpu: float, expected: str) -> None:
    from mlpipe_kubeflow.compiler import _cpu

    assert _cpu("s", cpu) == expected


@pytest.mark.parametrize(("memory", "expected"), [("512M", "512M"), ("8Gi", "8Gi"), ("1.5Gi", str(3 * 2**29))])
def test_memory_quantities(memory: str, expected: str) -> None:
    from mlpipe_kubeflow.compiler import _memory

    assert _memory("s", memory) == expected


def test_per_step_overrides_from_the_profile(store: ArtifactStore, tmp_path: Path) -> None:
    options = {**SETTINGS_OPTIONS, "steps": {"fit": {
        "node_selector": {"pool": "gpu"},
        "tolerations": [{"key": "gpu-only", "operator": "Exists"}],
        "env": {"MLPIPE_LOG": "info"},
        "secrets_as_env": {"hf": {"token": "HF_TOKEN"}},
    }}}
    spec, platform = _spec_documents(compile_to(kp.settings, tmp_path / "s.yaml", store, options))
    fit = spec["deploymentSpec"]["executors"]["exec-fit"]["container"]
    assert {e["name"]: e["value"] for e in fit["env"]} == {"TEAM": "ml", "MLPIPE_LOG": "info"}  # the entry wins
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]  # type: ignore[index]
    assert k8s["exec-fit"]["nodeSelector"]["labels"]["pool"] == "gpu"
    assert k8s["exec-prepare"]["nodeSelector"]["labels"]["pool"] == "training"
    assert [t["key"] for t in k8s["exec-fit"]["tolerations"]] == ["nvidia.com/gpu", "gpu-only"]
    assert [t["key"] for t in k8s["exec-report"]["tolerations"]] == ["nvidia.com/gpu"]
    assert sorted(x["secretName"] for x in k8s["exec-fit"]["secretAsEnv"]) == ["hf", "wandb"]
    assert [x["secretName"] for x in k8s["exec-report"]["secretAsEnv"]] == ["wandb"]
