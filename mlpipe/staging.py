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

import json
import os
import uuid
import warnings
from collections.abc import Mapping
from typing import Any

from mlpipe.errors import ConfigError
from mlpipe.fingerprint import credential_like
from mlpipe.store import ArtifactStore, open_store

__all__ = ["StagedStore", "portability_warnings", "task_storage_options"]


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


def task_storage_options(options: Mapping[str, Any], backend: str) -> str | None:
    """The profile's ``storage_options`` that a compiled spec may carry to its tasks, as JSON text (None: none).

    What lets the tasks reach the same store travels (a MinIO ``endpoint_url``,
    ``client_kwargs.region_name``, ``anon``, gcsfs's ``token = "anon"`` and
    other token modes); what looks like a credential, by
    name (``key``, ``secret``, ``token``, ``password``...) or by text (an AWS
    key id, a URL with a password), at any depth, is left out with one warning
    naming it. Credentials reach the tasks from the cluster (environment
    variables, mounted secrets, workload identity), never from the spec.

    Raises:
        ConfigError: an option that is not JSON (a spec carries text only).
    """
    withheld: list[str] = []
    kept = _without_credentials(options, "", withheld)
    if withheld:
        warnings.warn(
            f"storage_options {', '.join(withheld)} look like credentials and are not written into the {backend} "
            "spec; give the tasks their credentials through the cluster (environment variables such as "
            "AWS_ACCESS_KEY_ID, a mounted secret, workload identity, or MLPIPE_STORAGE_OPTIONS in the task's "
            "environment)",
            UserWarning,
            stacklevel=2,
        )
    if not kept:
        return None
    try:
        return json.dumps(kept, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"storage_options: {exc}; the {backend} spec carries them to the tasks as JSON, so use strings, "
            "numbers, booleans, lists and tables only"
        ) from None


# gcsfs's ``token`` may name a way to authenticate instead of holding a credential.
_TOKEN_MODES = frozenset({"anon", "google_default", "cloud", "cache", "browser"})


def _without_credentials(options: Mapping[str, Any], prefix: str, withheld: list[str]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for name, value in options.items():
        path = f"{prefix}{name}"
        if name == "token" and value in _TOKEN_MODES:
            kept[name] = value
        elif credential_like(str(name), value):
            withheld.append(path)
        elif isinstance(value, Mapping):
            inner = _without_credentials(value, f"{path}.", withheld)
            if inner or not value:
                kept[name] = inner
        elif isinstance(value, (list, tuple)) and any(isinstance(v, str) and credential_like("", v) for v in value):
            withheld.append(path)
        else:
            kept[name] = value
    return kept
