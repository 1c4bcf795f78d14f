"""SQLite storage: one writer thread with group commit, readers on their own connections.

A heartbeat or proof is answered 202 only after its transaction is committed with
``synchronous=FULL``, so an acknowledged message survives ``kill -9`` and power loss. To
keep that affordable, the writer drains every queued operation into one transaction and
one fsync (group commit); each operation runs in its own savepoint, so one failing write
never takes its neighbours down. SQLite never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from . import lifecycle_triggers
from .schema import DOWNGRADES_STORED_FROM, MIGRATIONS

log = logging.getLogger(__name__)
T = TypeVar("T")
WriteFn = Callable[[sqlite_utils.Database], T]

_MAX_BATCH = 512


@dataclass
class _Job:
    fn: Callable[[sqlite_utils.Database], Any]
    loop: asyncio.AbstractEventLoop | None
    future: Any


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    # Deleted content is overwritten with zeros in the file, not just unlinked: erasure
    # (SPEC §11) must not leave a device's data in free pages.
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class SchemaTooNew(RuntimeError):
    """The database was written by a newer version: refuse rather than damage it."""


class StateInUse(RuntimeError):
    """Another process holds the state directory's lock in a way that excludes this one."""


def lock_state(state_dir: Path, *, exclusive: bool) -> int:
    """Lock the state directory itself (``flock`` on it), without waiting: shared by every
    running coordinator, exclusive for a schema downgrade, so a downgrade never runs under a
    live coordinator nor a coordinator on a half-made downgrade. Returns the descriptor
    that holds the lock: ``os.close`` it, or end the process, to release it. Locking the
    directory creates no file that another user could end up owning."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateInUse(
            f"{state_dir} is in use: "
            + (
                "the coordinator is running; stop it first (systemctl stop microblock-coordinator)"
                if exclusive
                else "a schema downgrade is running on it"
            )
        ) from None
    return fd


def store_downgrades(conn: sqlite3.Connection, version: int) -> None:
    """Record in the database the down statements of ``version``; when it is the version
    that starts recording them, of every earlier version too. Runs inside the migration's
    transaction: a version is never applied without its way back."""
    if version < DOWNGRADES_STORED_FROM:
        return
    first = 1 if version == DOWNGRADES_STORED_FROM else version
    for v in range(first, version + 1):
        conn.execute(
            "INSERT OR REPLACE INTO schema_downgrades (version, statements) VALUES (?, ?)",
            [v, json.dumps(MIGRATIONS[v - 1].down)],
        )


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the latest version, one transaction per migration, then make
    the lifecycle triggers match the lifecycle tables (``lifecycle_triggers``)."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise SchemaTooNew(
            f"database schema v{current} is newer than this software (v{len(MIGRATIONS)}); "
            f"`aeamc-coordinator db downgrade` takes it back to v{len(MIGRATIONS)} and keeps "
            "the data of every table and column both versions have "
            '(docs/runbook.md, "SOP: rolling back a deployment")'
        )
    for version, migration in enumerate(MIGRATIONS[current:], start=current + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql in migration.up:
                conn.execute(sql)
            store_downgrades(conn, version)
            conn.execute(f"PRAGMA user_version={version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("database migrated to schema v%d", version)
    if lifecycle_triggers.install(conn):
        log.info("database lifecycle triggers installed")
    return len(MIGRATIONS)


class Database:
    """The coordinator's only path to SQLite. ``shared``: several processes write to this
    database (worker processes, workers.py); their writers then queue on a lock file
    beside it before each transaction, so one waits for the other's commit in the kernel
    (woken the moment it ends) rather than in SQLite's busy handler, which polls with
    sleeps of up to 100 ms."""

    def __init__(self, path: Path, *, shared: bool = False) -> None:
        self.path = path
        self.shared = shared
        self._write_lock_fd: int | None = None
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="db-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.commits = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.shared:
            lock = self.path.with_name(self.path.name + "-writer.lock")
            self._write_lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._wconn = connect(self.path)
        migrate(self._wconn)
        self._writer = threading.Thread(target=self._run_writer, name="db-writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None
        if self._write_lock_fd is not None:
            os.close(self._write_lock_fd)
            self._write_lock_fd = None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the writers' lock file for one transaction (only when ``shared``)."""
        fd = self._write_lock_fd
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    # -- writing ---------------------------------------------------------------------

    async def write(self, fn: WriteFn[T]) -> T:
        """Run ``fn`` in the writer's transaction; return once it is durably committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, loop, future))
        return await future

    def write_sync(self, fn: WriteFn[T]) -> T:
        """Blocking variant for command-line tools and start-up (not on the event loop)."""
        from concurrent.futures import Future

        future: Future[T] = Future()
        self._queue.put(_Job(fn, None, future))
        return future.result()

    def checkpoint_sync(self) -> None:
        """Copy the WAL into the database file and truncate it to zero bytes.

        Runs on the writer's connection, between its transactions; readers finish first.
        After an erasure this leaves no older copy of the deleted pages in the WAL file.
        """
        self.write_sync(_CHECKPOINT)

    async def checkpoint(self) -> None:
        await self.write(_CHECKPOINT)

    def _run_writer(self) -> None:
        assert self._wconn is not None
        db = sqlite_utils.Database(self._wconn)
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit_batch(db, batch)
            if stop:
                return

    def _commit_batch(self, db: sqlite_utils.Database, batch: list[_Job]) -> None:
        conn = db.conn
        results: list[tuple[bool, Any]] = []
        checkpoints = [job for job in batch if job.fn is _CHECKPOINT]
        batch = [job for job in batch if job.fn is not _CHECKPOINT]
        if batch:
            with self._writing():
                self._commit_jobs(db, batch, results)
        for job in checkpoints:
            try:
                with self._writing():
                    row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                _resolve(job, True, tuple(row))
            except sqlite3.Error as exc:
                _resolve(job, False, exc)

    def _commit_jobs(
        self, db: sqlite_utils.Database, batch: list[_Job], results: list[tuple[bool, Any]]
    ) -> None:
        conn = db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    results.append((True, job.fn(db)))
                    conn.execute("RELEASE job")
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((False, exc))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # the commit itself failed: nobody's write is durable
            log.exception("database commit failed")
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            results = [(False, exc)] * len(batch)
        for job, (ok, value) in zip(batch, results, strict=True):
            _resolve(job, ok, value)

    # -- reading ---------------------------------------------------------------------

    def _reader(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only=ON")
            with self._lock:
                self._reader_conns.append(conn)
            db = sqlite_utils.Database(conn)
            self._local.db = db
        return db

    async def read(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: fn(self._reader()))

    def read_sync(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        return self._readers.submit(lambda: fn(self._reader())).result()


def _CHECKPOINT(db: sqlite_utils.Database) -> None:
    """Marker job: the writer runs a WAL checkpoint outside any transaction."""


def _resolve(job: _Job, ok: bool, value: Any) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)

    if job.loop is None:
        settle()
    else:
        with contextlib.suppress(RuntimeError):  # loop already closed during shutdown
            job.loop.call_soon_threadsafe(settle)
