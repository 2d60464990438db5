"""Content hashing and canonical JSON.

SHA-256 from the standard library is the one digest algorithm: it is fast
enough (about 1.7 GB/s on one core here, far above serialisation speed), has
no dependency, and matches the digests object stores and OCI registries use.
Canonical JSON (sorted keys, no whitespace, UTF-8) makes the hash of a
parameter independent of dict order and formatting.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import IO, Any

__all__ = ["HashingWriter", "canonical_json", "digest_bytes", "digest_json", "json_safe"]


def canonical_json(value: Any) -> str:
    """Deterministic JSON text of ``value``: sorted keys, compact separators."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def _default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, bytes):
        return {"__bytes__": value.hex()}
    raise TypeError(f"{type(value).__qualname__} is not JSON serialisable")


def digest_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_json(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def json_safe(value: Any) -> bool:
    """Whether ``value`` survives a JSON round trip unchanged (str-keyed dicts, lists, scalars)."""
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(json_safe(v) for v in value)
    if kind is dict:
        return all(type(k) is str and json_safe(v) for k, v in value.items())
    return False


class HashingWriter:
    """A binary file wrapper that hashes and counts every byte written through it.

    Serialisers write straight into the destination file through it, so the
    content hash is known the moment the write ends, without reading the file
    back.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        self._hash.update(view)
        self.size += view.nbytes
        self._raw.write(view)
        return view.nbytes

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    # The file protocol bits serialisers probe for.
    def flush(self) -> None:
        self._raw.flush()

    def tell(self) -> int:
        return self.size

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._raw.closed

    def close(self) -> None:  # the store closes the underlying file itself
        pass
