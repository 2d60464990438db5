"""The run ledger: a hash chain over closed run records, and the check that finds what changed since.

When a run closes, :func:`seal_run` appends an entry to ``ledger/`` in the
store: the SHA-256 of the run record, of each step record and of each report
file, the addresses of the objects the steps produced or reused, who sealed it
where, and the SHA-256 of the previous entry. Entries are numbered
(``ledger/000000000042.json``) and each number is claimed exclusively (a hard
link on a local store, create-if-absent then read-back elsewhere), so two runs
closing at the same moment get consecutive entries, never the same one.

:func:`mlpipe.integrity.verify` walks the chain and the store and reports:

- an entry changed, missing or out of order (the chain no longer links);
- a run record, step record or report changed or removed after its run was sealed;
- a step record added to a sealed run;
- an object whose bytes no longer match its address, or that is missing;
- runs that closed but were never sealed (recorded before the ledger existed, or by a
  backend that does not seal), listed apart: they are not evidence of tampering.

Runs removed on purpose (``mlpipe cache gc --keep-runs``) are recorded by a
``removed`` entry (:func:`record_removal`), so their absence is not reported.

What it proves: records are hashed with SHA-256, so a record that verifies is
the one sealed. Objects are checked against their content addresses
(XXH3-128), which catches every accidental change and every edit that does
not also forge a hash collision; XXH3 is not a cryptographic hash. Someone
who can rewrite the whole store can also rewrite the whole chain: keep a copy
of the last entry's hash (``mlpipe verify`` prints it) somewhere they cannot.

This module owns ``ledger/``; it is given the run and step records to seal
(by :mod:`mlpipe.records`, which imports it) and never reads them itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mlpipe.hashing import canonical_json
from mlpipe.store import ArtifactStore

__all__ = ["GENESIS", "LedgerEntry", "entries", "evidence", "head", "record_removal", "sealed_run_ids", "seal_run"]

LEDGER = "ledger"
GENESIS = "0" * 64
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})  # mlpipe.records.RUN_TERMINAL (it imports this module)
#: Fields of run.json that are not evidence: how to find the run again, added by the launcher after it closed.
UNSEALED_FIELDS = frozenset({"handle"})
_local_lock = threading.Lock()


def _sha256(document: Any) -> str:
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    """One link of the chain.

    Attributes:
        seq: Its position (0 for the first entry).
        doc: The entry as stored.
        digest: SHA-256 of the stored entry (what the next entry's ``prev`` holds).
    """

    seq: int
    doc: dict[str, Any]
    digest: str

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", "run"))

    @property
    def run_id(self) -> str | None:
        return self.doc.get("run_id")


def _rel(seq: int) -> str:
    return f"{LEDGER}/{seq:012d}.json"


def entries(store: ArtifactStore) -> list[LedgerEntry]:
    """Every entry of the store's ledger, in order (unchecked: :func:`verify` checks them)."""
    out = []
    for name in _numbers(store):
        data = store.get_bytes(f"{LEDGER}/{name}")
        out.append(LedgerEntry(int(name.removesuffix(".json")), _loads(data), hashlib.sha256(data).hexdigest()))
    return out


def _loads(data: bytes) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(data)
    except ValueError:
        return {"kind": "unreadable"}
    return doc if isinstance(doc, dict) else {"kind": "unreadable"}


def _numbers(store: ArtifactStore) -> list[str]:
    return sorted(n for n in store.listdir(LEDGER) if n.endswith(".json") and n.removesuffix(".json").isdigit())


def head(store: ArtifactStore) -> LedgerEntry | None:
    """The last entry, or None when nothing was sealed yet (reads only that entry)."""
    names = _numbers(store)
    if not names:
        return None
    data = store.get_bytes(f"{LEDGER}/{names[-1]}")
    return LedgerEntry(int(names[-1].removesuffix(".json")), _loads(data), hashlib.sha256(data).hexdigest())


def _claim(store: ArtifactStore, seq: int, data: bytes) -> bool:
    """Write entry ``seq`` if no one else has; True when this call wrote it."""
    rel = _rel(seq)
    root = store.local_root()
    if root is not None:
        final = os.path.join(root, rel)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(final), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.link(tmp, final)  # fails if the number is taken: the claim is atomic
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    if store.has(rel):
        return False
    store.put_bytes(rel, data)
    return store.get_bytes(rel) == data  # a concurrent writer that won the same number overwrote ours


def _append(store: ArtifactStore, body: dict[str, Any]) -> LedgerEntry:
    with _local_lock:
        for _ in range(1000):
            last = head(store)
            seq = 0 if last is None else last.seq + 1
            doc = {**body, "seq": seq, "prev": GENESIS if last is None else last.digest}
            data = canonical_json(doc).encode()
            if _claim(store, seq, data):
                return LedgerEntry(seq, doc, hashlib.sha256(data).hexdigest())
    raise RuntimeError(f"could not append to the ledger of {store.url}: every claim lost a race")


def sealed_run_ids(found: Iterable[LedgerEntry]) -> set[str]:
    return {e.run_id for e in found if e.kind == "run" and e.run_id}


def _who() -> dict[str, Any]:
    from mlpipe.provenance import provenance

    info = provenance()
    return {"user": info["user"], "host": info["host"]}


def evidence(
    store: ArtifactStore, run_id: str, run_doc: dict[str, Any], steps: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The hashes an entry holds for a run: of its record, its step records, its reports and its IR."""
    objects: dict[str, int | None] = {}
    files: dict[str, str] = {}
    for record in steps.values():
        for info in (record.get("outputs") or {}).values():
            if isinstance(info, dict) and info.get("digest"):
                objects[info["digest"]] = info.get("size")
    for rel, _size in store.walk_files(f"runs/{run_id}/reports"):
        files[rel] = hashlib.sha256(store.get_bytes(rel)).hexdigest()
    if run_doc.get("ir") and store.has(f"pipelines/{run_doc['ir']}.json"):
        rel = f"pipelines/{run_doc['ir']}.json"
        files[rel] = hashlib.sha256(store.get_bytes(rel)).hexdigest()
    return {
        "run": _sha256({k: v for k, v in run_doc.items() if k not in UNSEALED_FIELDS}),
        "status": run_doc.get("status"),
        "steps": {name: _sha256(record) for name, record in sorted(steps.items())},
        "objects": dict(sorted(objects.items())),
        "files": dict(sorted(files.items())),
    }


def seal_run(
    store: ArtifactStore, run_id: str, run_doc: dict[str, Any], steps: dict[str, dict[str, Any]]
) -> LedgerEntry:
    """Append a closed run to the ledger (idempotent: a sealed run returns its entry).

    :meth:`mlpipe.records.RunRecord.close` calls it with the run document it
    wrote and the step records it read back, once they are final.

    Raises:
        ValueError: The run is not closed yet (sealing a running run would make its
            next record update look like tampering).
    """
    pointer = f"{LEDGER}/by-run/{run_id}.json"
    if store.has(pointer):  # a hint for idempotency only: verification never trusts it
        seq = int(store.get_json(pointer)["seq"])
        if store.has(_rel(seq)):
            data = store.get_bytes(_rel(seq))
            entry = LedgerEntry(seq, _loads(data), hashlib.sha256(data).hexdigest())
            if entry.run_id == run_id:
                return entry
    if run_doc.get("status") not in TERMINAL:
        raise ValueError(f"run {run_id} is {run_doc.get('status')}; only a closed run can be sealed")
    body = evidence(store, run_id, run_doc, steps)
    entry = _append(store, {"kind": "run", "run_id": run_id, "sealed": time.time(), "by": _who(), **body})
    store.put_json(pointer, {"seq": entry.seq})
    return entry


def record_removal(store: ArtifactStore, run_ids: Iterable[str], reason: str) -> LedgerEntry | None:
    """Record that sealed runs were removed on purpose (garbage collection, ``runs delete``)."""
    sealed = sealed_run_ids(entries(store))
    removed = sorted(r for r in run_ids if r in sealed)
    if not removed:
        return None
    return _append(
        store, {"kind": "removed", "run_ids": removed, "reason": reason, "sealed": time.time(), "by": _who()}
    )
