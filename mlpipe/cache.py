"""Cache keys, cache entries, and the explanation of hits and misses.

The cache key of a step call is the SHA-256 of its *components*:

- ``code``: the step's code fingerprint (see :mod:`mlpipe.fingerprint`);
- ``inputs``: per argument, the content hash of the upstream artifact, or the
  canonical JSON of a parameter or constant;
- ``outputs``: the output names and annotations;
- ``materializers``: the name and version of each output's materializer;
- ``version``: the step's manual salt.

Because artifact inputs enter by content hash, an upstream step that re-runs
and produces identical bytes leaves downstream keys unchanged (early cutoff).

Entries live in the store at ``cache/<key[:2]>/<key>.json``, so every process,
machine and backend sharing a store shares the cache. An entry is only served
when every object it names still exists.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from mlpipe.hashing import canonical_json, digest_json
from mlpipe.ir import StepSpec
from mlpipe.materializers import registry_signature
from mlpipe.store import ArtifactStore

__all__ = ["CacheEntry", "Difference", "cache_key", "diff_components", "lookup", "write_entry"]


def entry_path(key: str) -> str:
    return f"cache/{key[:2]}/{key}.json"


#: A parameter whose canonical JSON is longer is kept in cache keys and step records as its SHA-256 only;
#: the run record (``run.json``) holds the one copy of the value. Longer than any path (mp.File inputs).
LARGE_PARAM_BYTES = 8192


def param_input(value: Any) -> dict[str, Any]:
    return {"kind": "value", "value": summarize_large(value)}


def summarize_large(value: Any) -> Any:
    """``value``, or for a large one a short text naming its size and SHA-256 (equal exactly when the values are)."""
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    try:
        text = canonical_json(value)
    except (TypeError, ValueError):
        return value
    if len(text) <= LARGE_PARAM_BYTES:
        return value
    return f"<{len(text)} bytes of JSON, sha256 {hashlib.sha256(text.encode()).hexdigest()}>"


def artifact_input(digest: str, step: str, output: str) -> dict[str, Any]:
    return {"kind": "artifact", "digest": digest, "step": step, "output": output}


def file_input(kind: str, location: Any) -> dict[str, Any]:
    """An ``mp.File``/``mp.Directory`` argument: its location and its data's identity right now."""
    from mlpipe.files import identity

    return {"kind": "file", "file": kind, "value": location, "identity": identity(kind, str(location))}


