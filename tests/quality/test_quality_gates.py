"""Quality gates in pipelines: a failed gate skips its dependents with the reason; reports reach the run record."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from resources import quality_pipelines as qp
from typer.testing import CliRunner

import mlpipe as mp
from mlpipe import quality as q
from mlpipe.backend import Capabilities
from mlpipe.errors import DefinitionError, UnsupportedFeatureError
from mlpipe.local import LocalBackend


def test_failed_validation_gate_skips_dependents_with_the_reason() -> None:
    run = qp.validate_stop.run(bad=True)
    assert run.status == "failed"
    gate = run.steps["check_batch"]
    assert gate.status == "failed"
    assert "validation of 'batch' failed: 2 violations in 2 columns (600 rows)" in (gate.error or "")
    assert "le(10)" in (gate.error or "") and "'zzz'" in (gate.error or "")
    assert gate.traceback is None  # a gate reports, it does not crash
    for name in ("register", "deploy"):
        step = run.steps[name]
        assert step.status == "skipped"
        assert step.error == (
            "skipped because quality gate 'check_batch' failed: "
            "validation of 'batch' failed: 2 violations in 2 columns (600 rows)"
        )
        assert step.record["error"] == step.error  # the reason is in the stored record
    assert run.steps["count_rows"].status == "succeeded"  # independent branch still runs
    assert "step 'check_batch' failed" in (run.error or "")
    with pytest.raises(mp.MlpipeError):
        run.raise_for_status()
    reloaded = mp.get_run(run.id)
    assert reloaded.steps["deploy"].status == "skipped" and reloaded.status == "failed"


def test_passing_gate_lets_everything_run() -> None:
    run = qp.validate_stop.run(bad=False)
    assert run.status == "succeeded", run.error
    assert run.output("deploy") == "deployed: registered model trained on 600 rows"
    report = run.output("check_batch", "report")
    assert isinstance(report, q.ValidationReport) and report.passed


def test_warn_mode_continues_and_stores_the_failed_report(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mlpipe.quality"):
        run = qp.validate_warn.run(bad=True)
    assert run.status == "succeeded", run.error
    report = run.output("check_batch", "report")
    assert isinstance(report, q.ValidationReport) and not report.passed
    assert {(v.column, v.rule) for v in report.violations} == {("x", "le"), ("c", "isin")}
    assert "validation of 'batch' failed" in caplog.text


def test_drift_gate_keeps_the_report_and_skips_publishing() -> None:
    run = qp.drift_gated.run(shift=2.0)
    assert run.status == "failed"
    assert run.steps["detect_drift"].status == "succeeded"
    assert run.steps["drift_gate"].status == "failed"
    assert run.steps["publish"].status == "skipped"
    assert "quality gate 'drift_gate' failed: drift detected" in (run.steps["publish"].error or "")
    result = run.output("detect_drift", "result")
    assert isinstance(result, q.DriftResult) and result.drifted and result.drifted_columns == ["x"]
    assert run.steps["detect_drift"].reports == run.steps["detect_drift"].record["reports"]
    path = Path(run.steps["detect_drift"].reports["report"])
    assert path.name == "detect_drift.report.html" and path.parent.parent.name == run.id
    assert path.read_text() == str(run.output("detect_drift", "report"))


def test_reports_are_published_for_cache_hits_too() -> None:
    first = qp.drift_gated.run(shift=0.0)
    assert first.status == "succeeded", first.error
    second = qp.drift_gated.run(shift=0.0)
    assert second.steps["detect_drift"].cached
    path = Path(second.steps["detect_drift"].reports["report"])
    assert second.id in str(path) and path.is_file()
    assert path.read_bytes() == Path(first.steps["detect_drift"].reports["report"]).read_bytes()


def test_runs_show_points_to_the_report() -> None:
    from mlpipe.cli import app

    run = qp.drift_gated.run(shift=2.0)
    shown = CliRunner().invoke(app, ["runs", "show", run.id])
    assert shown.exit_code == 0, shown.output
    assert "report detect_drift.report: " in shown.output
    assert f"runs/{run.id}/reports/detect_drift.report.html" in shown.output.replace("\n", "")


class _NoGates(LocalBackend):
    name = "nogates"
    capabilities = Capabilities(parallel=True, resources=True, retries=True, timeouts=True, gates=False)


def test_backend_without_gates_refuses_before_running() -> None:
    with pytest.raises(UnsupportedFeatureError, match="cannot run quality gate 'check_batch'") as info:
        qp.validate_stop.run(backend=_NoGates())
    assert info.value.step == "check_batch"
    assert not Path(".mlpipe/runs").exists() or not any(Path(".mlpipe/runs").iterdir())
    with pytest.raises(UnsupportedFeatureError, match="gates' capability"):
        qp.validate_stop.compile(_NoGates(), str(Path("never-written.json")))
    assert not Path("never-written.json").exists()
    # A pipeline without gates runs there.
    assert qp.validate_warn.run(backend=_NoGates(), bad=False).status == "succeeded"


def test_gate_option_on_plain_steps() -> None:
    @mp.step(gate=True)
    def approve(score: float) -> float:
        return score

    assert approve.gate and not approve.with_options(gate=False).gate
    assert approve.with_options(name="approve_2").gate
    with pytest.raises(DefinitionError, match="gate must be True or False"):
        mp.step(gate="yes")(lambda x: x)  # type: ignore[call-overload]


def test_import_mlpipe_does_not_import_quality() -> None:
    code = (
        "import sys, mlpipe as mp\n"
        "bad = [m for m in ('mlpipe.quality', 'pandas', 'pandera', 'scipy', 'numpy') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "q = mp.quality\n"
        "assert q.validate_step and 'mlpipe.quality' in sys.modules and 'pandera' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_factory_steps_survive_shipping_to_a_remote_runtime() -> None:
    """Remote runtimes unpickle non-importable step functions; their annotations must still resolve."""
    import cloudpickle

    shipped = cloudpickle.dumps([qp.check_stop.fn, qp.detect.fn, qp.drift_gate.fn])
    code = (
        "import sys, typing, cloudpickle\n"
        "fns = cloudpickle.loads(sys.stdin.buffer.read())\n"
        "print([sorted(typing.get_type_hints(f)) for f in fns])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=shipped, capture_output=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == (
        "[['df', 'return'], ['current', 'reference', 'return'], ['result', 'return']]"
    )


@pytest.mark.slow
def test_drift_step_and_its_report_on_kubeflow_local_mode() -> None:
    """Quality steps without gates are portable: each step here runs in its own `python -m mlpipe.runtime`."""
    kubeflow = pytest.importorskip("mlpipe_kubeflow")
    run = qp.drift_only.run(backend=kubeflow.KubeflowBackend({"mode": "local"}))
    assert run.status == "succeeded", run.error
    result = run.output("detect_drift", "result")
    assert isinstance(result, q.DriftResult) and result.drifted_columns == ["x"]
    path = Path(run.steps["detect_drift"].reports["report"])
    assert path.is_file() and path.read_text() == str(run.output("detect_drift", "report"))
    backend = kubeflow.KubeflowBackend({"mode": "local"})
    if not backend.capabilities.gates:
        with pytest.raises(UnsupportedFeatureError, match="quality gate"):
            qp.drift_gated.run(backend=backend)
