"""The pipeline graph as SVG and HTML: a layered layout, edge labels that do not collide, run status colours.

Boxes and edge routes come from :mod:`mlpipe.layout`. Edges are cubic curves
with vertical tangents between layers (so they stay in the gap between two
layers) and straight lines down the slot a long edge reserves in each layer
it crosses, so no edge runs through a box. Each edge's label is placed at the
first of several spots along its curve where it overlaps no box and no other
label; an edge with no free spot keeps its label as a tooltip only.

With a run's step records, boxes are coloured by status (ran, cache hit,
failed, skipped, cancelled) and show the duration. The page is self-contained:
no script, stylesheet, font or URL.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlpipe.ir import PipelineIR, StepSpec
from mlpipe.layout import Box, Drawing, layout

__all__ = ["STATUS_STYLES", "StepState", "box_note", "condition_edges", "html_page", "legend", "svg"]

_FONT = 13
_LABEL_FONT = 11
_CHAR = 7.4  # average advance of a 13 px sans-serif character
_LABEL_CHAR = 6.3


@dataclass(frozen=True)
class StepState:
    """What a run says about one step, for colouring its box."""

    status: str
    cached: bool = False
    duration: float | None = None
    attempts: int = 1

    @property
    def style(self) -> str:
        return "cached" if self.status == "succeeded" and self.cached else self.status

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> StepState:
        return cls(
            status=str(record.get("status") or "pending"),
            cached=bool(record.get("cached")),
            duration=record.get("duration"),
            attempts=int(record.get("attempts") or 1),
        )


#: style -> (fill, stroke, legend text)
STATUS_STYLES: dict[str, tuple[str, str, str]] = {
    "succeeded": ("#dafbe1", "#1a7f37", "ran"),
    "cached": ("#ddf4ff", "#0969da", "cache hit"),
    "failed": ("#ffebe9", "#cf222e", "failed"),
    "skipped": ("#f6f8fa", "#8c959f", "skipped"),
    "cancelled": ("#fff8c5", "#9a6700", "cancelled"),
    "running": ("#fff8c5", "#bf8700", "running"),
    "pending": ("#ffffff", "#8c959f", "not run"),
}
_PLAIN = ("#eef3fb", "#3b5b92")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _order(ir: PipelineIR) -> list[str]:
    """A topological order, stable in the IR's step order (the IR was validated acyclic)."""
    import graphlib

    sorter = graphlib.TopologicalSorter({s.name: list(s.upstream) for s in ir.steps})
    rank = {s.name: i for i, s in enumerate(ir.steps)}
    sorter.prepare()
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=rank.__getitem__)
        order.extend(ready)
        sorter.done(*ready)
    return order


def _edge_labels(ir: PipelineIR) -> dict[tuple[str, str], str]:
    labels: dict[tuple[str, str], list[str]] = {}
    for spec in ir.steps:
        for inp in spec.inputs:
            if inp.source == "step" and inp.step is not None:
                text = inp.name if inp.output == "output" else f"{inp.output} → {inp.name}"
                labels.setdefault((inp.step, spec.name), []).append(text)
    for src, dst, text in condition_edges(ir):
        labels.setdefault((src, dst), []).append(text)
    return {edge: ", ".join(texts) for edge, texts in labels.items()}


def condition_edges(ir: PipelineIR) -> list[tuple[str, str, str]]:
    """``(tested step, step, "when <condition>")`` for each ``mp.when`` condition a step enters.

    A step that consumes a step of the same block inherits the condition
    through it, so only the block's first steps get the edge.
    """
    specs = {s.name: s for s in ir.steps}
    edges = []
    for spec in ir.steps:
        inputs = {i.step for i in spec.inputs if i.source == "step"}
        for condition in spec.when:
            if any(condition in specs[u].when for u in inputs if u in specs):
                continue
            edges.append((condition.step, spec.name, f"when {condition.describe()}"))
    return edges


def box_note(spec: StepSpec, states: Mapping[str, Any] | None = None) -> str | None:
    """What a step's box says besides its name: ``map over lr`` (with a run, how many items), or its condition."""
    notes = []
    if spec.map_over:
        note = f"map over {', '.join(spec.map_over)}"
        if states:
            count = sum(1 for name in states if name.startswith(f"{spec.name}[") and name.endswith("]"))
            note += f": {count} item{'s' if count != 1 else ''}"
        notes.append(note)
    if spec.when:
        notes.append("when " + " and ".join(c.describe() for c in spec.when))
    return " · ".join(notes) or None


def _box_text(name: str, state: StepState | None) -> str | None:
    if state is None:
        return None
    parts = [STATUS_STYLES.get(state.style, STATUS_STYLES["pending"])[2]]
    if state.duration is not None and state.style not in ("cached", "skipped", "pending"):
        parts.append(f"{state.duration:.2f} s" if state.duration < 100 else f"{state.duration:.0f} s")
    if state.attempts > 1:
        parts.append(f"{state.attempts} attempts")
    return " · ".join(parts)


