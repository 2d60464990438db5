"""mlpipe.graph and mlpipe.ir: compiling traces, validation, topological order, networkx and renderers."""

from __future__ import annotations

import json

import networkx as nx
import pytest
from resources import pipelines as res

import mlpipe as mp
from mlpipe.errors import GraphError
from mlpipe.graph import param_kind, render, to_networkx, topological_order, validate_ir
from mlpipe.ir import InputSpec, PipelineIR


def test_ir_round_trips_through_json() -> None:
    ir = res.arithmetic.ir
    again = PipelineIR.model_validate_json(ir.model_dump_json())
    assert again == ir
    assert json.loads(ir.model_dump_json())["name"] == "arithmetic"


def test_ir_of_the_example_shape() -> None:
    ir = res.arithmetic.ir
    assert [s.name for s in ir.steps] == ["numbers", "split", "halves", "add", "total", "add_2"]
    assert ir.step("add").upstream == ("halves",)
    assert ir.step("add_2").upstream == ("add", "total")
    assert ir.step("halves").input("values").output == "train"
    assert ir.step("total").input("values").output == "test"
    assert [o.name for o in ir.step("split").outputs] == ["train", "test"]
    assert ir.step("split").namedtuple is True
    assert ir.downstream()["split"] == ["halves", "total"]
    assert ir.param("n").default == 4
    assert all(len(s.fingerprint) == 64 for s in ir.steps)
    assert "function resources.pipelines.numbers" in ir.step("numbers").code_manifest
    assert ir.step("numbers").code.importable is True


def test_step_options_reach_the_ir() -> None:
    @mp.step(retries=2, timeout="1m", resources=mp.Resources(cpu=2, memory="1Gi"), cache=False, version="7",
             image="img:1", env={"K": "V"})
    def configured(x: int) -> int:
        return x

    @mp.pipeline
    def options() -> int:
        return configured(3)

    spec = options.ir.step("configured")
    assert (spec.retries, spec.timeout, spec.cache, spec.version, spec.image) == (2, 60.0, False, "7", "img:1")
    assert spec.resources == {"cpu": 2, "memory": "1Gi"}
    assert spec.env == {"K": "V"}
    assert spec.input("x").source == "const" and spec.input("x").value == 3
    assert spec.code.importable is False  # defined inside a function


def test_topological_order_and_networkx_graph() -> None:
    ir = res.fanout.ir
    order = topological_order(ir)
    assert order[0] == "source" and order[-1] == "gather"
    graph = res.fanout.graph
    assert isinstance(graph, nx.DiGraph)
    assert set(graph.successors("source")) == {"sleepy", *(f"sleepy_{i}" for i in range(2, 9))}
    assert list(nx.topological_sort(graph))[-1] == "gather"
    assert graph.edges["sleepy_3", "gather"]["inputs"] == ["c"]
    assert graph.nodes["gather"]["spec"] == ir.step("gather")
    assert to_networkx(ir).number_of_edges() == 16


def _cyclic() -> PipelineIR:
    ir = res.arithmetic.ir
    steps = list(ir.steps)
    numbers = steps[0]
    looped = numbers.model_copy(update={
        "inputs": (InputSpec(name="n", type="int", source="step", step="add_2", output="output"),),
        "upstream": ("add_2",),
    })
    return ir.model_copy(update={"steps": (looped, *steps[1:])})


def test_cycles_in_an_ir_are_reported() -> None:
    with pytest.raises(GraphError, match=r"pipeline 'arithmetic' has a cycle: .*numbers"):
        validate_ir(_cyclic())


def test_validate_ir_catches_bad_edges() -> None:
    ir = res.arithmetic.ir
    steps = list(ir.steps)
    bad_output = steps[2].model_copy(update={
        "inputs": (InputSpec(name="values", type="list[int]", source="step", step="split", output="valid"),)})
    with pytest.raises(GraphError, match="step 'split' has no output 'valid'"):
        validate_ir(ir.model_copy(update={"steps": (steps[0], steps[1], bad_output, *steps[3:])}))
    unknown = steps[2].model_copy(update={
        "inputs": (InputSpec(name="values", type="list[int]", source="step", step="ghost", output="output"),)})
    with pytest.raises(GraphError, match="comes from unknown step 'ghost'"):
        validate_ir(ir.model_copy(update={"steps": (steps[0], steps[1], unknown, *steps[3:])}))
    duplicate = ir.model_copy(update={"steps": (steps[0], steps[0])})
    with pytest.raises(GraphError, match="two steps are named 'numbers'"):
        validate_ir(duplicate)
    bad_param = steps[0].model_copy(update={
        "inputs": (InputSpec(name="n", type="int", source="param", param="m"),)})
    with pytest.raises(GraphError, match="uses unknown parameter 'm'"):
        validate_ir(ir.model_copy(update={"steps": (bad_param, *steps[1:])}))


def test_ir_rejects_unknown_fields() -> None:
    import pydantic

    data = json.loads(res.arithmetic.ir.model_dump_json())
    data["colour"] = "red"
    with pytest.raises(pydantic.ValidationError):
        PipelineIR.model_validate(data)


