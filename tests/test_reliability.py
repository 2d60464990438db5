"""Reliability and security cases from the fault campaign: gc races, planted objects, secrets, damaged files.

Every test here failed before its fix; each is bounded in time and stops what it starts.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

import mlpipe as mp
from mlpipe.errors import CorruptObjectError, UntrustedObjectError
from mlpipe.gc import collect
from mlpipe.hashing import digest_object
from mlpipe.launch import new_run_id
from mlpipe.local import StoreRepairWarning
from mlpipe.runtime import write_ir
from mlpipe.store import ArtifactStore, ObjectInfo, open_store

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = ROOT / "tests" / "resources"
sys.path.insert(0, str(RESOURCES))

import reliability_pipelines as rp  # noqa: E402

# -- cache gc racing running pipelines ---------------------------------------------------------------

GC_LOOP = textwrap.dedent(
    """
    import os, sys, time
    from mlpipe.gc import collect
    from mlpipe.store import open_store
    store, stop = open_store(sys.argv[1]), sys.argv[2]
    deadline, rounds = time.monotonic() + 60, 0
    while not os.path.exists(stop) and time.monotonic() < deadline:
        collect(store)
        rounds += 1
        if rounds == 1:
            open(stop + ".started", "w").close()
    print(rounds)
    """
)


def test_gc_looping_while_pipelines_run_never_loses_their_outputs(tmp_path: Path) -> None:
    store = open_store()
    stop = tmp_path / "stop"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    loop = subprocess.Popen([sys.executable, "-c", GC_LOOP, store.url, str(stop)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = Path(str(stop) + ".started")
        deadline = time.monotonic() + 60
        while not started.exists() and loop.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        runs = []
        for salt in range(12):
            run = rp.chain.run(salt=salt)
            assert run.status == "succeeded"
            runs.append(run)
            for name in run.steps:
                run.output(name)  # every output of a finished run is still there
    finally:
        stop.touch()
        out, err = loop.communicate(timeout=60)
    assert loop.returncode == 0, err
    assert int(out) > 1
    collect(store)  # the default grace keeps everything recent; all recorded outputs stay reachable anyway
    for run in runs:
        for name in run.steps:
            run.output(name)


def test_gc_grace_keeps_an_unreferenced_new_object_and_zero_grace_removes_it() -> None:
    store = open_store()
    info = store.put_value({"published": "before its record"})
    assert collect(store).items == []
    assert store.exists(info.digest)
    report = collect(store, grace=0)
    assert [rel for rel, _ in report.items] == [store.object_path(info.digest)]
    assert not store.exists(info.digest)


def test_a_writer_reusing_an_old_object_freshens_it_so_gc_keeps_it() -> None:
    store = open_store()
    info = store.put_value({"old": "garbage"})
    path = Path(store.url, store.object_path(info.digest))
    os.utime(path, (0, 0))
    again = store.put_value({"old": "garbage"})  # a running step produces the same bytes again
    assert again.digest == info.digest
    assert time.time() - path.stat().st_mtime < 60
    assert collect(store).items == []
    assert store.exists(info.digest)


def test_gc_keep_runs_never_drops_a_run_that_is_still_running() -> None:
    store = open_store()
    running = rp.chain.run(salt=1)
    finished = rp.chain.run(salt=2)
    doc = store.get_json(f"runs/{running.id}/run.json")
    store.put_json(f"runs/{running.id}/run.json", {**doc, "status": "running", "pid": os.getpid()})
    outputs = [s.outputs["output"].digest for s in running.steps.values()]
    for digest in outputs:
        os.utime(Path(store.url, store.object_path(digest)), (0, 0))
    collect(store, keep_runs=1, grace=0)
    assert store.has(f"runs/{running.id}/run.json")
    assert all(store.exists(d) for d in outputs)
    assert mp.get_run(running.id).output("total") == running.output("total")
    assert mp.get_run(finished.id).status == "succeeded"
    # once that process is gone the run is interrupted, no longer protected
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    store.put_json(f"runs/{running.id}/run.json", {**doc, "status": "running", "pid": int(dead.stdout)})
    collect(store, keep_runs=1, grace=0)
    assert not store.has(f"runs/{running.id}/run.json")



# -- a store writer cannot make readers unpickle its bytes -------------------------------------------


class _Payload:
    """Unpickling this creates a file: the proof that a reader ran the attacker's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _plant(store: ArtifactStore, marker: Path, **sidecar: object) -> str:
    """An attacker's pickle stored under its own valid address, with a sidecar naming cloudpickle."""
    data = pickle.dumps(_Payload(marker))
    digest = digest_object(data)
    path = Path(store.url, store.object_path(digest))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    meta = {"digest": digest, "size": len(data), "materializer": "cloudpickle", "type": "builtins:object",
            "python": f"{sys.version_info.major}.{sys.version_info.minor}", **sidecar}
    Path(str(path) + ".meta.json").write_text(json.dumps(meta))
    return digest


