"""The monitoring example end to end: train, score a drifted batch, report drift, retrain; and its gate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
def test_monitoring_example_end_to_end() -> None:
    work = Path.cwd()  # the test's own empty directory (conftest), so the store .mlpipe/ is private
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "monitoring.py")],
        check=False,
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "no trained model in the store yet: running the training pipeline first" in out
    assert "drift detected: 10 of 30 columns drifted (33%, threshold 25%)" in out
    assert "drift passed the threshold: retraining (training pipeline, seed=1)" in out
    assert "retrained: training run " in out
    report = Path(next(line for line in out.splitlines() if line.startswith("drift report")).split(": ", 1)[1])
    assert report.is_file() and report.read_text().startswith("<!DOCTYPE html>")
    assert report.is_relative_to(work)

    # Same store, a batch like the training data, and a corrupted one: in-process, to keep the suite fast.
    sys.path.insert(0, str(EXAMPLES))
    try:
        import monitoring

        calm = monitoring.monitoring.run(shift=0.0)
        assert calm.status == "succeeded", calm.error
        decision = calm.output("decide")
        assert not decision.retrain and decision.scored == 400
        assert calm.steps["load_model"].status == "succeeded"

        bad = monitoring.monitoring.run(corrupt=True)
        assert bad.status == "failed"
        assert bad.steps["check_batch"].status == "failed"
        for name in ("score", "detect_drift", "decide"):
            assert bad.steps[name].status == "skipped"
            assert "quality gate 'check_batch' failed" in (bad.steps[name].error or "")
    finally:
        sys.path.remove(str(EXAMPLES))
        sys.modules.pop("monitoring", None)
        sys.modules.pop("training", None)
