"""Explanations: why a step was a cache hit or miss, and where an artifact came from.

For a miss, the step's recorded cache-key components are compared with every
earlier cache entry of the same step of the same pipeline; the closest one
(fewest differing components, then the most recent) is reported with each
difference named: which function or constant by qualified name, which
parameter (old → new), which input and from which upstream step, or the salt.
"""

from __future__ import annotations

import time
from typing import Any

from mlpipe.cache import diff_components
from mlpipe.errors import MlpipeError, RunNotFoundError
from mlpipe.metadata import open_index
from mlpipe.run import get_run
from mlpipe.store import ArtifactStore

__all__ = ["artifact_lineage", "describe_artifact", "explain", "explain_step"]


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "?"


def _external_reason(store: ArtifactStore, run_id: str, components: dict[str, Any]) -> str | None:
    """Why a step that acts on an external system (the MLflow registry) was not cached, or None."""
    labels = sorted(label for label in components.get("code_manifest", {}) if label.startswith("external "))
    if not labels:
        return None
    previews = components.get("code_previews", {})
    systems = sorted({previews.get(label, "an external system") for label in labels})
    calls = ", ".join(label.partition(" ")[2] for label in labels)
    where = ""
    rel = f"runs/{run_id}/tracking.json"
    if store.has(rel):
        uri = (store.get_json(rel).get("info") or {}).get("tracking_uri")
        if uri:
            where = f" of the tracking server {uri}"
    return (
        f"not cached: the step calls {calls}, which acts on {' and '.join(systems)}{where}. Its result depends "
        "on that system's state, which the store cannot see (a new server, a deleted version, a moved alias), "
        "so such a step runs every time unless it is declared with @mp.step(cache=True)"
    )


def explain_step(store: ArtifactStore, run_id: str, step: str) -> dict[str, Any]:
    """A structured explanation (used by :func:`explain` and by tests).

    Returns a dict with ``verdict`` (``hit``, ``miss``, ``failed``, ``skipped``),
    ``reason`` and, for misses, ``closest`` (the earlier entry) and ``differences``.
    """
    run = get_run(run_id, store)
    if step not in run.steps:
        raise RunNotFoundError(f"run {run.id} has no step {step!r}; steps: {', '.join(run.steps)}", run_id=run.id)
    record = run.steps[step].record
    out: dict[str, Any] = {"run": run.id, "step": step, "key": record.get("key"), "record": record}
    if record.get("status") == "skipped":
        return {**out, "verdict": "skipped", "reason": record.get("error", "skipped")}
    if record.get("cached"):
        source = record.get("source_run")
        return {
            **out,
            "verdict": "hit",
            "reason": f"served from the cache entry written by run {source}",
            "source_run": source,
        }
    verdict = "failed" if record.get("status") == "failed" else "miss"
    components = record.get("components")
    if not run.doc.get("cache", True):
        return {**out, "verdict": verdict, "reason": "the run was started with --no-cache / cache=False"}
    if record.get("cache_option") is False:
        external = _external_reason(store, run.id, components or {})
        return {**out, "verdict": verdict, "reason": external or "the step is declared with cache=False"}
    if components is None:
        return {**out, "verdict": verdict, "reason": "no cache-key components were recorded"}
    index = open_index(store)
    started = record.get("started") or time.time()
    candidates = [e for e in index.entries_for(run.pipeline, step) if e["created"] < started]
    same = [e for e in candidates if e["key"] == record.get("key")]
    if same:
        return {
            **out,
            "verdict": verdict,
            "closest": same[0],
            "differences": [],
            "reason": f"an entry with the same key (from run {same[0]['run_id']}) existed but its objects were "
            "missing or corrupted, so the step was recomputed",
        }
    # Recomputing under the same key rewrites the entry, so an earlier one is known from the step records.
    earlier = [
        s
        for s in index.steps_with_key(record.get("key") or "")
        if s["run_id"] != run.id and s.get("status") == "succeeded" and (s.get("started") or 0) < started
    ]
    if earlier:
        source = earlier[-1].get("source_run") or earlier[-1]["run_id"]
        return {
            **out,
            "verdict": verdict,
            "differences": [],
            "reason": f"an entry with the same key (from run {source}) existed but its objects were "
            "missing or corrupted, so the step was recomputed",
        }
    if not candidates:
        return {
            **out,
            "verdict": verdict,
            "differences": [],
            "reason": f"no earlier cache entry for step {step!r} of pipeline {run.pipeline!r}: first computation",
        }
    scored = []
    for i, entry in enumerate(candidates):  # candidates are newest first
        diffs = diff_components(entry["components"], components)
        scored.append((len(diffs), i, entry, diffs))
    _n, _i, closest, diffs = min(scored, key=lambda t: (t[0], t[1]))
    return {
        **out,
        "verdict": verdict,
        "closest": closest,
        "differences": diffs,
        "reason": f"{len(diffs)} component{'s' if len(diffs) != 1 else ''} of the cache key changed",
    }