def _point_cache_entry(store: ArtifactStore, run: mp.Run, step: str, digest: str, **ref: object) -> None:
    key = store.get_json(f"runs/{run.id}/steps.json")[step]["key"]
    rel = f"cache/{key[:2]}/{key}.json"
    entry = store.get_json(rel)
    entry["outputs"]["output"] = {**entry["outputs"]["output"], "digest": digest, **ref}
    store.put_json(rel, entry)


def test_a_planted_pickle_is_never_loaded_for_a_dataframe_input(tmp_path: Path) -> None:
    store = open_store()
    first = rp.frames.run()
    marker = tmp_path / "pwned"
    digest = _plant(store, marker)
    _point_cache_entry(store, first, "frame", digest, materializer="cloudpickle", type="builtins:object")
    with pytest.warns(StoreRepairWarning, match="recomputing step 'frame'"):
        second = rp.frames.run()  # read as Parquet (the consumer's type), it is not Parquet: frame runs again
    assert not marker.exists()
    assert second.status == "succeeded" and second.output("width") == 10
    with pytest.raises(CorruptObjectError, match=r"stored by 'cloudpickle'.*loads only with 'pandas\.parquet'"):
        store.get_value(digest, pd.DataFrame, info=ObjectInfo(digest, 1, "cloudpickle", "builtins:object"))
    assert not marker.exists()


def test_a_planted_fallback_pickle_is_refused_and_the_producer_recomputed(tmp_path: Path) -> None:
    store = open_store()
    first = rp.frames.run()
    marker = tmp_path / "pwned"
    digest = _plant(store, marker, fallback_from="pandas.parquet")
    _point_cache_entry(store, first, "frame", digest, materializer="cloudpickle", type="pandas.core.frame:DataFrame")
    with pytest.warns(StoreRepairWarning, match="recomputing step 'frame'"):
        second = rp.frames.run()
    assert not marker.exists()
    assert second.status == "succeeded" and second.output("width") == 10


def test_get_run_output_refuses_a_planted_pickle(tmp_path: Path) -> None:
    store = open_store()
    run = rp.models.run()
    assert run.output("fit").w == 6  # a pickle this user wrote loads (its sidecar is signed)
    marker = tmp_path / "pwned"
    digest = _plant(store, marker)
    records = store.get_json(f"runs/{run.id}/steps.json")
    records["fit"]["outputs"]["output"]["digest"] = digest
    store.put_json(f"runs/{run.id}/steps.json", records)
    with pytest.raises(UntrustedObjectError, match="is a pickle and its sidecar carries no valid signature"):
        mp.get_run(run.id).output("fit")
    forged = _plant(store, marker, sha256="0" * 64, mac="f" * 64)
    records["fit"]["outputs"]["output"]["digest"] = forged
    store.put_json(f"runs/{run.id}/steps.json", records)
    with pytest.raises(UntrustedObjectError):
        mp.get_run(run.id).output("fit")
    assert not marker.exists()


