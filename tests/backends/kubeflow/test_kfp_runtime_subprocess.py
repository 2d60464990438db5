"""The compiled spec's tasks, run as a KFP cluster would run them: ``python -m mlpipe.runtime`` in a subprocess.

No cluster here, so the test plays the KFP launcher: it takes each task's
command and arguments from the compiled YAML, fills in the placeholders the
way the launcher does (``backend/src/v2/component/launcher_v2.go``: numbers
via ``FormatFloat(v, 'f', -1, 64)``, booleans as ``true``/``false``, lists and
dicts as compact JSON of protobuf values, so every number inside them is a
float), and runs the tasks one by one in topological order in a fresh
process with only ``PYTHONPATH`` pointing at the code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlpipe_kubeflow import KubeflowBackend

import mlpipe as mp
from mlpipe.local import LocalBackend
from mlpipe.run import Run
from mlpipe.store import ArtifactStore, open_store
from mlpipe.testing import basic, failing, run_on

ROOT = Path(__file__).resolve().parents[3]


def launcher_text(value: Any) -> str:
    """How KFP's launcher renders an input parameter into a container argument."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(float(value))
    if isinstance(value, str):
        return value
    return json.dumps(_as_struct(value), separators=(",", ":"))


def _number(v: float) -> str:
    return str(int(v)) if v.is_integer() else repr(v)


