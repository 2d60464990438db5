"""The graph compiler: from a pipeline trace to the validated IR, and views of it.

Validation that tracing cannot do happens here: duplicate names, edges to
unknown steps, cycles (IR can also be loaded from JSON, so it is checked
again), outputs referenced that a step does not declare. The topological sort
uses the standard library's ``graphlib``; ``networkx`` (0.5 s to import here)
is loaded only for :func:`to_networkx`, which backs ``Pipeline.graph``.
Renderers for Mermaid, DOT and a self-contained HTML page live here too.
"""

from __future__ import annotations

import graphlib
import json
import sys
import typing
from typing import TYPE_CHECKING, Any

from mlpipe._version import __version__
from mlpipe.code import register
from mlpipe.errors import GraphError
from mlpipe.fingerprint import fingerprint
from mlpipe.ir import CodeRef, ConditionSpec, InputSpec, OutputRef, ParamSpec, PipelineIR, StepOutput, StepSpec
from mlpipe.materializers import for_annotation
from mlpipe.trace import OutputHandle, ParamHandle, _Const
from mlpipe.typecheck import to_json_value, type_name

if TYPE_CHECKING:
    from collections.abc import Mapping

    import networkx

    from mlpipe.graphview import StepState
    from mlpipe.trace import Trace

__all__ = ["compile_trace", "param_kind", "render", "to_networkx", "topological_order"]


def param_kind(tp: Any) -> str:
    """The JSON kind of a parameter annotation, used by backends to type parameters."""
    origin = typing.get_origin(tp) or tp
    if origin is bool:
        return "bool"
    if origin is int:
        return "int"
    if origin is float:
        return "float"
    if origin is str or (isinstance(origin, type) and issubclass(origin, str)):  # mp.File is a str
        return "str"
    if origin in (list, tuple, set, frozenset):
        return "list"
    if origin is dict:
        return "dict"
    return "json"


def _code_ref(fn: Any) -> CodeRef:
    module = fn.__module__
    mod = sys.modules.get(module)
    importable = (
        module != "__main__"
        and "<locals>" not in fn.__qualname__
        and fn.__name__ != "<lambda>"
        and mod is not None
        and getattr(mod, "__spec__", None) is not None
    )
    return CodeRef.model_construct(module=module, qualname=fn.__qualname__, importable=importable)


def compile_trace(trace: Trace) -> PipelineIR:
    """Compile a pipeline's trace (its name, parameters and calls) into the validated, frozen IR.

    The values come from mlpipe's own tracing, so the models are built with
    ``model_construct`` (no pydantic validation, which would build schemas
    and cost more than the whole of a small run); :func:`validate_ir` checks
    the graph itself.
    """
    params = tuple(
        ParamSpec.model_construct(
            name=p.name,
            type=type_name(p.annotation),
            kind=param_kind(p.annotation),  # type: ignore[arg-type]
            required=p.required,
            default=None if p.required else _json_default(trace, p.name, p.default),
        )
        for p in trace.params.values()
    )
    steps: list[StepSpec] = []
    for call in trace.calls:
        inputs: list[InputSpec] = []
        upstream: list[str] = []
        for arg, value in call.arguments.items():
            tname = type_name(call.step.input_annotation(arg))
            if isinstance(value, OutputHandle):
                inputs.append(
                    InputSpec.model_construct(name=arg, type=tname, source="step", step=value.step, output=value.output)
                )
                if value.step not in upstream:
                    upstream.append(value.step)
            elif isinstance(value, ParamHandle):
                inputs.append(InputSpec.model_construct(name=arg, type=tname, source="param", param=value.name))
            else:
                assert isinstance(value, _Const)
                inputs.append(
                    InputSpec.model_construct(name=arg, type=tname, source="const", value=_plain(value.value))
                )
        conditions = tuple(
            ConditionSpec.model_construct(
                step=c.source.step, output=c.source.output, path=c.path, op=c.op, value=c.value, negate=c.negate
            )
            for c in call.guard
        )
        for c in conditions:
            if c.step not in upstream:
                upstream.append(c.step)
        outputs = []
        for out in call.step.outputs:
            m = for_annotation(out.annotation)
            outputs.append(
                StepOutput.model_construct(
                    name=out.name, type=type_name(out.annotation), materializer=m.key if m else "auto"
                )
            )
        fp = fingerprint(call.step.fn)
        ref = _code_ref(call.step.fn)
        register(call.step.fn, ref.module, ref.qualname, fp.digest)
        steps.append(
            StepSpec.model_construct(
                name=call.name,
                code=ref,
                fingerprint=fp.digest,
                code_manifest=fp.manifest,
                code_previews=fp.previews,
                inputs=tuple(inputs),
                outputs=tuple(outputs),
                upstream=tuple(upstream),
                retries=call.step.retries,
                timeout=call.step.timeout,
                resources=call.step.resources.to_dict(),
                cache=call.step.cache_option if call.step.cache_option is not None else not _external(fp.manifest),
                version=call.step.version,
                image=call.step.image,
                env=call.step.env,
                namedtuple=call.step.namedtuple_type is not None,
                gate=call.step.gate,
                when=conditions,
                map_over=call.map_over,
            )
        )
    ir = PipelineIR.model_construct(
        name=trace.pipeline,
        params=params,
        steps=tuple(steps),
        outputs=_pipeline_outputs(trace.result),
        mlpipe_version=__version__,
    )
    validate_ir(ir)
    return ir