def _bezier(p0: tuple[float, float], p3: tuple[float, float], t: float) -> tuple[float, float]:
    (x0, y0), (x3, y3) = p0, p3
    ym = (y0 + y3) / 2
    u = 1 - t
    x = u**3 * x0 + 3 * u * u * t * x0 + 3 * u * t * t * x3 + t**3 * x3
    y = u**3 * y0 + 3 * u * u * t * ym + 3 * u * t * t * ym + t**3 * y3
    return x, y


@dataclass(frozen=True)
class _Rect:
    x: float
    y: float
    w: float
    h: float

    def hits(self, other: _Rect | Box, pad: float = 2.0) -> bool:
        ow = other.w if isinstance(other, _Rect) else other.width
        oh = other.h if isinstance(other, _Rect) else other.height
        return not (
            self.x + self.w + pad <= other.x
            or other.x + ow + pad <= self.x
            or self.y + self.h + pad <= other.y
            or other.y + oh + pad <= self.y
        )


def _ports(drawing: Drawing) -> dict[tuple[Any, Any], tuple[float, float]]:
    """Where each edge leaves its source and enters its target: spread along the box edge, in the other end's order."""
    outgoing: dict[Any, list[Any]] = {}
    incoming: dict[Any, list[Any]] = {}
    for r in drawing.routes:
        outgoing.setdefault(r.source, []).append(r)
        incoming.setdefault(r.target, []).append(r)
    start: dict[tuple[Any, Any], float] = {}
    end: dict[tuple[Any, Any], float] = {}
    for node, routes in outgoing.items():
        box = drawing.boxes[node]
        ordered = sorted(routes, key=lambda r: r.points[1][0] if len(r.points) > 2 else r.points[-1][0])
        for i, r in enumerate(ordered):
            start[(r.source, r.target)] = box.x + box.width * (i + 1) / (len(ordered) + 1)
    for node, routes in incoming.items():
        box = drawing.boxes[node]
        ordered = sorted(routes, key=lambda r: r.points[-2][0] if len(r.points) > 2 else r.points[0][0])
        for i, r in enumerate(ordered):
            end[(r.source, r.target)] = box.x + box.width * (i + 1) / (len(ordered) + 1)
    return {k: (start[k], end[k]) for k in start}