@pytest.mark.parametrize(
    ("annotation", "kind"),
    [(int, "int"), (float, "float"), (str, "str"), (bool, "bool"), (list[int], "list"), (tuple[int, str], "list"),
     (dict[str, int], "dict"), (int | None, "json"), (object, "json")],
)
def test_param_kind(annotation: object, kind: str) -> None:
    assert param_kind(annotation) == kind


def test_render_mermaid_and_dot() -> None:
    ir = res.arithmetic.ir
    mermaid = render(ir, "mermaid")
    assert mermaid.splitlines()[0] == "flowchart TD"
    assert "    split -->|train → values| halves" in mermaid
    assert "    halves -->|output_0 → a| add" in mermaid
    dot = render(ir, "dot")
    assert dot.startswith('digraph "arithmetic" {') and dot.rstrip().endswith("}")
    assert '"split" -> "total" [label="test → values"];' in dot


def test_render_html_is_self_contained() -> None:
    page = render(res.fanout.ir, "html")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('<g class="step"') == 10
    assert page.count('<path class="edge"') == 16
    assert "<script" not in page
    assert "http" not in page and "//" not in page


def test_render_escapes_names() -> None:
    @mp.pipeline(name="a-b")
    def odd() -> None:
        res.numbers(1)

    assert "<title>a-b</title>" in render(odd.ir, "html")


def test_render_unknown_format() -> None:
    with pytest.raises(GraphError, match="unknown graph format 'png'"):
        render(res.arithmetic.ir, "png")


def test_pipeline_outputs_from_tuples_lists_and_dicts() -> None:
    @mp.pipeline
    def as_dict() -> dict[str, object]:
        values = res.numbers(3)
        return {"total": res.total(values), "values": values}

    @mp.pipeline
    def as_list() -> list[object]:
        values = res.numbers(3)
        return [values, res.total(values)]

    assert [(o.step, o.output) for o in as_dict.ir.outputs] == [("total", "output"), ("numbers", "output")]
    assert [(o.step, o.output) for o in as_list.ir.outputs] == [("numbers", "output"), ("total", "output")]
    assert [(o.step, o.output) for o in res.arithmetic.ir.outputs] == [("add_2", "output")]


def test_steps_that_act_on_the_model_registry_are_not_cached_unless_declared() -> None:
    from mlpipe.integrations import mlflow as mpm
    from mlpipe.integrations.mlflow import register_model

    @mp.step
    def via_module(x: int) -> int:
        return x if mpm.promote is None else x + 1

    @mp.step
    def via_name(x: int) -> int:
        return x if register_model is None else x + 1

    @mp.step(cache=True)
    def opted_in(x: int) -> int:
        return x if register_model is None else x + 1

    @mp.step
    def plain(x: int) -> int:
        return x + 1

    @mp.pipeline
    def registry_steps(x: int = 1) -> None:
        via_module(x)
        via_name(x)
        opted_in(x)
        plain(x)

    ir = registry_steps.ir
    assert {s.name: s.cache for s in ir.steps} == {
        "via_module": False, "via_name": False, "opted_in": True, "plain": True
    }
    assert "external mlpipe.integrations.mlflow.promote" in ir.step("via_module").code_manifest
    assert "external mlpipe.integrations.mlflow.register_model" in ir.step("via_name").code_manifest
    assert not any(label.startswith("external") for label in ir.step("plain").code_manifest)


def test_graph_marks_maps_and_conditions_and_a_run_counts_items() -> None:
    import mlpipe as mp
    from mlpipe.graphview import StepState, html_page

    @mp.step
    def values(n: int) -> list[float]:
        return [float(i) for i in range(n)]

    @mp.step
    def twice(x: float) -> float:
        return 2 * x

    @mp.step
    def top(xs: list[float]) -> float:
        return max(xs)

    @mp.step
    def keep(x: float) -> float:
        return x

    @mp.pipeline(name="marked")
    def marked(n: int = 3) -> None:
        best = top(twice.map(x=values(n)))
        with mp.when(best > 2.0):
            keep(keep.with_options(name="first")(best))

    mermaid = render(marked.ir, "mermaid")
    assert '    twice["twice · map over x"]' in mermaid
    assert '    first["first · when top.output > 2.0"]' in mermaid
    assert '    top -.->|"when top.output > 2.0"| first' in mermaid
    assert "-.->|\"when top.output > 2.0\"| keep" not in mermaid  # inherited through `first`, not drawn twice
    dot = render(marked.ir, "dot")
    assert '"top" -> "first" [label="when top.output > 2.0", style=dashed];' in dot
    states = {name: StepState("succeeded") for name in ("values", "twice", "twice[0]", "twice[1]", "top")}
    assert 'twice["twice · map over x: 2 items"]' in render(marked.ir, "mermaid", states=states)
    page = html_page(marked.ir, states)
    assert "map over x: 2 items" in page and 'stroke-dasharray="5,3"' in page
