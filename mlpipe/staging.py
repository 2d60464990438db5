"""The store as ``compile`` sees it: the profile's URL, no I/O; what tasks need is uploaded later.

``mlpipe compile`` is a pure function of the pipeline and the profile, like
kfp's compiler: it opens no connection and needs no credentials. A compiled
spec still names the store and the digest of the IR its tasks load, and a
non-importable step's code still travels pickled; both are written into a
:class:`StagedStore`, an in-memory staging area that carries the real store's
URL. ``submit`` writes the same documents straight into the store (the same
bytes, so the same digest), and ``mlpipe compile --upload`` copies the staged
ones with :meth:`StagedStore.upload`.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from mlpipe.store import ArtifactStore, open_store

__all__ = ["StagedStore", "portability_warnings"]


class StagedStore(ArtifactStore):
    """An :class:`~mlpipe.store.ArtifactStore` whose ``url`` is the profile's and whose writes stay in memory.

    Args:
        url: The profile's store URL (a path or any fsspec URL); it is never opened here.
        storage_options: The profile's ``storage_options``, used only by :meth:`upload`.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self._staging = f"memory://mlpipe-staging/{uuid.uuid4().hex}"
        super().__init__(self._staging)
        self.storage_options = dict(storage_options or {})
        if "://" in url and not url.startswith("file://"):
            self.url = url.rstrip("/")
            self.is_local = False
        else:
            path = url[len("file://") :] if url.startswith("file://") else url
            self.url = os.path.abspath(os.path.expanduser(path))
            self.is_local = True
        self._target = url

    def __repr__(self) -> str:
        return f"StagedStore({self.url!r})"

    def staged(self) -> list[str]:
        """The store paths written so far (relative), sorted."""
        return [rel for rel, _size in self._fs.walk_files("")]

    def upload(self, store: ArtifactStore | None = None) -> int:
        """Copy what was staged into the real store (or ``store``); returns how many documents were new there.

        Content-addressed paths only (IR documents, shipped code and their
        sidecars), so a document already there is the same and is left alone.
        """
        target = store if store is not None else open_store(self._target, self.storage_options)
        added = 0
        for rel in self.staged():
            if not target.has(rel):
                target.put_bytes(rel, self.get_bytes(rel))
                added += 1
        return added

    def discard(self) -> None:
        """Drop the staged documents (the in-memory filesystem is process-wide)."""
        for rel in self.staged():
            self.delete(rel)


def portability_warnings(store_url: str, is_local: bool, images: dict[str, str | None], backend: str) -> list[str]:
    """What makes a compiled spec unrunnable on a cluster, one sentence each.

    Args:
        store_url: The store the spec names.
        is_local: Whether that is a path on this machine.
        images: Step name → its image (the step's, else the profile's; None when neither is set).
        backend: The backend compiled for (named in the messages).
    """
    out: list[str] = []
    if is_local or store_url.startswith("memory://"):
        out.append(
            f"the spec names the store {store_url}, a path on this machine that {backend} tasks cannot reach; "
            'set store = "s3://bucket/prefix" or "gs://bucket/prefix" in the profile (local mode and shared '
            "filesystems excepted)"
        )
    missing = sorted(name for name, image in images.items() if not image)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        out.append(
            f"step(s) {shown} have no image, so the spec names a placeholder no cluster can pull; set image in "
            "the profile (built with `mlpipe image FILE:PIPELINE`) or @mp.step(image=...)"
        )
    return out
