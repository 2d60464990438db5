"""A layered (Sugiyama-style) drawing of a DAG: layers, crossing reduction, coordinates and edge routes.

The classic four phases, for the small graphs pipelines are (tens to a few
hundred nodes; pure Python, no dependency):

1. **Layers**: longest path from the sources, so every edge points down.
2. **Long edges** are split by a dummy node in each layer they cross. A
   dummy takes a slot in its layer like a box does, so an edge never runs
   through a box: between layers it stays in the gap, inside a layer it
   runs down its own slot.
3. **Crossing reduction**: barycentre ordering, sweeping down and up, keeping
   the order with the fewest crossings seen (counted exactly per layer pair).
4. **Coordinates**: each node is pulled towards the mean position of its
   neighbours in the layer above (then below), and overlaps are pushed
   apart left to right with the minimum gap, so boxes never overlap.

:func:`layout` returns boxes, the route of every edge (a polyline from the
bottom of its source to the top of its target through its dummies) and the
canvas size. Rendering is someone else's job (:mod:`mlpipe.graphview`).
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Box", "Drawing", "EdgeRoute", "count_crossings", "layout"]

_SWEEPS = 12


@dataclass(frozen=True)
class Box:
    """A node's rectangle: ``x``, ``y`` is the top-left corner."""

    node: Hashable
    x: float
    y: float
    width: float
    height: float
    layer: int

    @property
    def cx(self) -> float:
        return self.x + self.width / 2

    def overlaps(self, other: Box, margin: float = 0.0) -> bool:
        return not (
            self.x + self.width + margin <= other.x
            or other.x + other.width + margin <= self.x
            or self.y + self.height + margin <= other.y
            or other.y + other.height + margin <= self.y
        )


@dataclass(frozen=True)
class EdgeRoute:
    """An edge's polyline: from the source's bottom edge, through one point per crossed layer, to the target's top."""

    source: Hashable
    target: Hashable
    points: tuple[tuple[float, float], ...]


@dataclass
class Drawing:
    """The result of :func:`layout`."""

    boxes: dict[Hashable, Box]
    routes: list[EdgeRoute]
    width: float
    height: float
    layers: list[list[Hashable]] = field(default_factory=list)  # real nodes and dummies, in drawing order
    crossings: int = 0


@dataclass(frozen=True)
class _Dummy:
    source: Hashable
    target: Hashable
    layer: int

    def __hash__(self) -> int:
        return hash(("dummy", self.source, self.target, self.layer))


def _longest_path_layers(nodes: Sequence[Hashable], preds: Mapping[Hashable, list[Hashable]]) -> dict[Hashable, int]:
    layer: dict[Hashable, int] = {}
    for node in nodes:  # nodes come in topological order
        layer[node] = 1 + max((layer[p] for p in preds[node]), default=-1)
    return layer


def _pair_crossings(
    upper: Sequence[Hashable], lower: Sequence[Hashable], down: Mapping[Hashable, list[Hashable]]
) -> int:
    pos = {n: i for i, n in enumerate(lower)}
    ends = [pos[t] for n in upper for t in sorted(down.get(n, ()), key=pos.__getitem__) if t in pos]
    # Crossings between consecutive layers = inversions of the target positions, read in source order.
    crossings = 0
    for i in range(len(ends)):
        for j in range(i + 1, len(ends)):
            if ends[j] < ends[i]:
                crossings += 1
    return crossings


def count_crossings(layers: Sequence[Sequence[Hashable]], down: Mapping[Hashable, list[Hashable]]) -> int:
    """Edge crossings of a layered drawing (edges only between consecutive layers)."""
    return sum(_pair_crossings(layers[i], layers[i + 1], down) for i in range(len(layers) - 1))


def _barycentre_order(
    layer: list[Hashable], fixed: Sequence[Hashable], links: Mapping[Hashable, list[Hashable]]
) -> list[Hashable]:
    pos = {n: i for i, n in enumerate(fixed)}
    current = {n: i for i, n in enumerate(layer)}

    def key(node: Hashable) -> tuple[float, int]:
        linked = [pos[m] for m in links.get(node, ()) if m in pos]
        return (sum(linked) / len(linked) if linked else float(current[node]), current[node])

    return sorted(layer, key=key)


