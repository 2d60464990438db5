"""The content-addressed artifact store, on a local directory or any fsspec URL.

Layout under the store root::

    objects/ab/abcdef…            the bytes, named by their XXH3-128 digest
    objects/ab/abcdef….meta.json  sidecar: type, materializer, size, python
    cache/ab/<key>.json           cache entries (step outputs by cache key)
    runs/<run_id>/run.json        run records; steps/<step>.json or steps.json (see records.py)
    quarantine/                   objects that failed verification

Every write is atomic: a temporary file renamed into place on filesystems, a
single PUT (which object stores publish whole or not at all) on ``s3://``,
``gs://`` and friends. Objects are written once: a digest that exists is never
rewritten. Every read of an object verifies its hash; a mismatch moves the
object to ``quarantine/`` and raises :class:`CorruptObjectError`, so the next
existence check fails and the producer is recomputed.

Local paths use ``os`` directly (fsspec costs 0.14 s to import and adds
overhead to every call); other URLs go through fsspec, imported on first use.
This module owns bytes and JSON documents; what the documents mean belongs to
:mod:`mlpipe.cache` and :mod:`mlpipe.records`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import itertools
import json
import mmap
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from mlpipe import commit as _commit
from mlpipe.commit import sync_dir, sync_file
from mlpipe.errors import (
    CorruptObjectError,
    DamagedFileError,
    MaterializerError,
    MissingDependencyError,
    MlpipeError,
    ObjectNotFoundError,
    StoreError,
    UntrustedObjectError,
)
from mlpipe.hashing import HashingWriter, canonical_json, digest_buffers, digest_object
from mlpipe.materializers import Materializer, for_annotation, for_value, get_materializer, type_path
from mlpipe.trust import object_mac, verify_mac
from mlpipe.typecheck import is_any

__all__ = ["ArtifactStore", "ObjectInfo", "open_store"]

_counter = itertools.count()
_MMAP_THRESHOLD = 4 << 20
_PICKLE = "cloudpickle"
_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one stored value."""

    digest: str
    size: int
    materializer: str
    type: str

    def to_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "materializer": self.materializer, "type": self.type}


