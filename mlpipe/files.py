"""External files as step inputs: ``mp.File`` and ``mp.Directory``, whose content enters the cache key.

A step that reads a file by path sees only the path: without help, the file
can change and the step stays a cache hit. Annotating the parameter
``mp.File`` (or ``mp.Directory``) tells mlpipe to put the data's identity
into the cache key each time the step is about to run:

- a local file: the XXH3-128 digest of its bytes (a directory: of every file
  under it, by relative path); digests are remembered per (path, size,
  modification time, inode) within a process, so an unchanged large file is
  read once;
- ``s3://``: the object's ETag and, in a versioned bucket, its version id;
- ``gs://``: the object's generation and MD5 (or CRC32C);
- any other fsspec URL: the filesystem's ``ukey`` of the path.

The value the step receives is the path itself (a ``str`` subclass), so
``pd.read_csv(path)`` and ``fsspec.open(path)`` work unchanged. The identity
is computed where the step runs (the local backend's process, a remote task),
so relative paths are relative to that process's working directory.

What must not live here: reading the data (the step does that) and the key
itself (:mod:`mlpipe.cache`).
"""

from __future__ import annotations

import os
import threading
from typing import Any

__all__ = ["Directory", "File", "external_kind", "identity"]


class _External(str):
    """A path or URL whose data's identity enters the cache key."""

    kind = "file"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(
            cls, core_schema.str_schema(), serialization=core_schema.to_string_ser_schema()
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class File(_External):
    """A file a step reads, by local path or URL (``s3://``, ``gs://``, any fsspec URL).

    Example::

        @mp.step
        def load(path: mp.File) -> pd.DataFrame:
            return pd.read_csv(path)
    """

    kind = "file"


class Directory(_External):
    """A directory (or object prefix) a step reads; every file under it enters the cache key."""

    kind = "directory"


_KINDS = {"mlpipe.File": "file", "mlpipe.Directory": "directory"}


def external_kind(type_name: str) -> str | None:
    """``"file"``/``"directory"`` when an input's declared type (as the IR names it) is one of these."""
    for member in type_name.split(" | "):
        kind = _KINDS.get(member.strip())
        if kind is not None:
            return kind
    return None


_local_digests: dict[tuple[str, int, int, int], str] = {}
_lock = threading.Lock()
_CHUNK = 1 << 20


def _file_digest(path: str) -> str:
    import xxhash

    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    with _lock:
        hit = _local_digests.get(key)
    if hit is not None:
        return hit
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    digest = str(hasher.hexdigest())
    with _lock:
        _local_digests[key] = digest
    return digest


def _local(kind: str, path: str) -> dict[str, Any]:
    if kind == "file":
        if not os.path.isfile(path):
            return {"missing": True}
        return {"xxh3": _file_digest(path), "size": os.path.getsize(path)}
    if not os.path.isdir(path):
        return {"missing": True}
    files: dict[str, str] = {}
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            files[os.path.relpath(full, path).replace(os.sep, "/")] = _file_digest(full)
    from mlpipe.hashing import digest_json

    return {"files": len(files), "xxh3": digest_json(files)}


def _object_identity(protocol: str, info: dict[str, Any], fs: Any, path: str) -> dict[str, Any]:
    if protocol in ("s3", "s3a"):
        out = {"etag": str(info.get("ETag") or info.get("etag") or "").strip('"')}
        version = info.get("VersionId") or info.get("version_id")
        if version and version != "null":
            out["version_id"] = str(version)
        return out
    if protocol in ("gs", "gcs"):
        out = {"generation": str(info.get("generation") or "")}
        checksum = info.get("md5Hash") or info.get("crc32c")
        if checksum:
            out["checksum"] = str(checksum)
        return out
    return {"ukey": str(fs.ukey(path))}


def _remote(kind: str, url: str) -> dict[str, Any]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    fs.invalidate_cache()  # a listing cached earlier in this process must not hide a new version
    if kind == "file":
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return {"missing": True}
        if info.get("type") == "directory":
            return {"missing": True}
        return _object_identity(protocol, info, fs, path)
    found = fs.find(path, detail=True)
    if not found:
        return {"missing": True}
    prefix = path.rstrip("/") + "/"
    objects = {
        name[len(prefix) :] if name.startswith(prefix) else name: _object_identity(protocol, info, fs, name)
        for name, info in sorted(found.items())
    }
    from mlpipe.hashing import digest_json

    return {"files": len(objects), "digest": digest_json(objects)}


def identity(kind: str, location: str) -> dict[str, Any]:
    """What identifies the data at ``location`` now: content digest (local), ETag/version, generation.

    ``{"missing": True}`` when nothing is there (the step then fails reading it,
    and a failed step writes no cache entry).
    """
    if "://" in location and not location.startswith("file://"):
        return _remote(kind, location)
    return _local(kind, location.removeprefix("file://"))