def layout(
    nodes: Sequence[Hashable],
    edges: Sequence[tuple[Hashable, Hashable]],
    *,
    sizes: Mapping[Hashable, tuple[float, float]],
    gap_x: float = 36.0,
    gap_y: float = 64.0,
    dummy_width: float = 16.0,
    margin: float = 20.0,
) -> Drawing:
    """Lay out a DAG top to bottom.

    Args:
        nodes: Every node, in a topological order (each after all its predecessors).
        edges: ``(source, target)`` pairs; parallel edges are drawn once.
        sizes: ``(width, height)`` of each node's box.
        gap_x: Minimum horizontal gap between two slots of a layer.
        gap_y: Vertical gap between layers (where edges bend and labels go).
        dummy_width: The width a long edge reserves in each layer it crosses.
        margin: Space around the drawing.

    Returns:
        A :class:`Drawing`: boxes that never overlap, and a route per edge that never
        crosses a box other than its own ends.
    """
    unique_edges = list(dict.fromkeys(edges))
    preds: dict[Hashable, list[Hashable]] = {n: [] for n in nodes}
    for src, dst in unique_edges:
        preds[dst].append(src)
    layer_of = _longest_path_layers(nodes, preds)
    n_layers = 1 + max(layer_of.values(), default=-1)
    layers: list[list[Hashable]] = [[] for _ in range(n_layers)]
    for node in nodes:
        layers[layer_of[node]].append(node)
    down: dict[Hashable, list[Hashable]] = {}
    up: dict[Hashable, list[Hashable]] = {}
    chains: dict[tuple[Hashable, Hashable], list[Hashable]] = {}
    for src, dst in unique_edges:
        chain: list[Hashable] = [src]
        for index in range(layer_of[src] + 1, layer_of[dst]):
            dummy = _Dummy(src, dst, index)
            layers[index].append(dummy)
            chain.append(dummy)
        chain.append(dst)
        chains[(src, dst)] = chain
        for a, b in itertools.pairwise(chain):
            down.setdefault(a, []).append(b)
            up.setdefault(b, []).append(a)

    best = [list(lyr) for lyr in layers]
    best_crossings = count_crossings(best, down)
    current = [list(lyr) for lyr in layers]
    for sweep in range(_SWEEPS):
        if best_crossings == 0:
            break
        if sweep % 2 == 0:
            for i in range(1, n_layers):
                current[i] = _barycentre_order(current[i], current[i - 1], up)
        else:
            for i in range(n_layers - 2, -1, -1):
                current[i] = _barycentre_order(current[i], current[i + 1], down)
        crossings = count_crossings(current, down)
        if crossings < best_crossings:
            best, best_crossings = [list(lyr) for lyr in current], crossings

    def width_of(node: Hashable) -> float:
        return dummy_width if isinstance(node, _Dummy) else sizes[node][0]

    layer_height = [max((sizes[n][1] for n in lyr if not isinstance(n, _Dummy)), default=0.0) for lyr in best]
    centre: dict[Hashable, float] = {}
    for lyr in best:  # first pass: packed from the left
        x = 0.0
        for node in lyr:
            centre[node] = x + width_of(node) / 2
            x += width_of(node) + gap_x

    def place(lyr: list[Hashable], links: Mapping[Hashable, list[Hashable]]) -> None:
        """Move each node as close to its neighbours' mean as the order and the gaps allow (least squares)."""
        wanted = []
        for node in lyr:
            linked = [centre[m] for m in links.get(node, ())]
            wanted.append(sum(linked) / len(linked) if linked else centre[node])
        # Blocks of nodes pressed together: [first index, offsets from the block's first centre, position].
        blocks: list[tuple[int, list[float], float]] = []
        for i in range(len(lyr)):
            first, offsets, pos = i, [0.0], wanted[i]
            while blocks:
                p_first, p_offsets, p_pos = blocks[-1]
                last = p_first + len(p_offsets) - 1
                sep = width_of(lyr[last]) / 2 + gap_x + width_of(lyr[first]) / 2
                if p_pos + p_offsets[-1] + sep <= pos + offsets[0]:
                    break
                blocks.pop()
                base = p_offsets[-1] + sep
                offsets = p_offsets + [base + o for o in offsets]
                first = p_first
                pos = sum(wanted[first + k] - o for k, o in enumerate(offsets)) / len(offsets)
            blocks.append((first, offsets, pos))
        for first, offsets, pos in blocks:
            for k, o in enumerate(offsets):
                centre[lyr[first + k]] = pos + o

    for _ in range(4):
        for i in range(1, n_layers):
            place(best[i], up)
        for i in range(n_layers - 2, -1, -1):
            place(best[i], down)
    left = min((centre[n] - width_of(n) / 2 for lyr in best for n in lyr), default=0.0)
    right = max((centre[n] + width_of(n) / 2 for lyr in best for n in lyr), default=0.0)
    shift = margin - left
    top: list[float] = []
    y = margin
    for h in layer_height:
        top.append(y)
        y += h + gap_y
    boxes: dict[Hashable, Box] = {}
    for i, lyr in enumerate(best):
        for node in lyr:
            if isinstance(node, _Dummy):
                continue
            w, h = sizes[node]
            boxes[node] = Box(node, centre[node] + shift - w / 2, top[i] + (layer_height[i] - h) / 2, w, h, i)
    routes = []
    for (src, dst), chain in chains.items():
        points = [(boxes[src].cx, boxes[src].y + boxes[src].height)]
        for mid in chain[1:-1]:
            assert isinstance(mid, _Dummy)
            x = centre[mid] + shift
            points += [(x, top[mid.layer]), (x, top[mid.layer] + layer_height[mid.layer])]
        points.append((boxes[dst].cx, boxes[dst].y))
        routes.append(EdgeRoute(src, dst, tuple(points)))
    height = y - gap_y + margin if n_layers else 2 * margin
    return Drawing(
        boxes=boxes,
        routes=routes,
        width=right - left + 2 * margin,
        height=height,
        layers=best,
        crossings=best_crossings,
    )
