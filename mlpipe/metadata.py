"""The SQLite index of runs, step runs, artifacts, cache entries and lineage.

The store is the truth; this database (``metadata.db`` inside a local store,
or under ``~/.cache/mlpipe/index/`` for a remote one) is a fast local index of
it, opened in WAL mode so concurrent runs can write while the CLI reads.
:meth:`Index.rebuild` recreates it from the store's records at any time, and
:meth:`Index.sync` pulls in records written by other machines (remote steps).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import os
import random
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from mlpipe.errors import DamagedFileError, StoreError
from mlpipe.store import ArtifactStore

__all__ = ["Index", "IndexRepairWarning", "open_index"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, status TEXT NOT NULL, backend TEXT,
    started REAL, ended REAL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL, name TEXT NOT NULL, pipeline TEXT NOT NULL, status TEXT NOT NULL,
    cached INTEGER NOT NULL, key TEXT, started REAL, ended REAL, doc TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE INDEX IF NOT EXISTS steps_key ON steps(key);
CREATE TABLE IF NOT EXISTS artifacts (
    digest TEXT PRIMARY KEY, size INTEGER, materializer TEXT, type TEXT
);
CREATE TABLE IF NOT EXISTS lineage (
    run_id TEXT NOT NULL, step TEXT NOT NULL, digest TEXT NOT NULL, direction TEXT NOT NULL,
    name TEXT NOT NULL, PRIMARY KEY (run_id, step, direction, name)
);
CREATE INDEX IF NOT EXISTS lineage_digest ON lineage(digest);
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY, pipeline TEXT NOT NULL, step TEXT NOT NULL, run_id TEXT NOT NULL,
    created REAL NOT NULL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_step ON cache_entries(pipeline, step, created);
"""

_BUSY_SECONDS = 30.0  # how long a writer waits for another process's lock on the index
_indexes: dict[str, Index] = {}
_indexes_lock = threading.Lock()


def index_path(store: ArtifactStore) -> str:
    root = store.local_root()
    if root is not None:
        return os.path.join(root, "metadata.db")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = hashlib.sha256(store.url.encode()).hexdigest()[:16]
    return os.path.join(base, "mlpipe", "index", f"{tag}.db")


class IndexRepairWarning(UserWarning):
    """The index file was damaged: it was moved aside and rebuilt from the store."""


def open_index(store: ArtifactStore) -> Index:
    """The (process-wide, shared) index of ``store``.

    A damaged ``metadata.db`` never blocks: it is moved aside (kept as
    ``metadata.db.damaged-<time>``) and rebuilt from the store's records, with an
    :class:`IndexRepairWarning`. A store the process cannot write (read-only
    mount, another user's) gets an in-memory index, copied from the file when
    there is one, else built from the records, so it can still be inspected.
    """
    path = index_path(store)
    with _indexes_lock:
        index = _indexes.get(path)
        if index is None or (index.path != ":memory:" and not os.path.exists(path)):
            index = _indexes[path] = _open(store, path)
            atexit.register(index.flush)
        return index


def _open(store: ArtifactStore, path: str) -> Index:
    if not _writable(path):
        return Index.read_only_copy(store, path)
    try:
        return Index(path)
    except sqlite3.DatabaseError as exc:
        if not _damaged(exc):
            raise _translated(exc, path) from exc
        aside = move_aside(path)
        warnings.warn(
            f"the index {path} was damaged ({exc}); it was moved to {aside} and is rebuilt from the store",
            IndexRepairWarning,
            stacklevel=3,
        )
        index = Index(path)
        index.rebuild(store)
        return index


def _writable(path: str) -> bool:
    directory = os.path.dirname(path) or "."
    if os.path.exists(path):
        return os.access(path, os.W_OK) and os.access(directory, os.W_OK)
    parent = directory
    while not os.path.exists(parent):
        parent = os.path.dirname(parent) or "."
    return os.access(parent, os.W_OK)


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def move_aside(path: str) -> str:
    """Rename a damaged index (and its WAL files) out of the way; returns the new name of the database."""
    aside = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(path + suffix, aside + suffix)
    return aside


def _run_ids(store: ArtifactStore) -> list[str]:
    from mlpipe.records import run_ids

    return run_ids(store)