def _external(manifest: dict[str, str]) -> bool:
    """Whether the code reaches a function marked as acting on an external system (``external ...``)."""
    return any(label.startswith("external ") for label in manifest)


def _json_default(trace: Trace, name: str, value: Any) -> Any:
    plain = _plain(value)
    try:
        json.dumps(plain)
    except (TypeError, ValueError):
        try:  # a Path or a date default travels as its text, like the value given to run()
            plain = to_json_value(trace.params[name].annotation, value)
            json.dumps(plain)
            return plain
        except (TypeError, ValueError):
            pass
        raise GraphError(
            f"pipeline {trace.pipeline!r}, parameter {name!r}: its default {value!r} is not a JSON value; "
            "pipeline parameters must be JSON values (numbers, strings, booleans, lists, dicts)",
            pipeline=trace.pipeline,
            argument=name,
        ) from None
    return plain


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _pipeline_outputs(result: Any) -> tuple[OutputRef, ...]:
    if result is None:
        return ()
    if isinstance(result, dict):  # ``return {"model": model, "metrics": metrics}``
        items: tuple[Any, ...] = tuple(result.values())
    else:
        items = tuple(result) if isinstance(result, (tuple, list)) else (result,)
    refs = []
    for item in items:
        if isinstance(item, OutputHandle):
            refs.append(OutputRef.model_construct(step=item.step, output=item.output))
    return tuple(refs)


def topological_order(ir: PipelineIR) -> list[str]:
    """Step names in an order where every step follows its upstream steps.

    Raises:
        GraphError: naming the steps on a cycle.
    """
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for spec in ir.steps:
        sorter.add(spec.name, *spec.upstream)
    try:
        return list(sorter.static_order())
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise GraphError(f"pipeline {ir.name!r} has a cycle: {cycle}", pipeline=ir.name) from None


def validate_ir(ir: PipelineIR) -> None:
    """Check names, edges and declared outputs; raise GraphError naming what is wrong."""
    names: dict[str, StepSpec] = {}
    for spec in ir.steps:
        if spec.name in names:
            raise GraphError(f"pipeline {ir.name!r}: two steps are named {spec.name!r}", pipeline=ir.name)
        names[spec.name] = spec
    params = {p.name for p in ir.params}
    for spec in ir.steps:
        for inp in spec.inputs:
            if inp.source == "param" and inp.param not in params:
                raise GraphError(
                    f"pipeline {ir.name!r}, step {spec.name!r}: argument {inp.name!r} uses unknown parameter "
                    f"{inp.param!r}",
                    pipeline=ir.name,
                    step=spec.name,
                )
            if inp.source == "step":
                producer = names.get(inp.step or "")
                if producer is None:
                    raise GraphError(
                        f"pipeline {ir.name!r}, step {spec.name!r}: argument {inp.name!r} comes from unknown "
                        f"step {inp.step!r}",
                        pipeline=ir.name,
                        step=spec.name,
                    )
                if inp.output not in {o.name for o in producer.outputs}:
                    raise GraphError(
                        f"pipeline {ir.name!r}, step {spec.name!r}: step {inp.step!r} has no output {inp.output!r}",
                        pipeline=ir.name,
                        step=spec.name,
                    )
    topological_order(ir)


