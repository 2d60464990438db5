"""The HTML reports are self-contained: inline CSS and SVG, no scripts, no external references."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd

from mlpipe import quality as q


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)


def _assert_self_contained(page: str) -> _Collector:
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?:", page, re.IGNORECASE)
    assert "//" not in re.sub(r"<style>.*?</style>", "", page, flags=re.S)  # no protocol-relative URLs
    for banned in ("<script", "<link", "<iframe", "<img", "@import", "url("):
        assert banned not in page.lower(), banned
    parsed = _Collector()
    parsed.feed(page)
    assert not any(name in ("src", "href") for name, _v in parsed.attrs)
    return parsed


def test_drift_report_is_self_contained_with_a_plot_per_column() -> None:
    rng = np.random.default_rng(3)
    weird = '<b>&"col"</b>'
    ref = pd.DataFrame({"x": rng.normal(0, 1, 2_000), weird: rng.choice(["a", "<i>", "c"], 2_000), "y": 1.0})
    cur = pd.DataFrame({"x": rng.normal(1, 1, 2_000), weird: rng.choice(["a", "<i>", "zz"], 2_000), "y": 1.0})
    result = q.compute_drift(ref, cur)
    page = q.drift_html(result, title="Weekly <drift>")
    assert isinstance(page, q.HtmlReport) and isinstance(page, str)
    parsed = _assert_self_contained(page)
    assert parsed.tags.count("svg") == 3
    assert "<b>&" not in page and "&lt;b&gt;&amp;&quot;col&quot;&lt;/b&gt;" in page
    assert "Weekly &lt;drift&gt;" in page
    assert "drift detected" in page
    for c in result.columns:
        assert f"{c.psi:.4g}" in page


def test_drift_report_with_many_categories_groups_the_rest() -> None:
    rng = np.random.default_rng(4)
    ref = pd.DataFrame({"k": rng.integers(0, 60, 3_000).astype(str)})
    result = q.compute_drift(ref, ref.sample(frac=1.0, random_state=1))
    hist = result.column("k").histogram
    assert hist is not None and hist.labels[-1] == "(other)" and len(hist.labels) == 21
    assert sum(hist.reference) == np.float64(1.0) or abs(sum(hist.reference) - 1.0) < 1e-9
    _assert_self_contained(q.drift_html(result))


def test_validation_report_html() -> None:
    frame = pd.DataFrame({"a": [1, -1, 2], "b": ["x", "y", "<script>"]})
    schema = q.Schema(columns={"a": q.Column("int64", ge=0), "b": q.Column("str", isin=["x", "y"])})
    _d, report = q.validate(frame, schema)
    page = q.validation_html(report)
    _assert_self_contained(page)
    assert "&lt;script&gt;" in page and "failed" in page
    ok = q.validation_html(q.validate(frame.iloc[:1], schema)[1])
    assert "Every rule holds" in ok
