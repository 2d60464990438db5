"""mlpipe.store: content addressing, atomic writes, dedup, verification and quarantine, fsspec URLs."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import IO, Any

import pytest
import xxhash

import mlpipe as mp
from mlpipe.errors import CorruptObjectError, MaterializerError, ObjectNotFoundError, StoreError
from mlpipe.materializers import get_materializer
from mlpipe.store import ArtifactStore, open_store


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "store"))


def _files(root: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def test_default_store_is_dot_mlpipe_in_cwd(_isolated_cwd: Path) -> None:
    s = open_store()
    assert s.url == str(_isolated_cwd / ".mlpipe")
    assert s.is_local
    assert open_store(s) is s
    assert repr(s) == f"ArtifactStore({s.url!r})"
    with pytest.raises(StoreError, match=r"store must be a path or URL string"):
        open_store(3)  # type: ignore[arg-type]


def test_objects_are_addressed_by_the_hash_of_their_bytes(store: ArtifactStore) -> None:
    info = store.put_value({"a": [1, 2]})
    path = Path(store.url, store.object_path(info.digest))
    data = path.read_bytes()
    assert xxhash.xxh3_128_hexdigest(data) == info.digest
    assert len(info.digest) == 32
    assert info.size == len(data)
    assert path.parent.name == info.digest[:2]
    meta = store.meta(info.digest)
    assert meta == {"digest": info.digest, "size": info.size, "materializer": "json", "materializer_version": "1",
                    "type": "builtins:dict"}
    assert Path(str(path) + ".meta.json").is_file()
    assert info.to_dict() == {"digest": info.digest, "size": info.size, "materializer": "json",
                              "type": "builtins:dict"}


def test_equal_values_are_stored_once(store: ArtifactStore) -> None:
    first = store.put_value([1, 2, 3])
    path = Path(store.url, store.object_path(first.digest))
    before = path.stat()
    time.sleep(0.01)
    second = store.put_value([1, 2, 3])
    assert second == first
    assert path.stat().st_ino == before.st_ino  # not rewritten
    assert path.stat().st_mtime_ns > before.st_mtime_ns  # but freshened, so a concurrent gc keeps it
    assert [d for d, _ in store.iter_objects()] == [first.digest]


def test_writes_leave_no_temporaries(store: ArtifactStore) -> None:
    for i in range(5):
        store.put_value({"i": i})
    store.put_json("runs/x/run.json", {"id": "x"})
    leftovers = [f for f in _files(store.url) if ".tmp-" in f or f.startswith("objects/tmp/")]
    assert leftovers == []


class Chunked(mp.Materializer):
    """Writes ``value`` (bytes) in 64 KiB pieces, as serialisers do, counting its saves."""

    name = "test.chunked"
    saves = 0

    def handles_type(self, tp: Any) -> bool:
        return False

    def save(self, value: Any, f: IO[bytes]) -> dict[str, Any]:
        type(self).saves += 1
        for start in range(0, len(value), 65536):
            f.write(value[start : start + 65536])
        return {}

    def load(self, data: bytes | bytearray | memoryview, annotation: Any, meta: dict[str, Any]) -> Any:
        return bytes(data)


@pytest.mark.parametrize("size", [0, 100, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 << 20])
def test_an_object_already_stored_costs_no_file(
    store: ArtifactStore, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    data = os.urandom(size)
    first = store.put_value(data, Chunked())
    assert bytes(store.read_verified(first.digest)) == data
    assert first.digest == xxhash.xxh3_128_hexdigest(data) and first.size == size
    path = Path(store.url, store.object_path(first.digest))
    inode, mtime = path.stat().st_ino, path.stat().st_mtime_ns
    time.sleep(0.01)
    opened: list[str] = []
    real_open = open

    def spy(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:
            opened.append(str(file))
        return real_open(file, mode, *args, **kwargs)

    import builtins

    monkeypatch.setattr(builtins, "open", spy)
    again = store.put_value(data, Chunked())
    monkeypatch.undo()
    assert again == first
    assert path.stat().st_ino == inode  # not rewritten
    assert path.stat().st_mtime_ns > mtime  # but freshened, so a concurrent gc keeps it
    # Up to 1 MiB the bytes stay in memory until the digest says the store has them: no file at all.
    assert opened == ([] if size <= 1 << 20 else [opened[0]])
    assert all("/objects/tmp/" in f for f in opened)
    assert [f for f in _files(store.url) if f.startswith("objects/tmp/")] == []


def test_a_failed_write_of_a_large_object_leaves_no_temporary(store: ArtifactStore) -> None:
    class HalfThenDie(Chunked):
        name = "test.half"

        def save(self, value: Any, f: IO[bytes]) -> dict[str, Any]:
            f.write(os.urandom(2 << 20))  # past the in-memory limit: a temporary file exists now
            raise MaterializerError("serialiser died after 2 MiB")

    with pytest.raises(MaterializerError, match=r"after 2 MiB"):
        store.put_value(b"x", HalfThenDie())
    assert [f for f in _files(store.url) if not f.endswith("/")] == []


class Exploding(mp.Materializer):
    name = "test.exploding"

    def handles_type(self, tp: Any) -> bool:
        return False

    def save(self, value: Any, f: IO[bytes]) -> dict[str, Any]:
        f.write(b"half of the bytes")
        raise MaterializerError("serialiser died halfway")

    def load(self, data: bytes | bytearray | memoryview, annotation: Any, meta: dict[str, Any]) -> Any:
        raise AssertionError("never written")


def test_a_failed_write_publishes_nothing(store: ArtifactStore) -> None:
    with pytest.raises(MaterializerError, match=r"halfway"):
        store.put_value(1, Exploding())
    assert list(store.iter_objects()) == []
    assert [f for f in _files(store.url) if not f.endswith("/")] == []


class Inconsistent(mp.Materializer):
    """Claims buffers that are not the bytes it saves."""

    name = "test.inconsistent"

    def handles_type(self, tp: Any) -> bool:
        return False

    def buffers(self, value: Any) -> tuple[list[Any], dict[str, Any]] | None:
        return [b"abc"], {}

    def save(self, value: Any, f: IO[bytes]) -> dict[str, Any]:
        f.write(b"abcd")
        return {}

    def load(self, data: bytes | bytearray | memoryview, annotation: Any, meta: dict[str, Any]) -> Any:
        return bytes(data)


def test_buffers_that_disagree_with_save_are_refused(store: ArtifactStore) -> None:
    with pytest.raises(MaterializerError, match=r"wrote 4 bytes but its buffers\(\) gave 3"):
        store.put_value(1, Inconsistent())
    assert list(store.iter_objects()) == []
    assert [f for f in _files(store.url) if not f.endswith("/")] == []


def test_a_failure_while_hashing_publishes_nothing(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import mlpipe.store as store_module

    def broken(buffers: list[Any]) -> tuple[str, int]:
        raise MemoryError("hashing failed")

    monkeypatch.setattr(store_module, "digest_buffers", broken)
    with pytest.raises(MemoryError, match="hashing failed"):  # raised in the caller, not lost in the thread
        store.put_value(np.arange(10.0))
    assert list(store.iter_objects()) == []
    assert [f for f in _files(store.url) if not f.endswith("/")] == []


def test_large_numpy_arrays_round_trip_through_the_file_path(store: ArtifactStore) -> None:
    import numpy as np

    array = np.arange(3 * 1024 * 1024, dtype="float64").reshape(1024, -1)  # 24 MiB: memory-mapped on read
    info = store.put_value(array)
    path = Path(store.url, store.object_path(info.digest))
    assert xxhash.xxh3_128_hexdigest(path.read_bytes()) == info.digest
    assert np.array_equal(np.load(path), array)  # the object is a plain .npy file
    loaded = ArtifactStore(store.url).get_value(info.digest)
    assert np.array_equal(loaded, array) and loaded.flags.writeable
    strided = array[:, ::2]  # not contiguous: no buffers, written through the hashing writer
    again = store.put_value(strided)
    assert np.array_equal(ArtifactStore(store.url).get_value(again.digest), strided)


def test_a_failed_json_write_keeps_the_old_document(store: ArtifactStore) -> None:
    store.put_json("doc.json", {"v": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        store.put_json("doc.json", {"v": Boom()})
    assert store.get_json("doc.json") == {"v": 1}


def test_reads_verify_the_hash_and_quarantine_corrupt_objects(store: ArtifactStore) -> None:
    info = store.put_value({"payload": list(range(10))})
    path = Path(store.url, store.object_path(info.digest))
    path.write_bytes(path.read_bytes().replace(b"9", b"8"))
    fresh = ArtifactStore(store.url)  # no in-process caches
    with pytest.raises(CorruptObjectError) as caught:
        fresh.get_value(info.digest)
    assert caught.value.digest == info.digest
    assert "is corrupted" in str(caught.value) and "quarantine" in str(caught.value)
    assert isinstance(caught.value, OSError)
    assert not path.exists()
    assert not fresh.exists(info.digest)
    quarantined = list(Path(store.url, "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith(info.digest)
    # writing the value again repairs the store
    again = fresh.put_value({"payload": list(range(10))})
    assert again.digest == info.digest
    assert fresh.get_value(info.digest) == {"payload": list(range(10))}


def test_truncated_object_is_corrupt(store: ArtifactStore) -> None:
    info = store.put_value("x" * 1000)
    path = Path(store.url, store.object_path(info.digest))
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(CorruptObjectError):
        store.read_verified(info.digest)


def test_objects_of_pre_release_stores_are_verified_by_their_sidecar_checksum(store: ArtifactStore) -> None:
    # Development versions named objects by BLAKE3 (64 hex digits) and kept XXH3-128 in the sidecar.
    data = b'{"legacy":true}'
    digest = "b3" * 32
    meta = {"digest": digest, "size": len(data), "materializer": "json", "materializer_version": "1",
            "type": "builtins:dict", "xxh3_128": xxhash.xxh3_128_hexdigest(data)}
    path = Path(store.url, store.object_path(digest))
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    Path(str(path) + ".meta.json").write_text(json.dumps(meta))
    assert store.get_value(digest) == {"legacy": True}
    assert [d for d, _ in store.iter_objects()] == [digest]
    path.write_bytes(b'{"legacy":false}')
    with pytest.raises(CorruptObjectError):
        ArtifactStore(store.url).get_value(digest)


def test_missing_object(store: ArtifactStore) -> None:
    digest = "0" * 32
    assert not store.exists(digest)
    with pytest.raises(ObjectNotFoundError, match=r"is missing from the store") as caught:
        store.get_value(digest)
    assert isinstance(caught.value, FileNotFoundError)
    with pytest.raises(ObjectNotFoundError, match=r"has no sidecar"):
        store.meta(digest)
    with pytest.raises(ObjectNotFoundError):
        store.get_json("nope.json")


def test_delete_and_listing(store: ArtifactStore) -> None:
    a = store.put_value(1)
    b = store.put_value(2)
    assert sorted(d for d, _ in store.iter_objects()) == sorted([a.digest, b.digest])
    store.delete_object(a.digest)
    assert not store.exists(a.digest)
    assert [d for d, _ in store.iter_objects()] == [b.digest]
    store.put_json("runs/r1/run.json", {"id": "r1"})
    store.put_json("runs/r2/run.json", {"id": "r2"})
    assert store.listdir("runs") == ["r1", "r2"]
    assert store.listdir("nothing") == []
    assert store.has("runs/r1/run.json")
    store.delete("runs/r1/run.json")
    assert not store.has("runs/r1/run.json")
    store.delete("runs/r1/run.json")  # idempotent


def test_clean_temporaries_only_removes_old_ones(store: ArtifactStore) -> None:
    store.put_value(1)
    old = Path(store.url, "objects", "tmp", "123-1-1")
    new = Path(store.url, "objects", "tmp", "123-1-2")
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    removed = store.clean_temporaries()
    assert removed == ["objects/tmp/123-1-1"]
    assert new.exists()


def test_file_url_and_home_expansion(tmp_path: Path) -> None:
    s = ArtifactStore(f"file://{tmp_path}/s")
    assert s.is_local and s.url == f"{tmp_path}/s"


def test_memory_store_through_fsspec() -> None:
    url = f"memory://mlpipe-test-{uuid.uuid4().hex}"
    s = open_store(url)
    assert not s.is_local and s.local_root() is None
    try:
        info = s.put_value({"a": 1})
        assert s.get_value(info.digest) == {"a": 1}
        assert s.put_value({"a": 1}) == info
        assert s.exists(info.digest)
        assert [d for d, _ in s.iter_objects()] == [info.digest]
        assert s.meta(info.digest)["materializer"] == "json"
        s.put_json("runs/r/run.json", {"id": "r"})
        assert s.listdir("runs") == ["r"]
        assert s.get_json("runs/r/run.json") == {"id": "r"}
        # corruption is detected on fsspec stores too
        s._fs.fs.pipe_file(s._fs.path(s.object_path(info.digest)), b"garbage")  # type: ignore[union-attr]
        fresh = ArtifactStore(url)
        with pytest.raises(CorruptObjectError):
            fresh.get_value(info.digest)
        assert not fresh.exists(info.digest)
    finally:
        s.destroy()


def test_memory_store_runs_a_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from resources.pipelines import arithmetic

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the index of a remote store lives there

    from mlpipe.local import LocalBackend
    from mlpipe.testing import run_on

    url = f"memory://mlpipe-run-{uuid.uuid4().hex}"
    s = open_store(url)
    try:
        run = run_on(LocalBackend(), arithmetic, s, n=4)
        assert run.status == "succeeded"
        assert run.output("add_2") == 6
        again = run_on(LocalBackend(), arithmetic, s, n=4)
        assert all(step.cached for step in again.steps.values())
    finally:
        s.destroy()


def test_unknown_protocol_names_the_package_to_install() -> None:
    from mlpipe.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError, match=r"cannot open store 'nosuchproto://x'"):
        ArtifactStore("nosuchproto://x")


def test_get_value_uses_the_recorded_materializer(store: ArtifactStore) -> None:
    info = store.put_value([1, 2], get_materializer("cloudpickle"))
    assert store.meta(info.digest)["materializer"] == "cloudpickle"
    assert store.get_value(info.digest) == [1, 2]