def explain(store: ArtifactStore, run_id: str, step: str) -> str:
    """A readable explanation of why ``step`` of ``run_id`` ran or was a hit."""
    info = explain_step(store, run_id, step)
    record = info["record"]
    key = (info.get("key") or "")[:16]
    duration = f"{(record.get('duration') or 0) * 1000:.0f} ms"
    lines = []
    if info["verdict"] == "hit":
        lines.append(f"step {step!r} of run {info['run']}: HIT (key {key}…, {duration})")
        lines.append(f"  served from the cache entry written by run {info['source_run']}")
        for name, out in (record.get("outputs") or {}).items():
            lines.append(f"  output {name}: {out['digest'][:16]}… ({out.get('size', '?')} bytes)")
        return "\n".join(lines)
    if info["verdict"] == "skipped":
        return f"step {step!r} of run {info['run']}: SKIPPED — {info['reason']}"
    label = "MISS, and the step FAILED" if info["verdict"] == "failed" else "MISS — computed"
    lines.append(f"step {step!r} of run {info['run']}: {label} (key {key}…, {duration})")
    lines.append(f"  why: {info['reason']}")
    closest = info.get("closest")
    if closest is not None:
        lines.append(
            f"  closest earlier entry: run {closest['run_id']} ({_when(closest['created'])}), "
            f"key {closest['key'][:16]}…"
        )
        for diff in info.get("differences", []):
            lines.append(f"    - {diff}")
    return "\n".join(lines)


def artifact_lineage(store: ArtifactStore, address: str) -> dict[str, Any]:
    """What an artifact is, the run and step that produced it (code, inputs), the runs that reused it, its consumers.

    By digest or unique prefix; the document ``mlpipe artifacts show --json`` prints.

    Raises:
        MlpipeError: the index knows no such artifact.
    """
    index = open_index(store)
    art = index.artifact(address)
    if art is None:
        raise MlpipeError(
            f"no artifact {address!r} is indexed for the store {store.url}; "
            "try `mlpipe index --rebuild` if runs were recorded elsewhere"
        )
    digest = art["digest"]
    producers = index.producers(digest)
    original = next((p for p in producers if not p["cached"]), None)
    produced_by: dict[str, Any] | None = None
    collected_into: list[dict[str, str]] = []
    if original:
        run = get_run(original["run_id"], store)
        step = run.steps.get(original["step"])
        record = step.record if step is not None else {}
        mapped, _, rest = str(original["step"]).rpartition("[")
        if mapped and rest.endswith("]") and mapped in run.steps:  # an item: its mapped step collects it (fan-in)
            collected_into.append({"run": original["run_id"], "step": mapped})
        code = record.get("code") or {}
        inputs: dict[str, Any] = {}
        for name, inp in (record.get("components") or {}).get("inputs", {}).items():
            if inp["kind"] == "artifact":
                inputs[name] = {"artifact": inp["digest"], "step": inp["step"]}
            else:
                inputs[name] = {"value": inp["value"]}
        produced_by = {
            "run": original["run_id"],
            "step": original["step"],
            "output": original["name"],
            "started": original["started"],
            "code": {k: code.get(k) for k in ("module", "qualname", "fingerprint")} if code else None,
            "inputs": inputs,
        }
        items = ((record.get("components") or {}).get("map") or {}).get("items")
        if items is not None:  # a mapped step's output: the list of its items' outputs
            produced_by["items"] = list(items)
    return {
        "digest": digest,
        "type": art["type"],
        "materializer": art["materializer"],
        "size": art["size"],
        "produced_by": produced_by,
        "reused_by": [p["run_id"] for p in producers if p["cached"]],
        "consumed_by": [
            {"run": c["run_id"], "step": c["step"], "input": c["name"], "cached": bool(c["cached"])}
            for c in index.consumers(digest)
        ],
        "collected_into": collected_into,
    }


def describe_artifact(store: ArtifactStore, address: str) -> str:
    """Producer(s), consumers and sidecar of an artifact, by digest or unique prefix."""
    art = artifact_lineage(store, address)
    lines = [
        f"artifact {art['digest']}",
        f"  type {art['type']}  materializer {art['materializer']}  size {art['size']} bytes",
    ]
    made = art["produced_by"]
    if made:
        lines.append(
            f"  produced by run {made['run']}, step {made['step']!r} (output {made['output']!r})"
            f" at {_when(made['started'])}"
        )
        code = made["code"]
        if code:
            lines.append(
                f"    code {code.get('module')}.{code.get('qualname')} fingerprint {str(code.get('fingerprint'))[:16]}…"
            )
        for name, inp in made["inputs"].items():
            if "artifact" in inp:
                lines.append(f"    input {name}: {inp['artifact'][:16]}… from step {inp['step']!r}")
            else:
                lines.append(f"    input {name} = {inp['value']!r}")
        if "items" in made:
            shown = ", ".join(made["items"][:10]) + (", ..." if len(made["items"]) > 10 else "")
            lines.append(f"    collected from the outputs of its {len(made['items'])} item(s): {shown}")
    for into in art["collected_into"]:
        lines.append(f"  collected into the list of mapped step {into['step']!r} (run {into['run']})")
    reused = art["reused_by"]
    if reused:
        lines.append(f"  served from the cache in {len(reused)} later run(s): " + ", ".join(reused[:10]))
    consumers = art["consumed_by"]
    if consumers:
        lines.append("  consumed by:")
        for c in consumers[:50]:
            lines.append(
                f"    run {c['run']}, step {c['step']!r} as {c['input']!r}{' (cache hit)' if c['cached'] else ''}"
            )
    elif not art["collected_into"]:
        lines.append("  not consumed by any recorded step")
    return "\n".join(lines)
