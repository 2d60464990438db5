"""Content hashing and canonical JSON.

Two digests, for two jobs:

- Stored objects are addressed by **XXH3-128** (:func:`digest_object`,
  :class:`HashingWriter`), which hashes about 30 GB/s on one core: storing a
  gigabyte array costs a few percent more than writing it, and every read is
  verified at memory speed. It detects corruption and makes accidental
  collisions negligible (one expected after about 2**64 objects), but it is
  not a cryptographic hash: it does not resist data crafted on purpose to
  collide (see docs/caching.md, "What the address guarantees").
- Small JSON documents (cache keys, parameters, the IR) use SHA-256 from the
  standard library (:func:`digest_json`, :func:`digest_bytes`), where speed
  does not matter.

Canonical JSON (sorted keys, no whitespace, UTF-8) makes the hash of a
parameter independent of dict order and formatting.
"""

from __future__ import annotations

import hashlib
import json
import math
import queue
import threading
from typing import IO, Any

__all__ = [
    "HashingWriter",
    "canonical_json",
    "digest_buffers",
    "digest_bytes",
    "digest_json",
    "digest_object",
    "json_safe",
]


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
    """SHA-256 of small documents (the IR, records)."""
    return hashlib.sha256(data).hexdigest()


def _object_hasher() -> Any:
    import xxhash

    return xxhash.xxh3_128()


def digest_buffers(buffers: list[Any]) -> tuple[str, int]:
    """(Content address, size) of the concatenation of ``buffers`` (see ``Materializer.buffers``)."""
    hasher = _object_hasher()
    size = 0
    for buffer in buffers:
        view = memoryview(buffer)
        hasher.update(view)
        size += view.nbytes
    return str(hasher.hexdigest()), size


def digest_object(data: bytes | bytearray | memoryview) -> str:
    """The content address of an object's bytes: XXH3-128, 32 hex digits."""
    import xxhash

    return str(xxhash.xxh3_128_hexdigest(data))


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


_SLICE = 8 << 20  # large writes go through in slices of this size


class HashingWriter:
    """A binary file wrapper that hashes and counts every byte written through it.

    Serialisers write straight into the destination file through it, so the
    object's digest is known the moment the write ends, without reading the
    file back.

    Once a write of a full slice arrives, hashing moves to a second thread
    that digests each slice while this thread writes it (the write releases
    the GIL): storing a large array then costs little more than writing it.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._hash = _object_hasher()
        self.size = 0
        self._queue: queue.Queue[memoryview | None] | None = None
        self._thread: threading.Thread | None = None

    def write(self, data: Any) -> int:
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        if self._queue is None and view.nbytes >= _SLICE:
            self._queue = queue.Queue(maxsize=8)
            self._thread = threading.Thread(target=self._hash_slices, name="mlpipe-hash", daemon=True)
            self._thread.start()
        for start in range(0, max(view.nbytes, 1), _SLICE):
            piece = view[start : start + _SLICE]
            if self._queue is not None:
                self._queue.put(piece)  # keeps the slice alive until it is hashed
            else:
                self._hash.update(piece)
            self._raw.write(piece)
        self.size += view.nbytes
        return view.nbytes

    def _hash_slices(self) -> None:
        assert self._queue is not None
        while (piece := self._queue.get()) is not None:
            self._hash.update(piece)

    def finish(self) -> None:
        """Wait for the hashing thread. Called by :meth:`hexdigest`; call it on errors too."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None

    def hexdigest(self) -> str:
        self.finish()
        return str(self._hash.hexdigest())

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