def to_networkx(ir: PipelineIR) -> networkx.DiGraph:
    """A ``networkx.DiGraph``: one node per step call (with its spec), one edge per producer/consumer pair.

    Edge attributes ``outputs`` and ``inputs`` are parallel lists: the producer's
    output feeding each consumer argument.
    """
    import networkx as nx

    graph = nx.DiGraph(name=ir.name)
    for spec in ir.steps:
        graph.add_node(spec.name, spec=spec, outputs=[o.name for o in spec.outputs])
    for spec in ir.steps:
        for inp in spec.inputs:
            if inp.source == "step":
                assert inp.step is not None
                if graph.has_edge(inp.step, spec.name):
                    edge = graph.edges[inp.step, spec.name]
                    edge["outputs"].append(inp.output)
                    edge["inputs"].append(inp.name)
                else:
                    graph.add_edge(inp.step, spec.name, outputs=[inp.output], inputs=[inp.name])
    return graph


def _edges(ir: PipelineIR) -> list[tuple[str, str, str]]:
    edges = []
    for spec in ir.steps:
        for inp in spec.inputs:
            if inp.source == "step":
                assert inp.step is not None
                label = inp.name if inp.output == "output" else f"{inp.output} → {inp.name}"
                edges.append((inp.step, spec.name, label))
    return edges


def render(ir: PipelineIR, fmt: str = "mermaid", *, states: Mapping[str, StepState] | None = None) -> str:
    """The graph as Mermaid, Graphviz DOT, or a self-contained HTML page (inline SVG, no scripts).

    Args:
        ir: The compiled pipeline.
        fmt: ``mermaid``, ``dot`` or ``html``.
        states: A run's state of each step (:class:`mlpipe.graphview.StepState`): boxes are
            coloured by status and cache hit.
    """
    from mlpipe.graphview import STATUS_STYLES, box_note, condition_edges, html_page

    def colour(name: str) -> tuple[str, str] | None:
        state = (states or {}).get(name)
        if state is None:
            return None
        fill, stroke, _text = STATUS_STYLES.get(state.style, STATUS_STYLES["pending"])
        return fill, stroke

    def label(spec: StepSpec) -> str:
        note = box_note(spec, states)
        return spec.name if note is None else f"{spec.name} · {note}"

    if fmt == "mermaid":
        lines = ["flowchart TD"]
        for spec in ir.steps:
            lines.append(f'    {spec.name}["{label(spec)}"]')
        for src, dst, text in _edges(ir):
            lines.append(f"    {src} -->|{text}| {dst}")
        for src, dst, text in condition_edges(ir):  # dashed: the step runs only when the test holds
            lines.append(f'    {src} -.->|"{text}"| {dst}')
        for spec in ir.steps:
            c = colour(spec.name)
            if c:
                lines.append(f"    style {spec.name} fill:{c[0]},stroke:{c[1]}")
        return "\n".join(lines) + "\n"
    if fmt == "dot":
        lines = [f'digraph "{ir.name}" {{', "    rankdir=TB;", "    node [shape=box, style=rounded];"]
        for spec in ir.steps:
            c = colour(spec.name)
            style = f' [style="rounded,filled", fillcolor="{c[0]}", color="{c[1]}"]' if c else ""
            note = box_note(spec, states)
            text = "" if note is None else f'label="{label(spec)}"'
            if style and text:
                style = style[:-1] + f", {text}]"
            elif text:
                style = f" [{text}]"
            lines.append(f'    "{spec.name}"{style};')
        for src, dst, text in _edges(ir):
            lines.append(f'    "{src}" -> "{dst}" [label="{text}"];')
        for src, dst, text in condition_edges(ir):
            lines.append(f'    "{src}" -> "{dst}" [label="{text}", style=dashed];')
        lines.append("}")
        return "\n".join(lines) + "\n"
    if fmt == "html":
        return html_page(ir, states)
    raise GraphError(f"unknown graph format {fmt!r}; use mermaid, dot or html")
