"""The HTML graph: layered layout without overlaps, run colours, notebook reprs; geometry checked in chromium."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import NamedTuple

import pytest
from resources import browser
from resources import pipelines as res
from typer.testing import CliRunner

import mlpipe as mp
from mlpipe.cli import app
from mlpipe.graph import render
from mlpipe.graphview import StepState
from mlpipe.layout import count_crossings, layout


def _random_dag(n: int, seed: int) -> tuple[list[int], list[tuple[int, int]]]:
    rng = random.Random(seed)
    edges = []
    for dst in range(1, n):
        for src in rng.sample(range(dst), k=min(dst, rng.randint(1, 3))):
            edges.append((src, dst))
    return list(range(n)), edges


def _bezier_points(p0: tuple[float, float], p3: tuple[float, float], steps: int = 24) -> list[tuple[float, float]]:
    (x0, y0), (x3, y3) = p0, p3
    ym = (y0 + y3) / 2
    out = []
    for k in range(1, steps):
        t = k / steps
        u = 1 - t
        out.append(
            (
                u**3 * x0 + 3 * u * u * t * x0 + 3 * u * t * t * x3 + t**3 * x3,
                u**3 * y0 + 3 * u * u * t * ym + 3 * u * t * t * ym + t**3 * y3,
            )
        )
    return out


@pytest.mark.parametrize("seed", range(6))
def test_layout_has_no_overlapping_boxes_and_no_edge_through_a_box(seed: int) -> None:
    nodes, edges = _random_dag(18, seed)
    sizes = {n: (60.0 + 7 * (n % 5), 40.0) for n in nodes}
    drawing = layout(nodes, edges, sizes=sizes)
    boxes = list(drawing.boxes.values())
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    for src, dst in edges:
        assert drawing.boxes[src].layer < drawing.boxes[dst].layer  # every edge points down
    for route in drawing.routes:
        pts = list(route.points)
        samples = []
        for i in range(0, len(pts) - 1, 2):
            samples += _bezier_points(pts[i], pts[i + 1])
            if i + 2 < len(pts):  # the straight run down a dummy slot
                samples += [
                    (pts[i + 1][0], pts[i + 1][1] + f * (pts[i + 2][1] - pts[i + 1][1])) for f in (0.25, 0.5, 0.75)
                ]
        for box in boxes:
            if box.node in (route.source, route.target):
                continue
            for x, y in samples:
                inside = box.x < x < box.x + box.width and box.y < y < box.y + box.height
                assert not inside, f"edge {route.source}->{route.target} runs through box {box.node} at {(x, y)}"


def test_crossing_reduction_untangles_a_crossed_bipartite_graph() -> None:
    # a0-b1, a1-b0 drawn in input order cross once; barycentre ordering removes it
    nodes = ["a0", "a1", "b0", "b1"]
    edges = [("a0", "b1"), ("a1", "b0")]
    drawing = layout(nodes, edges, sizes=dict.fromkeys(nodes, (50.0, 30.0)))
    assert drawing.crossings == 0
    assert count_crossings([["a0", "a1"], ["b0", "b1"]], {"a0": ["b1"], "a1": ["b0"]}) == 1


@mp.step
def src(n: int = 3) -> int:
    return n


@mp.step
def mid(x: int) -> int:
    return x + 1


@mp.step
def join(a: int, b: int, c: int, d: int) -> int:
    return a + b + c + d


@mp.step
def flaky_fail(x: int) -> int:
    raise ValueError("boom")


@mp.step
def after(x: int) -> int:
    return x


@mp.pipeline
def skip_edges(n: int = 3) -> int:
    s = src(n)
    m1 = mid(s)
    m2 = mid(m1)
    m3 = mid(m2)
    return join(s, m1, m2, m3)  # three long edges past the chain


@mp.pipeline
def with_failure(n: int = 3) -> int:
    s = src(n)
    after(flaky_fail(s))
    return mid(s)


class Halves(NamedTuple):
    train: int
    test: int


@mp.step
def halve(n: int) -> Halves:
    return Halves(n // 2, n - n // 2)


@mp.step
def fit(data: int) -> int:
    return data * 2


@mp.step
def score(model: int, data: int) -> int:
    return model - data


@mp.pipeline
def named_outputs(n: int = 10) -> int:
    """Labels such as 'test → data' are wide and sit beside the rightmost edge."""
    parts = halve(src(n))
    return score(fit(parts.train), parts.test)


_PROBE = """
<pre id="result"></pre>
<script>
const svg = document.querySelector("svg.mlpipe-graph");
const rect = (el) => { const b = el.getBBox(); return {x: b.x, y: b.y, w: b.width, h: b.height}; };
const hit = (a, b) => a.x < b.x + b.w - 0.5 && b.x < a.x + a.w - 0.5 && a.y < b.y + b.h - 0.5 && b.y < a.y + a.h - 0.5;
const steps = [...svg.querySelectorAll("g.step")].map((g) => ({name: g.dataset.step, box: rect(g.querySelector("rect")),
  text: rect(g.querySelector("text"))}));
