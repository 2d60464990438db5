"""Self-contained HTML reports of quality results: tables and inline SVG plots.

Every report is one HTML document with its CSS and its plots inline: no
script, no stylesheet, font or image fetched from anywhere, so it opens
offline, from a bucket, or as an MLflow artifact. Rendering is string
building with every value escaped; nothing here computes statistics.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mlpipe.materializers import HtmlReport
from mlpipe.quality.base import FAIRNESS_METRICS as METRICS

if TYPE_CHECKING:
    from mlpipe.quality.drift import ColumnDrift, DriftResult, Histogram
    from mlpipe.quality.fairness import FairnessResult
    from mlpipe.quality.validation import ValidationReport

__all__ = ["CSS", "drift_html", "fairness_html", "fairness_section", "validation_html"]

_REF = "#4c72b0"
_CUR = "#dd8452"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px 32px;color:#1f2328;
background:#fff;max-width:1100px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}h3{font-size:15px;margin:0 0 6px}
.meta{color:#59636e;font-size:13px;margin-bottom:14px}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;font-size:13px;color:#fff}
.bad{background:#cf222e}.good{background:#1a7f37}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{border:1px solid #d1d9e0;border-radius:8px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:20px}.card span{color:#59636e;font-size:12px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #e6eaef;padding:5px 8px;text-align:right;white-space:nowrap}
th{background:#f6f8fa;font-weight:600}td.l,th.l{text-align:left}
tr.drift td{background:#fff5f5}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(500px,1fr));gap:14px}
.plot{border:1px solid #d1d9e0;border-radius:8px;padding:10px 12px}
.plot p{margin:2px 0 6px;font-size:12px;color:#59636e}
.key{font-size:12px;color:#59636e}.key i{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
svg text{font-size:10px;fill:#59636e}
td.muted{color:#8c959f}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) < 10 ** -(digits - 1) or abs(value) >= 10**6):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def _tick(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _page(title: str, body: str) -> HtmlReport:
    return HtmlReport(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def _stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def _histogram_svg(hist: Histogram, kind: str, width: int = 520, height: int = 170) -> str:
    left, right, top, bottom = 40, 8, 10, 34 if kind == "categorical" else 22
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(hist.labels), 1)
    peak = max([*hist.reference, *hist.current, 1e-12])
    slot = plot_w / n
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#8c959f"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#8c959f"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{peak:.0%}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i in range(n):
        r = hist.reference[i] if i < len(hist.reference) else 0.0
        c = hist.current[i] if i < len(hist.current) else 0.0
        x = left + i * slot
        if kind == "categorical":
            bar = slot * 0.38
            for offset, share, colour in ((0.1, r, _REF), (0.52, c, _CUR)):
                h = plot_h * share / peak
                parts.append(
                    f'<rect x="{x + slot * offset:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                    f'height="{h:.1f}" fill="{colour}"><title>{_e(hist.labels[i])}: {share:.1%}</title></rect>'
                )
            label = hist.labels[i] if len(hist.labels[i]) <= 10 else hist.labels[i][:9] + "…"
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{top + plot_h + 12}" text-anchor="middle">{_e(label)}</text>'
            )
        else:
            for share, colour in ((r, _REF), (c, _CUR)):
                h = plot_h * share / peak
                parts.append(
                    f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{max(slot - 1, 1):.1f}" height="{h:.1f}" '
                    f'fill="{colour}" fill-opacity="0.55"><title>{_e(hist.labels[i])}: {share:.1%}</title></rect>'
                )
    if kind != "categorical" and hist.edges:
        for pos, anchor in ((0, "start"), (n // 2, "middle"), (n, "end")):
            x = left + pos * slot
            parts.append(
                f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="{anchor}">{_tick(hist.edges[pos])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _column_rows(columns: Sequence[ColumnDrift], missing: Sequence[str]) -> str:
    rows = []
    for c in columns:
        limits = []
        if c.thresholds.psi is not None:
            limits.append(f"PSI ≥ {c.thresholds.psi:g}")
        if c.thresholds.p_value is not None:
            limits.append(f"p &lt; {c.thresholds.p_value:g}")
        rule = (" and " if c.thresholds.mode == "all" else " or ").join(limits) or "-"
        if c.kind == "numeric":
            detail = f"mean {_num(c.reference_mean)} → {_num(c.current_mean)}"
        else:
            new = ", ".join(c.new_categories[:5]) + (" …" if len(c.new_categories) > 5 else "")
            detail = f"new: {_e(new)}" if c.new_categories else "-"
        status = '<span class="badge bad">drift</span>' if c.drifted else '<span class="badge good">ok</span>'
        rows.append(
            f'<tr class="{"drift" if c.drifted else ""}"><td class="l">{_e(c.column)}</td><td class="l">{c.kind}</td>'
            f'<td class="l">{"KS" if c.test == "ks" else "chi²"}</td><td>{_num(c.statistic)}</td>'
            f'<td>{_num(c.p_value, 3)}</td><td>{_num(c.psi)}</td><td class="l">{rule}</td>'
            f'<td>{c.reference_missing:.1%} / {c.current_missing:.1%}</td><td class="l">{detail}</td>'
            f'<td class="l">{status}</td></tr>'
        )
    for name in missing:
        rows.append(
            f'<tr class="drift"><td class="l">{_e(name)}</td><td class="l" colspan="8">missing from the current data'
            '</td><td class="l"><span class="badge bad">drift</span></td></tr>'
        )
    return "".join(rows)


def drift_html(result: DriftResult, *, title: str = "Data drift report") -> HtmlReport:
    """Render a :class:`DriftResult` as one self-contained HTML page."""
    verdict = '<span class="badge good">no drift</span>'
    if result.drifted:
        verdict = '<span class="badge bad">drift detected</span>'
    n_total = len(result.columns) + len(result.missing_columns)
    cards = "".join(
        f'<div class="card"><b>{_e(value)}</b><span>{_e(label)}</span></div>'
        for value, label in (
            (f"{result.reference_rows:,}", "reference rows"),
            (f"{result.current_rows:,}", "current rows"),
            (f"{len(result.drifted_columns)} / {n_total}", "columns drifted"),
            (f"{result.share_drifted:.0%}", f"drifted share (threshold {result.share:.0%})"),
        )
    )
    ordered = sorted(result.columns, key=lambda c: (not c.drifted, -c.psi))
    table = (
        '<table><thead><tr><th class="l">column</th><th class="l">type</th><th class="l">test</th><th>statistic</th>'
        '<th>p-value</th><th>PSI</th><th class="l">drift when</th><th>missing ref / cur</th><th class="l">change</th>'
        '<th class="l">status</th></tr></thead><tbody>'
        + _column_rows(ordered, result.missing_columns)
        + "</tbody></table>"
    )
    plots = []
    for c in ordered:
        if c.histogram is None:
            continue
        stat = f"{'KS' if c.test == 'ks' else 'chi²'} {_num(c.statistic)}, p {_num(c.p_value, 3)}, PSI {_num(c.psi)}"
        badge = '<span class="badge bad">drift</span>' if c.drifted else ""
        plots.append(
            f'<div class="plot"><h3>{_e(c.column)} {badge}</h3>'
            f"<p>{c.kind} · {stat}</p>{_histogram_svg(c.histogram, c.kind)}</div>"
        )
    key = f'<div class="key"><i style="background:{_REF}"></i>reference<i style="background:{_CUR}"></i>current</div>'
    body = (
        f"<h1>{_e(title)} {verdict}</h1>"
        f'<div class="meta">{_e(result.summary())} · computed in {result.seconds * 1000:.0f} ms · {_stamp()}</div>'
        f'<div class="cards">{cards}</div><h2>Columns</h2>{table}'
        f'<h2>Distributions</h2>{key}<div class="plots">{"".join(plots)}</div>'
    )
    return _page(title, body)


def validation_html(report: ValidationReport, *, title: str = "Data validation report") -> HtmlReport:
    """Render a :class:`ValidationReport` as one self-contained HTML page."""
    verdict = '<span class="badge good">passed</span>' if report.passed else '<span class="badge bad">failed</span>'
    rows = "".join(
        f'<tr class="drift"><td class="l">{_e(v.column if v.column is not None else "(table)")}</td>'
        f'<td class="l">{_e(v.check)}</td><td>{v.failing:,}</td>'
        f'<td class="l">{_e(", ".join(str(x) for x in v.examples))}</td></tr>'
        for v in report.violations
    )
    table = (
        '<table><thead><tr><th class="l">column</th><th class="l">rule</th><th>failing</th><th class="l">examples</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>"
        if report.violations
        else "<p>Every rule holds.</p>"
    )
    body = (
        f'<h1>{_e(title)} {verdict}</h1><div class="meta">{_e(report.summary())} · {_stamp()}</div>'
        f"<h2>Violations</h2>{table}"
    )
    return _page(title, body)


_METRIC_LABELS = {
    "selection_rate": "selection rate",
    "true_positive_rate": "TPR",
    "false_positive_rate": "FPR",
    "accuracy": "accuracy",
}


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _rates_svg(result: FairnessResult, width: int = 640) -> str:
    """Horizontal bars of each group's selection rate, TPR and FPR (one row per group)."""
    label_w, bar_h, gap = 170, 9, 10
    shown = [("selection_rate", _REF), ("true_positive_rate", "#55a868"), ("false_positive_rate", _CUR)]
    row_h = bar_h * len(shown) + gap
    height = 20 + row_h * len(result.groups)
    plot_w = width - label_w - 50
    parts = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    for i, g in enumerate(result.groups):
        y = 10 + i * row_h
        name = g.group if len(g.group) <= 28 else g.group[:27] + "…"
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_h * 2}" text-anchor="end">{_e(name)}</text>')
        for j, (metric, colour) in enumerate(shown):
            value = getattr(g, metric)
            if value is None:
                continue
            parts.append(
                f'<rect x="{label_w}" y="{y + j * bar_h}" width="{plot_w * value:.1f}" height="{bar_h - 1}" '
                f'fill="{colour}"><title>{_e(g.group)} {_METRIC_LABELS[metric]}: {value:.3f}</title></rect>'
                f'<text x="{label_w + plot_w * value + 4:.1f}" y="{y + j * bar_h + bar_h - 1}">{value:.2f}</text>'
            )
    parts.append(f'<line x1="{label_w}" y1="4" x2="{label_w}" y2="{height - 4}" stroke="#8c959f"/></svg>')
    return "".join(parts)


