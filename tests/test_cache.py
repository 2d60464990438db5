"""mlpipe.cache, explain, gc and the index, in process: keys, early cutoff, missing and corrupt objects, lineage."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import mlpipe as mp
from mlpipe.cache import cache_key, components_for, diff_components, entry_path, lookup
from mlpipe.errors import RunNotFoundError
from mlpipe.explain import describe_artifact, explain, explain_step
from mlpipe.gc import collect
from mlpipe.local import StoreRepairWarning
from mlpipe.metadata import open_index
from mlpipe.store import open_store

calls: list[str] = []


@mp.step
def numbers(n: int) -> list[int]:
    calls.append("numbers")
    return list(range(n))


@mp.step
def parity(values: list[int]) -> int:
    calls.append("parity")
    return len(values) % 2


@mp.step
def biased(values: list[int], bias: int = 0) -> int:
    calls.append("biased")
    return sum(values) + bias


@mp.step
def describe(p: int) -> str:
    calls.append("describe")
    return "even" if p == 0 else "odd"


@mp.pipeline
def chain(n: int = 4, bias: int = 0) -> str:
    values = numbers(n)
    biased(values, bias=bias)
    return describe(parity(values))


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


def _statuses(run: mp.Run) -> dict[str, bool]:
    return {name: s.cached for name, s in run.steps.items()}


def test_key_components() -> None:
    spec = chain.ir.step("biased")
    inputs = {"values": {"kind": "artifact", "digest": "a" * 64, "step": "numbers", "output": "output"},
              "bias": {"kind": "value", "value": 1}}
    components = components_for(spec, inputs)
    assert set(components) == {"code", "code_manifest", "code_previews", "inputs", "outputs", "materializers",
                               "version"}
    assert components["outputs"] == [["output", "int"]]
    assert components["materializers"] == ["json@1"]
    key = cache_key(components)
    assert key == cache_key(dict(components))
    changed = dict(components, version="2")
    assert cache_key(changed) != key
    other_input = dict(components, inputs={**inputs, "bias": {"kind": "value", "value": 2}})
    assert cache_key(other_input) != key
    # the upstream step's identity does not matter, only the content hash
    renamed = dict(components, inputs={**inputs, "values": {**inputs["values"], "step": "numbers_2"}})
    assert cache_key(renamed) == key
    assert [d.component for d in diff_components(components, changed)] == ["version"]
    assert [str(d) for d in diff_components(components, other_input)] == ["parameter 'bias': 1 → 2"]


def test_second_run_hits_and_no_cache_recomputes() -> None:
    first = chain.run()
    assert not any(_statuses(first).values())
    assert sorted(calls) == ["biased", "describe", "numbers", "parity"]
    calls.clear()
    second = chain.run()
    assert all(_statuses(second).values())
    assert calls == []
    third = chain.run(cache=False)
    assert not any(_statuses(third).values())
    assert len(calls) == 4
    assert "--no-cache" in explain(open_store(), third.id, "numbers")


def test_parameter_change_reruns_only_the_affected_steps() -> None:
    chain.run(bias=0)
    calls.clear()
    run = chain.run(bias=5)
    assert _statuses(run) == {"numbers": True, "biased": False, "parity": True, "describe": True}
    assert calls == ["biased"]
    info = explain_step(open_store(), run.id, "biased")
    assert info["verdict"] == "miss"
    assert [str(d) for d in info["differences"]] == ["parameter 'bias': 0 → 5"]
    text = explain(open_store(), run.id, "biased")
    assert "MISS" in text and "parameter 'bias': 0 → 5" in text
    hit = explain(open_store(), run.id, "numbers")
    assert "HIT" in hit and "served from the cache entry written by run" in hit


def test_early_cutoff() -> None:
    chain.run(n=4)
    calls.clear()
    run = chain.run(n=6)  # numbers and parity re-run; parity gives 0 again
    assert _statuses(run) == {"numbers": False, "biased": False, "parity": False, "describe": True}
    assert "describe" not in calls
    assert run.output("describe") == "even"
    info = explain_step(open_store(), run.id, "parity")
    assert [d.component for d in info["differences"]] == ["input"]
    assert "input 'values' from step 'numbers' changed" in str(info["differences"][0])


def test_cache_false_step_always_runs() -> None:
    volatile = numbers.with_options(cache=False)

    @mp.pipeline
    def uncached(n: int = 2) -> int:
        return parity(volatile(n))

    uncached.run()
    calls.clear()
    run = uncached.run()
    assert _statuses(run) == {"numbers": False, "parity": True}
    assert calls == ["numbers"]
    assert "declared with cache=False" in explain(open_store(), run.id, "numbers")


def test_version_salt_changes_the_key() -> None:
    @mp.pipeline(name="salted")
    def salted_v1(n: int = 2) -> int:
        return parity(numbers.with_options(version="1")(n))

    @mp.pipeline(name="salted")
    def salted_v2(n: int = 2) -> int:
        return parity(numbers.with_options(version="2")(n))

    salted_v1.run()
    run = salted_v2.run()
    assert _statuses(run) == {"numbers": False, "parity": True}
    assert "version salt: '1' → '2'" in explain(open_store(), run.id, "numbers")


def _make_scaler(k: int) -> Callable[[list[int]], int]:
    def scaled(values: list[int]) -> int:
        return sum(values) * k

    return scaled


def test_code_change_is_explained_by_name() -> None:
    def build(k: int) -> mp.Pipeline:
        step = mp.step(name="scaled")(_make_scaler(k))

        @mp.pipeline(name="scaling")
        def scaling(n: int = 3) -> int:
            return step(numbers(n))

        return scaling

    build(2).run()
    run = build(3).run()
    assert _statuses(run) == {"numbers": True, "scaled": False}
    info = explain_step(open_store(), run.id, "scaled")
    assert [d.component for d in info["differences"]] == ["code"]
    assert str(info["differences"][0]) == f"closure {__name__}._make_scaler.<locals>.scaled.k changed: 2 → 3"


def test_first_computation_is_explained() -> None:
    run = chain.run()
    assert "first computation" in explain(open_store(), run.id, "numbers")
    with pytest.raises(RunNotFoundError, match="has no step 'nope'"):
        explain(open_store(), run.id, "nope")


def test_missing_object_turns_a_hit_into_a_miss() -> None:
    first = chain.run()
    store = open_store()
    digest = first.steps["numbers"].outputs["output"].digest
    key = first.steps["numbers"].key
    assert key is not None and lookup(store, key) is not None
    store.delete_object(digest)
    assert lookup(store, key) is None
    calls.clear()
    run = chain.run()
    assert _statuses(run) == {"numbers": False, "biased": True, "parity": True, "describe": True}
    assert calls == ["numbers"]
    assert store.exists(digest)  # recomputed, same bytes
    assert "objects were missing or corrupted" in explain(store, run.id, "numbers")


def test_corrupted_object_is_recomputed_with_a_warning_and_the_store_repaired() -> None:
    first = chain.run(bias=0)
    store = open_store()
    digest = first.steps["numbers"].outputs["output"].digest
    path = Path(store.url, store.object_path(digest))
    path.write_bytes(b"[9,9,9,9]")  # same size class, wrong bytes
    calls.clear()
    with pytest.warns(StoreRepairWarning, match=r"is corrupted; recomputing step 'numbers'"):
        run = chain.run(bias=1)  # biased misses and must read numbers' output
    assert run.status == "succeeded"
    assert run.output("biased") == 0 + 1 + 2 + 3 + 1  # never a wrong result
    assert "numbers" in calls
    assert store.read_verified(digest)  # repaired: the object is back and verifies
    assert list(Path(store.url, "quarantine").iterdir())
    calls.clear()
    again = chain.run(bias=1)
    assert all(_statuses(again).values())
    assert calls == []


def test_corrupted_output_read_through_run_output() -> None:
    run = chain.run()
    store = open_store()
    digest = run.steps["describe"].outputs["output"].digest
    Path(store.url, store.object_path(digest)).write_bytes(b'"odd"')
    from mlpipe.errors import CorruptObjectError

    with pytest.raises(CorruptObjectError):
        run.output("describe")
    again = chain.run()  # the entry's object is gone: describe is recomputed
    assert _statuses(again)["describe"] is False
    assert again.output("describe") == "even"


def test_a_cached_pipeline_output_that_went_bad_is_recomputed_before_the_run_returns() -> None:
    first = chain.run()
    store = open_store()
    digest = first.steps["describe"].outputs["output"].digest
    Path(store.url, store.object_path(digest)).write_bytes(b'"odd"')  # bit rot in the final output
    calls.clear()
    with pytest.warns(StoreRepairWarning, match=r"pipeline output describe.output \(.*\) is corrupted; recomputing"):
        run = chain.run()  # every step is a hit; the final output is verified before it is handed back
    assert run.status == "succeeded" and calls == ["describe"]
    assert run.output("describe") == "even"
    assert run.steps["describe"].cached is False and mp.get_run(run.id).steps["describe"].cached is False
    Path(store.url, store.object_path(digest) + ".meta.json").unlink()  # the bytes stay, their sidecar is lost
    with pytest.warns(StoreRepairWarning, match=r"describe.output \(.*\) cannot be read \(its sidecar or bytes"):
        assert chain.run().output("describe") == "even"
    calls.clear()
    again = chain.run()  # repaired: a plain hit, nothing recomputed
    assert all(_statuses(again).values()) and calls == []


# -- lineage, runs, index, gc -----------------------------------------------------------------------


def test_runs_and_get_run() -> None:
    first = chain.run(n=2)
    second = chain.run(n=3)
    found = mp.runs()
    assert [r.id for r in found[:2]] == [second.id, first.id]
    assert mp.runs(pipeline="nope") == []
    assert mp.get_run(first.id).status == "succeeded"
    assert mp.get_run(first.id[:-2]).id == first.id  # a unique prefix is enough
    with pytest.raises(RunNotFoundError, match=r"run id prefix '\d{8}' is ambiguous .*: it matches "):
        mp.get_run(first.id[:8])
    with pytest.raises(RunNotFoundError):
        mp.get_run("19990101-000000-000000")
    loaded = mp.get_run(second.id)
    assert loaded.params == {"n": 3, "bias": 0}
    assert loaded.output("numbers") == [0, 1, 2]
    assert loaded.steps["numbers"].record["code"]["qualname"] == "numbers"


def test_lineage_of_an_artifact() -> None:
    first = chain.run(n=5)
    second = chain.run(n=5)
    store = open_store()
    digest = first.steps["numbers"].outputs["output"].digest
    index = open_index(store)
    assert [p["run_id"] for p in index.producers(digest) if not p["cached"]] == [first.id]
    consumers = {(c["run_id"], c["step"]) for c in index.consumers(digest)}
    assert {(first.id, "biased"), (first.id, "parity"), (second.id, "parity")} <= consumers
    text = describe_artifact(store, digest[:12])
    assert f"artifact {digest}" in text
    assert f"produced by run {first.id}, step 'numbers'" in text
    assert "input n = 5" in text
    assert f"served from the cache in 1 later run(s): {second.id}" in text
    assert f"run {first.id}, step 'parity' as 'values'" in text
    with pytest.raises(mp.MlpipeError, match="no artifact 'ffff"):
        describe_artifact(store, "ffff")


def test_package_versions_are_recorded() -> None:
    @mp.step
    def uses_pydantic(n: int) -> str:
        import pydantic

        return str(pydantic.VERSION)[:0] + str(n)

    @mp.pipeline
    def versions() -> str:
        return uses_pydantic(1)

    import pydantic

    run = versions.run()
    record = run.steps["uses_pydantic"].record
    assert record["packages"] == {"pydantic": pydantic.VERSION}  # imported inside the step body
    assert record["code"]["fingerprint"] == versions.ir.step("uses_pydantic").fingerprint
    assert "components" in record
    again = versions.run()
    assert "packages" not in again.steps["uses_pydantic"].record  # a hit ran no code


def test_index_rebuild_from_the_store() -> None:
    first = chain.run(n=2)
    second = chain.run(n=3, bias=1)
    store = open_store()
    db = Path(store.url, "metadata.db")
    index = open_index(store)
    index.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    rebuilt = open_index(store)
    assert rebuilt.runs() == []
    runs, entries = rebuilt.rebuild(store)
    assert runs == 2
    assert entries == len(list(Path(store.url, "cache").rglob("*.json")))
    assert {r.id for r in mp.runs()} == {first.id, second.id}
    assert "parameter 'bias': 0 → 1" in explain(store, second.id, "biased")


def test_gc_removes_unreachable_objects() -> None:
    chain.run(n=3)
    store = open_store()
    orphan = store.put_value({"nobody": "uses me"})
    report = collect(store, dry_run=True, grace=0)
    assert [rel for rel, _ in report.items] == [store.object_path(orphan.digest)]
    assert report.bytes == orphan.size
    assert store.exists(orphan.digest)  # dry run
    report = collect(store, grace=0)
    assert not store.exists(orphan.digest)
    assert report.kept_objects == len(list(store.iter_objects()))
    again = chain.run(n=3)
    assert all(_statuses(again).values())


def test_gc_keep_runs_drops_older_runs_and_their_entries() -> None:
    old = chain.run(n=7)
    new = chain.run(n=2)
    store = open_store()
    old_only = old.steps["numbers"].outputs["output"].digest
    report = collect(store, keep_runs=1, grace=0)
    removed = {rel for rel, _ in report.items}
    assert store.object_path(old_only) in removed
    assert not store.exists(old_only)
    assert not store.has(f"runs/{old.id}/run.json")
    assert [r.id for r in mp.runs()] == [new.id]
    rerun = chain.run(n=7)
    assert not rerun.steps["numbers"].cached


def _entry_files(run: mp.Run) -> dict[str, tuple[int, int]]:
    store = open_store()
    out = {}
    for name, step in run.steps.items():
        path = Path(store.url, entry_path(step.record["key"]))
        out[name] = (path.stat().st_ino, path.stat().st_mtime_ns)
    return out


def test_a_rerun_with_cache_off_leaves_identical_entries_alone() -> None:
    first = chain.run(n=5)
    before = _entry_files(first)
    calls.clear()
    second = chain.run(n=5, cache=False)
    assert sorted(calls) == ["biased", "describe", "numbers", "parity"]  # every step ran again
    assert not any(_statuses(second).values())
    assert _entry_files(second) == before  # same keys, same outputs: no entry renamed over
    store = open_store()
    for name, step in second.steps.items():
        entry = lookup(store, step.record["key"])
        assert entry is not None and entry.run_id == first.id  # still names the run that produced it
        assert step.outputs == first.steps[name].outputs
    assert {e["run_id"] for e in open_index(store).entries_for("chain", "numbers")} == {first.id}
    third = chain.run(n=5)
    assert all(_statuses(third).values())
    assert {s.source_run for s in third.steps.values()} == {first.id}


def test_an_unreadable_or_different_entry_is_rewritten() -> None:
    first = chain.run(n=6)
    store = open_store()
    broken = Path(store.url, entry_path(first.steps["numbers"].record["key"]))
    broken.write_text("{not json")
    changed = Path(store.url, entry_path(first.steps["parity"].record["key"]))
    doc = json.loads(changed.read_text())
    doc["pipeline"] = "another"  # anything but the run and the time differs: rewritten
    changed.write_text(json.dumps(doc))
    kept = _entry_files(first)["describe"]
    second = chain.run(n=6, cache=False)
    assert lookup(store, second.steps["numbers"].record["key"]).run_id == second.id  # type: ignore[union-attr]
    assert lookup(store, second.steps["parity"].record["key"]).pipeline == "chain"  # type: ignore[union-attr]
    assert _entry_files(second)["describe"] == kept
    assert all(_statuses(chain.run(n=6)).values())


def test_gc_keep_runs_keeps_the_entries_a_kept_run_reproduced() -> None:
    chain.run(n=8)
    chain.run(n=8, cache=False)  # leaves the first run's entries in place
    collect(open_store(), keep_runs=1)
    calls.clear()
    again = chain.run(n=8)
    assert all(_statuses(again).values()) and calls == []


def test_gc_removes_quarantine_and_stale_temporaries() -> None:
    run = chain.run()
    store = open_store()
    digest = run.steps["describe"].outputs["output"].digest
    store.quarantine(digest)
    tmp = Path(store.url, "objects", "tmp", "1-2-3")
    tmp.write_bytes(b"partial")
    os.utime(tmp, (0, 0))
    report = collect(store)
    assert any(rel.startswith("quarantine/") for rel, _ in report.items)
    assert not list(Path(store.url, "quarantine").iterdir())
    assert not tmp.exists()


def _values(run: mp.Run) -> dict[str, Any]:
    return {name: run.output(name) for name in run.steps}


def test_results_identical_from_cache() -> None:
    first = chain.run(n=9, bias=2)
    second = chain.run(n=9, bias=2)
    assert _values(first) == _values(second)


def test_input_object_gone_after_the_hit_is_recomputed() -> None:
    first = chain.run(bias=0)
    store = open_store()
    digest = first.steps["numbers"].outputs["output"].digest
    sidecar = Path(store.url, store.object_path(digest) + ".meta.json")
    sidecar.unlink()  # the object is still there, so numbers is a hit; reading it for biased fails
    with pytest.warns(StoreRepairWarning, match="is missing from the store; recomputing step 'numbers'"):
        run = chain.run(bias=2)
    assert run.status == "succeeded"
    assert run.output("biased") == 6 + 2
    assert sidecar.is_file()
    assert run.steps["numbers"].cached is False  # recomputed in this run
    assert mp.get_run(run.id).steps["numbers"].cached is False  # and the record says so


def test_explain_failed_and_skipped_steps() -> None:
    from resources.pipelines import failing

    run = failing.run()
    store = open_store()
    failed = explain(store, run.id, "boom")
    assert f"step 'boom' of run {run.id}: MISS, and the step FAILED" in failed
    skipped = explain(store, run.id, "plus_one")
    assert skipped.startswith(f"step 'plus_one' of run {run.id}: SKIPPED")
    assert "upstream step 'boom'" in skipped


def test_diff_names_new_and_dropped_code() -> None:
    old = {"code": "a", "code_manifest": {"function m.step": "1", "function m.old": "2"}, "inputs": {},
           "outputs": [], "materializers": [], "version": None}
    new = {**old, "code": "b", "code_manifest": {"function m.step": "1", "function m.new": "3"}}
    assert [str(d) for d in diff_components(old, new)] == [
        "function m.new is new (now reached by the step)",
        "function m.old is no longer reached",
    ]
    added = {**old, "inputs": {"x": {"kind": "value", "value": 1}}}
    assert [str(d) for d in diff_components(old, added)] == ["argument 'x' added"]


def test_early_cutoff_with_dataframes() -> None:
    @mp.step
    def frame(n: int) -> pd.DataFrame:
        return pd.DataFrame({"x": list(range(n)), "s": [str(i) for i in range(n)]})

    @mp.step
    def check(df: pd.DataFrame, min_rows: int) -> pd.DataFrame:
        assert len(df) >= min_rows
        return df

    @mp.step
    def width(df: pd.DataFrame) -> int:
        return len(df.columns)

    @mp.pipeline
    def frames(min_rows: int = 1) -> int:
        return width(check(frame(50), min_rows))

    frames.run()
    again = frames.run(min_rows=10)  # check re-runs and writes byte-identical Parquet
    assert _statuses(again) == {"frame": True, "check": False, "width": True}