class _LocalFS:
    """Plain-``os`` filesystem access under a root directory."""

    atomic_put = False

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self._made: set[str] = set()
        # Durability: a document's contents, then its directory entry, reach the disk before the rename
        # that publishes it, so a power loss never leaves a named-but-empty record, cache entry or sidecar.
        # Objects are verified on every read (a torn one is quarantined and recomputed), so their fsync
        # is opt-in: MLPIPE_FSYNC=all. MLPIPE_FSYNC=0 turns every fsync off (scratch stores).
        mode = os.environ.get("MLPIPE_FSYNC", "1").strip().lower()
        self.fsync = mode != "0"
        self.fsync_objects = mode == "all"

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def _ensure_dir(self, directory: str) -> None:
        if directory not in self._made:
            if self.fsync and not os.path.isdir(directory) and _commit.active(self.root) is None:
                os.makedirs(directory, exist_ok=True)
                sync_dir(os.path.dirname(directory))  # the new directory's own entry
            else:
                os.makedirs(directory, exist_ok=True)
            self._made.add(directory)

    @contextlib.contextmanager
    def group_commit(self) -> Iterator[None]:
        """Documents written in this block are committed in batches (see :mod:`mlpipe.commit`)."""
        if not self.fsync:  # nothing to batch
            yield
            return
        with _commit.group(self.root, self._ensure_dir):
            yield

    def commit(self) -> None:
        _commit.commit(self.root)

    def exists(self, rel: str) -> bool:
        return _commit.pending(self.root, rel) is not None or os.path.exists(self.path(rel))

    def size(self, rel: str) -> int:
        held = _commit.pending(self.root, rel)
        return len(held) if held is not None else os.path.getsize(self.path(rel))

    def mtime(self, rel: str) -> float | None:
        if _commit.pending(self.root, rel) is not None:
            return time.time()
        try:
            return os.stat(self.path(rel)).st_mtime
        except FileNotFoundError:
            return None

    def read_bytes(self, rel: str) -> bytearray:
        held = _commit.pending(self.root, rel)
        if held is not None:
            return bytearray(held)
        path = self.path(rel)
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                buf = bytearray(size)
                view = memoryview(buf)
                got = 0
                while got < size:
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
                return buf if got == size else buf[:got]
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{rel} is not in the store at {self.root}", path=rel) from None

    def read_object(self, rel: str) -> bytearray | memoryview:
        """An object's bytes; large files are memory-mapped copy-on-write.

        A private mapping reads straight from the page cache (no zero-filled
        buffer, no copy) and stays writable for the array built on it, while
        the file itself is never changed.
        """
        path = self.path(rel)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < _MMAP_THRESHOLD:
                    return bytearray(f.read())
                return memoryview(mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY))
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{rel} is not in the store at {self.root}", path=rel) from None

    @contextlib.contextmanager
    def open_atomic(self, rel: str) -> Iterator[IO[bytes]]:
        final = self.path(rel)
        directory = os.path.dirname(final)
        self._ensure_dir(directory)
        tmp = f"{final}.tmp-{os.getpid()}-{threading.get_ident()}-{next(_counter)}"
        try:
            with open(tmp, "wb") as f:
                yield f
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, final)
            if self.fsync:
                sync_dir(directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def write_bytes(self, rel: str, data: bytes) -> None:
        group = _commit.active(self.root)
        if group is not None and len(data) <= _commit.MAX_PENDING_BYTES and group.put(rel, bytes(data)):
            return
        with self.open_atomic(rel) as f:
            f.write(data)

    def write_if_absent(self, rel: str, data: bytes) -> None:
        if not self.exists(rel):
            self.write_bytes(rel, data)

    def move(self, src: str, dst: str) -> None:
        self._ensure_dir(os.path.dirname(self.path(dst)))
        os.replace(self.path(src), self.path(dst))

    def delete(self, rel: str) -> None:
        group = _commit.active(self.root)
        if group is not None:
            group.forget(rel)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(rel))

    def listdir(self, rel: str) -> list[str]:
        held = _commit.pending_names(self.root, rel)
        try:
            names = os.listdir(self.path(rel))
        except FileNotFoundError:
            names = []
        return sorted({*names, *held}) if held else sorted(names)

    def walk_files(self, rel: str) -> Iterator[tuple[str, int]]:
        base = self.path(rel)
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                full = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    yield os.path.relpath(full, self.root).replace(os.sep, "/"), os.path.getsize(full)


class _Spool:
    """Where a serialiser writes an object of the local store: memory first, a temporary file past 1 MiB.

    Most step outputs are small, and a re-run (``cache=False``, or a step whose
    inputs changed but whose result did not) produces objects the store
    already has: held in memory until the digest is known, such an object
    costs no file at all, where a temporary file created and deleted costs
    more than the step. Past the limit the bytes go to a temporary file in
    ``objects/tmp/`` (made by ``make_tmp``), as large objects always did.
    """

    limit = 1 << 20

    def __init__(self, make_tmp: Callable[[], str]) -> None:
        self._make_tmp = make_tmp
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None
        self.path: str | None = None
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if self._file is None and len(self._buffer) + view.nbytes <= self.limit:
            self._buffer += view
            return view.nbytes
        if self._file is None:
            self.spill()
        assert self._file is not None
        return self._file.write(view)

    def spill(self) -> None:
        """Move the bytes held so far into a new temporary file; later writes go there."""
        self.path = self._make_tmp()
        self._file = open(self.path, "wb")  # noqa: SIM115  (closed by close())
        self._file.write(self._buffer)
        self._buffer = bytearray()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self.closed = True


_T = TypeVar("_T")


