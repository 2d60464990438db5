"""The run ledger: every closed run is chained; `mlpipe verify` finds each kind of change made after sealing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from resources import pipelines as rp
from typer.testing import CliRunner

from mlpipe import integrity, ledger
from mlpipe.cli import app
from mlpipe.gc import collect
from mlpipe.store import open_store


def _two_runs() -> tuple[str, str]:
    first = rp.arithmetic.run(n=4)
    second = rp.arithmetic.run(n=6)
    assert first.status == second.status == "succeeded"
    return first.id, second.id


def _verify() -> tuple[int, str]:
    result = CliRunner().invoke(app, ["verify"])
    return result.exit_code, result.output


def test_each_closed_run_is_chained_to_the_one_before() -> None:
    a, b = _two_runs()
    store = open_store(".mlpipe")
    chain = ledger.entries(store)
    assert [e.run_id for e in chain] == [a, b]
    assert chain[0].doc["prev"] == ledger.GENESIS and chain[1].doc["prev"] == chain[0].digest
    assert set(chain[1].doc["steps"]) == {"numbers", "split", "halves", "total", "add", "add_2"}
    assert chain[1].doc["by"]["host"] and chain[1].doc["status"] == "succeeded"
    doc = json.loads(Path(f".mlpipe/runs/{a}/run.json").read_text())
    assert ledger.seal_run(store, a, doc, {}) == chain[0]  # sealing again is a no-op
    code, out = _verify()
    assert code == 0, out
    assert "2 entries, 2 sealed runs" in out and "nothing changed since it was sealed" in out
    assert f"head {chain[1].digest}" in out


def test_a_changed_run_record_is_reported() -> None:
    a, _b = _two_runs()
    path = Path(f".mlpipe/runs/{a}/run.json")
    doc = json.loads(path.read_text())
    doc["params"]["n"] = 40
    path.write_text(json.dumps(doc))
    code, out = _verify()
    assert code == 1
    assert f"run {a}: the run record changed after it was sealed" in out
    assert "1 changes after sealing" in out


def test_a_changed_or_added_step_record_is_reported() -> None:
    a, _b = _two_runs()
    path = Path(f".mlpipe/runs/{a}/steps.json")
    docs = json.loads(path.read_text())
    docs["total"]["duration"] = 0.0
    docs["forged"] = {**docs["total"], "step": "forged"}
    path.write_text(json.dumps(docs))
    code, out = _verify()
    assert code == 1
    assert f"step total (run {a}): the step record changed after sealing" in out
    assert f"step forged (run {a}): a step record was added after sealing" in out


def test_a_changed_object_is_reported_and_the_store_is_left_alone() -> None:
    run = rp.arithmetic.run(n=4)
    digest = run.steps["numbers"].record["outputs"]["output"]["digest"]
    obj = Path(".mlpipe/objects") / digest[:2] / digest
    obj.write_bytes(obj.read_bytes().replace(b"3", b"9"))
    code, out = _verify()
    assert code == 1
    assert f"object {digest} (run {run.id}): its bytes no longer match its address" in out
    assert obj.exists()  # verify reports; it does not quarantine
    code, out = CliRunner().invoke(app, ["verify", "--no-objects"]).exit_code, ""
    assert code == 0  # without re-hashing, only existence is checked
    obj.unlink()
    code, out = _verify()
    assert code == 1 and f"object {digest} (run {run.id}): missing from the store" in out


def test_a_changed_deleted_or_reordered_ledger_entry_breaks_the_chain() -> None:
    _two_runs()
    rp.arithmetic.run(n=8)
    first = Path(".mlpipe/ledger/000000000000.json")
    first.write_text(first.read_text().replace('"succeeded"', '"failed"'))
    code, out = _verify()
    assert code == 1 and "ledger entry 1: changed: it no longer links to the entry before it" in out
    Path(".mlpipe/ledger/000000000001.json").unlink()
    code, out = _verify()
    assert "ledger entry 1: missing (next entry is 2" in out


def test_a_removed_run_is_reported_unless_gc_removed_it() -> None:
    a, b = _two_runs()
    collect(open_store(".mlpipe"), keep_runs=1)
    assert not Path(f".mlpipe/runs/{a}/run.json").exists()
    code, out = _verify()
    assert code == 0, out
    chain = ledger.entries(open_store(".mlpipe"))
    assert chain[-1].kind == "removed" and chain[-1].doc["run_ids"] == [a]
    import shutil

    shutil.rmtree(f".mlpipe/runs/{b}")
    code, out = _verify()
    assert code == 1 and f"run {b}: the run record was removed after it was sealed" in out


def test_runs_closed_before_the_ledger_are_listed_apart() -> None:
    a, b = _two_runs()
    import shutil

    shutil.rmtree(".mlpipe/ledger")
    result = CliRunner().invoke(app, ["verify", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["ok"] and report["entries"] == 0 and report["unsealed"] == sorted([a, b])


def test_a_changed_report_file_is_reported() -> None:
    from resources import quality_pipelines as qp

    run = qp.drift_gated.run(shift=0.0)
    report = Path(run.steps["detect_drift"].reports["report"])
    report.write_text(report.read_text().replace("no drift", "all fine"))
    code, out = _verify()
    assert code == 1 and f"file runs/{run.id}/reports/detect_drift.report.html (run {run.id}): changed" in out


def test_concurrent_sealers_get_consecutive_entries(tmp_path: Path) -> None:
    """Two processes appending at once: every entry lands once, numbered without gaps, and the chain links."""
    script = textwrap.dedent(
        """
        import sys
        from mlpipe import integrity, ledger
        from mlpipe.store import open_store
        store = open_store(sys.argv[1])
        for i in range(25):
            ledger._append(store, {"kind": "note", "writer": sys.argv[2], "i": i})
        """
    )
    store_dir = tmp_path / "store"
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(store_dir), name]) for name in ("a", "b")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    chain = ledger.entries(open_store(str(store_dir)))
    assert [e.seq for e in chain] == list(range(50))
    assert sorted((e.doc["writer"], e.doc["i"]) for e in chain) == sorted(
        (w, i) for w in "ab" for i in range(25)
    )
    report = integrity.verify(open_store(str(store_dir)))
    assert report.ok, report.to_text()


def test_only_a_closed_run_can_be_sealed() -> None:
    run = rp.arithmetic.run(n=4)
    doc = {**json.loads(Path(f".mlpipe/runs/{run.id}/run.json").read_text()), "id": "x", "status": "running"}
    with pytest.raises(ValueError, match="run x is running; only a closed run can be sealed"):
        ledger.seal_run(open_store(".mlpipe"), "x", doc, {})