def test_a_pickle_signed_with_another_trust_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLPIPE_TRUST_KEY", "machine-a")
    run = rp.models.run()
    assert run.output("fit").w == 6
    monkeypatch.setenv("MLPIPE_TRUST_KEY", "machine-b")
    with pytest.raises(UntrustedObjectError, match="MLPIPE_TRUST_KEY"):
        mp.get_run(run.id).output("fit")
    again = rp.models.run()  # the hit's input is refused, so fit runs again and re-signs its output
    assert again.status == "succeeded" and again.output("score") == 7


def _runtime(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(RESOURCES)])}
    return subprocess.run([sys.executable, "-m", "mlpipe.runtime", *args], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def test_the_runtime_refuses_an_ir_that_does_not_hash_to_its_digest(tmp_path: Path) -> None:
    store = open_store()
    digest = write_ir(store, rp.frames.ir)
    ok = _runtime("--store", store.url, "--ir", digest, "--run-id", new_run_id(), "--step", "frame")
    assert ok.returncode == 0, ok.stderr
    rel = Path(store.url, "pipelines", f"{digest}.json")
    rel.write_text(rel.read_text().replace('"qualname":"frame"', '"qualname":"width"'))
    bad = _runtime("--store", store.url, "--ir", digest, "--run-id", new_run_id(), "--step", "frame")
    assert bad.returncode == 1
    assert f"pipelines/{digest}.json" in bad.stderr and "does not hash to its name" in bad.stderr
    assert "Traceback" not in bad.stderr


# -- secrets never reach the store --------------------------------------------------------------------

SECRET_PIPELINE = '''
import json
import os

import mlpipe as mp

AWS_SECRET = os.environ.get("AWS_SECRET_ACCESS_KEY")
SERVICE = os.getenv("SERVICE_ENDPOINT", "none")
TRACKING = os.environ["MLFLOW_TRACKING_TOKEN"]
HEADERS = {"Authorization": "Bearer " + TRACKING, "Accept": "json"}
with open(os.environ["GOOGLE_APPLICATION_CREDENTIALS"]) as f:
    GCP = json.load(f)
DB_PASSWORD = "hunter2-literal-in-code"
PLAIN = "visible-constant"


@mp.step
def use(n: int) -> int:
    return n + len(AWS_SECRET) + len(SERVICE) + len(HEADERS) + len(GCP["private_key"]) + len(DB_PASSWORD) + len(PLAIN)


@mp.pipeline
def secrets(n: int = 1) -> int:
    return use(n)
'''


def _mlpipe(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MLPIPE_", "MLFLOW_"))}
    return subprocess.run([sys.executable, "-m", "mlpipe", *args], cwd=cwd, capture_output=True, text=True,
                          env={**full, "PYTHONPATH": str(ROOT), **env}, timeout=120, check=False)


def test_secrets_read_by_a_step_are_hashed_never_written_to_the_store(tmp_path: Path) -> None:
    work = Path.cwd()
    (work / "secret_pipe.py").write_text(SECRET_PIPELINE)
    creds = tmp_path / "sa.json"
    private_key = "-----BEGIN PRIVATE KEY-----\nMIIEvgIBADANBgkqhkiG9w0-gcp-private\n-----END PRIVATE KEY-----\n"
    creds.write_text(json.dumps({"type": "service_account", "client_email": "ci@proj.iam.gserviceaccount.com",
                                 "private_key_id": "0123456789abcdef", "private_key": private_key}))
    env = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-aws-secret-0001", "SERVICE_ENDPOINT": "https://svc-secret-host.internal",
           "MLFLOW_TRACKING_TOKEN": "mlflow-token-secret-0002", "GOOGLE_APPLICATION_CREDENTIALS": str(creds)}
    first = _mlpipe("run", "secret_pipe.py:secrets", cwd=work, env=env)
    assert first.returncode == 0, first.stderr
    rotated = {**env, "MLFLOW_TRACKING_TOKEN": "rotated-token-0003"}
    second = _mlpipe("run", "secret_pipe.py:secrets", cwd=work, env=rotated)
    assert second.returncode == 0, second.stderr
    assert "cached" not in second.stderr  # the secret is still in the key: a new token re-runs the step
    explain = _mlpipe("cache", "explain", _last_run(work), "use", cwd=work, env=env)
    assert explain.returncode == 0, explain.stderr
    assert _mlpipe("index", "--rebuild", cwd=work, env=env).returncode == 0
    blobs = b"".join(p.read_bytes() for p in (work / ".mlpipe").rglob("*") if p.is_file())
    assert b"visible-constant" in blobs  # ordinary constants are still previewed
    for secret in ("wJalrXUtnFEMI-aws-secret-0001", "svc-secret-host", "mlflow-token-secret-0002",
                   "rotated-token-0003", "gcp-private", "0123456789abcdef", "hunter2-literal-in-code"):
        assert secret.encode() not in blobs, secret
        assert secret not in explain.stdout + first.stdout + second.stdout


def _last_run(work: Path) -> str:
    return sorted(p.name for p in (work / ".mlpipe" / "runs").iterdir())[-1]


# -- damaged metadata never wedges the tool ---------------------------------------------------------

PIPES = RESOURCES / "reliability_pipelines.py"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _mlpipe(*args, cwd=cwd, env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(RESOURCES)])})


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_corrupt_metadata_db_blocks_nothing_and_rebuild_moves_it_aside() -> None:
    work = Path.cwd()
    assert _cli("run", f"{PIPES}:frames", cwd=work).returncode == 0
    db = work / ".mlpipe" / "metadata.db"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    listed = _cli("runs", "list", cwd=work)
    assert listed.returncode == 0, listed.stderr
    assert "succeeded" in listed.stdout
    assert "metadata.db was damaged" in listed.stderr and "moved to" in listed.stderr
    db.write_bytes(b"\x00garbage" * 500)
    rebuilt = _cli("index", "--rebuild", cwd=work)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "indexed 1 runs" in rebuilt.stdout
    assert len(list((work / ".mlpipe").glob("metadata.db.damaged-*"))) >= 1
    again = _cli("run", f"{PIPES}:frames", cwd=work)
    assert again.returncode == 0 and again.stderr.count("cached ") == 2, again.stderr


