"""The store's own promises, on SQLite and on PostgreSQL alike (``store`` runs each twice).

What the services rely on: a failing write takes only itself down, never its neighbours
in the same group commit; the lifecycle rules hold in the database whatever SQL is run;
a block's seq range is fixed; and, for several nodes, writers on separate connections are
serialised, so identity values are handed out in commit order.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator import pgschema
from aeamc.coordinator.config import parse_config
from aeamc.coordinator.dbtx import Tx
from aeamc.coordinator.groupcommit import GroupCommit
from aeamc.coordinator.leadership import DatabaseLeaderLock
from aeamc.coordinator.pgdb import LeadershipLost, placeholders
from aeamc.coordinator.schema import MIGRATIONS
from aeamc.coordinator.storage import DatabaseConfig, open_database
from aeamc.shared.runtime.configfiles import ConfigError
from tests.support import stores


def _open(tmp_path: Path, url: str) -> GroupCommit:
    db = open_database(DatabaseConfig(url), tmp_path / "coordinator.db")
    db.open()
    return db


@pytest.fixture
async def both(tmp_path: Path) -> AsyncIterator[tuple[GroupCommit, GroupCommit]]:
    """Two databases on one store, as two processes or nodes have: on SQLite two writers
    of one file (``shared``), on PostgreSQL two connections to one database."""
    url = stores.database_url()
    if url:
        a, b = _open(tmp_path, url), _open(tmp_path, url)
    else:
        path = tmp_path / "coordinator.db"
        a = open_database(DatabaseConfig(), path, shared=True)
        b = open_database(DatabaseConfig(), path, shared=True)
        a.open()
        b.open()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _device(device_id: str, state: str = "pending") -> Any:
    def write(db: Tx) -> None:
        db.execute(
            "INSERT INTO devices (device_id, public_key, state, capabilities, enrolled_at) "
            "VALUES (?, 'k', ?, '{}', 1)",
            [device_id, state],
        )

    return write


async def test_a_failing_write_takes_only_itself_down(
    both: tuple[GroupCommit, GroupCommit],
) -> None:
    db, _ = both
    results = await asyncio.gather(
        db.write(_device("a")),
        db.write(_device("a")),  # the same key: refused
        db.write(_device("b", state="stale")),  # not an initial state: refused
        db.write(_device("c")),
        return_exceptions=True,
    )
    assert [isinstance(r, Exception) for r in results] == [False, True, True, False]
    ids = await db.read(lambda t: [r[0] for r in t.execute("SELECT device_id FROM devices")])
    assert sorted(ids) == ["a", "c"]


async def test_the_lifecycle_rules_hold_in_the_database(
    both: tuple[GroupCommit, GroupCommit],
) -> None:
    db, _ = both
    await db.write(_device("a"))
    await db.write(lambda t: t.execute("UPDATE devices SET state='active' WHERE device_id='a'"))
    with pytest.raises(Exception, match="illegal device transition"):
        await db.write(
            lambda t: t.execute("UPDATE devices SET state='pending' WHERE device_id='a'")
        )
    await db.write(
        lambda t: t.execute("UPDATE devices SET state='quarantined' WHERE device_id='a'")
    )
    with pytest.raises(Exception, match="illegal device transition"):
        await db.write(lambda t: t.execute("UPDATE devices SET state='active' WHERE device_id='a'"))
    row = await db.read(lambda t: t.execute("SELECT state FROM devices").fetchone())
    assert tuple(row) == ("quarantined",)


async def test_a_blocks_seq_range_only_moves_forward_and_never_changes(
    both: tuple[GroupCommit, GroupCommit],
) -> None:
    db, _ = both

    def block(height: int, first: int, last: int) -> Any:
        return lambda t: t.execute(
            "INSERT INTO blocks (height, hash, previous_hash, timestamp, receipt_count, "
            "header, payload, first_seq, last_seq) VALUES (?,?,?,?,?,?,?,?,?)",
            [height, bytes([height]) * 32, bytes(32), 1, last - first + 1, b"h", b"p", first, last],
        )

    await db.write(block(0, 1, 5))
    with pytest.raises(Exception, match="seq range past the last block"):
        await db.write(block(1, 5, 9))  # overlaps block 0
    with pytest.raises(Exception, match="seq range never changes"):
        await db.write(lambda t: t.execute("UPDATE blocks SET last_seq=4 WHERE height=0"))
    await db.write(block(1, 6, 9))
    rows = await db.read(
        lambda t: [tuple(r) for r in t.execute("SELECT first_seq, last_seq FROM blocks")]
    )
    assert sorted(rows) == [(1, 5), (6, 9)]


async def test_writers_on_two_connections_take_turns_and_ids_follow_commit_order(
    both: tuple[GroupCommit, GroupCommit],
) -> None:
    """Each writer reads the latest committed count and adds one: with writers excluding
    each other the count ends exact, and the change log's ids are in commit order."""
    a, b = both
    await a.write(lambda t: t.execute("INSERT INTO meta (key, value) VALUES ('n', '0')"))

    def bump(t: Tx) -> int:
        n = int(t.execute("SELECT value FROM meta WHERE key='n'").fetchone()[0])
        t.execute("UPDATE meta SET value=? WHERE key='n'", [str(n + 1)])
        t.execute("INSERT INTO device_changes (device_id) VALUES (?)", [f"{n + 1:04d}"])
        return n + 1

    rounds = 60
    got = await asyncio.gather(*(db.write(bump) for _ in range(rounds) for db in (a, b)))
    assert sorted(got) == list(range(1, 2 * rounds + 1))
    value = await b.read(lambda t: t.execute("SELECT value FROM meta WHERE key='n'").fetchone())
    assert int(value[0]) == 2 * rounds
    log = await a.read(
        lambda t: [r[0] for r in t.execute("SELECT device_id FROM device_changes ORDER BY id")]
    )
    assert log == sorted(log) and len(log) == 2 * rounds


