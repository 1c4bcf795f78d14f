"""Which store the coordinators a test starts use: SQLite (the default) or PostgreSQL.

Tests that hold for both stores run once per store (``tests/conftest.py`` parametrizes
them with the ``store`` fixture); the harnesses (``inprocess.Fleet``, ``CoordinatorProcess``)
ask :func:`database_url` for the ``[database] url`` of the store in force: empty for
SQLite, or a new database on this process's PostgreSQL server, started on first use.
``AEAMC_TEST_STORE=postgresql`` makes PostgreSQL the default for every other test too.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sqlite3
from collections.abc import Callable
from typing import Any

from aeamc.coordinator import pgdb
from aeamc.coordinator.db import Database
from aeamc.coordinator.groupcommit import GroupCommit
from aeamc.coordinator.pgdb import PgTx, PostgresDatabase
from tests.support.postgres import PostgresServer

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
STORES = (SQLITE, POSTGRESQL)


class _State:
    current = os.environ.get("AEAMC_TEST_STORE", SQLITE)
    server: PostgresServer | None = None


def current() -> str:
    return _State.current


def select(store: str) -> str:
    """Make ``store`` the one in force; the one it replaces."""
    if store not in STORES:
        raise ValueError(f"unknown store {store!r}")
    before, _State.current = _State.current, store
    return before


def server() -> PostgresServer:
    """This process's PostgreSQL server (started once, stopped at exit)."""
    if _State.server is None:
        _State.server = PostgresServer().start()
        atexit.register(_State.server.stop)
    return _State.server


def database_url() -> str:
    """``[database] url`` for a new coordinator on the store in force."""
    return server().new_database() if _State.current == POSTGRESQL else ""


def execute_elsewhere(db: GroupCommit, sql: str, params: list[Any]) -> None:
    """Run one statement on a connection of its own to ``db``'s database and commit it,
    as another process (a worker, another node) would."""
    if isinstance(db, PostgresDatabase):
        with pgdb.connect(db.url) as conn:
            PgTx(conn).execute(sql, params)
        return
    assert isinstance(db, Database)
    with contextlib.closing(sqlite3.connect(db.path)) as conn, conn:
        conn.execute(sql, params)


def pg_rows(url: str) -> Callable[[str], list[dict[str, Any]]]:
    """A reader of the PostgreSQL database at ``url`` for a test's assertions: SQL in,
    rows as dicts out, each query on a connection of its own."""

    def q(sql: str) -> list[dict[str, Any]]:
        with pgdb.connect(url) as conn:
            return list(PgTx(conn).query(sql))

    return q