def test_damaged_records_are_named_and_skipped_by_runs_show_rebuild_and_gc() -> None:
    work = Path.cwd()
    ids = []
    for n in (3, 4, 5):
        result = _cli("run", f"{PIPES}:frames", "-p", f"n={n}", cwd=work)
        assert result.returncode == 0, result.stderr
        ids.append(sorted(p.name for p in (work / ".mlpipe" / "runs").iterdir())[-1])
    store = work / ".mlpipe"
    _truncate(store / "runs" / ids[0] / "run.json")
    _truncate(store / "runs" / ids[1] / "steps.json")
    entry = next((store / "cache").rglob("*.json"))
    _truncate(entry)
    show_bad = _cli("runs", "show", ids[0], cwd=work)
    assert show_bad.returncode == 1
    assert f"runs/{ids[0]}/run.json" in show_bad.stderr and "is damaged" in show_bad.stderr
    assert "Traceback" not in show_bad.stderr
    show_steps = _cli("runs", "show", ids[1], cwd=work)
    assert show_steps.returncode == 0, show_steps.stderr
    assert f"runs/{ids[1]}/steps.json" in show_steps.stderr
    rebuilt = _cli("index", "--rebuild", cwd=work)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"runs/{ids[0]}/run.json" in rebuilt.stderr and entry.name in rebuilt.stderr
    assert "indexed 2 runs" in rebuilt.stdout
    gc = _cli("cache", "gc", "--grace", "0", cwd=work)
    assert gc.returncode == 0, gc.stderr
    assert f"will remove {entry.relative_to(store).as_posix()}" in gc.stdout and "removed 1 files" in gc.stdout
    rerun = _cli("run", f"{PIPES}:frames", "-p", "n=5", cwd=work)
    assert rerun.returncode == 0, rerun.stderr
    assert mp.get_run(ids[2], store=str(store)).output("width") == 10


