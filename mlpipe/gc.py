"""Garbage collection of the store: remove what no kept run or cache entry reaches.

Kept runs are all recorded runs, or with ``keep_runs`` the N most recent
*succeeded* runs of each pipeline, plus the runs of a pipeline newer than its
newest succeeded one (the failure being looked at); a run that is still
running is always kept. A failed run never counts towards N, so
``--keep-runs 1`` after a failure keeps the last good results. Kept cache entries are all
entries, or those written by kept runs (a run that recomputes a step into an
identical entry leaves the entry as it was, naming the earlier run: it is
kept too). Reachable objects are the outputs of
kept runs' steps, the outputs of kept entries, and pickled step code named by
kept runs' pipelines. Everything else under ``objects/`` goes, with
``quarantine/`` and temporaries left by killed writers (older than an hour,
so a running writer is never disturbed).

gc runs while pipelines run. An object is published before the record or
cache entry that references it, so reachability alone would call a fresh
output garbage; objects written or freshened (a writer that finds its object
already present touches it) within ``grace`` seconds are therefore never
removed, as git does for loose objects.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from mlpipe.errors import DamagedFileError
from mlpipe.ledger import record_removal
from mlpipe.metadata import open_index
from mlpipe.records import DamagedRecordWarning, load_step_records
from mlpipe.records import run_ids as _run_ids
from mlpipe.store import ArtifactStore

__all__ = ["GcReport", "collect"]


@dataclass
class GcReport:
    """What gc removed (or, in a dry run, would remove).

    Attributes:
        items: Store paths with their sizes.
        kept_objects: Objects left in place.
        runs: The runs dropped (with ``keep_runs``): id, pipeline and status.
        entries: How many cache entries were dropped with them.
    """

    items: list[tuple[str, int]] = field(default_factory=list)
    kept_objects: int = 0
    runs: list[tuple[str, str, str]] = field(default_factory=list)
    entries: int = 0

    @property
    def bytes(self) -> int:
        return sum(size for _rel, size in self.items)


DEFAULT_GRACE = 3600.0


def collect(
    store: ArtifactStore, *, keep_runs: int | None = None, dry_run: bool = False, grace: float = DEFAULT_GRACE
) -> GcReport:
    """Remove what no kept run or cache entry reaches (see the module docstring).

    Args:
        store: The store to clean.
        keep_runs: Keep only the N most recent runs (plus every running run) and their cache entries.
        dry_run: Only report what would be removed.
        grace: Objects younger than this many seconds are kept (0 in tests that check removal).
    """
    report = GcReport()
    run_ids = sorted(_run_ids(store), reverse=True)  # ids sort by start time, to the second
    if keep_runs is None:
        kept = set(run_ids)
    else:
        docs = {run_id: _doc(store, run_id) for run_id in run_ids}
        # runs started within the same second: order by the recorded start
        run_ids.sort(key=lambda run_id: (float(docs[run_id].get("started") or 0.0), run_id), reverse=True)
        kept = _kept_runs(run_ids, docs, keep_runs)
        kept.update(run_id for run_id in run_ids if _running(store, run_id))
        report.runs = [
            (run_id, str(docs[run_id].get("pipeline", "?")), str(docs[run_id].get("status", "unrecorded")))
            for run_id in run_ids
            if run_id not in kept
        ]
    reachable: set[str] = set()
    irs: set[str] = set()
    produced: set[str] = set()  # keys whose entry a kept run wrote, or found already written
    for run_id in run_ids:
        if run_id not in kept:
            for rel, size in store.walk_files(f"runs/{run_id}"):
                report.items.append((rel, size))
            continue
        if store.has(f"runs/{run_id}/run.json"):
            try:
                doc = store.get_json(f"runs/{run_id}/run.json")
            except DamagedFileError as exc:  # its pipeline is unknown: keep the shipped code of every pipeline
                warnings.warn(str(exc), DamagedRecordWarning, stacklevel=2)
                irs.update(name.removesuffix(".json") for name in store.listdir("pipelines"))
                doc = {}
            if doc.get("ir"):
                irs.add(doc["ir"])
        for rec in load_step_records(store, run_id).values():
            reachable.update(info["digest"] for info in (rec.get("outputs") or {}).values())
            if rec.get("status") == "succeeded" and not rec.get("cached") and rec.get("key"):
                produced.add(rec["key"])
    dropped_entries = []
    for rel, size in store.walk_files("cache"):
        if not rel.endswith(".json"):
            continue
        try:
            entry = store.get_json(rel)
        except DamagedFileError:  # unreadable, so never a hit: removed like an unreachable object
            report.items.append((rel, size))
            continue
        if keep_runs is not None and entry.get("run_id") not in kept and entry.get("key") not in produced:
            report.items.append((rel, size))
            dropped_entries.append(entry["key"])
            report.entries += 1
            continue
        reachable.update(info["digest"] for info in entry.get("outputs", {}).values())
    for digest in irs:
        rel = f"pipelines/{digest}.json"
        if store.has(rel):
            try:
                steps = store.get_json(rel).get("steps", [])
            except DamagedFileError as exc:
                warnings.warn(str(exc), DamagedRecordWarning, stacklevel=2)
                continue
            for step in steps:
                pickle = (step.get("code") or {}).get("pickle_digest")
                if pickle:
                    reachable.add(pickle)
    for digest, size in store.iter_objects():
        if digest in reachable or (grace > 0 and _young(store, digest, grace)):
            report.kept_objects += 1
            continue
        report.items.append((store.object_path(digest), size))
    report.items.extend(store.walk_files("quarantine"))
    if not dry_run:
        dropped_runs = [run_id for run_id in run_ids if run_id not in kept]
        if dropped_runs:
            record_removal(store, dropped_runs, f"cache gc --keep-runs {keep_runs}")
        removed = []
        for rel, size in report.items:
            if rel.startswith("objects/"):
                if not store.delete_object(rel.rsplit("/", 1)[-1], grace=grace):
                    report.kept_objects += 1  # freshened by a writer since the walk
                    continue
            else:
                store.delete(rel)
            removed.append((rel, size))
        report.items = removed
        if dropped_entries:
            open_index(store).forget_entries(dropped_entries)
        store.clean_temporaries()
        if keep_runs is not None:
            open_index(store).rebuild(store)
    return report


def _young(store: ArtifactStore, digest: str, grace: float) -> bool:
    mtime = store.object_mtime(digest)
    return mtime is None or time.time() - mtime < grace


def _running(store: ArtifactStore, run_id: str) -> bool:
    """The run is recorded as running and, when it ran on this machine, its process is alive."""
    from mlpipe.run import observed_status

    rel = f"runs/{run_id}/run.json"
    if not store.has(rel):
        return False
    try:
        return observed_status(store.get_json(rel)) == "running"
    except (DamagedFileError, KeyError):
        return True  # unknown: keep it


def _doc(store: ArtifactStore, run_id: str) -> dict[str, Any]:
    rel = f"runs/{run_id}/run.json"
    if not store.has(rel):
        return {}
    try:
        doc = store.get_json(rel)
    except DamagedFileError:
        return {}  # its run is kept while it may be running (see _running), else collected with the rest
    return doc if isinstance(doc, dict) else {}


def _kept_runs(run_ids: list[str], docs: dict[str, dict[str, Any]], keep: int) -> set[str]:
    """Per pipeline: its ``keep`` newest succeeded runs, and every run newer than its newest succeeded one.

    ``run_ids`` is newest first.
    """
    kept: set[str] = set()
    succeeded: dict[str, int] = {}
    for run_id in run_ids:
        doc = docs[run_id]
        pipeline = str(doc.get("pipeline", ""))
        count = succeeded.get(pipeline, 0)
        if doc.get("status") == "succeeded":
            if count < keep:
                kept.add(run_id)
            succeeded[pipeline] = count + 1
        elif count == 0 and keep > 0:  # newer than every succeeded run of its pipeline: the failure at hand
            kept.add(run_id)
    return kept