def _translated(exc: sqlite3.Error, path: str) -> StoreError:
    """A SQLite failure as a StoreError (exit 1) that says what happened and what to do."""
    text = str(exc)
    if "full" in text.lower():
        why = "the disk is full (SQLite: database or disk is full); free some space and run again"
    elif isinstance(exc, sqlite3.DatabaseError) and _damaged(exc):
        why = f"it is damaged ({text}); `mlpipe index --rebuild` moves it aside and rebuilds it from the store"
    elif "readonly" in text.lower() or "read-only" in text.lower():
        why = f"it is read-only ({text}); inspect the store from a process that may write it, or copy it"
    else:
        why = f"SQLite: {text}"
    return StoreError(f"the metadata index {path} cannot be used: {why}. The store's records are intact", path=path)


def _like_prefix(prefix: str) -> str:
    """A LIKE pattern matching ids that start with ``prefix`` literally (``%`` and ``_`` are no wildcards)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


_R = TypeVar("_R")


def _sqlite_errors(method: Callable[..., _R]) -> Callable[..., _R]:
    @functools.wraps(method)
    def wrapper(self: Index, *args: Any, **kwargs: Any) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _translated(exc, self.path) from exc

    return wrapper


class Index:
    """A thread-safe handle on one ``metadata.db``."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._pending: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        self._last_flush = time.monotonic()
        self.skipped: list[str] = []
        self.aside: str | None = None
        self._connect()

    def _connect(self) -> None:
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=_BUSY_SECONDS, isolation_level=None)
        try:
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA busy_timeout={int(_BUSY_SECONDS * 1000)}")
            deadline = time.monotonic() + _BUSY_SECONDS
            while True:
                try:
                    self._setup()
                    break
                except sqlite3.OperationalError as exc:
                    # Switching to WAL takes an exclusive lock without waiting for it: processes opening a new
                    # index at the same moment get "database is locked" at once, so wait here instead.
                    if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                        raise
                    time.sleep(random.uniform(0.005, 0.05))
        except sqlite3.Error:
            self._db.close()
            raise

    def _setup(self) -> None:
        """WAL mode (once per file) and the schema, in one write transaction so concurrent openers serialise."""
        if self.path != ":memory:" and str(self._db.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            self._db.execute("PRAGMA journal_mode=WAL")
        with self._lock:
            try:
                self._db.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nCOMMIT;")
            except sqlite3.Error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @classmethod
    def read_only_copy(cls, store: ArtifactStore, path: str) -> Index:
        """An in-memory index for a store this process cannot write: a copy of the file, or built from records."""
        index = cls(":memory:")
        if os.path.exists(path):
            try:
                source = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
                try:
                    source.backup(index._db)
                finally:
                    source.close()
                return index
            except sqlite3.DatabaseError:
                pass  # damaged too: build from the records instead
        index.rebuild(store)
        return index

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite already rolled back after SQLITE_FULL / IOERR
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self.flush()
            self._db.close()

    # -- writes ------------------------------------------------------------------
    @_sqlite_errors
    def record_run(self, doc: dict[str, Any]) -> None:
        params = doc.get("params")
        if isinstance(params, dict):  # run.json keeps large values; the index keeps their size and hash
            from mlpipe.cache import summarize_large

            doc = {**doc, "params": {k: summarize_large(v) for k, v in params.items()}}
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?)",
                (
                    doc["id"],
                    doc["pipeline"],
                    doc["status"],
                    doc.get("backend"),
                    doc.get("started"),
                    doc.get("ended"),
                    json.dumps(doc),
                ),
            )

    @_sqlite_errors
    def record_step(self, doc: dict[str, Any], entry: dict[str, Any] | None = None) -> None:
        """Index a step record, its artifacts and lineage edges, and its new cache entry.

        Writes are buffered and committed together (at most every second, every
        256 records, and whenever something is read or :meth:`flush` is called):
        one SQLite transaction per step would cost more than running a small
        step. The store already holds the records, so a crash loses nothing
        that ``mlpipe index --rebuild`` cannot restore.
        """
        with self._lock:
            self._pending.append((doc, entry))
            if len(self._pending) >= 256 or time.monotonic() - self._last_flush > 1.0:
                self.flush()

    @_sqlite_errors
    def flush(self) -> None:
        """Commit buffered step records."""
        with self._lock:
            if not self._pending:
                self._last_flush = time.monotonic()
                return
            pending, self._pending = self._pending, []
            with self._tx() as db:
                for doc, entry in pending:
                    self._insert_step(db, doc)
                    if entry is not None:
                        self._insert_entry(db, entry)
            self._last_flush = time.monotonic()

    def _insert_step(self, db: sqlite3.Connection, doc: dict[str, Any]) -> None:
        run_id, name = doc["run_id"], doc["step"]
        db.execute(
            "INSERT OR REPLACE INTO steps VALUES (?,?,?,?,?,?,?,?,?)",
            (
                run_id,
                name,
                doc["pipeline"],
                doc["status"],
                int(bool(doc.get("cached"))),
                doc.get("key"),
                doc.get("started"),
                doc.get("ended"),
                json.dumps(doc),
            ),
        )
        rows = []
        for out_name, info in (doc.get("outputs") or {}).items():
            db.execute(
                "INSERT OR IGNORE INTO artifacts VALUES (?,?,?,?)",
                (info["digest"], info.get("size"), info.get("materializer"), info.get("type")),
            )
            rows.append((run_id, name, info["digest"], "out", out_name))
        for in_name, inp in (doc.get("components") or {}).get("inputs", {}).items():
            if inp.get("kind") == "artifact":
                rows.append((run_id, name, inp["digest"], "in", in_name))
        if rows:
            db.executemany("INSERT OR REPLACE INTO lineage VALUES (?,?,?,?,?)", rows)

    def _insert_entry(self, db: sqlite3.Connection, entry: dict[str, Any]) -> None:
        db.execute(
            "INSERT OR REPLACE INTO cache_entries VALUES (?,?,?,?,?,?)",
            (entry["key"], entry["pipeline"], entry["step"], entry["run_id"], entry["created"], json.dumps(entry)),
        )

    @_sqlite_errors
    def forget_entries(self, keys: list[str]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM cache_entries WHERE key = ?", [(k,) for k in keys])

    # -- reads -------------------------------------------------------------------
    @_sqlite_errors
    def runs(self, limit: int = 50, pipeline: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT doc FROM runs"
        args: tuple[Any, ...] = ()
        if pipeline:
            sql += " WHERE pipeline = ?"
            args = (pipeline,)
        sql += " ORDER BY started DESC LIMIT ?"
        self.flush()
        with self._lock:
            return [json.loads(r[0]) for r in self._db.execute(sql, (*args, limit))]

    @_sqlite_errors
    def run(self, run_id: str) -> dict[str, Any] | None:
        self.flush()
        with self._lock:
            row = self._db.execute("SELECT doc FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                row = self._db.execute(
                    "SELECT doc FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY started DESC", (_like_prefix(run_id),)
                ).fetchone()
        return None if row is None else json.loads(row[0])

    @_sqlite_errors
    def run_ids(self, prefix: str, limit: int = 6) -> list[str]:
        """Ids of recorded runs that start with ``prefix``, newest first."""
        self.flush()
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' ORDER BY started DESC LIMIT ?",
                (_like_prefix(prefix), limit),
            ).fetchall()
        return [r[0] for r in rows]

    @_sqlite_errors
    def steps(self, run_id: str) -> list[dict[str, Any]]:
        self.flush()
        with self._lock:
            rows = self._db.execute("SELECT doc FROM steps WHERE run_id = ? ORDER BY started", (run_id,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    @_sqlite_errors
    def entries_for(self, pipeline: str, step: str) -> list[dict[str, Any]]:
        self.flush()
        with self._lock:
            rows = self._db.execute(
                "SELECT doc FROM cache_entries WHERE pipeline = ? AND step = ? ORDER BY created DESC LIMIT 200",
                (pipeline, step),
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    @_sqlite_errors
    def steps_with_key(self, key: str) -> list[dict[str, Any]]:
        """Step records (any run, oldest first) whose cache key is ``key``."""
        self.flush()
        with self._lock:
            rows = self._db.execute("SELECT doc FROM steps WHERE key = ? ORDER BY started", (key,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    @_sqlite_errors
    def entry_keys(self) -> list[str]:
        self.flush()
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT key FROM cache_entries")]

    def producers(self, digest: str) -> list[dict[str, Any]]:
        return self._lineage(digest, "out")

    def consumers(self, digest: str) -> list[dict[str, Any]]:
        return self._lineage(digest, "in")

    @_sqlite_errors
    def _lineage(self, digest: str, direction: str) -> list[dict[str, Any]]:
        self.flush()
        with self._lock:
            rows = self._db.execute(
                "SELECT l.run_id, l.step, l.name, s.cached, s.started FROM lineage l "
                "LEFT JOIN steps s ON s.run_id = l.run_id AND s.name = l.step "
                "WHERE l.digest = ? AND l.direction = ? ORDER BY s.started",
                (digest, direction),
            ).fetchall()
        return [{"run_id": r[0], "step": r[1], "name": r[2], "cached": bool(r[3]), "started": r[4]} for r in rows]

    @_sqlite_errors
    def artifact(self, digest_prefix: str) -> dict[str, Any] | None:
        self.flush()
        with self._lock:
            row = self._db.execute(
                "SELECT digest, size, materializer, type FROM artifacts WHERE digest LIKE ? ESCAPE '\\'",
                (_like_prefix(digest_prefix),),
            ).fetchone()
        return None if row is None else {"digest": row[0], "size": row[1], "materializer": row[2], "type": row[3]}

    # -- rebuilding ----------------------------------------------------------------
    @_sqlite_errors
    def sync_run(self, store: ArtifactStore, run_id: str) -> dict[str, Any] | None:
        """Index one run from the store's records (used for runs written elsewhere)."""
        from mlpipe.records import load_step_records, run_path

        if not store.has(run_path(run_id, "run.json")):
            return None
        doc: dict[str, Any] = store.get_json(run_path(run_id, "run.json"))
        self.record_run(doc)
        for record in load_step_records(store, run_id).values():
            self.record_step(record)
        return doc

    @_sqlite_errors
    def sync(self, store: ArtifactStore) -> int:
        """Index the runs the store has and the index lacks (and their cache entries). Returns runs added."""
        with self._lock:
            known = {r[0] for r in self._db.execute("SELECT id FROM runs")}
            known_entries = {r[0] for r in self._db.execute("SELECT key FROM cache_entries")}
        added = 0
        for run_id in _run_ids(store):
            try:
                if run_id not in known and self.sync_run(store, run_id) is not None:
                    added += 1
            except (DamagedFileError, KeyError, TypeError) as exc:
                warnings.warn(f"skipped run {run_id}: {exc}", IndexRepairWarning, stacklevel=2)
        for rel, _size in store.walk_files("cache"):
            key = rel.rsplit("/", 1)[-1].removesuffix(".json")
            if rel.endswith(".json") and key not in known_entries:
                try:
                    entry = store.get_json(rel)
                    with self._tx() as db:
                        self._insert_entry(db, entry)
                except (DamagedFileError, KeyError, TypeError) as exc:
                    warnings.warn(f"skipped {rel}: {exc}", IndexRepairWarning, stacklevel=2)
        return added

    def rebuild(self, store: ArtifactStore) -> tuple[int, int]:
        """Recreate the whole index from the store. Returns (runs, cache entries) indexed.

        A damaged index file is moved aside and recreated first; damaged
        records are skipped and listed in :attr:`skipped`.
        """
        self.skipped = []
        with self._lock:
            try:
                self._pending = []
                with self._tx() as db:
                    for table in ("runs", "steps", "artifacts", "lineage", "cache_entries"):
                        db.execute(f"DELETE FROM {table}")
            except sqlite3.DatabaseError as exc:
                if not _damaged(exc) or self.path == ":memory:":
                    raise _translated(exc, self.path) from exc
                self._db.close()
                self.aside = move_aside(self.path)
                self._connect()
        return self._rebuild_rows(store)

    @_sqlite_errors
    def _rebuild_rows(self, store: ArtifactStore) -> tuple[int, int]:
        runs = 0
        for run_id in _run_ids(store):
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    found = self.sync_run(store, run_id)
                self.skipped.extend(str(w.message) for w in caught)
            except (DamagedFileError, KeyError, TypeError) as exc:
                self.skipped.append(str(exc))
                continue
            if found is not None:
                runs += 1
        entries = 0
        for rel, _size in store.walk_files("cache"):
            if rel.endswith(".json"):
                try:
                    entry = store.get_json(rel)
                    with self._tx() as db:
                        self._insert_entry(db, entry)
                except (DamagedFileError, KeyError, TypeError) as exc:
                    self.skipped.append(f"{rel}: {exc}" if not isinstance(exc, DamagedFileError) else str(exc))
                    continue
                entries += 1
        self.flush()
        return runs, entries