def test_a_truncated_sidecar_is_named_and_repaired_by_the_next_run() -> None:
    first = rp.frames.run()
    store = open_store()
    digest = first.steps["frame"].outputs["output"].digest
    _truncate(Path(store.url, store.object_path(digest) + ".meta.json"))
    width_key = first.steps["width"].key
    Path(store.url, "cache", width_key[:2], f"{width_key}.json").unlink()  # so width reads frame's output again
    with pytest.warns(StoreRepairWarning, match=r"recomputing step 'frame'"):
        again = rp.frames.run()  # reading it fails on the sidecar: frame runs again and writes a good one
    assert again.status == "succeeded" and again.output("width") == 10
    _truncate(Path(store.url, store.object_path(digest) + ".meta.json"))
    with pytest.raises(CorruptObjectError, match=r"the sidecar objects/.*\.meta\.json .* is damaged"):
        mp.get_run(first.id, store=open_store(store.url)).output("frame")
    rp.frames.run(cache=False)
    assert mp.get_run(first.id, store=open_store(store.url)).output("frame")["x"].sum() == 10


def test_a_full_disk_in_sqlite_says_so_and_exits_1() -> None:
    from mlpipe.errors import StoreError
    from mlpipe.metadata import open_index

    rp.frames.run()
    store = open_store()
    index = open_index(store)
    pages = index._db.execute("PRAGMA page_count").fetchone()[0]
    index._db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own SQLITE_FULL, as on a full disk
    try:
        with pytest.raises(StoreError, match="the disk is full") as info:
            for i in range(200):
                index.record_run({"id": f"x{i}", "pipeline": "p" * 5000, "status": "succeeded"})
        assert info.value.exit_code == 1
        assert "metadata.db" in str(info.value)
    finally:
        index._db.execute("PRAGMA max_page_count=1073741823")


# -- exit status tells the truth ---------------------------------------------------------------------


def test_sys_exit_inside_a_step_fails_the_step_and_the_run() -> None:
    work = Path.cwd()
    result = _cli("run", f"{PIPES}:exits", cwd=work)
    assert result.returncode == 1, result.stderr
    assert "called sys.exit(0)" in result.stderr
    run = mp.runs(store=str(work / ".mlpipe"))[0]
    assert run.status == "failed"
    assert run.steps["quits"].status == "failed" and run.steps["after_exit"].status == "skipped"


def test_os_exit_inside_a_step_is_reported_and_exits_1() -> None:
    work = Path.cwd()
    result = _cli("run", f"{PIPES}:hard_exit", cwd=work)
    assert result.returncode == 1, result.stderr
    assert "exited with status 0 before the run finished" in result.stderr
    assert "os._exit()" in result.stderr
    listed = _cli("runs", "list", cwd=work)
    assert "interrupted" in listed.stdout, listed.stdout
    ok = _cli("run", f"{PIPES}:frames", cwd=work)
    assert ok.returncode == 0 and "error" not in ok.stderr, ok.stderr


# -- the runtime and the CLI check their arguments ----------------------------------------------------


