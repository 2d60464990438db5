"""`mlpipe report`: the audit report and model card of a run, from the store, checked in headless chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from resources import browser

pytest.importorskip("fairlearn")
pytest.importorskip("sklearn")

from resources import audit_pipelines as ap
from typer.testing import CliRunner

from mlpipe.audit import collect
from mlpipe.cli import app
from mlpipe.store import open_store


def _report(run_id: str, *args: str) -> str:
    result = CliRunner().invoke(app, ["report", run_id, *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_audit_report_holds_every_section_from_the_store(tmp_path: Path) -> None:
    run = ap.credit.run(n=400)
    assert run.status == "succeeded", run.error
    page = tmp_path / "report.html"
    out = _report(run.id[:15], "-o", str(page))
    assert out.strip() == f"wrote the audit report of run {run.id} to {page}"
    text = page.read_text()
    # self-contained: nothing fetched, nothing run
    assert "<script" not in text and "<link" not in text and not re.search(r"\bsrc=", text)
    records = {name: s.record for name, s in run.steps.items()}
    for needle in (
        run.id,
        records["train"]["outputs"]["output"]["digest"],  # the model's content address
        records["applicants"]["outputs"]["output"]["digest"],  # the data's
        records["train"]["code"]["fingerprint"],
        records["train"]["key"],
        "LogisticRegression",
        "income, age, group, label",  # the table's columns from the sidecar
        "check_applicants.report",
        "validation of &#x27;applicants&#x27; passed",
        "detect_drift.result",
        "check_fairness.result",
        "demographic_parity",
        "accuracy",  # a metric of evaluate.output
        "nothing changed since the run was sealed",
    ):
        assert needle in text, needle

    dom = browser.dump_dom(page)
    # the browser parsed the tables: the metrics table has one row per metric of the Metrics output
    metrics = re.search(r'<table class="metrics">.*?</table>', dom, re.S)
    assert metrics is not None
    accuracy = run.output("evaluate").accuracy
    assert f"<td>accuracy</td><td class=\"r\">{accuracy:.6g}</td>" in metrics.group(0)
    assert metrics.group(0).count("<tr>") == 4  # header + accuracy, positive_rate, n_test
    steps = re.search(r'<table class="steps">.*?</table>', dom, re.S)
    assert steps is not None and steps.group(0).count("<tr>") == len(run.steps) + 1
    assert 'id="integrity"' in dom and "verified" in dom
    png = browser.screenshot(page, tmp_path / "report.png")
    assert png.stat().st_size > 20_000  # a rendered page, not a blank one


def test_model_card_in_markdown() -> None:
    run = ap.credit.run(n=400)
    card = _report(run.id, "--format", "markdown")
    assert card.startswith("# Model card: credit\n")
    assert f"| run | `{run.id}` |" in card
    assert "| `n` | `400` |" in card
    assert "| evaluate.output | accuracy |" in card
    assert "| demographic_parity |" in card
    assert "Verified: nothing changed since the run was sealed." in card
    assert f"`{run.steps['train'].record['outputs']['output']['digest']}`" in card


def test_report_shows_changes_made_after_sealing(tmp_path: Path) -> None:
    run = ap.credit.run(n=400)
    path = Path(f".mlpipe/runs/{run.id}/run.json")
    doc = json.loads(path.read_text())
    doc["params"]["c"] = 0.01
    path.write_text(json.dumps(doc))
    audit = collect(open_store(".mlpipe"), run.id)
    assert audit.verification is not None and not audit.verification.ok
    page = tmp_path / "tampered.html"
    _report(run.id, "-o", str(page))
    dom = browser.dump_dom(page)
    assert "the run record changed after it was sealed" in dom
    assert '<span class="badge bad">changed</span>' in dom


def test_failed_run_report_names_the_failed_gate_and_skips(tmp_path: Path) -> None:
    from mlpipe import quality as q

    failing = q.fairness_step("group", name="check_fairness", thresholds=q.FairnessThresholds(demographic_parity=0.0))

    import mlpipe as mp

    @mp.pipeline
    def strict_credit():
        scored = ap.score(ap.train(ap.applicants(n=300)), ap.applicants(n=300, seed=1))
        result, _report = failing(scored)
        return ap.evaluate(scored), ap.register(result)

    run = strict_credit.run()
    assert run.status == "failed"
    page = tmp_path / "failed.html"
    _report(run.id, "-o", str(page))
    dom = browser.dump_dom(page)
    assert '<span class="badge bad">failed</span>' in dom
    assert "skipped because quality gate 'check_fairness' failed" in dom  # the browser decoded the escapes


def test_unknown_run_is_a_clear_error() -> None:
    result = CliRunner().invoke(app, ["report", "nope"])
    assert result.exit_code != 0
    assert "nope" in result.output or "nope" in str(result.exception)
    bad = CliRunner().invoke(app, ["report", "x", "--format", "pdf"])
    assert bad.exit_code == 2 and "--format must be html or markdown, got 'pdf'" in bad.output
