"""The run ledger: a hash chain over closed run records, and the check that finds what changed since.

When a run closes, :func:`seal_run` appends an entry to ``ledger/`` in the
store: the SHA-256 of the run record, of each step record and of each report
file, the addresses of the objects the steps produced or reused, who sealed it
where, and the SHA-256 of the previous entry. Entries are numbered
(``ledger/000000000042.json``) and each number is claimed exclusively (a hard
link on a local store, create-if-absent then read-back elsewhere), so two runs
closing at the same moment get consecutive entries, never the same one.

:func:`verify` walks the chain and the store and reports:

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

This module reads the run and step records; writing them belongs to
:mod:`mlpipe.records` and the backends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mlpipe.hashing import canonical_json, digest_object
from mlpipe.records import RUN_TERMINAL, load_step_records
from mlpipe.store import ArtifactStore

__all__ = ["Finding", "LedgerEntry", "VerifyReport", "entries", "head", "record_removal", "seal_run", "verify"]

LEDGER = "ledger"
GENESIS = "0" * 64
TERMINAL = RUN_TERMINAL
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


def _sealed_run_ids(found: Iterable[LedgerEntry]) -> set[str]:
    return {e.run_id for e in found if e.kind == "run" and e.run_id}


def _who() -> dict[str, Any]:
    from mlpipe.provenance import provenance

    info = provenance()
    return {"user": info["user"], "host": info["host"]}


def _evidence(store: ArtifactStore, run_id: str) -> dict[str, Any]:
    """The hashes an entry holds for a run, read from what is in the store now."""
    run_doc = store.get_json(f"runs/{run_id}/run.json")
    steps = load_step_records(store, run_id)
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


def seal_run(store: ArtifactStore, run_id: str) -> LedgerEntry:
    """Append a closed run to the ledger (idempotent: a sealed run returns its entry).

    Call it once the run record and every step record are final, that is, after
    the record's status is ``succeeded``, ``failed`` or ``cancelled``.

    Raises:
        ValueError: The run is not closed yet (sealing a running run would make its
            next record update look like tampering).
    """
    pointer = f"{LEDGER}/by-run/{run_id}.json"
    if store.has(pointer):  # a hint for idempotency only: verify never trusts it
        seq = int(store.get_json(pointer)["seq"])
        if store.has(_rel(seq)):
            data = store.get_bytes(_rel(seq))
            entry = LedgerEntry(seq, _loads(data), hashlib.sha256(data).hexdigest())
            if entry.run_id == run_id:
                return entry
    evidence = _evidence(store, run_id)
    if evidence["status"] not in TERMINAL:
        raise ValueError(f"run {run_id} is {evidence['status']}; only a closed run can be sealed")
    entry = _append(store, {"kind": "run", "run_id": run_id, "sealed": time.time(), "by": _who(), **evidence})
    store.put_json(pointer, {"seq": entry.seq})
    return entry


def record_removal(store: ArtifactStore, run_ids: Iterable[str], reason: str) -> LedgerEntry | None:
    """Record that sealed runs were removed on purpose (garbage collection, ``runs delete``)."""
    sealed = _sealed_run_ids(entries(store))
    removed = sorted(r for r in run_ids if r in sealed)
    if not removed:
        return None
    return _append(
        store, {"kind": "removed", "run_ids": removed, "reason": reason, "sealed": time.time(), "by": _who()}
    )


# -- verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One thing that changed after it was sealed.

    Attributes:
        kind: ``ledger``, ``run``, ``step``, ``file`` or ``object``.
        what: The entry, run, step, path or digest concerned.
        problem: What is wrong, in words.
        run_id: The run it belongs to, when it belongs to one.
    """

    kind: str
    what: str
    problem: str
    run_id: str | None = None

    def __str__(self) -> str:
        where = f" (run {self.run_id})" if self.run_id and self.what != self.run_id else ""
        return f"{self.kind} {self.what}{where}: {self.problem}"


@dataclass
class VerifyReport:
    """What :func:`verify` found.

    Attributes:
        store: The store's URL.
        entries: Ledger entries checked.
        runs: Sealed runs checked.
        objects: Objects re-hashed.
        findings: Everything that changed (empty: the store is as sealed).
        unsealed: Closed runs that have no ledger entry.
        head: SHA-256 of the last entry (keep it elsewhere to detect a rewritten chain).
    """

    store: str
    entries: int = 0
    runs: int = 0
    objects: int = 0
    findings: list[Finding] = field(default_factory=list)
    unsealed: list[str] = field(default_factory=list)
    head: str | None = None

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_text(self) -> str:
        lines = []
        if self.ok:
            lines.append(
                f"ledger of {self.store}: {self.entries} entries, {self.runs} sealed runs, {self.objects} objects: "
                "nothing changed since it was sealed"
            )
        else:
            lines.append(f"ledger of {self.store}: {len(self.findings)} changes after sealing")
            lines.extend(f"  {f}" for f in self.findings)
        if self.unsealed:
            shown = ", ".join(self.unsealed[:10]) + (" ..." if len(self.unsealed) > 10 else "")
            lines.append(f"{len(self.unsealed)} closed runs are not in the ledger (not checked): {shown}")
        if self.head:
            lines.append(f"head {self.head}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "ok": self.ok,
            "entries": self.entries,
            "runs": self.runs,
            "objects": self.objects,
            "findings": [vars(f) for f in self.findings],
            "unsealed": self.unsealed,
            "head": self.head,
        }


