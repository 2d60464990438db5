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
import html
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
    import networkx

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


def render(ir: PipelineIR, fmt: str = "mermaid") -> str:
    """The graph as Mermaid, Graphviz DOT, or a self-contained HTML page (inline SVG, no scripts)."""
    if fmt == "mermaid":
        lines = ["flowchart TD"]
        for spec in ir.steps:
            lines.append(f'    {spec.name}["{spec.name}"]')
        for src, dst, label in _edges(ir):
            lines.append(f"    {src} -->|{label}| {dst}")
        return "\n".join(lines) + "\n"
    if fmt == "dot":
        lines = [f'digraph "{ir.name}" {{', "    rankdir=TB;", "    node [shape=box, style=rounded];"]
        for spec in ir.steps:
            lines.append(f'    "{spec.name}";')
        for src, dst, label in _edges(ir):
            lines.append(f'    "{src}" -> "{dst}" [label="{label}"];')
        lines.append("}")
        return "\n".join(lines) + "\n"
    if fmt == "html":
        return _html(ir)
    raise GraphError(f"unknown graph format {fmt!r}; use mermaid, dot or html")


def _layers(ir: PipelineIR) -> dict[str, int]:
    depth: dict[str, int] = {}
    by_name = {s.name: s for s in ir.steps}
    for name in topological_order(ir):
        depth[name] = 1 + max((depth[u] for u in by_name[name].upstream), default=-1)
    return depth


def _html(ir: PipelineIR) -> str:
    depth = _layers(ir)
    rows: dict[int, list[str]] = {}
    for name, d in depth.items():
        rows.setdefault(d, []).append(name)
    box_w, box_h, gap_x, gap_y = 180, 44, 40, 70
    width = max((len(r) for r in rows.values()), default=1) * (box_w + gap_x) + gap_x
    height = len(rows) * (box_h + gap_y) + gap_y
    pos: dict[str, tuple[int, int]] = {}
    for d, names in rows.items():
        row_w = len(names) * (box_w + gap_x) - gap_x
        x0 = (width - row_w) // 2
        for i, name in enumerate(names):
            pos[name] = (x0 + i * (box_w + gap_x), gap_y // 2 + d * (box_h + gap_y))
    parts = []
    for src, dst, label in _edges(ir):
        x1, y1 = pos[src][0] + box_w // 2, pos[src][1] + box_h
        x2, y2 = pos[dst][0] + box_w // 2, pos[dst][1]
        parts.append(
            f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#667" marker-end="url(#arrow)"/>'
            f'<text x="{(x1 + x2) // 2 + 4}" y="{(y1 + y2) // 2}" font-size="11" '
            f'fill="#556">{html.escape(label)}</text>'
        )
    for name, (x, y) in pos.items():
        spec = ir.step(name)
        tip = html.escape(
            f"{spec.code.module}.{spec.code.qualname} — outputs: {', '.join(o.name for o in spec.outputs)}"
        )
        parts.append(
            f'<g><title>{tip}</title><rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="8" '
            f'fill="#eef3fb" stroke="#3b5b92"/><text x="{x + box_w // 2}" y="{y + box_h // 2 + 5}" '
            f'text-anchor="middle" font-size="14">{html.escape(name)}</text></g>'
        )
    # Inline SVG in HTML needs no xmlns (the HTML parser assigns it), so the page holds no URL at all.
    svg = (
        f'<svg width="{width}" height="{height}" '
        f'font-family="sans-serif"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" '
        f'markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#667"/></marker>'
        f"</defs>{''.join(parts)}</svg>"
    )
    title = html.escape(ir.name)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>'
        f'<body style="font-family:sans-serif"><h1>{title}</h1>{svg}</body></html>\n'
    )
