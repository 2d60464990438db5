"""Run records in the store: where step records live and how they are read back.

A remote task writes its step's record as its own file,
``runs/<run_id>/steps/<step>.json``, the moment it finishes. The local
backend runs many small steps in one process, where a file per step would
cost more than the step itself, so it buffers its records and writes them
together to ``runs/<run_id>/steps.json`` (every two seconds and at the end of
the run). Readers merge both forms. Cache entries are always written
immediately, so a killed run loses at most two seconds of history, never a
finished step's reusable result.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from mlpipe.store import ArtifactStore

__all__ = ["RunRecords", "load_step_records"]

FLUSH_SECONDS = 2.0


class RunRecords:
    """Writes the step records of one run, immediately or batched."""

    def __init__(self, store: ArtifactStore, run_id: str, *, batched: bool = False) -> None:
        self.store = store
        self.run_id = run_id
        self.batched = batched
        self._docs: dict[str, dict[str, Any]] = {}
        self._dirty = False
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def write(self, doc: dict[str, Any]) -> None:
        if not self.batched:
            self.store.put_json(f"runs/{self.run_id}/steps/{doc['step']}.json", doc)
            return
        with self._lock:
            self._docs[doc["step"]] = doc
            self._dirty = True
            due = time.monotonic() - self._last > FLUSH_SECONDS
        if due:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self.store.put_json(f"runs/{self.run_id}/steps.json", self._docs)
            self._dirty = False
            self._last = time.monotonic()


def load_step_records(store: ArtifactStore, run_id: str) -> dict[str, dict[str, Any]]:
    """Every step record of a run, from the batched file and the per-step files."""
    records: dict[str, dict[str, Any]] = {}
    if store.has(f"runs/{run_id}/steps.json"):
        records.update(store.get_json(f"runs/{run_id}/steps.json"))
    for name in store.listdir(f"runs/{run_id}/steps"):
        if name.endswith(".json") and ".tmp-" not in name:
            doc = store.get_json(f"runs/{run_id}/steps/{name}")
            records[doc["step"]] = doc
    return records