def components_for(spec: StepSpec, inputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Everything that determines a step's outputs, in a form ``explain`` can diff.

    Arguments declared ``mp.File`` or ``mp.Directory`` are looked at here, when
    the step is about to run (or be served): their data's identity joins the key.
    """
    from mlpipe.files import external_kind

    for inp in spec.inputs:
        kind = external_kind(inp.type)
        given = inputs.get(inp.name)
        if kind is not None and given is not None and given["kind"] == "value" and isinstance(given["value"], str):
            inputs = {**inputs, inp.name: file_input(kind, given["value"])}
    outputs = [[o.name, o.type] for o in spec.outputs]
    materializers = [o.materializer for o in spec.outputs]
    if any(m == "auto" for m in materializers):
        materializers.append(registry_signature())
    return {
        "code": spec.fingerprint,
        "code_manifest": spec.code_manifest,
        "code_previews": spec.code_previews,
        "inputs": inputs,
        "outputs": outputs,
        "materializers": materializers,
        "version": spec.version,
    }


def cache_key(components: dict[str, Any]) -> str:
    """The key: a hash of the components (the manifest is already inside the code digest)."""
    keyed = {
        "code": components["code"],
        "inputs": {name: _keyed_input(inp) for name, inp in components["inputs"].items()},
        "outputs": components["outputs"],
        "materializers": components["materializers"],
        "version": components["version"],
    }
    return digest_json(keyed)


def _keyed_input(inp: dict[str, Any]) -> str:
    if inp["kind"] == "artifact":
        return str(inp["digest"])
    if inp["kind"] == "file":
        return canonical_json([inp["value"], inp["identity"]])
    return canonical_json(inp["value"])


@dataclass(frozen=True)
class CacheEntry:
    key: str
    pipeline: str
    step: str
    run_id: str
    created: float
    outputs: dict[str, dict[str, Any]]
    components: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheEntry:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def lookup(store: ArtifactStore, key: str) -> CacheEntry | None:
    """The entry for ``key`` if it exists and all its objects are still in the store."""
    path = entry_path(key)
    try:
        entry = CacheEntry.from_dict(store.get_json(path))
    except (FileNotFoundError, KeyError, ValueError):
        return None
    for info in entry.outputs.values():
        if not store.exists(info["digest"]):
            return None
    return entry


def write_entry(
    store: ArtifactStore,
    key: str,
    pipeline: str,
    step: str,
    run_id: str,
    outputs: dict[str, dict[str, Any]],
    components: dict[str, Any],
) -> CacheEntry | None:
    """Write the entry for ``key``, or return None when the store already holds the same one.

    The same entry is the same key, pipeline, step, outputs and components,
    whichever run wrote it: a re-run with ``cache=False`` or ``--no-cache``
    whose steps produce the same bytes, or a step recomputed after its objects
    were lost. Such an entry is left as it is (it keeps naming the run that
    first produced it) rather than renamed over, which costs about 1 ms per
    file on ext4 (3.5x a fresh step's whole overhead). An entry that cannot be
    read, or that differs in anything but its run and time, is rewritten.
    """
    entry = CacheEntry(key, pipeline, step, run_id, time.time(), outputs, components)
    path = entry_path(key)
    doc = entry.to_dict()
    try:
        old = store.get_json(path)
    except (FileNotFoundError, ValueError):  # no entry yet, or an unreadable one: write it
        old = None
    if isinstance(old, dict) and _same_entry(old, doc):
        return None
    store.put_json(path, doc)
    return entry


def _same_entry(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two entry documents differ in nothing but the run that wrote them and when."""
    if not isinstance(old.get("run_id"), str) or not isinstance(old.get("created"), (int, float)):
        return False
    if set(old) != set(new):
        return False
    a = {k: v for k, v in old.items() if k not in ("run_id", "created")}
    b = {k: v for k, v in new.items() if k not in ("run_id", "created")}
    # Plain equality decides almost always; the JSON text settles tuples against the lists they became.
    return a == b or canonical_json(a) == canonical_json(b)


@dataclass(frozen=True)
class Difference:
    """One component that differs between a step call and an earlier cache entry."""

    component: str  # "code", "constant", "input", "parameter", "file", "outputs", "materializers", "version"
    name: str
    old: Any
    new: Any
    detail: str

    def __str__(self) -> str:
        return self.detail


def _short(value: Any) -> str:
    text = canonical_json(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _identity_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """`` (etag 9b2c… → 41d0…)``: the fields of a file's identity that changed, briefly."""
    if new.get("missing"):
        return " (it is missing now)"
    if old.get("missing"):
        return " (it was missing before)"
    parts = []
    for field in ("etag", "version_id", "generation", "xxh3", "digest", "ukey", "files", "size"):
        if field in new and old.get(field) != new.get(field):
            before, after = str(old.get(field, "?")), str(new[field])
            short = 12 if field in ("etag", "xxh3", "digest", "ukey", "version_id") else 40
            parts.append(f"{field} {before[:short]} → {after[:short]}")
    return f" ({', '.join(parts[:2])})" if parts else ""


def diff_components(old: dict[str, Any], new: dict[str, Any]) -> list[Difference]:
    """What differs between two sets of components, most specific first."""
    diffs: list[Difference] = []
    if old.get("code") != new.get("code"):
        om, nm = old.get("code_manifest", {}), new.get("code_manifest", {})
        found = False
        for label in sorted(set(om) | set(nm)):
            kind, _, name = label.partition(" ")
            if label not in om:
                diffs.append(
                    Difference("code", name, None, nm[label], f"{kind} {name} is new (now reached by the step)")
                )
            elif label not in nm:
                diffs.append(Difference("code", name, om[label], None, f"{kind} {name} is no longer reached"))
            elif om[label] != nm[label]:
                before = old.get("code_previews", {}).get(label)
                after = new.get("code_previews", {}).get(label)
                values = f": {before} → {after}" if before is not None and after is not None else ""
                diffs.append(Difference("code", name, om[label], nm[label], f"{kind} {name} changed{values}"))
            else:
                continue
            found = True
        if not found:
            diffs.append(Difference("code", "", old.get("code"), new.get("code"), "code changed"))
    oi, ni = old.get("inputs", {}), new.get("inputs", {})
    for name in sorted(set(oi) | set(ni)):
        a, b = oi.get(name), ni.get(name)
        if a == b:
            continue
        if a is None or b is None:
            detail = f"argument {name!r} {'added' if a is None else 'removed'}"
            diffs.append(Difference("input", name, a, b, detail))
        elif a["kind"] == "artifact" and b["kind"] == "artifact":
            if a["digest"] == b["digest"]:
                continue
            diffs.append(
                Difference(
                    "input",
                    name,
                    a["digest"],
                    b["digest"],
                    f"input {name!r} from step {b['step']!r} changed: {a['digest'][:12]}… → {b['digest'][:12]}…",
                )
            )
        elif a["kind"] == "file" and b["kind"] == "file":
            if a["value"] != b["value"]:
                detail = f"{b['file']} parameter {name!r}: {_short(a['value'])} → {_short(b['value'])}"
                diffs.append(Difference("parameter", name, a["value"], b["value"], detail))
            elif a["identity"] != b["identity"]:
                what = _identity_change(a["identity"], b["identity"])
                detail = f"{b['file']} {b['value']} changed{what}"
                diffs.append(Difference("file", name, a["identity"], b["identity"], detail))
        elif a["kind"] == "value" and b["kind"] == "value":
            diffs.append(
                Difference(
                    "parameter",
                    name,
                    a["value"],
                    b["value"],
                    f"parameter {name!r}: {_short(a['value'])} → {_short(b['value'])}",
                )
            )
        else:
            diffs.append(Difference("input", name, a, b, f"argument {name!r} changed source"))
    if old.get("outputs") != new.get("outputs"):
        diffs.append(
            Difference(
                "outputs",
                "",
                old.get("outputs"),
                new.get("outputs"),
                f"output signature: {old.get('outputs')} → {new.get('outputs')}",
            )
        )
    if old.get("materializers") != new.get("materializers"):
        diffs.append(
            Difference(
                "materializers",
                "",
                old.get("materializers"),
                new.get("materializers"),
                f"materializers: {old.get('materializers')} → {new.get('materializers')}",
            )
        )
    if old.get("version") != new.get("version"):
        diffs.append(
            Difference(
                "version",
                "",
                old.get("version"),
                new.get("version"),
                f"version salt: {old.get('version')!r} → {new.get('version')!r}",
            )
        )
    return diffs
