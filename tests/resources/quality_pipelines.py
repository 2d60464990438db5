"""Small pipelines with validation, drift and gate steps (imported as ``resources.quality_pipelines``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

import mlpipe as mp
from mlpipe import quality as q

SCHEMA = q.Schema(
    columns={"x": q.Column("float64", ge=-10, le=10), "c": q.Column("str", isin=["a", "b", "c"])},
    min_rows=10,
    name="batch",
)

check_stop = q.validate_step(SCHEMA, on_failure="stop", name="check_batch")
check_warn = q.validate_step(SCHEMA, on_failure="warn", name="check_batch")
detect = q.drift_step(on_drift="ignore", share=0.5)
drift_gate = q.gate_step(name="drift_gate")


@mp.step
def make(n: int = 600, shift: float = 0.0, bad: bool = False, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": rng.normal(shift, 1.0, n), "c": rng.choice(["a", "b", "c"], n)})
    if bad:
        frame.loc[0, "x"] = 99.0
        frame.loc[1, "c"] = "zzz"
    return frame


@mp.step
def count_rows(df: pd.DataFrame) -> int:
    return len(df)


@mp.step
def register(df: pd.DataFrame) -> str:
    return f"registered model trained on {len(df)} rows"


@mp.step
def deploy(name: str) -> str:
    return f"deployed: {name}"


@mp.step
def publish(df: pd.DataFrame, decision: q.GateDecision) -> int:
    return len(df)


@mp.pipeline(name="quality-validate-stop")
def validate_stop(bad: bool = True) -> str:
    raw = make(bad=bad)
    count_rows(raw)  # independent of the gate: still runs
    data, _report = check_stop(raw)
    return deploy(register(data))


@mp.pipeline(name="quality-validate-warn")
def validate_warn(bad: bool = True) -> str:
    data, _report = check_warn(make(bad=bad))
    return register(data)


@mp.pipeline(name="quality-drift-gate")
def drift_gated(shift: float = 0.0) -> int:
    reference = make(seed=1)
    current = make(shift=shift, seed=2)
    result, _html = detect(reference, current)
    return publish(current, drift_gate(result))


@mp.pipeline(name="quality-drift-only")
def drift_only(shift: float = 2.0) -> q.DriftResult:
    result, _html = detect(make(seed=1), make(shift=shift, seed=2))
    return result