def test_the_runtime_refuses_ids_that_leave_the_store_and_unknown_steps() -> None:
    store = open_store()
    digest = write_ir(store, rp.frames.ir)
    work = Path.cwd()
    escape = _runtime("--store", store.url, "--ir", digest, "--run-id", "../../x", "--step", "frame")
    assert escape.returncode == 2, escape.stderr
    assert "--run-id '../../x' is not a run id" in escape.stderr
    assert not (work.parent / "x").exists() and not (work / "x").exists()
    outside = _runtime("--store", store.url, "--ir", "../outside", "--run-id", new_run_id(), "--step", "frame")
    assert outside.returncode == 2 and "--ir '../outside' is not a compiled pipeline digest" in outside.stderr
    unknown = _runtime("--store", store.url, "--ir", digest, "--run-id", new_run_id(), "--step", "nope")
    assert unknown.returncode == 2, unknown.stderr
    assert "--step 'nope': pipeline 'frames' has no step 'nope'" in unknown.stderr
    for result in (escape, outside, unknown):
        assert "Traceback" not in result.stderr


def test_runs_show_stays_inside_the_store_and_is_no_sql_wildcard() -> None:
    work = Path.cwd()
    assert _cli("run", f"{PIPES}:frames", cwd=work).returncode == 0
    run_id = _last_run(work)
    outside = work / "outside"
    outside.mkdir()
    (outside / "run.json").write_text((work / ".mlpipe" / "runs" / run_id / "run.json").read_text())
    escape = _cli("runs", "show", "../../outside", cwd=work)
    assert escape.returncode == 2 and "is not a run id" in escape.stderr, escape.stderr
    percent = _cli("runs", "show", "%", cwd=work)
    assert percent.returncode == 2 and "'%' is not a run id" in percent.stderr, percent.stderr
    for pattern in (run_id[:7] + "_", "2" + "_" * 7):  # '_' is allowed in ids, and matched literally
        wild = _cli("runs", "show", pattern, cwd=work)
        assert wild.returncode == 2 and f"no run {pattern!r}" in wild.stderr, wild.stderr
    assert _cli("runs", "show", run_id[:8], cwd=work).returncode == 0


def test_an_empty_store_in_a_profile_is_a_config_error() -> None:
    work = Path.cwd()
    (work / "mlpipe.toml").write_text('[profiles.default]\nstore = ""\n')
    result = _cli("runs", "list", cwd=work)
    assert result.returncode == 2, result.stderr
    assert "store" in result.stderr and "must not be empty" in result.stderr


def test_terminal_escape_codes_in_records_are_never_printed_raw() -> None:
    work = Path.cwd()
    failed = _cli("run", f"{PIPES}:texts", "-p", "text=fail\x1b[31mred", cwd=work)
    assert failed.returncode == 1
    shown = _cli("runs", "show", _last_run(work), cwd=work)
    listed = _cli("runs", "list", cwd=work)
    for result in (failed, shown, listed):
        assert "\x1b" not in result.stdout + result.stderr
        assert "\x07" not in result.stdout + result.stderr
    assert "\\x1b]0;pwned\\x07" in failed.stderr
    assert "\\x1b[31mred" in shown.stdout


def test_a_large_parameter_is_stored_once() -> None:
    text = "".join(f"{i:07d}" for i in range(30_000))  # 210 kB
    run = rp.texts.run(text=text)
    assert run.status == "succeeded" and run.output("shout") == len(text)
    store = Path(open_store().url)
    mp.runs()  # the index holds the run too
    needle = text[100_000:101_000].encode()
    copies = {str(p.relative_to(store)): p.read_bytes().count(needle) for p in store.rglob("*") if p.is_file()}
    assert sum(copies.values()) == 1, {k: v for k, v in copies.items() if v}
    assert copies[f"runs/{run.id}/run.json"] == 1
    assert mp.get_run(run.id).params["text"] == text
    changed = rp.texts.run(text=text[:-1] + "x")  # still in the cache key, by its hash
    assert not changed.steps["shout"].cached
    assert rp.texts.run(text=text).steps["shout"].cached


# -- durability ---------------------------------------------------------------------------------------


