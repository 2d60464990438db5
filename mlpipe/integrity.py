"""Verification of the run ledger: what changed in the store after a run was sealed.

:func:`verify` walks the chain of :mod:`mlpipe.ledger` and compares every
sealed run's hashes with the records, reports and objects the store holds now
(see :mod:`mlpipe.ledger` for what is sealed and what that proves). It only
reads: a changed object is reported, not quarantined.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from mlpipe.hashing import digest_object
from mlpipe.ledger import GENESIS, TERMINAL, LedgerEntry, entries, evidence, sealed_run_ids
from mlpipe.records import load_step_records
from mlpipe.records import run_ids as _run_ids
from mlpipe.store import ArtifactStore

__all__ = ["Finding", "VerifyReport", "verify"]


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


def verify(store: ArtifactStore, *, objects: bool = True, runs: Collection[str] | None = None) -> VerifyReport:
    """Check the chain and everything it sealed against what the store holds now.

    Args:
        store: The store to check.
        objects: Re-hash every object a sealed run references (reads them all; False checks
            only that they exist).
        runs: Check only these sealed runs' records and objects (the whole chain is still
            checked); None checks every run and lists the unsealed ones.

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
        if runs is not None and entry.run_id not in runs:
            continue
        report.runs += 1
        _check_run(store, entry, report, checked_objects, objects)
    report.objects = len(checked_objects)
    sealed = sealed_run_ids(found)
    for run_id in sorted(_run_ids(store)) if runs is None else sorted(set(runs) - sealed):
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
        current = evidence(store, run_id, store.get_json(f"runs/{run_id}/run.json"), load_step_records(store, run_id))
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