def fairness_section(result: FairnessResult, *, heading: str = "h2") -> str:
    """The fairness tables and plot as an HTML fragment (for the fairness report and the audit report)."""
    rows = []
    for g in [*result.groups, result.overall]:
        cells = "".join(f"<td>{_rate(getattr(g, m))}</td>" for m in METRICS)
        note = "" if g.judged else ' <span class="key">(too small, not judged)</span>'
        rows.append(
            f'<tr><td class="l">{_e(g.group)}{note}</td><td>{g.count:,}</td><td>{g.positives:,}</td>{cells}</tr>'
        )
    groups = (
        '<table class="fairness-groups"><thead><tr><th class="l">group</th><th>rows</th><th>positives</th>'
        + "".join(f"<th>{_METRIC_LABELS[m]}</th>" for m in METRICS)
        + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    checks = []
    for d in result.disparities:
        if d.threshold is None:
            limit, status = "-", '<span class="key">not checked</span>'
        else:
            limit = f"{'≥' if d.is_ratio else '≤'} {d.threshold:g}"
            status = '<span class="badge good">ok</span>' if d.passed else '<span class="badge bad">fail</span>'
        between = f"{_e(d.worst[0])} vs {_e(d.worst[1])}" if d.worst else "-"
        checks.append(
            f'<tr class="{"" if d.passed else "drift"}"><td class="l">{_e(d.name)}</td>'
            f'<td class="l">{_e(d.metric)}</td>'
            f'<td>{_rate(d.value)}</td><td>{limit}</td><td class="l">{between}</td><td class="l">{status}</td></tr>'
        )
    disparities = (
        '<table class="fairness-disparities"><thead><tr><th class="l">disparity</th><th class="l">of</th>'
        '<th>value</th><th>limit</th><th class="l">between</th><th class="l">status</th></tr></thead>'
        f"<tbody>{''.join(checks)}</tbody></table>"
    )
    key = (
        f'<div class="key"><i style="background:{_REF}"></i>selection rate<i style="background:#55a868"></i>TPR'
        f'<i style="background:{_CUR}"></i>FPR</div>'
    )
    h = heading
    return (
        f'<section class="fairness"><{h}>Disparities</{h}>{disparities}<{h}>Groups</{h}>{groups}'
        f"<{h}>Rates by group</{h}>{key}{_rates_svg(result)}</section>"
    )


def fairness_html(result: FairnessResult, *, title: str = "Fairness report") -> HtmlReport:
    """Render a :class:`FairnessResult` as one self-contained HTML page."""
    verdict = '<span class="badge good">passed</span>' if result.passed else '<span class="badge bad">failed</span>'
    body = (
        f"<h1>{_e(title)} {verdict}</h1>"
        f'<div class="meta">{_e(result.summary())} · computed in {result.seconds * 1000:.0f} ms · {_stamp()}</div>'
        + fairness_section(result)
    )
    return _page(title, body)
