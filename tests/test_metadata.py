"""mlpipe.metadata: the SQLite index of runs, steps, artifacts, lineage and cache entries."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from resources import pipelines as res

from mlpipe.metadata import Index, index_path, open_index
from mlpipe.store import open_store


def test_index_lives_in_a_local_store_in_wal_mode(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    assert index_path(store) == str(tmp_path / "store" / "metadata.db")
    index = open_index(store)
    assert open_index(store) is index
    mode = sqlite3.connect(index.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_remote_stores_are_indexed_under_the_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    store = open_store("memory://index-location-test")
    path = index_path(store)
    assert path.startswith(str(tmp_path / "xdg" / "mlpipe" / "index"))
    assert path.endswith(".db")


def _doc(run_id: str, step: str, key: str, digest: str, started: float) -> dict[str, object]:
    return {"run_id": run_id, "pipeline": "p", "step": step, "status": "succeeded", "cached": False, "key": key,
            "started": started, "ended": started + 1, "outputs": {"output": {"digest": digest, "size": 1,
                                                                            "materializer": "json", "type": "int"}},
            "components": {"inputs": {}}}


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    index = Index(str(tmp_path / "db" / "metadata.db"))
    other = Index(str(tmp_path / "db" / "metadata.db"))  # a second connection, as another process would have

    def write(idx: Index, prefix: str) -> None:
        for i in range(100):
            idx.record_run({"id": f"{prefix}{i}", "pipeline": "p", "status": "succeeded", "started": float(i)})
            idx.record_step(_doc(f"{prefix}{i}", "s", f"k{prefix}{i}", f"{prefix}{i:063d}", float(i)),
                            {"key": f"k{prefix}{i}", "pipeline": "p", "step": "s", "run_id": f"{prefix}{i}",
                             "created": float(i)})
        idx.flush()

    threads = [threading.Thread(target=write, args=(idx, prefix)) for idx, prefix in ((index, "a"), (other, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(index.runs(limit=1000)) == 200
    assert len(index.entry_keys()) == 200
    assert len(other.entries_for("p", "s")) == 200
    assert index.steps("a5")[0]["key"] == "ka5"
    assert index.steps_with_key("kb7")[0]["run_id"] == "b7"
    assert index.producers("a" + "5".zfill(63))[0]["run_id"] == "a5"
    assert index.artifact("b" + "0" * 10)["digest"] == "b" + "0".zfill(63)  # type: ignore[index]
    index.forget_entries(["ka1", "kb1"])
    assert len(index.entry_keys()) == 198
    index.close()
    other.close()


def test_rebuild_from_the_store_matches_the_live_index() -> None:
    first = res.arithmetic.run(n=3)
    second = res.arithmetic.run(n=4)
    store = open_store()
    live = open_index(store)
    before = {r["id"]: r["status"] for r in live.runs()}
    steps_before = {s["step"]: s["key"] for s in live.steps(second.id)}
    runs, entries = live.rebuild(store)
    assert runs == 2 and entries == len(list(Path(store.url, "cache").rglob("*.json")))
    assert {r["id"]: r["status"] for r in live.runs()} == before == {first.id: "succeeded", second.id: "succeeded"}
    assert {s["step"]: s["key"] for s in live.steps(second.id)} == steps_before
    digest = second.steps["numbers"].outputs["output"].digest
    assert [c["step"] for c in live.consumers(digest)] == ["split"]


_OPEN_AT = """
import sys, time
from mlpipe.metadata import Index
start = float(sys.argv[2])
while time.time() < start:
    pass
Index(sys.argv[1]).close()
"""


def test_processes_opening_a_new_index_at_the_same_moment_all_succeed(tmp_path: Path) -> None:
    # Switching a new file to WAL does not wait for a lock: 6 of 40 such openings failed with
    # "database is locked" before the index retried it (seen as a failed `mlpipe run` in CI).
    for round_ in range(6):
        path = tmp_path / f"r{round_}" / "metadata.db"
        path.parent.mkdir()
        start = time.time() + 1.0  # after every interpreter has imported mlpipe
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT, str(path), str(start)], stderr=subprocess.PIPE,
                                  text=True) for _ in range(4)]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
