"""The audit report of one run: what produced its model, from the store's records alone.

:func:`collect` gathers, for a run, everything an auditor asks for: the run
(pipeline, status, parameters, who started it where, the git commit), each
step (code fingerprint, cache key, attempts, packages, inputs, outputs), the
data (content addresses and the columns and row counts of tables), the
quality results (validation, drift, fairness) and metrics found among the
outputs, the model registry records (MLflow versions and promotions) and the
run's ledger entry with a fresh verification. :func:`render_html` turns it
into one self-contained HTML page (no script, no external resource) and
:func:`render_markdown` into a model card.

Everything comes from the store: run and step records, object sidecars and the
JSON of small outputs. Nothing is recomputed and no user code is imported;
large or pickled outputs are named, never loaded.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from typing import Any

from mlpipe.store import ArtifactStore

__all__ = ["AuditReport", "collect", "render_html", "render_markdown"]

_JSON_MATERIALIZERS = frozenset({"pydantic.json", "json"})
_MAX_JSON_BYTES = 2_000_000  # larger JSON outputs are data, not results: named, not loaded
_QUALITY_TYPES = {"ValidationReport": "validation", "DriftResult": "drift", "FairnessResult": "fairness"}
_REGISTRY_TYPES = {"ModelVersionRef": "version", "Promotion": "promotion"}


@dataclass
class Output:
    """One step output as the report shows it."""

    step: str
    name: str
    digest: str
    type: str
    materializer: str
    size: int | None
    columns: list[str] | None = None
    rows: int | None = None
    value: Any = None  # the parsed JSON of a small JSON output

    @property
    def label(self) -> str:
        return f"{self.step}.{self.name}"

    @property
    def short_type(self) -> str:
        return self.type.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


@dataclass
class AuditReport:
    """Everything the audit report shows about one run (see the module docstring).

    Attributes:
        run: The run document (``run.json``).
        steps: The step records, in the pipeline's order.
        outputs: Every step output.
        quality: ``(kind, output, result)`` for each validation, drift and fairness result.
        metrics: Outputs that are flat mappings of numbers, by ``step.output``.
        registry: ``(kind, output, value)`` for each registered model version and promotion.
        tracking: The run's tracking record (MLflow parent run), if any.
        ledger: The run's ledger entry, if sealed.
        verification: What :func:`mlpipe.ledger.verify` found for this run.
        mlpipe_version: The mlpipe version that compiled the pipeline.
        generated: When the report was made.
    """

    run: dict[str, Any]
    steps: list[dict[str, Any]]
    outputs: list[Output]
    quality: list[tuple[str, Output, Any]] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    registry: list[tuple[str, Output, dict[str, Any]]] = field(default_factory=list)
    tracking: dict[str, Any] | None = None
    ledger: dict[str, Any] | None = None
    verification: Any = None
    mlpipe_version: str | None = None
    generated: float = 0.0

    @property
    def run_id(self) -> str:
        return str(self.run["id"])

    @property
    def models(self) -> list[Output]:
        """Outputs that are neither tables, arrays nor JSON: the trained models and other objects."""
        return [
            o
            for o in self.outputs
            if o.materializer not in _JSON_MATERIALIZERS | {"pandas.parquet", "numpy.npy", "html"}
        ]

    @property
    def data(self) -> list[Output]:
        return [o for o in self.outputs if o.materializer in ("pandas.parquet", "numpy.npy")]


def _quality_class(kind: str) -> Any:
    from mlpipe import quality as q

    return {"validation": q.ValidationReport, "drift": q.DriftResult, "fairness": q.FairnessResult}[kind]


def _is_metrics(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value.values())
    )


def collect(store: ArtifactStore, run_id: str, *, verify: bool = True) -> AuditReport:
    """Gather the audit report of a run (a unique prefix of its id is enough).

    Args:
        store: The store holding the run.
        run_id: The run.
        verify: Check the run's sealed records and objects against the ledger.

    Raises:
        RunNotFoundError: No such run in the store.
    """
    from mlpipe import ledger
    from mlpipe.integrity import verify as verify_run
    from mlpipe.records import load_step_records
    from mlpipe.run import get_run

    run = get_run(run_id, store)
    doc = store.get_json(f"runs/{run.id}/run.json")
    records = load_step_records(store, run.id)
    order = [n for n in (doc.get("order") or []) if n in records] + sorted(set(records) - set(doc.get("order") or []))
    steps = [records[n] for n in order]
    report = AuditReport(run=doc, steps=steps, outputs=[], generated=time.time())
    if doc.get("ir") and store.has(f"pipelines/{doc['ir']}.json"):
        report.mlpipe_version = store.get_json(f"pipelines/{doc['ir']}.json").get("mlpipe_version")
    for record in steps:
        for name, info in (record.get("outputs") or {}).items():
            report.outputs.append(_output(store, record["step"], name, info))
    for out in report.outputs:
        kind = _QUALITY_TYPES.get(out.short_type)
        if kind and isinstance(out.value, dict):
            try:
                report.quality.append((kind, out, _quality_class(kind).model_validate(out.value)))
            except (ImportError, ValueError):  # pandas missing, or a result of another version: show it raw
                report.quality.append((kind, out, out.value))
            continue
        registry = _REGISTRY_TYPES.get(out.short_type)
        if registry and isinstance(out.value, dict):
            report.registry.append((registry, out, out.value))
        elif _is_metrics(out.value):
            report.metrics[out.label] = {k: float(v) for k, v in out.value.items()}
    if store.has(f"runs/{run.id}/tracking.json"):
        report.tracking = store.get_json(f"runs/{run.id}/tracking.json")
    for entry in ledger.entries(store):
        if entry.kind == "run" and entry.run_id == run.id:
            report.ledger = {"seq": entry.seq, "digest": entry.digest, **entry.doc}
    if verify:
        report.verification = verify_run(store, runs=[run.id])
    return report


def _output(store: ArtifactStore, step: str, name: str, info: dict[str, Any]) -> Output:
    out = Output(
        step=step,
        name=name,
        digest=str(info.get("digest")),
        type=str(info.get("type") or "?"),
        materializer=str(info.get("materializer") or "?"),
        size=info.get("size"),
    )
    try:
        meta = store.meta(out.digest)
    except Exception:  # the object is gone (gc) or unreadable: the report says what the record says
        return out
    if out.materializer == "pandas.parquet":
        out.columns = [str(c) for c in meta.get("columns") or []] or None
        out.rows = meta.get("rows")
    elif out.materializer in _JSON_MATERIALIZERS and (out.size or 0) <= _MAX_JSON_BYTES:
        try:
            out.value = json.loads(bytes(store.read_verified(out.digest, meta)))
        except Exception:  # corrupted (the verification section says so) or not JSON after all
            out.value = None
    return out


# -- shared formatting -----------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _duration(run: dict[str, Any]) -> str:
    if run.get("started") and run.get("ended"):
        return f"{run['ended'] - run['started']:.2f} s"
    return "-"


def _git(run: dict[str, Any]) -> str:
    git = run.get("git") or {}
    if not git.get("commit"):
        return "not recorded (not started in a git work tree)" if "git" in run else "not recorded"
    branch = f" on {git['branch']}" if git.get("branch") else ""
    return f"{git['commit']}{branch}"


def _input_text(value: dict[str, Any]) -> str:
    if value.get("kind") == "artifact":
        return f"{value.get('step')}.{value.get('output')} @ {str(value.get('digest'))[:12]}"
    text = json.dumps(value.get("value"), sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _quality_summary(kind: str, result: Any) -> tuple[bool | None, str]:
    if isinstance(result, dict):
        return result.get("passed"), f"{kind} result (not readable by this mlpipe version)"
    return bool(result.passed), result.summary()


# -- HTML ------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px 32px;color:#1f2328;
background:#fff;max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:30px 0 8px;border-bottom:1px solid #d1d9e0;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}h4{font-size:13px;margin:12px 0 6px;color:#59636e}
.meta{color:#59636e;font-size:13px;margin-bottom:14px}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;font-size:13px;color:#fff}
.bad{background:#cf222e}.good{background:#1a7f37}.warn{background:#9a6700}.neutral{background:#59636e}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{border:1px solid #d1d9e0;border-radius:8px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:18px}.card span{color:#59636e;font-size:12px}
table{border-collapse:collapse;font-size:13px;width:100%;margin-bottom:8px}
th,td{border-bottom:1px solid #e6eaef;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}td.r,th.r{text-align:right}
tr.drift td{background:#fff5f5}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;font-size:13px;margin:0}
dt{color:#59636e}dd{margin:0}
.key{font-size:12px;color:#59636e}.key i{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
svg text{font-size:10px;fill:#59636e}
details summary{cursor:pointer;font-size:13px;color:#0969da}
"""