def _translated(method: Callable[..., _T]) -> Callable[..., _T]:
    """Turn a filesystem library's own errors (botocore, aiohttp, google-auth...) into StoreError.

    Missing files keep their meaning (FileNotFoundError / ObjectNotFoundError);
    everything else names the store URL and the operation, once, without the
    library's traceback (kept as ``__cause__`` for ``--debug``).
    """

    @functools.wraps(method)
    def wrapper(self: _FsspecFS, *args: Any, **kwargs: Any) -> _T:
        try:
            return method(self, *args, **kwargs)
        except (FileNotFoundError, MlpipeError):
            raise
        except Exception as exc:  # third-party clients raise anything
            raise StoreError(
                f"store {self.url}: {method.__name__.strip('_')} failed: {type(exc).__name__}: {exc}. "
                "Check the URL, the credentials and that the endpoint is reachable",
                url=self.url,
            ) from exc

    return wrapper


class _FsspecFS:
    """fsspec access for ``s3://``, ``gs://``, ``memory://`` and any other URL."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - fsspec is a core dependency
            raise MissingDependencyError("fsspec is needed for remote stores: pip install fsspec") from exc
        try:
            # No listing cache: other processes (remote tasks) add records and cache entries under
            # prefixes this process has listed, and a cached listing would hide them (s3fs and gcsfs
            # answer exists()/info() from it too).
            options = {"use_listings_cache": False, **(storage_options or {})}
            fs, root = fsspec.core.url_to_fs(url, **options)
        except (ImportError, ValueError) as exc:
            protocol = url.split("://", 1)[0]
            hint = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(protocol)
            extra = f": pip install {hint}" if hint else ""
            raise MissingDependencyError(f"cannot open store {url!r}: {exc}{extra}", url=url) from exc
        self.fs = fs
        self.url = url
        self.root = root.rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.atomic_put = protocol in _OBJECT_STORES

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    @_translated
    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    @_translated
    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    @_translated
    def mtime(self, rel: str) -> float | None:
        """The last-modified time fsspec reports (float, datetime or ISO text by filesystem), else None."""
        try:
            info = self.fs.info(self.path(rel))
        except FileNotFoundError:
            return None
        for key in ("mtime", "LastModified", "last_modified", "updated", "created", "timeCreated"):
            value = info.get(key)
            if value is None:
                continue
            if isinstance(value, (int, float)):
                return float(value)
            if hasattr(value, "timestamp"):
                return float(value.timestamp())
            if isinstance(value, str):
                from datetime import datetime

                with contextlib.suppress(ValueError):
                    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        return None

    def read_object(self, rel: str) -> bytearray | memoryview:
        return self.read_bytes(rel)

    @_translated
    def read_bytes(self, rel: str) -> bytearray:
        try:
            return bytearray(self.fs.cat_file(self.path(rel)))
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{rel} is not in the store at {self.root}", path=rel) from None

    @_translated
    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.atomic_put:
            self.fs.pipe_file(self.path(rel), data)
            return
        tmp = f"{self.path(rel)}.tmp-{os.getpid()}-{threading.get_ident()}-{next(_counter)}"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, self.path(rel))

    def write_if_absent(self, rel: str, data: bytes) -> None:
        if not self.exists(rel):
            self.write_bytes(rel, data)

    @_translated
    def put_file(self, local_path: str, rel: str) -> None:
        if self.atomic_put:
            self.fs.put_file(local_path, self.path(rel))
            return
        tmp = f"{self.path(rel)}.tmp-{os.getpid()}-{threading.get_ident()}-{next(_counter)}"
        self.fs.put_file(local_path, tmp)
        self.fs.mv(tmp, self.path(rel))

    @_translated
    def move(self, src: str, dst: str) -> None:
        self.fs.mv(self.path(src), self.path(dst))

    @_translated
    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(rel))

    @_translated
    def listdir(self, rel: str) -> list[str]:
        try:
            entries = self.fs.ls(self.path(rel), detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    @_translated
    def walk_files(self, rel: str) -> Iterator[tuple[str, int]]:
        try:
            found = self.fs.find(self.path(rel), detail=True)
        except FileNotFoundError:
            return iter(())
        prefix = self.root + "/"
        return iter(
            [
                (name[len(prefix) :] if name.startswith(prefix) else name, int(info.get("size") or 0))
                for name, info in sorted(found.items())
            ]
        )


class ArtifactStore:
    """A content-addressed store of step outputs, cache entries and run records.

    Args:
        url: A local path (default ``.mlpipe``) or any fsspec URL
            (``s3://bucket/prefix``, ``gs://…``, ``memory://…``).
        storage_options: Passed to fsspec for remote URLs.
    """

    def __init__(self, url: str = ".mlpipe", storage_options: dict[str, Any] | None = None) -> None:
        self.storage_options = dict(storage_options or {})
        if "://" in url and not url.startswith("file://"):
            self.url = url.rstrip("/")
            self._fs: _LocalFS | _FsspecFS = _FsspecFS(self.url, self.storage_options)
            self.is_local = False
        else:
            path = url[len("file://") :] if url.startswith("file://") else url
            self._fs = _LocalFS(os.path.expanduser(path))
            self.url = self._fs.root
            self.is_local = True
        self._meta_cache: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # -- objects ---------------------------------------------------------------
    @staticmethod
    def object_path(digest: str) -> str:
        return f"objects/{digest[:2]}/{digest}"

    def put_value(self, value: Any, materializer: Materializer | None = None) -> ObjectInfo:
        """Serialise ``value`` into the store and return its content address.

        The hash is computed while the bytes are written; an object that is
        already present is not written again.
        """
        m = materializer or for_value(value)
        try:
            digest, size, extra = self._put(value, m)
        except (MaterializerError, OSError, MemoryError):  # a broken materializer, a full disk: no fallback
            raise
        except Exception as exc:  # the format cannot hold this value (Parquet and a mixed-type column)
            fallback = get_materializer("cloudpickle")
            if materializer is not None or m is fallback:
                raise
            digest, size, extra = self._put(value, fallback)
            extra = {**extra, "fallback_from": m.name, "fallback_reason": f"{type(exc).__name__}: {exc}"[:500]}
            m = fallback
        meta = {
            "digest": digest,
            "size": size,
            "materializer": m.name,
            "materializer_version": m.version,
            "type": type_path(type(value)),
            **extra,
        }
        sidecar = self.object_path(digest) + ".meta.json"
        if m.name == _PICKLE:
            # This process just wrote (or found identical) bytes, so it vouches for them: the sidecar is
            # rewritten with a MAC under this user's trust key (a planted or foreign sidecar is replaced).
            sha = hashlib.sha256(self._fs.read_object(self.object_path(digest))).hexdigest()
            meta = {**meta, "sha256": sha, "mac": object_mac(digest, sha)}
            self._fs.write_bytes(sidecar, canonical_json(meta).encode())
        else:
            self._fs.write_if_absent(sidecar, canonical_json(meta).encode())
        self._meta_cache[digest] = meta
        return ObjectInfo(digest, size, m.name, meta["type"])

    def _put(self, value: Any, m: Materializer) -> tuple[str, int, dict[str, Any]]:
        if isinstance(self._fs, _LocalFS):
            return self._put_local(value, m)
        return self._put_remote(value, m)

    def _put_local(self, value: Any, m: Materializer) -> tuple[str, int, dict[str, Any]]:
        prepared = m.buffers(value)
        if prepared is not None:
            return self._put_buffers(value, m, *prepared)
        spool = _Spool(self._local_tmp)
        try:
            writer = HashingWriter(spool)  # type: ignore[arg-type]
            try:
                extra = m.save(value, writer)  # type: ignore[arg-type]
            finally:
                writer.finish()
                spool.close()
            digest = writer.hexdigest()
            if spool.path is None:  # small and still in memory: a file only if the store lacks the object
                if self._freshen_local(digest):
                    return digest, writer.size, extra
                spool.spill()
                spool.close()
            assert spool.path is not None
            self._publish_local(spool.path, digest)
        except BaseException:
            if spool.path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(spool.path)
            raise
        return digest, writer.size, extra

    def _put_buffers(
        self, value: Any, m: Materializer, buffers: list[Any], extra: dict[str, Any]
    ) -> tuple[str, int, dict[str, Any]]:
        """Write ``value`` while a second thread hashes the same bytes in memory.

        Hashing a gigabyte takes about 0.03 s, writing it about 0.15 s: done side
        by side, storing costs about 1.1x the bare write (1.2x one after the other).
        """
        hashed: list[tuple[str, int] | BaseException] = []

        def digest() -> None:
            try:
                hashed.append(digest_buffers(buffers))
            except BaseException as exc:  # re-raised in the caller's thread
                hashed.append(exc)

        hasher = threading.Thread(target=digest, name="mlpipe-hash")
        tmp = self._local_tmp()
        hasher.start()
        try:
            try:
                with open(tmp, "wb", buffering=0) as raw:
                    m.save(value, raw)
                    written = raw.tell()
            finally:
                hasher.join()
            if isinstance(hashed[0], BaseException):
                raise hashed[0]
            address, size = hashed[0]
            if written != size:
                raise MaterializerError(
                    f"materializer {m.name!r} wrote {written} bytes but its buffers() gave {size}; "
                    "buffers() must return exactly the bytes save() writes"
                )
            self._publish_local(tmp, address)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return address, size, extra

    def _local_tmp(self) -> str:
        """A new temporary path in the local store's ``objects/tmp/``, its directory made."""
        fs = self._fs
        assert isinstance(fs, _LocalFS)
        tmp = fs.path(f"objects/tmp/{os.getpid()}-{threading.get_ident()}-{next(_counter)}")
        fs._ensure_dir(os.path.dirname(tmp))
        return tmp

    def _publish_local(self, tmp: str, digest: str) -> None:
        """Rename a written temporary file into place, or drop it when the object already exists."""
        fs = self._fs
        assert isinstance(fs, _LocalFS)
        if self._freshen_local(digest):
            os.unlink(tmp)
        else:
            final = fs.path(self.object_path(digest))
            fs._ensure_dir(os.path.dirname(final))
            if fs.fsync_objects:
                sync_file(tmp)
            os.replace(tmp, final)
            if fs.fsync_objects:
                sync_dir(os.path.dirname(final))

    def _freshen_local(self, digest: str) -> bool:
        """Touch the object if the local store has it; whether it has it.

        An existing object is freshened, as git does, so a concurrent ``cache gc``
        sees it as new (grace period) and never removes what this writer is about
        to reference.
        """
        try:
            os.utime(self._fs.path(self.object_path(digest)))
        except FileNotFoundError:
            return False
        except PermissionError:  # another user's object in a shared store: present, just not ours to touch
            return True
        return True

    def _put_remote(self, value: Any, m: Materializer) -> tuple[str, int, dict[str, Any]]:
        fs = self._fs
        assert isinstance(fs, _FsspecFS)
        with tempfile.NamedTemporaryFile(prefix="mlpipe-", delete=False) as raw:
            writer = HashingWriter(raw)
            try:
                extra = m.save(value, writer)  # type: ignore[arg-type]
            except BaseException:
                writer.finish()
                raw.close()
                os.unlink(raw.name)
                raise
        try:
            digest = writer.hexdigest()
            rel = self.object_path(digest)
            if not fs.exists(rel):
                fs.put_file(raw.name, rel)
        finally:
            os.unlink(raw.name)
        return digest, writer.size, extra

    def exists(self, digest: str) -> bool:
        return self._fs.exists(self.object_path(digest))

    def meta(self, digest: str) -> dict[str, Any]:
        """The sidecar of an object: type, materializer, size, and materializer extras."""
        cached = self._meta_cache.get(digest)
        if cached is not None:
            return cached
        rel = self.object_path(digest) + ".meta.json"
        try:
            meta: dict[str, Any] = json.loads(self._fs.read_bytes(rel))
            if not isinstance(meta, dict) or "materializer" not in meta:
                raise ValueError("no materializer named")
        except ObjectNotFoundError:
            raise ObjectNotFoundError(f"object {digest[:12]}… has no sidecar in {self.url}", digest=digest) from None
        except ValueError as exc:
            # Moved aside, so the producer's next write (which skips an existing sidecar) puts a good one back.
            stamp = time.strftime("%Y%m%dT%H%M%S")
            with contextlib.suppress(OSError):
                self._fs.move(rel, f"quarantine/{digest}.meta.json-{stamp}")
            raise CorruptObjectError(
                f"the sidecar {rel} in {self.url} is damaged ({exc}); it was moved to quarantine/ and the object "
                "will be recomputed by the step that produced it",
                digest=digest,
                path=rel,
            ) from None
        self._meta_cache[digest] = meta
        return meta

    def read_verified(self, digest: str, meta: dict[str, Any] | None = None) -> bytearray | memoryview:
        """The object's bytes, after checking they are still the bytes that were stored.

        The check recomputes the XXH3-128 address (memory speed: a gigabyte in
        about 0.03 s). Objects of stores written by development versions before
        0.1.0 are named by a 64-digit BLAKE3 digest; they are checked against the
        XXH3-128 checksum their sidecar carries. A
        mismatch quarantines the object and raises :class:`CorruptObjectError`.
        """
        rel = self.object_path(digest)
        try:
            data = self._fs.read_object(rel)
        except ObjectNotFoundError:
            raise ObjectNotFoundError(
                f"object {digest[:12]}… is missing from the store {self.url}; re-run the pipeline to recompute it",
                digest=digest,
            ) from None
        expected = digest if len(digest) == 32 else (meta if meta is not None else self.meta(digest)).get("xxh3_128")
        ok = digest_object(data) == expected
        if not ok:
            self.quarantine(digest)
            raise CorruptObjectError(
                f"object {digest[:12]}… in {self.url} is corrupted (its bytes no longer match what was stored); "
                "it was moved to quarantine/ and will be recomputed by the step that produced it",
                digest=digest,
            )
        return data

    def get_value(
        self, digest: str, annotation: Any = Any, *, info: ObjectInfo | None = None, sha256: str | None = None
    ) -> Any:
        """Load the value stored under ``digest``, verifying its bytes first.

        The consumer's ``annotation`` decides how the bytes load when a
        materializer handles it statically (a ``pd.DataFrame`` loads as
        Parquet, a pydantic model as JSON), whatever the sidecar or ``info``
        says; otherwise ``info`` (the reference a step record or cache entry
        holds) names the materializer, then the sidecar. A cloudpickle object
        loads only when its SHA-256 is vouched for: by ``sha256`` (taken from a
        verified document, such as the compiled pipeline) or by the MAC its
        sidecar carries under this user's trust key (:mod:`mlpipe.trust`).

        Raises:
            UntrustedObjectError: a pickle nothing trusted vouches for; it is not loaded.
            CorruptObjectError: the bytes no longer match their address.
            ObjectNotFoundError: the object or its sidecar is missing.
        """
        try:
            meta = self.meta(digest)
        except ObjectNotFoundError:
            if self.exists(digest):
                raise
            raise ObjectNotFoundError(
                f"object {digest[:12]}… is missing from the store {self.url}; re-run the pipeline to recompute it",
                digest=digest,
            ) from None
        data = self.read_verified(digest, meta)
        recorded = meta.get("materializer")
        if info is not None and (info.materializer, info.type) != (recorded, meta.get("type")):
            meta = {**meta, "materializer": info.materializer, "type": info.type}
        typed = None if is_any(annotation) else for_annotation(annotation)
        if typed is not None and not (recorded == _PICKLE and meta.get("fallback_from") == typed.name):
            materializer = typed  # the consumer's type decides; a recorded pickle of another type is not loaded
            if meta.get("materializer") != typed.name:
                meta = {**meta, "materializer": typed.name}
        else:
            materializer = get_materializer(_PICKLE if recorded == _PICKLE else meta["materializer"])
        if materializer.name == _PICKLE:
            self._check_pickle(digest, data, meta, sha256)
        try:
            return materializer.load(data, annotation if not is_any(annotation) else Any, meta)
        except MlpipeError:
            raise
        except Exception as exc:
            if typed is None or recorded == typed.name:
                raise
            # Not quarantined: the bytes match their address, they are just not what this consumer reads.
            raise CorruptObjectError(
                f"object {digest[:12]}… in {self.url} was stored by {recorded!r} ({meta.get('type')}), but it is "
                f"read as {type_path(annotation) if isinstance(annotation, type) else annotation!r}, which loads "
                f"only with {typed.name!r} ({type(exc).__name__}: {str(exc)[:200]}). Re-run the producer, or fix "
                "the annotations so producer and consumer agree",
                digest=digest,
            ) from exc

    def _check_pickle(
        self, digest: str, data: bytearray | memoryview, meta: dict[str, Any], sha256: str | None
    ) -> None:
        actual = hashlib.sha256(data).hexdigest()
        if sha256 is not None and hmac.compare_digest(actual, sha256):
            return
        if sha256 is None and verify_mac(meta.get("mac"), digest, actual):
            return
        why = (
            "its SHA-256 differs from the one the compiled pipeline names"
            if sha256 is not None
            else "its sidecar carries no valid signature under this user's trust key"
        )
        raise UntrustedObjectError(
            f"object {digest[:12]}… in {self.url} is a pickle and {why}; loading a pickle runs code, so it was "
            "not loaded. If another machine or task wrote it, give every process that shares the store the same "
            "MLPIPE_TRUST_KEY; otherwise re-run the step that produces it (see the trust model in docs/caching.md)",
            digest=digest,
        )

    def quarantine(self, digest: str) -> None:
        """Move a bad object aside so it is never served again."""
        self._meta_cache.pop(digest, None)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        with contextlib.suppress(OSError, FileNotFoundError):
            self._fs.move(self.object_path(digest), f"quarantine/{digest}-{stamp}")

    def delete_object(self, digest: str, *, grace: float = 0.0) -> bool:
        """Remove an object and its sidecar, unless it was written or freshened in the last ``grace`` seconds.

        On a local store the object is first renamed aside and its age checked
        again, so a writer that freshens it at the same moment either sees it
        gone (and publishes its own copy) or keeps it. Returns whether it was removed.
        """
        rel = self.object_path(digest)
        if grace > 0 and _is_young(self._fs.mtime(rel), grace):
            return False
        self._meta_cache.pop(digest, None)
        fs = self._fs
        if isinstance(fs, _LocalFS) and grace > 0:
            aside = fs.path(f"objects/tmp/gc-{digest}-{os.getpid()}-{next(_counter)}")
            fs._ensure_dir(os.path.dirname(aside))
            try:
                os.replace(fs.path(rel), aside)
            except FileNotFoundError:
                return False
            if _is_young(os.stat(aside).st_mtime, grace):
                os.replace(aside, fs.path(rel))  # freshened in between: put back (same bytes either way)
                return False
            os.unlink(aside)
            if not fs.exists(rel):  # a writer may have published it again meanwhile; its sidecar stays
                fs.delete(rel + ".meta.json")
            return True
        fs.delete(rel)
        fs.delete(rel + ".meta.json")
        return True

    def object_mtime(self, digest: str) -> float | None:
        """When the object was written or last freshened (seconds since the epoch), if the store knows."""
        return self._fs.mtime(self.object_path(digest))

    def iter_objects(self) -> Iterator[tuple[str, int]]:
        """Every (digest, size) in the store, sidecars and temporaries excluded."""
        for rel, size in self._fs.walk_files("objects"):
            name = rel.rsplit("/", 1)[-1]
            if len(name) in (32, 64) and "." not in name and "/tmp/" not in rel:  # 64: BLAKE3, pre-0.1.0 stores
                yield name, size

    # -- JSON documents ---------------------------------------------------------
    def put_json(self, rel: str, document: Any) -> None:
        self._fs.write_bytes(rel, canonical_json(document).encode())

    def publish_json(self, rel: str, document: Any) -> None:
        """Write a document that refers to others (a run's ``run.json``): durable, after everything pending.

        Inside :meth:`group_commit`, the documents pending are committed first,
        then this one is written, fsynced and renamed at once, so it is never
        on the disk before what it refers to.
        """
        if isinstance(self._fs, _LocalFS):
            self._fs.commit()
            with self._fs.open_atomic(rel) as f:
                f.write(canonical_json(document).encode())
        else:
            self.put_json(rel, document)

    @contextlib.contextmanager
    def group_commit(self) -> Iterator[None]:
        """Commit the documents written in this block in batches, off the writing threads.

        On a local store a record, cache entry or sidecar written here is
        published by :mod:`mlpipe.commit` a few milliseconds later, durably
        (one ``syncfs`` before the renames, one after), instead of costing two
        fsyncs in the writer; this process reads it at once. Everything pending
        is published when the block ends. Other stores publish every write whole
        and need none of this.
        """
        if isinstance(self._fs, _LocalFS):
            with self._fs.group_commit():
                yield
        else:
            yield

    def commit(self) -> None:
        """Publish, durably, every document pending in an open :meth:`group_commit` of this store."""
        if isinstance(self._fs, _LocalFS):
            self._fs.commit()

    def get_json(self, rel: str) -> Any:
        """A JSON document of the store.

        Raises:
            ObjectNotFoundError: it does not exist.
            DamagedFileError: it is truncated or not JSON (a writer killed on a filesystem without atomic
                rename, a full disk, a hand edit); the message names the file.
        """
        try:
            data = self._fs.read_bytes(rel)
        except ObjectNotFoundError:
            raise ObjectNotFoundError(f"{rel} is not in the store {self.url}", path=rel) from None
        try:
            return json.loads(data)
        except ValueError as exc:
            raise DamagedFileError(
                f"{rel} in the store {self.url} is damaged ({len(data)} bytes, not valid JSON: {exc}); "
                "it is skipped where it can be, and `mlpipe index --rebuild` rebuilds the index without it",
                path=rel,
            ) from None

    def has(self, rel: str) -> bool:
        return self._fs.exists(rel)

    def delete(self, rel: str) -> None:
        self._fs.delete(rel)

    def listdir(self, rel: str) -> list[str]:
        return self._fs.listdir(rel)

    def walk_files(self, rel: str) -> Iterator[tuple[str, int]]:
        return self._fs.walk_files(rel)

    def put_bytes(self, rel: str, data: bytes) -> None:
        self._fs.write_bytes(rel, data)

    def get_bytes(self, rel: str) -> bytes:
        return bytes(self._fs.read_bytes(rel))

    def local_root(self) -> str | None:
        return self._fs.root if isinstance(self._fs, _LocalFS) else None

    def clean_temporaries(self, older_than: float = 3600.0) -> list[str]:
        """Remove temporary files left by killed writers, older than ``older_than`` seconds."""
        removed: list[str] = []
        if not isinstance(self._fs, _LocalFS):
            return removed
        now = time.time()
        for rel, _size in list(self._fs.walk_files("")):
            if ".tmp-" in rel or rel.startswith("objects/tmp/"):
                full = self._fs.path(rel)
                with contextlib.suppress(OSError):
                    if now - os.path.getmtime(full) > older_than:
                        os.unlink(full)
                        removed.append(rel)
        return removed

    def destroy(self) -> None:
        """Delete the whole store (tests and ``cache gc --all`` only)."""
        if isinstance(self._fs, _LocalFS):
            shutil.rmtree(self._fs.root, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                self._fs.fs.rm(self._fs.root, recursive=True)


def _is_young(mtime: float | None, grace: float) -> bool:
    """Within the grace period; an unknown time counts as young (never delete what cannot be dated)."""
    return mtime is None or time.time() - mtime < grace


def open_store(url: str | ArtifactStore | None = None, storage_options: dict[str, Any] | None = None) -> ArtifactStore:
    """An :class:`ArtifactStore` for ``url`` (default ``.mlpipe``), or the store passed in."""
    if isinstance(url, ArtifactStore):
        return url
    if url is None:
        url = ".mlpipe"
    if not isinstance(url, str):
        raise StoreError(f"store must be a path or URL string, got {type(url).__name__}")
    return ArtifactStore(url, storage_options)
