"""Durability of a local store's documents: fsync helpers and group commit.

Outside a group, :mod:`mlpipe.store` makes each JSON document durable on its
own: the temporary file is fsynced, renamed into place and its directory
fsynced (two fsyncs, about 1 ms on ext4, more than a small step costs).

Inside a group (:func:`group`, opened by the local backend around a run), a
document is held in memory and published by a committer thread in batches.
One commit writes the batch's temporary files, makes them and everything
written before them durable with one ``syncfs`` of the store's filesystem,
renames them into place, and makes the renames durable with a second
``syncfs``. So nothing is ever named before its bytes are on the disk: a
power loss leaves each document old, new or absent, never empty or torn, and
a document that survives refers only to objects and documents written before
it, which the first ``syncfs`` made durable too. Without ``syncfs`` (not
Linux) a commit fsyncs each file and directory instead, with the same order.

While pending, a document is visible to this process (reads go through
:func:`pending`), not yet to others; :func:`commit` publishes everything
pending before it returns, which a document that refers to the others (a
run's ``run.json``) calls first. A SIGKILL loses what was pending: the last
batch, written a few milliseconds earlier.

What must not live here: what documents mean, objects (see :mod:`mlpipe.store`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections.abc import Callable, Iterator

__all__ = ["active", "commit", "group", "pending", "pending_names", "sync_dir", "sync_file", "syncfs"]

#: Documents larger than this are written at once (fsync and rename), never held in memory.
MAX_PENDING_BYTES = 1 << 20

_counter = itertools.count()
_groups: dict[str, _Group] = {}  # store root -> its open group
_groups_lock = threading.Lock()


def sync_file(path: str) -> None:
    """Flush a written file's contents to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: str) -> None:
    """Flush a directory's entries (a rename or a new file in it) to the disk, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


_libc_syncfs: Callable[[int], int] | bool | None = False  # False: not looked up yet; None: not available


def syncfs(path: str) -> bool:
    """Flush every written file and directory entry of the filesystem holding ``path``; False if unsupported.

    Raises:
        OSError: the kernel reported a write-back error (the data may not be on the disk).
    """
    global _libc_syncfs
    if _libc_syncfs is False:
        _libc_syncfs = None
        if hasattr(os, "sched_getaffinity"):  # Linux
            with contextlib.suppress(OSError, AttributeError):
                import ctypes

                _libc_syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    if _libc_syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc_syncfs(fd) != 0:  # type: ignore[operator]
            import ctypes

            err = ctypes.get_errno()
            raise OSError(err, f"syncfs of {path}: {os.strerror(err)}")
    finally:
        os.close(fd)
    return True


class _Group:
    """The pending documents of one store root and the thread that commits them."""

    def __init__(self, root: str, make_dir: Callable[[str], None]) -> None:
        self.root = root
        self.make_dir = make_dir
        self.users = 0
        self.docs: dict[str, bytes] = {}  # rel -> bytes, pending or being committed (what reads see)
        self.batch: dict[str, bytes] = {}  # rel -> bytes not yet taken by a commit, in write order
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.commit_lock = threading.Lock()
        self.error: BaseException | None = None
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="mlpipe-commit", daemon=True)
        self.thread.start()

    def put(self, rel: str, data: bytes) -> bool:
        """Hold ``data`` for ``rel`` until the next commit; False when the group no longer takes documents."""
        with self.lock:
            if self.error is not None or self.stopping:
                return False
            self.docs[rel] = data
            self.batch.pop(rel, None)  # a rewrite moves to the end: renames keep the order of writes
            self.batch[rel] = data
            self.wake.notify()
        return True

    def forget(self, rel: str) -> None:
        """Drop a pending document (it is being deleted)."""
        with self.commit_lock, self.lock:
            self.docs.pop(rel, None)
            self.batch.pop(rel, None)

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.batch and not self.stopping:
                    self.wake.wait()
                if not self.batch and self.stopping:
                    return
            try:
                self.commit()
            except BaseException:  # kept in self.error, raised by close()
                return

    def commit(self) -> None:
        """Publish every document pending when this is called (durably) before returning."""
        with self.commit_lock:
            with self.lock:
                batch, self.batch = self.batch, {}
            if not batch:
                if self.error is not None:
                    raise self.error
                return
            try:
                self._publish(batch)
            except BaseException as exc:
                with self.lock:
                    self.error = exc
                    for rel, data in batch.items():  # never published: not visible either
                        if self.docs.get(rel) is data:
                            del self.docs[rel]
                raise
            with self.lock:
                for rel, data in batch.items():
                    if self.docs.get(rel) is data:  # not rewritten meanwhile
                        del self.docs[rel]

    def _publish(self, batch: dict[str, bytes]) -> None:
        tmps: list[tuple[str, str]] = []
        try:
            for rel, data in batch.items():
                final = os.path.join(self.root, rel)
                self.make_dir(os.path.dirname(final))
                tmp = f"{final}.tmp-{os.getpid()}-{threading.get_ident()}-{next(_counter)}"
                with open(tmp, "wb") as f:
                    f.write(data)
                tmps.append((tmp, final))
            fast = syncfs(self.root)  # the bytes (and every object written before them), then names
            if not fast:
                for tmp, _final in tmps:
                    sync_file(tmp)
            for tmp, final in tmps:
                os.replace(tmp, final)
        except BaseException:
            for tmp, _final in tmps:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
        if not fast or not syncfs(self.root):
            for directory in {os.path.dirname(final) for _tmp, final in tmps}:
                sync_dir(directory)

    def close(self) -> None:
        with self.lock:
            self.stopping = True
            self.wake.notify()
        self.thread.join()
        self.commit()  # whatever the thread left (it stops at an error, which this raises)


@contextlib.contextmanager
def group(root: str, make_dir: Callable[[str], None]) -> Iterator[None]:
    """Hold the documents written under ``root`` in this block and commit them in batches (see the module).

    Blocks may nest and overlap across threads (two runs on one store): the
    group lives while any is open, and every block's end commits what is
    pending. Raises the committer's error (a full disk) at the end of the block.
    """
    with _groups_lock:
        g = _groups.get(root)
        if g is None:
            g = _groups[root] = _Group(root, make_dir)
        g.users += 1
    try:
        yield
    finally:
        with _groups_lock:
            g.users -= 1
            last = g.users == 0
            if last:
                del _groups[root]
        if last:
            g.close()
        else:
            g.commit()


def active(root: str) -> _Group | None:
    """The open group of ``root``, if any."""
    return _groups.get(root)


def pending(root: str, rel: str) -> bytes | None:
    """The bytes of ``rel`` written in an open group and not yet published, or None."""
    g = _groups.get(root)
    return None if g is None else g.docs.get(rel)


def pending_names(root: str, rel_dir: str) -> list[str]:
    """Names of pending documents directly under ``rel_dir``."""
    g = _groups.get(root)
    if g is None or not g.docs:
        return []
    prefix = rel_dir.rstrip("/") + "/"
    with g.lock:
        return [r[len(prefix) :] for r in g.docs if r.startswith(prefix) and "/" not in r[len(prefix) :]]


def commit(root: str) -> None:
    """Publish, durably, every document of ``root`` pending in an open group (no-op without one)."""
    g = _groups.get(root)
    if g is not None:
        g.commit()