const labels = [...svg.querySelectorAll("g.edge-label")].map((g) => rect(g.querySelector("rect")));
const problems = [];
steps.forEach((a, i) => {
  steps.slice(i + 1).forEach((b) => { if (hit(a.box, b.box)) problems.push(`boxes ${a.name} and ${b.name} overlap`); });
  if (a.text.x < a.box.x || a.text.x + a.text.w > a.box.x + a.box.w)
    problems.push(`name of ${a.name} overflows its box`);
  labels.forEach((l) => { if (hit(l, a.box)) problems.push(`a label covers box ${a.name}`); });
});
labels.forEach((a, i) => labels.slice(i + 1).forEach((b) => { if (hit(a, b)) problems.push("two labels overlap"); }));
const view = svg.viewBox.baseVal;
[...steps.map((s) => s.box), ...labels].forEach((r) => {
  if (r.x < view.x - 0.5 || r.y < view.y - 0.5 || r.x + r.w > view.x + view.width + 0.5
      || r.y + r.h > view.y + view.height + 0.5) problems.push("a box or label is cut off at the canvas edge");
});
for (const path of svg.querySelectorAll("path.edge")) {
  const total = path.getTotalLength();
  for (let k = 1; k < 60; k++) {
    const p = path.getPointAtLength(total * k / 60);
    for (const s of steps) {
      if (s.name === path.dataset.source || s.name === path.dataset.target) continue;
      const b = s.box;
      if (p.x > b.x && p.x < b.x + b.w && p.y > b.y && p.y < b.y + b.h)
        problems.push(`edge ${path.dataset.source}->${path.dataset.target} runs through ${s.name}`);
    }
  }
}
document.getElementById("result").textContent = JSON.stringify({steps: steps.length, labels: labels.length,
  edges: svg.querySelectorAll("path.edge").length, problems: [...new Set(problems)]});
</script>
"""


def _probe(page_html: str, path: Path) -> dict[str, object]:
    """Load the page in chromium with a script that measures the drawn SVG, and return what it found."""
    path.write_text(page_html.replace("</body>", _PROBE + "</body>"))
    dom = browser.dump_dom(path)
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert found and found.group(1), dom[-2000:]
    return json.loads(found.group(1).replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&"))


@pytest.mark.parametrize("pipe", [res.fanout, res.arithmetic, skip_edges, named_outputs], ids=lambda p: p.name)
def test_graph_page_in_chromium_has_no_overlaps_and_no_edge_through_a_box(pipe: mp.Pipeline, tmp_path: Path) -> None:
    page = render(pipe.ir, "html")
    assert "<script" not in page  # the page itself is static; only the probe below runs script
    result = _probe(page, tmp_path / "graph.html")
    assert result["problems"] == []
    assert result["steps"] == len(pipe.ir.steps)
    assert result["labels"] == result["edges"]  # every edge kept its label in the drawing
    png = browser.screenshot(tmp_path / "graph.html", tmp_path / "graph.png", 1200, 900)
    assert png.stat().st_size > 5_000


def test_graph_of_a_run_colours_steps_by_status_and_cache_hit(tmp_path: Path) -> None:
    first = skip_edges.run()
    second = skip_edges.run()
    assert all(s.cached for s in second.steps.values())
    failed = with_failure.run()
    assert failed.status == "failed"
    out = tmp_path / "run.html"
    result = CliRunner().invoke(app, ["graph", "--run", failed.id, "--format", "html", "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert 'data-step="flaky_fail" data-status="failed"' in page
    assert 'data-step="after" data-status="skipped"' in page
    assert 'data-step="src" data-status="cached"' in page  # computed by the first run
    assert "failed" in page and "skipped" in page  # the legend
    hits = CliRunner().invoke(app, ["graph", "--run", second.id, "--format", "html"])
    assert hits.exit_code == 0
    assert hits.output.count('data-status="cached"') == len(second.steps)
    assert "cache hit" in hits.output
    mermaid = CliRunner().invoke(app, ["graph", "--run", first.id])
    assert "    style join fill:#dafbe1,stroke:#1a7f37" in mermaid.output
    assert _probe(page, tmp_path / "probe.html")["problems"] == []
    missing = CliRunner().invoke(app, ["graph"])
    assert missing.exit_code == 2 and "graph needs FILE.py:PIPELINE, or --run RUN_ID" in missing.output


def test_pipeline_and_run_render_as_html_in_notebooks() -> None:
    snippet = skip_edges._repr_html_()
    assert snippet.startswith('<div class="mlpipe-pipeline"><b>pipeline skip_edges</b>')
    assert snippet.count('<g class="step"') == 5 and "<script" not in snippet
    run = with_failure.run()
    shown = run._repr_html_()
    assert f"<b>run {run.id}</b>" in shown and "<b>failed</b>" in shown
    assert 'data-status="failed"' in shown and "boom" in shown


def test_step_state_from_a_record() -> None:
    state = StepState.from_record({"status": "succeeded", "cached": True, "duration": 0.001, "attempts": 1})
    assert state.style == "cached"
    assert StepState.from_record({"status": "failed", "attempts": 3}).attempts == 3