def test_objects_and_records_are_fsynced_with_their_directories_before_they_are_published(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append(("rename", os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setenv("MLPIPE_FSYNC", "all")  # objects too (by default: documents and sidecars only)
    store = open_store()
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    info = store.put_value(list(range(1000)))
    store.put_json("runs/r1/run.json", {"id": "r1"})
    monkeypatch.undo()
    obj = os.path.join(store.url, store.object_path(info.digest))
    record = os.path.join(store.url, "runs", "r1", "run.json")
    for final in (obj, record):
        published = events.index(("rename", final))
        synced = [i for i, (kind, path) in enumerate(events)
                  if kind == "fsync" and (".tmp-" in path or "/objects/tmp/" in path)]
        assert any(i < published for i in synced), events  # the temporary's bytes, before the rename
        assert ("fsync", os.path.dirname(final)) in events[published:], events  # then the directory entry
    sidecar = obj + ".meta.json"
    assert ("fsync", os.path.dirname(sidecar)) in events[events.index(("rename", sidecar)):]


def test_by_default_documents_are_fsynced_and_objects_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.delenv("MLPIPE_FSYNC", raising=False)
    store = open_store()
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    info = store.put_value(list(range(1000)))
    monkeypatch.undo()
    assert any(p.endswith(".meta.json") or ".meta.json.tmp-" in p for p in synced), synced
    assert not any("/objects/tmp/" in p for p in synced), synced  # verified on read instead
    assert store.get_value(info.digest) == list(range(1000))


def _record_commits(monkeypatch: pytest.MonkeyPatch, root: str) -> list[tuple[str, object]]:
    """Log syncfs calls (with the temporaries present at that moment), renames and fsyncs under ``root``."""
    from mlpipe import commit

    events: list[tuple[str, object]] = []
    real_syncfs, real_replace, real_fsync = commit.syncfs, os.replace, os.fsync

    def syncfs(path: str) -> bool:
        tmps = {os.path.join(d, f) for d, _, files in os.walk(root) for f in files if ".tmp-" in f}
        events.append(("syncfs", tmps))
        return real_syncfs(path)

    def replace(src: str, dst: str) -> None:
        events.append(("rename", (os.fspath(src), os.fspath(dst))))
        real_replace(src, dst)

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(commit, "syncfs", syncfs)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


def test_a_local_run_names_each_document_only_after_a_syncfs_made_its_bytes_durable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Group commit: no rename of a record or cache entry before its bytes are synced; run.json after them."""
    monkeypatch.delenv("MLPIPE_FSYNC", raising=False)
    store = open_store()
    root = store.url
    rp.chain.run(n=3, salt=1)  # directories and the index exist: the run below is the one observed
    with pytest.MonkeyPatch.context() as patch:  # (monkeypatch.undo() would also undo the fixture's chdir)
        events = _record_commits(patch, root)
        run = rp.chain.run(n=3, salt=2)
    assert run.status == "succeeded"
    renames = [(i, src, dst) for i, (kind, v) in enumerate(events) if kind == "rename"
               for src, dst in [v] if "/objects/" not in dst or dst.endswith(".meta.json")]  # type: ignore[misc]
    grouped = [r for r in renames if not r[2].endswith("run.json")]
    assert any("/cache/" in dst for _, _, dst in grouped) and any(dst.endswith("steps.json") for _, _, dst in grouped)
    for i, src, dst in grouped:
        assert any(kind == "syncfs" and src in v for kind, v in events[:i]), (dst, events)  # type: ignore[operator]
        assert any(kind == "syncfs" for kind, _ in events[i:]), dst  # and the rename itself, after it
    assert not [p for kind, p in events if kind == "fsync" and ("/cache/" in str(p) or "steps.json" in str(p))]
    final = max(i for i, _, dst in renames if dst == os.path.join(root, "runs", run.id, "run.json"))
    last_grouped = max(i for i, _, _ in grouped if i < final)
    assert any(kind == "syncfs" for kind, _ in events[last_grouped:final])  # what run.json refers to is durable
    assert rp.chain.run(n=3, salt=2).steps["total"].cached  # every entry published


def test_a_pending_document_is_read_back_in_process_and_named_on_disk_only_once_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    from mlpipe import commit

    monkeypatch.delenv("MLPIPE_FSYNC", raising=False)
    store = open_store()
    gate = threading.Event()
    real_syncfs = commit.syncfs
    monkeypatch.setattr(commit, "syncfs", lambda path: gate.wait(30) and real_syncfs(path))
    path = Path(store.url, "cache", "ab", "k.json")
    with store.group_commit():
        store.put_json("cache/ab/k.json", {"v": 1})
        assert store.get_json("cache/ab/k.json") == {"v": 1} and store.has("cache/ab/k.json")
        assert "k.json" in store.listdir("cache/ab")
        assert not path.exists()  # the committer waits in syncfs: nothing is named yet
        gate.set()
        store.commit()
        assert json.loads(path.read_text()) == {"v": 1}
        store.put_json("cache/ab/k.json", {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}  # the block's end publishes the rest
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]


def test_a_failed_commit_names_nothing_and_the_block_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from mlpipe import commit

    monkeypatch.delenv("MLPIPE_FSYNC", raising=False)
    store = open_store()
    store.put_json("runs/x/old.json", {"v": 0})

    def broken(path: str) -> bool:
        raise OSError(errno.EIO, "write-back failed")

    monkeypatch.setattr(commit, "syncfs", broken)
    with pytest.raises(OSError, match="write-back failed"), store.group_commit():
        store.put_json("cache/cd/k.json", {"v": 1})
        store.put_json("runs/x/old.json", {"v": 1})
        time.sleep(0.05)
    assert not Path(store.url, "cache", "cd", "k.json").exists()
    assert store.get_json("runs/x/old.json") == {"v": 0}  # the old document, never a torn new one
    assert not list(Path(store.url).rglob("*.tmp-*"))


def test_without_syncfs_a_commit_fsyncs_each_document_before_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlpipe import commit

    monkeypatch.delenv("MLPIPE_FSYNC", raising=False)
    store = open_store()
    root = store.url
    with pytest.MonkeyPatch.context() as patch:
        events = _record_commits(patch, root)
        patch.setattr(commit, "_libc_syncfs", None)  # not Linux
        with store.group_commit():
            store.put_json("cache/ef/k.json", {"v": 1})
    (i, (src, dst)), = [(i, v) for i, (kind, v) in enumerate(events) if kind == "rename"]  # type: ignore[misc]
    assert ("fsync", src) in events[:i]
    assert ("fsync", os.path.dirname(dst)) in events[i:]


def test_a_store_this_process_cannot_write_can_still_be_inspected(monkeypatch: pytest.MonkeyPatch) -> None:
    """As root, file modes do not stop writes, so the index's writability check is what is patched here."""
    from mlpipe import metadata
    from mlpipe.explain import describe_artifact, explain

    run = rp.frames.run()
    store = open_store()
    db = Path(store.url, "metadata.db")
    metadata.open_index(store).close()
    monkeypatch.setattr(metadata, "_indexes", {})
    monkeypatch.setattr(metadata, "_writable", lambda path: False)
    before = db.read_bytes()
    assert [r.id for r in mp.runs()] == [run.id]  # an in-memory copy of the file
    assert mp.get_run(run.id[:10]).output("width") == 10
    assert "MISS — computed" in explain(store, run.id, "width")
    assert run.steps["width"].outputs["output"].digest[:12] in describe_artifact(
        store, run.steps["width"].outputs["output"].digest[:12]
    )
    assert db.read_bytes() == before
    db.unlink()
    monkeypatch.setattr(metadata, "_indexes", {})
    assert [r.id for r in mp.runs()] == [run.id]  # no file at all: built from the records, in memory
    assert not db.exists()
