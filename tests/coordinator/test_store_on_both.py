"""The store's own promises, on SQLite and on PostgreSQL alike (``store`` runs each twice).

What the services rely on: a failing write takes only itself down, never its neighbours
in the same group commit; the lifecycle rules hold in the database whatever SQL is run;
a block's seq range is fixed; and, for several nodes, writers on separate connections are
serialised, so identity values are handed out in commit order.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator import pgschema
from aeamc.coordinator.config import parse_config
from aeamc.coordinator.dbtx import Tx
from aeamc.coordinator.groupcommit import GroupCommit, StoreUnavailable
from aeamc.coordinator.leadership import DatabaseLeaderLock
from aeamc.coordinator.pgdb import LeadershipLost, placeholders
from aeamc.coordinator.schema import MIGRATIONS
from aeamc.coordinator.storage import DatabaseConfig, open_database
from aeamc.shared.runtime.configfiles import ConfigError
from tests.support import stores
from tests.support.silence import relayed


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


async def test_connections_the_server_ended_are_replaced_without_failing_a_request(
    tmp_path: Path, store: str
) -> None:
    """After an outage (the server restarted, the network was out long enough for the
    server to end the sessions) every pooled connection is dead, and the first read or
    write on each would fail. A read is run again on a new connection; a write batch
    whose ``BEGIN`` found its connection dead is begun again on a new one, since none
    of it had run. Either way the caller gets its answer, not an error."""
    if store != stores.POSTGRESQL:
        pytest.skip("SQLite's connections are files: nothing ends them")
    db = _open(tmp_path, stores.database_url())
    try:
        await db.write(_device("a"))
        count = "SELECT count(*) FROM devices"
        assert await db.read(lambda t: t.execute(count).fetchone()[0]) == 1
        stores.execute_elsewhere(
            db,
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
            [],
        )
        await db.write(_device("b"))
        assert await db.read(lambda t: t.execute(count).fetchone()[0]) == 2
    finally:
        db.close()


async def test_a_wrong_statement_is_its_own_error_not_an_outage(tmp_path: Path, store: str) -> None:
    """Only an outage becomes ``StoreUnavailable`` (503): a statement the database refuses
    is raised as the engine raised it (a fault of ours, 500), on a connection that stays
    in use."""
    db = _open(tmp_path, stores.database_url())
    try:
        with pytest.raises(Exception) as info:
            await db.read(lambda t: t.execute("SELECT * FROM no_such_table").fetchone())
        assert not isinstance(info.value, StoreUnavailable)
        assert info.value.__cause__ is not info.value
        assert await db.read(lambda t: t.execute("SELECT 1").fetchone()[0]) == 1
    finally:
        db.close()


async def test_a_database_out_of_reach_is_said_to_be_so(tmp_path: Path, store: str) -> None:
    """With the database unreachable, reads and writes fail with ``StoreUnavailable``
    (which the HTTP edge answers with 503 and ``Retry-After``), not with the engine's
    own error (a bare 500); nothing is written."""
    if store != stores.POSTGRESQL:
        pytest.skip("SQLite is a file on this host: it is never out of reach")
    url = stores.database_url()
    relay, through = relayed(url)
    db = _open(tmp_path, through)
    try:
        await db.write(_device("a"))
        relay.close()  # connections cut, and no new one taken
        with pytest.raises(StoreUnavailable):
            await db.read(lambda t: t.execute("SELECT count(*) FROM devices").fetchone())
        with pytest.raises(StoreUnavailable):
            await db.write(_device("b"))
    finally:
        db.close()
    assert [r["device_id"] for r in stores.pg_rows(url)("SELECT device_id FROM devices")] == ["a"]


async def test_a_leader_that_loses_sight_of_the_database_steps_down_within_its_lease(
    store: str,
) -> None:
    """A silent network (no error, no closed connection: the cable is out) leaves the lock
    session's question unanswered. The leader steps down within its lease while the
    server still keeps the lock for it (no other node can lead yet, so never two at
    once), and once the network is back the session is closed, which frees the lock."""
    if store != stores.POSTGRESQL:
        pytest.skip("the leader lock of several nodes is PostgreSQL's")
    url = stores.database_url()
    relay, through = relayed(url)
    lock = DatabaseLeaderLock(through, check_s=0.1, lease_s=1.0)
    other = DatabaseLeaderLock(url)
    try:
        assert lock.try_acquire() and not other.try_acquire()
        # Still referenced elsewhere (a traceback, a log record): only closing it ends it.
        session = lock._conn
        relay.silence()
        await asyncio.wait_for(lock.lost(), 10)
        assert not lock.held and lock.fence is None
        assert not other.try_acquire()  # the server has heard nothing: the lock is kept
        relay.speak()
        for _ in range(100):
            if other.try_acquire():
                break
            await asyncio.sleep(0.1)
        assert other.held, "the silent session was never closed: the lock stays taken"
        assert session.closed
    finally:
        relay.speak()
        lock.release()
        other.release()
        relay.close()


async def test_a_busy_leader_is_not_deposed_by_its_own_work(store: str) -> None:
    """The lease measures the database's silence, not the leader's own load: with every
    shared thread busy (spot-checks re-executing chunks after an outage), the lock
    session is still asked and answers, and the leader keeps the lock."""
    if store != stores.POSTGRESQL:
        pytest.skip("the leader lock of several nodes is PostgreSQL's")
    lock = DatabaseLeaderLock(stores.database_url(), check_s=0.05, lease_s=0.5)
    loop = asyncio.get_running_loop()
    try:
        assert lock.try_acquire()
        # As many sleepers as asyncio's default pool has threads, each for four leases.
        threads = min(32, (os.cpu_count() or 1) + 4)
        busy = [loop.run_in_executor(None, time.sleep, 2.0) for _ in range(threads)]
        with pytest.raises(TimeoutError):  # lost() did not return: the lock is kept
            await asyncio.wait_for(lock.lost(), 1.5)
        assert lock.held
        await asyncio.gather(*busy)
    finally:
        lock.release()


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