def _badge(ok: bool | None, yes: str = "passed", no: str = "failed") -> str:
    if ok is None:
        return '<span class="badge neutral">unknown</span>'
    return f'<span class="badge good">{yes}</span>' if ok else f'<span class="badge bad">{no}</span>'


def _status_badge(status: str) -> str:
    cls = {"succeeded": "good", "failed": "bad", "cancelled": "warn", "skipped": "warn"}.get(status, "neutral")
    return f'<span class="badge {cls}">{_e(status)}</span>'


def _dl(rows: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _table(head: list[str], rows: list[list[str]], cls: str = "", right: frozenset[int] = frozenset()) -> str:
    def cell(tag: str, i: int, content: str) -> str:
        return f'<{tag} class="r">{content}</{tag}>' if i in right else f"<{tag}>{content}</{tag}>"

    ths = "".join(cell("th", i, _e(h)) for i, h in enumerate(head))
    trs = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table>'


def _quality_html(kind: str, out: Output, result: Any) -> str:
    ok, summary = _quality_summary(kind, result)
    head = f'<h3 id="q-{_e(out.label)}">{_e(out.label)} {_badge(ok)}</h3><p class="meta">{_e(summary)}</p>'
    if isinstance(result, dict):
        return head
    if kind == "fairness":
        from mlpipe.quality.report import fairness_section

        return head + fairness_section(result, heading="h4")
    if kind == "validation":
        rows = [
            [
                _e(v.column if v.column is not None else "(table)"),
                _e(v.check),
                f"{v.failing:,}",
                _e(", ".join(str(x) for x in v.examples)),
            ]
            for v in result.violations
        ]
        table = _table(["column", "rule", "failing", "examples"], rows, "validation", frozenset({2}))
        return head + (table if rows else "<p>Every rule holds.</p>")
    rows = [
        [
            _e(c.column),
            c.kind,
            "KS" if c.test == "ks" else "chi²",
            "-" if c.p_value is None else f"{c.p_value:.3g}",
            f"{c.psi:.4f}",
            _badge(not c.drifted, "ok", "drift"),
        ]
        for c in result.columns
    ]
    rows += [[_e(name), "-", "-", "-", "-", _badge(False, "ok", "missing")] for name in result.missing_columns]
    return head + _table(["column", "type", "test", "p-value", "PSI", "status"], rows, "drift", frozenset({3, 4}))


def render_html(report: AuditReport) -> str:
    """The audit report as one self-contained HTML document."""
    run = report.run
    title = f"Audit report: {run.get('pipeline')} run {report.run_id}"
    verification = report.verification
    integrity_ok = None if verification is None else (verification.ok and report.ledger is not None)
    cards = "".join(
        f'<div class="card"><b>{v}</b><span>{_e(label)}</span></div>'
        for v, label in (
            (_status_badge(str(run.get("status"))), "status"),
            (_e(len(report.steps)), "steps"),
            (_e(sum(1 for s in report.steps if s.get("cached"))), "cache hits"),
            (_e(_duration(run)), "duration"),
            (_badge(integrity_ok, "verified", "not verified"), "ledger"),
        )
    )
    sections = [
        f"<h1>{_e(title)}</h1>",
        f'<div class="meta">generated {_when(report.generated)} from the store {_e(run.get("store") or "")}</div>',
        f'<div class="cards">{cards}</div>',
    ]
    sections.append('<h2 id="run">Run</h2>')
    sections.append(
        _dl(
            [
                ("run id", f"<code>{_e(report.run_id)}</code>"),
                ("pipeline", _e(run.get("pipeline"))),
                ("status", _status_badge(str(run.get("status")))),
                ("backend", _e(run.get("backend"))),
                ("started", _e(_when(run.get("started")))),
                ("ended", _e(_when(run.get("ended")))),
                ("started by", _e(run.get("user") or "not recorded")),
                ("host", _e(f"{run.get('host') or 'not recorded'} (pid {run.get('pid') or '-'})")),
                ("git commit", f"<code>{_e(_git(run))}</code>"),
                ("pipeline IR", f"<code>{_e(run.get('ir') or '-')}</code>"),
                ("mlpipe", _e(report.mlpipe_version or "-")),
                ("cache", _e("used" if run.get("cache", True) else "off (--no-cache)")),
            ]
            + ([("error", f"<code>{_e(run['error'])}</code>")] if run.get("error") else [])
        )
    )
    params = [
        [f"<code>{_e(k)}</code>", f"<code>{_e(json.dumps(v, default=str))}</code>"]
        for k, v in sorted((run.get("params") or {}).items())
    ]
    sections.append('<h2 id="parameters">Parameters</h2>')
    sections.append(_table(["parameter", "value"], params, "params") if params else "<p>No parameters.</p>")

    sections.append('<h2 id="models">Models</h2>')
    if report.models:
        rows = [
            [_e(o.label), _e(o.type), _e(o.materializer), _size(o.size), f"<code>{_e(o.digest)}</code>"]
            for o in report.models
        ]
        sections.append(
            _table(["output", "type", "stored as", "size", "content address"], rows, "models", frozenset({3}))
        )
    else:
        sections.append("<p>No model-like outputs (every output is a table, an array or a JSON value).</p>")

    sections.append('<h2 id="metrics">Metrics</h2>')
    if report.metrics:
        rows = [
            [_e(label), _e(name), f"{value:.6g}"]
            for label, values in report.metrics.items()
            for name, value in values.items()
        ]
        sections.append(_table(["output", "metric", "value"], rows, "metrics", frozenset({2})))
    else:
        sections.append("<p>No output is a mapping of numbers.</p>")

    sections.append('<h2 id="data">Data</h2>')
    if report.data:
        rows = []
        for o in report.data:
            cols = ""
            if o.columns:
                shown = ", ".join(o.columns[:12]) + (f", … ({len(o.columns)} columns)" if len(o.columns) > 12 else "")
                cols = _e(shown)
            rows.append(
                [
                    _e(o.label),
                    _e(o.short_type),
                    "-" if o.rows is None else f"{o.rows:,}",
                    cols,
                    _size(o.size),
                    f"<code>{_e(o.digest)}</code>",
                ]
            )
        sections.append(
            _table(["artifact", "type", "rows", "columns", "size", "content address"], rows, "data", frozenset({2, 4}))
        )
    else:
        sections.append("<p>No tables or arrays among the outputs.</p>")

    sections.append('<h2 id="quality">Validation, drift and fairness</h2>')
    if report.quality:
        for kind, out, result in report.quality:
            sections.append(_quality_html(kind, out, result))
    else:
        sections.append("<p>The run has no validation, drift or fairness step.</p>")

    sections.append('<h2 id="code">Code and steps</h2>')
    rows = []
    for s in report.steps:
        code = s.get("code") or {}
        where = f"{code.get('module') or '?'}.{code.get('qualname') or '?'}"
        inputs = "<br>".join(
            f"{_e(k)} = <code>{_e(_input_text(v))}</code>"
            for k, v in sorted(((s.get("components") or {}).get("inputs") or {}).items())
        )
        packages = ", ".join(f"{k} {v}" for k, v in sorted((s.get("packages") or {}).items()))
        rows.append(
            [
                _e(s.get("step")),
                _status_badge(str(s.get("status"))) + (" (cache hit)" if s.get("cached") else ""),
                _e(s.get("attempts", 1)),
                _e(where),
                f"<code>{_e(code.get('fingerprint') or '-')}</code>",
                f"<code>{_e(s.get('key') or '-')}</code>",
                inputs or "-",
                _e(packages or "-"),
            ]
        )
    sections.append(
        _table(
            ["step", "status", "attempts", "function", "code fingerprint", "cache key", "inputs", "packages"],
            rows,
            "steps",
            frozenset({2}),
        )
    )
    errors = [(s.get("step"), s.get("error")) for s in report.steps if s.get("error")]
    if errors:
        sections.append(
            "<h3>Errors and skip reasons</h3>"
            + _table(["step", "error"], [[_e(n), f"<code>{_e(str(err)[:2000])}</code>"] for n, err in errors], "errors")
        )

    sections.append('<h2 id="registry">Registry and deployment</h2>')
    if report.registry or report.tracking:
        rows = []
        for kind, out, value in report.registry:
            if kind == "version":
                what = f"registered {value.get('name')} version {value.get('version')} ({value.get('model_uri')})"
            else:
                verdict = "promoted" if value.get("promoted") else "not promoted"
                what = f"{value.get('name')} v{value.get('version')} → alias {value.get('alias')}: {verdict}"
                if value.get("reasons"):
                    what += "; " + "; ".join(str(r) for r in value["reasons"])
            rows.append([_e(out.label), _e(what)])
        if report.tracking:
            rows.append(["tracking", f"<code>{_e(json.dumps(report.tracking, sort_keys=True))}</code>"])
        sections.append(_table(["from", "record"], rows, "registry"))
    else:
        sections.append("<p>The run registered no model version and has no tracking or deployment record.</p>")

    sections.append('<h2 id="integrity">Integrity</h2>')
    if report.ledger is None:
        sections.append(
            f"<p>{_badge(None)} The run is not in the ledger (it was not sealed), so its records "
            "cannot be checked for changes.</p>"
        )
    else:
        entry = report.ledger
        facts: list[tuple[str, str]] = [
            ("ledger entry", f"{entry['seq']} (<code>{_e(entry['digest'])}</code>)"),
            ("sealed", _e(_when(entry.get("sealed")))),
            ("sealed by", _e(f"{(entry.get('by') or {}).get('user')} on {(entry.get('by') or {}).get('host')}")),
            ("previous entry", f"<code>{_e(entry.get('prev'))}</code>"),
        ]
        if verification is not None:
            verdict = (
                "nothing changed since the run was sealed"
                if verification.ok
                else "<br>".join(_e(str(f)) for f in verification.findings)
            )
            facts.append(("verification", f"{_badge(verification.ok, 'verified', 'changed')} {verdict}"))
        sections.append(_dl(facts))
    body = "".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


# -- Markdown model card ---------------------------------------------------------------------


def _md(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: AuditReport) -> str:
    """The audit report as a Markdown model card."""
    run = report.run
    lines = [f"# Model card: {run.get('pipeline')}", ""]
    lines += [
        f"Run `{report.run_id}` ({run.get('status')}), {_when(run.get('started'))}, "
        f"backend `{run.get('backend')}`. Generated {_when(report.generated)} by `mlpipe report`.",
        "",
        "## Model details",
        "",
        "| | |",
        "|---|---|",
        f"| pipeline | `{_md(run.get('pipeline'))}` |",
        f"| run | `{report.run_id}` |",
        f"| status | {_md(run.get('status'))} |",
        f"| started by | {_md(run.get('user') or 'not recorded')} on {_md(run.get('host') or 'not recorded')} |",
        f"| git commit | `{_md(_git(run))}` |",
        f"| pipeline IR | `{_md(run.get('ir') or '-')}` |",
        f"| mlpipe | {_md(report.mlpipe_version or '-')} |",
        "",
    ]
    if report.models:
        lines += ["### Models", "", "| output | type | size | content address |", "|---|---|---|---|"]
        lines += [f"| {_md(o.label)} | `{_md(o.type)}` | {_size(o.size)} | `{o.digest}` |" for o in report.models]
        lines.append("")
    lines += ["## Parameters", ""]
    params = sorted((run.get("params") or {}).items())
    if params:
        lines += ["| parameter | value |", "|---|---|"]
        lines += [f"| `{_md(k)}` | `{_md(json.dumps(v, default=str))}` |" for k, v in params]
    else:
        lines.append("No parameters.")
    lines += ["", "## Metrics", ""]
    if report.metrics:
        lines += ["| output | metric | value |", "|---|---|---|"]
        lines += [
            f"| {_md(label)} | {_md(name)} | {value:.6g} |"
            for label, values in report.metrics.items()
            for name, value in values.items()
        ]
    else:
        lines.append("No output is a mapping of numbers.")
    lines += ["", "## Training and evaluation data", ""]
    if report.data:
        lines += ["| artifact | rows | columns | content address |", "|---|---|---|---|"]
        for o in report.data:
            cols = ", ".join(o.columns[:12]) + (" …" if o.columns and len(o.columns) > 12 else "") if o.columns else ""
            lines.append(f"| {_md(o.label)} | {'-' if o.rows is None else o.rows} | {_md(cols)} | `{o.digest}` |")
    else:
        lines.append("No tables or arrays among the outputs.")
    lines += ["", "## Quality and fairness", ""]
    if report.quality:
        for kind, out, result in report.quality:
            ok, summary = _quality_summary(kind, result)
            lines.append(f"- **{_md(out.label)}** ({kind}, {'passed' if ok else 'failed'}): {_md(summary)}")
            if kind == "fairness" and not isinstance(result, dict):
                lines += ["", "  | disparity | value | limit | verdict |", "  |---|---|---|---|"]
                for d in result.disparities:
                    value = "-" if d.value is None else f"{d.value:.3f}"
                    limit = "-" if d.threshold is None else f"{'≥' if d.is_ratio else '≤'} {d.threshold:g}"
                    verdict = "not checked" if d.threshold is None else ("ok" if d.passed else "fail")
                    lines.append(f"  | {d.name} | {value} | {limit} | {verdict} |")
                lines.append("")
    else:
        lines.append("The run has no validation, drift or fairness step.")
    lines += ["", "## Provenance", "", "| step | status | code fingerprint | cache key |", "|---|---|---|---|"]
    for s in report.steps:
        status = f"{s.get('status')}{' (cache hit)' if s.get('cached') else ''}"
        fingerprint = (s.get("code") or {}).get("fingerprint") or "-"
        lines.append(f"| {_md(s.get('step'))} | {_md(status)} | `{fingerprint}` | `{s.get('key') or '-'}` |")
    lines += ["", "## Registry", ""]
    if report.registry:
        for kind, out, reg in report.registry:
            if kind == "version":
                lines.append(f"- {_md(out.label)}: registered {reg.get('name')} version {reg.get('version')}")
            else:
                verdict = "promoted" if reg.get("promoted") else "not promoted"
                lines.append(f"- {_md(out.label)}: {reg.get('name')} v{reg.get('version')} {verdict}")
    else:
        lines.append("No model version registered by this run.")
    lines += ["", "## Integrity", ""]
    if report.ledger is None:
        lines.append("The run is not in the ledger: its records cannot be checked for changes.")
    else:
        lines.append(f"Ledger entry {report.ledger['seq']} (`{report.ledger['digest']}`).")
        if report.verification is not None:
            if report.verification.ok:
                lines.append("Verified: nothing changed since the run was sealed.")
            else:
                lines.append("**Changed after sealing:**")
                lines += [f"- {_md(str(f))}" for f in report.verification.findings]
    return "\n".join(lines) + "\n"
