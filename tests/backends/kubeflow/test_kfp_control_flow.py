"""`mp.when` on Kubeflow: condition sub-DAGs equal to what `dsl.If` compiles to, run by kfp.local, recorded skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from mlpipe_kubeflow import KubeflowBackend
from mlpipe_kubeflow.compiler import build, task_specs, write_spec
from resources import kubeflow_pipelines as kp

import mlpipe as mp
from mlpipe.errors import UnsupportedFeatureError
from mlpipe.local import LocalBackend
from mlpipe.runtime import main as runtime_main
from mlpipe.store import ArtifactStore, open_store
from mlpipe.testing import run_on


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return open_store(str(tmp_path / "store"))


def _spec(store: ArtifactStore, tmp_path: Path, pipeline: mp.Pipeline = kp.branches) -> dict[str, Any]:
    path = tmp_path / "spec.yaml"
    backend = KubeflowBackend(image="registry.example/ml/mlpipe:1.0")
    backend.check(pipeline.ir)
    backend.compile(pipeline.ir, str(path), store=store)
    spec: dict[str, Any] = yaml.safe_load(path.read_text())
    return spec


def test_spec_is_byte_for_byte_what_kfp_compiles_for_dsl_if(store: ArtifactStore, tmp_path: Path) -> None:
    from kfp import compiler

    p = KubeflowBackend(image="registry.example/ml/mlpipe:1.0").plan(kp.branches.ir, store)
    ours, theirs = tmp_path / "ours.yaml", tmp_path / "kfp.yaml"
    write_spec(p, str(ours))
    compiler.Compiler().compile(build(p), package_path=str(theirs))  # build() nests dsl.If blocks
    assert ours.read_bytes() == theirs.read_bytes()


def test_blocks_become_condition_sub_dags_over_a_published_test(store: ArtifactStore, tmp_path: Path) -> None:
    from kfp import components

    spec = _spec(store, tmp_path)
    root = spec["root"]["dag"]["tasks"]
    assert sorted(root) == ["condition-1", "condition-4", "condition-5", "score"]
    trigger = {name: root[name]["triggerPolicy"]["condition"] for name in ("condition-1", "condition-4", "condition-5")}
    assert trigger == {  # s > 0.5, its else (the same published result, false), and s >= 0.8 (a second one)
        "condition-1": "inputs.parameter_values['pipelinechannel--score-mlpipe_when_0'] == true",
        "condition-4": "inputs.parameter_values['pipelinechannel--score-mlpipe_when_0'] == false",
        "condition-5": "inputs.parameter_values['pipelinechannel--score-mlpipe_when_1'] == true",
    }
    assert root["condition-1"]["dependentTasks"] == ["score"]
    assert root["condition-1"]["inputs"]["parameters"]["pipelinechannel--score-mlpipe_when_0"] == {
        "taskOutputParameter": {"outputParameterKey": "mlpipe_when_0", "producerTask": "score"}}
    assert root["condition-1"]["inputs"]["parameters"]["pipelinechannel--tag"] == {"componentInputParameter": "tag"}
    outer = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert sorted(outer) == ["condition-2", "condition-3", "is-even", "label"]  # the nested blocks inside it
    assert outer["label"]["inputs"]["parameters"]["tag"] == {"componentInputParameter": "pipelinechannel--tag"}
    assert "dependentTasks" not in outer["label"]  # its upstream `score` is outside: the sub-DAG waits for it
    nested = outer["condition-3"]["triggerPolicy"]["condition"]
    assert nested == "inputs.parameter_values['pipelinechannel--is-even-mlpipe_when_0'] == false"
    assert sorted(spec["components"]["comp-condition-3"]["dag"]["tasks"]) == ["size"]
    outputs = spec["components"]["comp-score"]["outputDefinitions"]["parameters"]
    assert outputs["mlpipe_when_0"] == outputs["mlpipe_when_1"] == {"parameterType": "BOOLEAN"}
    args = spec["deploymentSpec"]["executors"]["exec-score"]["container"]["args"]
    assert args[-6:-2] == ["--when-file", "{{$.outputs.parameters['mlpipe_when_0'].output_file}}",
                           "--when-file", "{{$.outputs.parameters['mlpipe_when_1'].output_file}}"]
    assert args[-2:] == ["--executor-input", "{{$}}"]  # its output as a typed artifact
    assert set(task_specs(spec)) >= {"score", "label", "label-2", "label-3", "size", "one", "is-even"}
    loaded = components.load_component_from_file(str(tmp_path / "spec.yaml"))
    assert loaded.name == "kfp-branches"


def test_a_condition_on_a_step_inside_another_block_is_refused_naming_both(store: ArtifactStore) -> None:
    @mp.pipeline(name="kfp-outside")
    def outside(x: int = 9) -> None:
        s = kp.score(x)
        with mp.when(s > 0.5):
            even = kp.is_even(x)
        with mp.when(even):  # `even` exists only when s > 0.5
            kp.one(x)

    with pytest.raises(UnsupportedFeatureError, match=r"step 'one': its condition is_even.output comes from step "
                                                       r"'is_even', which runs only when score.output > 0.5"):
        KubeflowBackend().check(outside.ir)
    assert run_on(LocalBackend(), outside, store, x=4).steps["one"].status == "skipped"  # local runs it


@pytest.mark.parametrize(("x", "ran", "not_taken"), [
    (9, ["score", "label", "is_even", "size", "one"], {"label_2": "is_even.output", "label_3": "score.output > 0.5"}),
    (4, ["score", "label_3"], {"label": "score.output > 0.5", "is_even": "score.output > 0.5",
                               "label_2": "score.output > 0.5", "size": "score.output > 0.5",
                               "one": "score.output >= 0.8"}),
])
def test_kfp_local_takes_one_branch_and_records_the_other_skipped(
    x: int, ran: list[str], not_taken: dict[str, str], store: ArtifactStore
) -> None:
    run = run_on(KubeflowBackend({"mode": "local"}), kp.branches, store, x=x)
    assert run.status == "succeeded", run.error
    assert sorted(n for n, s in run.steps.items() if s.status == "succeeded") == sorted(ran)
    skipped = {n: s for n, s in run.steps.items() if s.status == "skipped"}
    assert set(skipped) == set(not_taken)
    for name, condition in not_taken.items():
        assert skipped[name].error is not None and condition in skipped[name].error, skipped[name].error
        assert skipped[name].error.startswith("skipped: branch not taken (condition ")
    local = run_on(LocalBackend(), kp.branches, store, x=x)  # same statuses and reasons, all cached
    assert {n: (s.status, s.error) for n, s in local.steps.items()} == {
        n: (s.status, s.error) for n, s in run.steps.items()}
    assert all(s.cached for s in local.steps.values() if s.status == "succeeded")


def test_runtime_refuses_a_spec_with_the_wrong_number_of_test_outputs(store: ArtifactStore, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from mlpipe.records import write_ir

    digest = write_ir(store, kp.branches.ir)
    code = runtime_main(["--store", store.url, "--ir", digest, "--run-id", "20261202-000000-000-abcdef",
                         "--step", "score", "--param", "x=9", "--param", "tag=t",
                         "--when-file", str(tmp_path / "w0")])
    assert code == 2
    assert "1 --when-file given, but the pipeline tests this step's outputs 2 time(s)" in capsys.readouterr().err
    ok = runtime_main(["--store", store.url, "--ir", digest, "--run-id", "20261202-000000-001-abcdef",
                       "--step", "score", "--param", "x=7", "--param", "tag=t",
                       "--when-file", str(tmp_path / "w0"), "--when-file", str(tmp_path / "w1")])
    assert ok == 0
    assert (tmp_path / "w0").read_text() == "true" and (tmp_path / "w1").read_text() == "false"  # 0.7


# -- step.map: ParallelFor over the fan-out task's item list, dsl.Collected fan-in ------------------


@pytest.mark.parametrize("pipeline", [kp.branches, kp.fan], ids=["branches", "fan"])
def test_maps_and_conditions_compile_byte_for_byte_as_kfp_does(pipeline: mp.Pipeline, store: ArtifactStore,
                                                                 tmp_path: Path) -> None:
    from kfp import compiler

    options = {"steps": {"fit_one_2": {"parallelism": 3}}} if pipeline is kp.fan else {}
    p = KubeflowBackend(options, image="registry.example/ml/mlpipe:1.0").plan(pipeline.ir, store)
    ours, theirs = tmp_path / "ours.yaml", tmp_path / "kfp.yaml"
    write_spec(p, str(ours))
    compiler.Compiler().compile(build(p), package_path=str(theirs))  # dsl.ParallelFor, dsl.Collected, dsl.If
    assert ours.read_bytes() == theirs.read_bytes()


def test_a_map_is_a_fan_out_task_a_parallel_for_and_a_collecting_task(store: ArtifactStore, tmp_path: Path) -> None:
    path = tmp_path / "fan.yaml"
    KubeflowBackend({"steps": {"fit_one_2": {"parallelism": 3}}}).compile(kp.fan.ir, str(path), store=store)
    spec = yaml.safe_load(path.read_text())
    root = spec["root"]["dag"]["tasks"]
    assert sorted(root) == ["best", "condition-3", "fit-one", "fit-one-2", "fit-one-2-items", "fit-one-items",
                            "for-loop-1", "for-loop-2", "grid"]
    loop = root["for-loop-1"]
    assert loop["iteratorPolicy"] == {"parallelismLimit": 10}  # map_parallelism, the default
    assert root["for-loop-2"]["iteratorPolicy"] == {"parallelismLimit": 3}  # the step's own entry
    assert loop["parameterIterator"] == {"itemInput": "pipelinechannel--fit-one-items-mlpipe_items-loop-item",
                                         "items": {"inputParameter": "pipelinechannel--fit-one-items-mlpipe_items"}}
    assert loop["dependentTasks"] == ["fit-one-items"]
    item = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["fit-one-item"]
    assert item["inputs"]["parameters"]["mlpipe_item"] == {
        "componentInputParameter": "pipelinechannel--fit-one-items-mlpipe_items-loop-item"}
    assert root["fit-one"]["inputs"]["parameters"]["mlpipe_records"] == {  # dsl.Collected of the iterations
        "taskOutputParameter": {"outputParameterKey": "pipelinechannel--fit-one-item-mlpipe_record",
                                "producerTask": "for-loop-1"}}
    assert root["fit-one"]["dependentTasks"] == ["for-loop-1"]
    assert root["fit-one-2-items"]["dependentTasks"] == ["fit-one"]  # a map over a map waits for its fan-in
    inner = spec["components"]["comp-condition-3"]["dag"]["tasks"]  # a map under mp.when: its loop inside
    assert sorted(inner) == ["for-loop-4", "label", "label-items"]
    args = {n: spec["deploymentSpec"]["executors"][f"exec-{n}"]["container"]["args"]
            for n in ("fit-one-items", "fit-one-item", "fit-one")}
    assert args["fit-one-items"][-2:] == ["--items-file", "{{$.outputs.parameters['mlpipe_items'].output_file}}"]
    assert args["fit-one-item"][-2:] == ["--item", "{{$.inputs.parameters['mlpipe_item']}}"]
    assert "--collect" in args["fit-one"]


def test_kfp_local_runs_each_item_as_its_own_task_cached_per_item(store: ArtifactStore) -> None:
    local_store = open_store(store.url + "-local")
    reference = run_on(LocalBackend(), kp.fan, local_store, n=3)
    run = run_on(KubeflowBackend({"mode": "local"}), kp.fan, store, n=3)
    assert run.status == "succeeded", run.error
    assert run.output("best") == reference.output("best") == 4.0
    assert run.output("fit_one") == reference.output("fit_one") == [0.0, 1.0, 2.0]
    assert list(run.steps) == list(reference.steps)  # items listed after their mapped step, as locally
    assert [run.steps[f"label[{i}]"].status for i in range(3)] == ["succeeded"] * 3  # the map under mp.when
    assert run.steps["fit_one[2]"].key == reference.steps["fit_one[2]"].key  # the local backend's per-item keys
    more = run_on(LocalBackend(), kp.fan, store, n=4)  # then locally, on the store the KFP run filled
    assert [more.steps[f"fit_one[{i}]"].cached for i in range(4)] == [True, True, True, False]
    assert more.output("best") == 6.0


def test_a_failed_item_fails_its_mapped_step_and_skips_what_follows(store: ArtifactStore) -> None:
    run = run_on(KubeflowBackend({"mode": "local"}), kp.fragile, store, xs=[1, -1, 2])
    assert run.status == "failed"
    assert run.steps["needs[1]"].status == "failed" and "negative" in (run.steps["needs[1]"].error or "")
    assert run.steps["needs"].status == "failed"
    assert (run.steps["needs"].error or "").startswith("1 of 3 items failed; needs[1]: ")
    assert run.steps["total"].status == "skipped"


def test_vertex_passes_its_map_parallelism_to_the_loop(store: ArtifactStore) -> None:
    from mlpipe_vertex.compiler import build_spec, vertex_plan
    from mlpipe_vertex.options import VertexOptions

    vplan = vertex_plan(kp.fan.ir, VertexOptions(map_parallelism=3), store=store.url, ir_digest="d" * 64,
                        image="europe-docker.pkg.dev/p/r/i:1")
    spec = build_spec(vplan)
    assert spec["root"]["dag"]["tasks"]["for-loop-1"]["iteratorPolicy"] == {"parallelismLimit": 3}
    item = spec["deploymentSpec"]["executors"]["exec-fit-one-item"]["container"]["args"]
    assert item[item.index("--backend") + 1] == "vertex"  # tasks inside loops are rewritten for Vertex too


def test_a_map_over_an_empty_list_collects_an_empty_list(store: ArtifactStore) -> None:
    from mlpipe.testing import fanned

    run = run_on(KubeflowBackend({"mode": "local"}), fanned, store, n=0)  # a ParallelFor of no iterations
    assert run.status == "succeeded", run.error
    assert run.output("consume") == []
    assert run.output("summarize", "total") == 0.0
    assert not any(name.startswith("consume[") for name in run.steps)


def test_mapped_lists_of_different_lengths_fail_the_fan_out_naming_both(store: ArtifactStore) -> None:
    ok = run_on(KubeflowBackend({"mode": "local"}), kp.zipped, store, n=2, epochs=[1, 2])
    assert ok.status == "succeeded" and ok.output("best") == 0.5
    run = run_on(KubeflowBackend({"mode": "local"}), kp.zipped, store, n=3, epochs=[1, 2])
    assert run.status == "failed"
    assert run.steps["fit_one"].error == (
        "step 'fit_one': mismatched map lengths (lr: 3, epochs: 2); mapped lists are zipped, so they need one length")
    assert run.steps["best"].status == "skipped"
