"""Closing a run's records after KFP is done with it.

Each task records its own step (``python -m mlpipe.runtime``); what no task
can write is the run's end: its status, its end time, and a record for every
step that never started. This module writes those, the same way for kfp.local
and for a cluster run that mlpipe waited for.
"""

from __future__ import annotations

import time
from typing import Any

from mlpipe.executor import StepOutcome, step_record
from mlpipe.ir import PipelineIR
from mlpipe.store import ArtifactStore
from mlpipe.tracking import track_skipped

__all__ = ["LOCAL_STOPPED", "finalize"]

LOCAL_STOPPED = "not run: kfp.local stops a pipeline at its first failed task"


def finalize(store: ArtifactStore, ir: PipelineIR, doc: dict[str, Any], *, kfp_error: str | None = None,
             cancelled: bool = False, not_run: str = LOCAL_STOPPED) -> dict[str, Any]:
    """Complete a run's records once KFP is done with it: skipped steps, status, end time.

    Steps downstream of a failure never start, and kfp.local also stops
    before independent ones; each step without a record gets a ``skipped``
    record saying why (``not_run`` when no upstream failed). A task that failed
    before the runtime could write its record (an image without the step's
    module, a pod killed for memory) is recorded ``failed`` with KFP's message.
    Returns the updated run document.
    """
    run_id = doc["id"]
    records: dict[str, dict[str, Any]] = {}
    for spec in ir.steps:
        rel = f"runs/{run_id}/steps/{spec.name}.json"
        if store.has(rel):
            records[spec.name] = store.get_json(rel)
    failed = [n for n, r in records.items() if r.get("status") != "succeeded"]
    bad = set(failed)
    # Only when no task recorded a failure did the failing task die before the runtime could write its record.
    orphan_error = kfp_error if not failed else None
    now = time.time()
    skipped: list[StepOutcome] = []
    for spec in ir.steps:  # topological order: an upstream's fate is known before its consumers'
        if spec.name in records:
            continue
        blocked = [u for u in spec.upstream if u in bad]
        if orphan_error and not blocked and not cancelled:
            outcome = StepOutcome(spec.name, "failed", started=now, ended=now,
                                  error=f"the task failed without writing its record (see its log): {orphan_error}")
            record = step_record(run_id, ir.name, spec, outcome, None)
            store.put_json(f"runs/{run_id}/steps/{spec.name}.json", record)
            records[spec.name] = record
            failed.append(spec.name)
            bad.add(spec.name)
            orphan_error = None
            continue
        if blocked:
            reason = f"skipped because upstream step {blocked[0]!r} did not succeed"
        elif cancelled:
            reason = "not run: the run was cancelled"
        else:
            reason = not_run
        outcome = StepOutcome(spec.name, "skipped", started=now, ended=now, error=reason)
        record = step_record(run_id, ir.name, spec, outcome, None)
        store.put_json(f"runs/{run_id}/steps/{spec.name}.json", record)
        records[spec.name] = record
        bad.add(spec.name)
        skipped.append(outcome)
    track_skipped(store, run_id, ir, skipped)
    if cancelled:
        status = "cancelled"
    else:
        status = "succeeded" if all(r.get("status") == "succeeded" for r in records.values()) else "failed"
    doc = {**store.get_json(f"runs/{run_id}/run.json"), "status": status, "ended": time.time()}
    if failed:
        doc["error"] = "; ".join(f"step {n!r} {records[n].get('status')}: {records[n].get('error')}" for n in failed)
    store.put_json(f"runs/{run_id}/run.json", doc)
    return doc