def svg(ir: PipelineIR, states: Mapping[str, StepState] | None = None) -> str:
    """The graph as one ``<svg>`` element (for HTML pages and notebooks)."""
    states = dict(states or {})
    texts = {
        s.name: " · ".join(t for t in (box_note(s, states), _box_text(s.name, states.get(s.name))) if t) or None
        for s in ir.steps
    }
    sizes: dict[Any, tuple[float, float]] = {
        s.name: (
            max(110.0, _CHAR * max(len(s.name), len(texts[s.name] or "") * 0.85) + 28),
            52.0 if texts[s.name] else 40.0,
        )
        for s in ir.steps
    }
    order = _order(ir)
    labels = _edge_labels(ir)
    drawing = layout(order, list(labels), sizes=sizes, gap_y=72.0)
    ports = _ports(drawing)
    parts: list[str] = []
    placed: list[_Rect] = []
    boxes = list(drawing.boxes.values())
    label_parts: list[str] = []
    for route in drawing.routes:
        key = (str(route.source), str(route.target))
        points = list(route.points)
        points[0] = (ports[key][0], points[0][1])
        points[-1] = (ports[key][1], points[-1][1])
        d = [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
        gaps: list[tuple[tuple[float, float], tuple[float, float]]] = []
        for i in range(0, len(points) - 1, 2):
            p0, p3 = points[i], points[i + 1]
            ym = (p0[1] + p3[1]) / 2
            d.append(f"C{p0[0]:.1f},{ym:.1f} {p3[0]:.1f},{ym:.1f} {p3[0]:.1f},{p3[1]:.1f}")
            gaps.append((p0, p3))
            if i + 2 < len(points):
                d.append(f"L{points[i + 2][0]:.1f},{points[i + 2][1]:.1f}")
        label = labels[key]
        tip = f"{route.source} → {route.target}: {label}"
        dashed = ' stroke-dasharray="5,3"' if "when " in label else ""  # runs only when a test holds
        parts.append(
            f'<path class="edge" data-source="{_e(route.source)}" data-target="{_e(route.target)}" '
            f'd="{" ".join(d)}" fill="none" stroke="#6e7781" stroke-width="1.4"{dashed} marker-end="url(#arrow)">'
            f"<title>{_e(tip)}</title></path>"
        )
        w, h = _LABEL_CHAR * len(label) + 6, _LABEL_FONT + 5
        spot = None
        for gap in (gaps[-1], gaps[0]) if len(gaps) > 1 else (gaps[-1],):
            for t in (0.5, 0.32, 0.68, 0.2, 0.8):
                x, y = _bezier(gap[0], gap[1], t)
                for dx in (4.0, -w - 4.0):
                    rect = _Rect(x + dx, y - h / 2, w, h)
                    if not any(rect.hits(b) for b in boxes) and not any(rect.hits(o) for o in placed):
                        spot = rect
                        break
                if spot:
                    break
            if spot:
                break
        if spot is None:
            continue  # no free spot: the label stays in the edge's tooltip
        placed.append(spot)
        label_parts.append(
            f'<g class="edge-label"><rect x="{spot.x:.1f}" y="{spot.y:.1f}" width="{spot.w:.1f}" '
            f'height="{spot.h:.1f}" rx="3" fill="#ffffff" fill-opacity="0.9"/>'
            f'<text x="{spot.x + 3:.1f}" y="{spot.y + spot.h - 4.5:.1f}" font-size="{_LABEL_FONT}" fill="#57606a">'
            f"{_e(label)}</text></g>"
        )
    for spec in ir.steps:
        box = drawing.boxes[spec.name]
        state = states.get(spec.name)
        fill, stroke = _PLAIN if state is None else STATUS_STYLES.get(state.style, STATUS_STYLES["pending"])[:2]
        dash = ' stroke-dasharray="5 3"' if state is not None and state.style in ("skipped", "pending") else ""
        outputs = ", ".join(o.name for o in spec.outputs) or "-"
        tip = f"{spec.code.module}.{spec.code.qualname} — outputs: {outputs}"
        if state is not None:
            tip += f" — {state.status}{' (cache hit)' if state.cached else ''}"
        name_y = box.y + (box.height / 2 + 5 if texts[spec.name] is None else 21)
        sub = (
            f'<text x="{box.cx:.1f}" y="{box.y + 39:.1f}" text-anchor="middle" font-size="11" fill="#57606a">'
            f"{_e(texts[spec.name])}</text>"
            if texts[spec.name]
            else ""
        )
        status_attr = f' data-status="{_e(state.style)}"' if state is not None else ""
        parts.append(
            f'<g class="step" data-step="{_e(spec.name)}"{status_attr}><title>{_e(tip)}</title>'
            f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.width:.1f}" height="{box.height:.1f}" rx="8" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dash}/>'
            f'<text x="{box.cx:.1f}" y="{name_y:.1f}" text-anchor="middle" font-size="{_FONT}" fill="#1f2328">'
            f"{_e(spec.name)}</text>{sub}</g>"
        )
    # The canvas holds the labels too: a label beside the rightmost (or leftmost) edge may reach past the boxes.
    left = min([0.0] + [r.x - 2 for r in placed])
    top = min([0.0] + [r.y - 2 for r in placed])
    right = max([drawing.width] + [r.x + r.w + 2 for r in placed])
    bottom = max([drawing.height] + [r.y + r.h + 2 for r in placed])
    width, height = right - left, bottom - top
    # Inline SVG in HTML needs no xmlns (the HTML parser assigns it), so the page holds no URL at all.
    return (
        f'<svg class="mlpipe-graph" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="{left:.0f} {top:.0f} {width:.0f} {height:.0f}" font-family="system-ui,sans-serif">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#6e7781"/></marker></defs>'
        + "".join(parts)
        + "".join(label_parts)
        + "</svg>"
    )


def legend(states: Mapping[str, StepState]) -> str:
    """The colour key for the statuses that occur in ``states``."""
    shown = [s for s in STATUS_STYLES if any(st.style == s for st in states.values())]
    items = "".join(
        f'<span style="display:inline-block;width:12px;height:12px;border-radius:3px;background:{fill};'
        f'border:1.5px solid {stroke};margin:0 4px 0 12px;vertical-align:-2px"></span>{_e(text)}'
        for fill, stroke, text in (STATUS_STYLES[s] for s in shown)
    )
    return f'<div class="legend" style="font-size:13px;color:#57606a;margin:6px 0 10px">{items}</div>'


def html_page(ir: PipelineIR, states: Mapping[str, StepState] | None = None, *, subtitle: str | None = None) -> str:
    """A self-contained HTML page with the graph (and its colour key when ``states`` are given)."""
    title = _e(ir.name)
    sub = f'<div style="color:#57606a;font-size:14px;margin-bottom:6px">{_e(subtitle)}</div>' if subtitle else ""
    key = legend(states) if states else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>'
        f'<body style="font-family:system-ui,sans-serif;margin:20px 28px;color:#1f2328">'
        f'<h1 style="font-size:22px;margin:0 0 4px">{title}</h1>{sub}{key}{svg(ir, states)}</body></html>\n'
    )