def test_placeholders_outside_quotes_only() -> None:
    assert placeholders("SELECT ? , '?', \"a?\" WHERE x LIKE '5%' AND y = ?") == (
        "SELECT %s , '?', \"a?\" WHERE x LIKE '5%%' AND y = %s"
    )


def _sqlite_columns(tmp_path: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(tmp_path / "schema.db")
    for migration in MIGRATIONS:
        for sql in migration.up:
            conn.execute(sql)
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
            "AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {t: [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')] for t in tables}


async def test_postgresql_has_sqlites_tables_and_columns(tmp_path: Path, store: str) -> None:
    if store != stores.POSTGRESQL:
        pytest.skip("compares the PostgreSQL schema with SQLite's")
    db = _open(tmp_path, stores.database_url())
    try:
        rows = await db.read(
            lambda t: list(
                t.execute(
                    "SELECT table_name, column_name FROM information_schema.columns "
                    "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
                )
            )
        )
    finally:
        db.close()
    pg: dict[str, list[str]] = {}
    for table, column in rows:
        pg.setdefault(table, []).append(column)
    assert pg.pop("schema_version") == ["version"]
    for table in ("revoked_certificates", "anchor_txs"):
        assert pg[table].pop() == "rowid"  # SQLite's implicit column, made real
    assert pg == _sqlite_columns(tmp_path)
    assert len(MIGRATIONS) >= pgschema.BASELINE_VERSION


async def test_a_node_whose_leader_lock_session_ended_writes_nothing(
    tmp_path: Path, store: str
) -> None:
    """The fence: from the moment the lock's session is gone (its host died, the server
    ended it) the old leader's writes are refused, before it has noticed and stepped
    down; the lock is free for another node at once."""
    if store != stores.POSTGRESQL:
        pytest.skip("the leader lock of several nodes is PostgreSQL's")
    url = stores.database_url()
    db = _open(tmp_path, url)
    lock, other = DatabaseLeaderLock(url, check_s=0.1), DatabaseLeaderLock(url)
    try:
        assert lock.try_acquire() and not other.try_acquire()
        db.fence = lambda: lock.fence
        await db.write(_device("a"))
        ended = lock.fence
        # Ended by the server (as after a dead host), waiting until it has exited.
        stores.execute_elsewhere(db, "SELECT pg_terminate_backend(?, 10000)", [ended])
        with pytest.raises(LeadershipLost):
            await db.write(_device("b"))
        await asyncio.wait_for(lock.lost(), 10)
        assert not lock.held and lock.fence is None
        assert other.try_acquire()
        db.fence = None  # stepped down: a follower's writes need no lock
        await db.write(_device("c"))
        ids = await db.read(lambda t: [r[0] for r in t.execute("SELECT device_id FROM devices")])
        assert sorted(ids) == ["a", "c"]
    finally:
        lock.release()
        other.release()
        db.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://aeamc:s3cret@db.lan/aeamc",
        "postgresql://aeamc@db.lan/aeamc?sslmode=require&password=s3cret",
    ],
)
def test_a_database_url_holding_a_password_is_refused(url: str) -> None:
    """The configuration file is readable by the service's group: a password written into
    the URL would be readable with it, so the coordinator refuses to start on one."""
    with pytest.raises(ConfigError, match="must not hold a password"):
        parse_config({"database": {"url": url}, "cluster": {"relay_address": "10.0.0.1"}})
    parse_config(
        {
            "database": {"url": "postgresql://aeamc@db.lan/aeamc"},
            "cluster": {"relay_address": "10.0.0.1"},
        }
    )