def verify(store: ArtifactStore, *, objects: bool = True) -> VerifyReport:
    """Check the chain and everything it sealed against what the store holds now.

    Args:
        store: The store to check.
        objects: Re-hash every object a sealed run references (reads them all; False checks
            only that they exist).

    Returns:
        A :class:`VerifyReport`; ``ok`` is False when anything changed.
    """
    report = VerifyReport(store=store.url)
    found = entries(store)
    report.entries = len(found)
    report.head = found[-1].digest if found else None
    prev, expected_seq = GENESIS, 0
    removed: set[str] = set()
    for entry in found:
        if entry.seq != expected_seq:
            missing = ", ".join(str(s) for s in range(expected_seq, min(entry.seq, expected_seq + 5)))
            report.findings.append(
                Finding(
                    "ledger",
                    f"entry {expected_seq}",
                    f"missing (next entry is {entry.seq}; "
                    f"missing: {missing}{' ...' if entry.seq - expected_seq > 5 else ''})",
                )
            )
        if entry.doc.get("seq") != entry.seq or entry.doc.get("prev") != prev:
            report.findings.append(
                Finding("ledger", f"entry {entry.seq}", "changed: it no longer links to the entry before it")
            )
        prev, expected_seq = entry.digest, entry.seq + 1
        if entry.kind == "removed":
            removed.update(entry.doc.get("run_ids") or [])
    checked_objects: dict[str, str | None] = {}
    for entry in found:
        if entry.kind != "run" or not entry.run_id or entry.run_id in removed:
            continue
        report.runs += 1
        _check_run(store, entry, report, checked_objects, objects)
    report.objects = len(checked_objects)
    sealed = _sealed_run_ids(found)
    for run_id in sorted(store.listdir("runs")):
        if run_id in sealed or not store.has(f"runs/{run_id}/run.json"):
            continue
        with contextlib.suppress(ValueError, OSError):
            if store.get_json(f"runs/{run_id}/run.json").get("status") in TERMINAL:
                report.unsealed.append(run_id)
    return report


def _check_run(
    store: ArtifactStore,
    entry: LedgerEntry,
    report: VerifyReport,
    checked: dict[str, str | None],
    rehash: bool,
) -> None:
    run_id = str(entry.run_id)
    doc = entry.doc
    if not store.has(f"runs/{run_id}/run.json"):
        report.findings.append(Finding("run", run_id, "the run record was removed after it was sealed", run_id))
        return
    try:
        current = _evidence(store, run_id)
    except ValueError as exc:
        report.findings.append(Finding("run", run_id, f"a record is no longer readable JSON ({exc})", run_id))
        return
    if current["run"] != doc.get("run"):
        report.findings.append(Finding("run", run_id, "the run record changed after it was sealed", run_id))
    sealed_steps: dict[str, str] = doc.get("steps") or {}
    for name, digest in sealed_steps.items():
        now = current["steps"].get(name)
        if now is None:
            report.findings.append(Finding("step", name, "the step record was removed after sealing", run_id))
        elif now != digest:
            report.findings.append(Finding("step", name, "the step record changed after sealing", run_id))
    for name in sorted(set(current["steps"]) - set(sealed_steps)):
        report.findings.append(Finding("step", name, "a step record was added after sealing", run_id))
    for rel, digest in (doc.get("files") or {}).items():
        now = current["files"].get(rel)
        if now is None and not store.has(rel):
            report.findings.append(Finding("file", rel, "removed after sealing", run_id))
        elif now is not None and now != digest:
            report.findings.append(Finding("file", rel, "changed after sealing", run_id))
    for digest in doc.get("objects") or {}:
        if digest not in checked:
            checked[digest] = _check_object(store, digest, rehash)
        problem = checked[digest]
        if problem:
            report.findings.append(Finding("object", digest, problem, run_id))


def _check_object(store: ArtifactStore, digest: str, rehash: bool) -> str | None:
    rel = store.object_path(digest)
    if not store.has(rel):
        quarantined = any(name.startswith(digest) for name in store.listdir("quarantine"))
        return "moved to quarantine/ (its bytes had changed)" if quarantined else "missing from the store"
    if not rehash or len(digest) != 32:  # 64 digits: a pre-0.1.0 BLAKE3 address, checked by the store on read
        return None
    if digest_object(store.get_bytes(rel)) != digest:
        return "its bytes no longer match its address (changed after it was written)"
    return None
