"""SQLite storage: the embedded default (``pgdb`` is the PostgreSQL one).

The group commit, the writer thread and the readers are ``groupcommit``'s; here is how a
SQLite file is opened (WAL, ``synchronous=FULL``, foreign keys, ``secure_delete``), its
migrations, and the state directory's locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import lifecycle_triggers
from .dbtx import SQLITE, SqliteTx, Tx
from .groupcommit import GroupCommit
from .schema import DOWNGRADES_STORED_FROM, MIGRATIONS

log = logging.getLogger(__name__)


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


class Database(GroupCommit):
    """The coordinator's SQLite database. ``shared``: several processes write to this
    database (worker processes, workers.py); their writers then queue on a lock file
    beside it before each transaction, so one waits for the other's commit in the kernel
    (woken the moment it ends) rather than in SQLite's busy handler, which polls with
    sleeps of up to 100 ms. Commits are ``synchronous=FULL``."""

    dialect = SQLITE

    def __init__(self, path: Path, *, shared: bool = False) -> None:
        super().__init__()
        self.path = path
        self.shared = shared
        self._write_lock_fd: int | None = None

    def _open_writer(self) -> Tx:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.shared:
            lock = self.path.with_name(self.path.name + "-writer.lock")
            self._write_lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        conn = connect(self.path)
        migrate(conn)
        return SqliteTx(conn)

    def _open_reader(self) -> tuple[Tx, Any]:
        conn = connect(self.path)
        conn.execute("PRAGMA query_only=ON")
        return SqliteTx(conn), conn

    def close(self) -> None:
        super().close()
        if self._write_lock_fd is not None:
            os.close(self._write_lock_fd)
            self._write_lock_fd = None

    def _begin(self, tx: Tx) -> None:
        tx.execute("BEGIN IMMEDIATE")

    def size_bytes(self) -> int:
        """Bytes of the database file and its write-ahead log (either may be missing)."""
        total = 0
        for file in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):
                total += file.stat().st_size
        return total

    def _checkpoint(self, tx: Tx) -> Any:
        """Copy the WAL into the database file and truncate it to zero bytes, so no older
        copy of an erased row's pages is left in the WAL file (``secure_delete`` zeroes
        them in the database file itself)."""
        return tuple(tx.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())

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