def _as_struct(value: Any) -> Any:
    """A value after a round trip through protobuf Struct: every number a float (Go prints 1.0 as 1)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return int(value) if float(value).is_integer() else float(value)
    if isinstance(value, list | tuple):
        return [_as_struct(v) for v in value]
    return {k: _as_struct(v) for k, v in sorted(value.items())}


def resolve_arg(arg: Any, inputs: dict[str, Any], output_file: str, executor_input: str = "") -> str:
    if arg == "{{$}}":
        return executor_input
    if isinstance(arg, dict) or (isinstance(arg, str) and arg.startswith('{"Concat"')):
        parts = json.loads(arg)["Concat"] if isinstance(arg, str) else arg["Concat"]
        return "".join(resolve_arg(p, inputs, output_file, executor_input) for p in parts)
    if arg.startswith("{{$.inputs.parameters['"):
        return launcher_text(inputs[arg[len("{{$.inputs.parameters['"):-len("']}}")]])
    if arg.startswith("{{$.outputs.parameters['"):
        return output_file
    return str(arg)


def run_like_kfp(spec_path: Path, arguments: dict[str, Any], work: Path, *, kfp_2_5: bool = True,
                 stderr: dict[str, str] | None = None) -> tuple[str, dict[str, int]]:
    """Run every task of the spec as its container would; returns the KFP job id and each task's exit code.

    ``kfp_2_5=False`` plays a server older than 2.5, whose driver passes ``{{$.pipeline_job_uuid}}`` on as text.
    """
    spec = next(yaml.safe_load_all(spec_path.read_text()))
    job_id = str(uuid.uuid4())
    params = {name: d.get("defaultValue") for name, d in spec["root"]["inputDefinitions"]["parameters"].items()}
    params.update(arguments)
    tasks = spec["root"]["dag"]["tasks"]
    done: dict[str, int] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPIPE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    while len(done) < len(tasks):
        ready = [n for n, t in tasks.items() if n not in done and all(d in done for d in t.get("dependentTasks", []))]
        for name in sorted(ready):
            task = tasks[name]
            if any(done[d] != 0 for d in task.get("dependentTasks", [])):
                done[name] = -1  # KFP does not start a task whose upstream failed
                continue
            inputs: dict[str, Any] = {}
            for key, source in task["inputs"]["parameters"].items():
                if "componentInputParameter" in source:
                    inputs[key] = params[source["componentInputParameter"]]
                else:
                    constant = source["runtimeValue"]["constant"]
                    inputs[key] = constant.replace("{{$.pipeline_job_uuid}}", job_id) if kfp_2_5 else constant
            executor = spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]
            out_file = str(work / name / "mlpipe_record")
            component = spec["components"][task["componentRef"]["name"]]
            # The ExecutorInput the launcher passes for {{$}}: outputs get URIs under the run's root.
            declared = component["outputDefinitions"].get("artifacts", {})
            executor_input = json.dumps({
                "inputs": {"parameterValues": inputs},
                "outputs": {
                    "artifacts": {o: {"artifacts": [{"name": "", "type": d["artifactType"],
                                                     "uri": f"minio://root/{name}/{o}"}]} for o, d in declared.items()},
                    "parameters": {"mlpipe_record": {"outputFile": out_file}},
                    "outputFile": str(work / name / "executor_output.json"),
                },
            })
            argv = [resolve_arg(a, inputs, out_file, executor_input) for a in executor["args"]]
            command = [sys.executable if c == "python" else c for c in executor["command"]]
            proc = subprocess.run([*command, *argv], cwd=work, env=env, capture_output=True, text=True, timeout=120,
                                  check=False)
            done[name] = proc.returncode
            if stderr is not None:
                stderr[name] = proc.stderr
            if proc.returncode == 0:
                record = json.loads(Path(out_file).read_text())
                assert record["status"] == "succeeded"
    return job_id, done


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return open_store(str(tmp_path / "store"))


def test_tasks_run_as_containers_give_the_local_results(store: ArtifactStore, tmp_path: Path) -> None:
    params = {"n": 4, "scale": 0.5, "label": "x y", "options": {"a": 1, "nested": [1, 2.5]}, "flags": [3, 4]}
    backend = KubeflowBackend(image="python:3.11-slim")
    plan = backend.plan(basic.ir, store)
    spec = tmp_path / "basic.yaml"
    from mlpipe_kubeflow.compiler import write_spec

    write_spec(plan, str(spec))
    job_id, codes = run_like_kfp(spec, plan.arguments(basic.validate_params(params)), tmp_path)
    assert codes == {"make-numbers": 0, "summarize": 0, "describe": 0}
    run = Run.load(store, job_id)  # the tasks recorded themselves under the KFP job id
    reference = run_on(LocalBackend(), basic, open_store(str(tmp_path / "ref")), **params)
    assert run.output("describe") == reference.output("describe")
    assert run.output("describe")["flags"] == [3, 4]  # ints again, though KFP carried them as floats
    assert run.backend == "kubeflow"
    assert run.params["label"] == "x y"
    # Each task declared its output to the launcher: the store's object, not a copy under the run's root.
    written = json.loads((tmp_path / "describe" / "executor_output.json").read_text())
    digest = run.steps["describe"].outputs["output"].digest
    assert written["artifacts"]["output"]["artifacts"][0]["uri"] == f"{store.url}/objects/{digest[:2]}/{digest}"


def test_submitted_run_id_names_the_record_folder_on_any_kfp(store: ArtifactStore, tmp_path: Path) -> None:
    """mlpipe submit passes its run id as the run parameter mlpipe_run_id: no placeholder needs resolving."""
    from mlpipe_kubeflow.compiler import write_spec

    plan = KubeflowBackend(image="python:3.11-slim").plan(basic.ir, store)
    write_spec(plan, str(tmp_path / "basic.yaml"))
    arguments = plan.arguments(basic.validate_params({"n": 2}), "20261202-run-a")
    assert arguments["mlpipe_run_id"] == "20261202-run-a"
    _, codes = run_like_kfp(tmp_path / "basic.yaml", arguments, tmp_path, kfp_2_5=False)
    assert set(codes.values()) == {0}
    assert {s.status for s in Run.load(store, "20261202-run-a").steps.values()} == {"succeeded"}
    assert store.listdir("runs") == ["20261202-run-a"]  # nothing under the KFP job id, nothing under a placeholder
    # a second run of the same spec gets its own folder and its own retry counters
    _, codes = run_like_kfp(tmp_path / "basic.yaml", plan.arguments({"n": 2}, "20261202-run-b"), tmp_path,
                            kfp_2_5=False)
    assert set(codes.values()) == {0}
    assert store.listdir("runs") == ["20261202-run-a", "20261202-run-b"]


def test_ui_run_on_kfp_older_than_2_5_is_refused_clearly(store: ArtifactStore, tmp_path: Path) -> None:
    """Started from the UI (no mlpipe_run_id) on a server that copies the placeholder: one clear line, exit 2."""
    from mlpipe_kubeflow.compiler import write_spec

    write_spec(KubeflowBackend(image="python:3.11-slim").plan(basic.ir, store), str(tmp_path / "basic.yaml"))
    errors: dict[str, str] = {}
    _, codes = run_like_kfp(tmp_path / "basic.yaml", {"n": 2}, tmp_path, kfp_2_5=False, stderr=errors)
    assert codes["make-numbers"] == 2 and codes["summarize"] == -1
    assert "did not resolve its run id placeholder" in errors["make-numbers"]
    assert "mlpipe submit" in errors["make-numbers"] and "Traceback" not in errors["make-numbers"]
    assert store.listdir("runs") == []


def test_task_shares_the_cache_with_the_local_backend(store: ArtifactStore, tmp_path: Path) -> None:
    run_on(LocalBackend(), basic, store, n=3)
    backend = KubeflowBackend(image="python:3.11-slim")
    from mlpipe_kubeflow.compiler import write_spec

    plan = backend.plan(basic.ir, store)
    write_spec(plan, str(tmp_path / "basic.yaml"))
    job_id, _ = run_like_kfp(tmp_path / "basic.yaml", {"n": 3}, tmp_path)
    assert all(s.cached for s in Run.load(store, job_id).steps.values())


def test_failed_task_exits_1_and_downstream_is_not_started(store: ArtifactStore, tmp_path: Path) -> None:
    backend = KubeflowBackend(image="python:3.11-slim")
    from mlpipe_kubeflow.compiler import write_spec

    write_spec(backend.plan(failing.ir, store), str(tmp_path / "f.yaml"))
    job_id, codes = run_like_kfp(tmp_path / "f.yaml", {"fail": True}, tmp_path)
    assert codes["explode"] == 1 and codes["consume"] == -1 and codes["make-numbers"] == 0
    assert "planted failure" in (Run.load(store, job_id).steps["explode"].error or "")


def test_non_importable_step_travels_pickled(store: ArtifactStore, tmp_path: Path) -> None:
    def make() -> mp.Pipeline:
        @mp.step
        def shout(word: str) -> str:
            return word.upper() + "!"

        @mp.pipeline(name="closure")
        def closure(word: str = "hi") -> str:
            return shout(word)

        return closure

    pipeline = make()
    assert not pipeline.ir.steps[0].code.importable
    from mlpipe_kubeflow.compiler import write_spec

    write_spec(KubeflowBackend(image="python:3.11-slim").plan(pipeline.ir, store), str(tmp_path / "c.yaml"))
    job_id, codes = run_like_kfp(tmp_path / "c.yaml", {"word": "hey"}, tmp_path)
    assert codes == {"shout": 0}
    assert Run.load(store, job_id).output("shout") == "HEY!"


def test_runtime_refuses_a_wrong_invocation(store: ArtifactStore, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mlpipe.runtime", "--store", store.url, "--ir", "0" * 64,
                           "--run-id", "r", "--step", "x"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 2
    assert "is not in the store" in proc.stderr


def test_pickled_code_from_another_python_fails_clearly(store: ArtifactStore, tmp_path: Path) -> None:
    from mlpipe.code import ship
    from mlpipe.runtime import write_ir

    def make() -> mp.Pipeline:
        @mp.step
        def shout(word: str) -> str:
            return word.upper()

        @mp.pipeline(name="closure-old-python")
        def closure(word: str = "hi") -> str:
            return shout(word)

        return closure

    shipped = ship(make().ir, store)
    step = shipped.steps[0]
    old = shipped.model_copy(update={"steps": (step.model_copy(update={
        "code": step.code.model_copy(update={"python": "3.6"})}),)})
    digest = write_ir(store, old)
    proc = subprocess.run([sys.executable, "-m", "mlpipe.runtime", "--store", store.url, "--ir", digest,
                           "--run-id", "r-old", "--step", "shout"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "pickled by Python 3.6" in proc.stderr and "Build the image on Python 3.6" in proc.stderr
