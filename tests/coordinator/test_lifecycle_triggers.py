"""The database refuses what the lifecycle tables refuse, and its triggers follow them."""

from __future__ import annotations

import sqlite3
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator import lifecycle_triggers
from aeamc.coordinator.db import migrate
from aeamc.coordinator.schema import MIGRATIONS
from aeamc.shared.errors import IllegalTransition
from aeamc.shared.lifecycle import LIFECYCLES, TASK, TASK_LIFECYCLE, Lifecycle, check_transition

IDS = [lc.name for lc in LIFECYCLES]


def refused(conn: sqlite3.Connection, match: str, sql: str, params: Any = ()) -> None:
    """The schema's triggers refuse ``sql`` with an IntegrityError saying ``match``."""
    with pytest.raises(sqlite3.IntegrityError, match=match):
        conn.execute(sql, params)


def _migrated(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    migrate(conn)
    return conn


def test_a_migrated_database_holds_exactly_the_rendered_triggers(tmp_path: Path) -> None:
    conn = _migrated(tmp_path)
    stored = lifecycle_triggers.stored(conn)
    assert stored == lifecycle_triggers.render()
    assert len(stored) == 2 * len(LIFECYCLES)
    assert not lifecycle_triggers.install(conn)  # nothing to change at the next start


def test_triggers_from_other_tables_are_replaced_at_start(tmp_path: Path) -> None:
    """A database whose triggers came from other tables (an older release, or a migration
    that rebuilt a table and dropped them) gets the current ones at the next start."""
    conn = _migrated(tmp_path)
    name = "lifecycle_tasks_state_update"
    conn.execute(f"DROP TRIGGER {name}")
    looser = {**TASK, TASK_LIFECYCLE.states("failed"): frozenset(TASK_LIFECYCLE.states)}
    older = Lifecycle("task", TASK_LIFECYCLE.states, TASK_LIFECYCLE.initial, looser)
    conn.execute(lifecycle_triggers.triggers(older, "tasks", "state")[name])
    conn.execute(
        "CREATE TRIGGER lifecycle_gone_state_update BEFORE UPDATE ON meta BEGIN SELECT 1; END"
    )
    conn.execute("DROP TRIGGER lifecycle_devices_state_insert")
    assert lifecycle_triggers.stored(conn) != lifecycle_triggers.render()
    assert migrate(conn) == len(MIGRATIONS)
    assert lifecycle_triggers.stored(conn) == lifecycle_triggers.render()


def _task(conn: sqlite3.Connection, task_id: str, state: str = "queued") -> None:
    conn.execute(
        "INSERT INTO tasks (task_id, kind, params, chunks, replicas, created_at, state) "
        "VALUES (?, 'sha256-chain', '{}', 1, 1, 0, ?)",
        [task_id, state],
    )


def _snapshot(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return conn.execute("SELECT * FROM tasks ORDER BY task_id").fetchall()


def test_a_direct_illegal_update_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    conn = _migrated(tmp_path)
    _task(conn, "t-1")
    conn.execute("UPDATE tasks SET state='running' WHERE task_id='t-1'")
    conn.execute("UPDATE tasks SET state='failed', detail='deadline passed'")
    _task(conn, "t-2")
    before = _snapshot(conn)
    # One statement over both rows: the failed one may not go back to the queue, so the
    # whole statement is undone, the queued row's change included.
    refused(conn, "illegal task transition", "UPDATE tasks SET state='queued', detail='again'")
    assert _snapshot(conn) == before
    conn.execute("BEGIN")
    conn.execute("UPDATE tasks SET detail='kept' WHERE task_id='t-2'")
    refused(
        conn, "illegal task transition", "UPDATE tasks SET state='completed' WHERE task_id='t-2'"
    )
    conn.execute("COMMIT")  # the transaction survives; only the refused statement is undone
    assert conn.execute("SELECT state, detail FROM tasks WHERE task_id='t-2'").fetchone() == (
        "queued",
        "kept",
    )


def test_illegal_rows_and_changes_on_every_lifecycle_column(tmp_path: Path) -> None:
    conn = _migrated(tmp_path)
    now = 1_700_000_000_000
    conn.execute(
        "INSERT INTO devices (device_id, public_key, state, capabilities, enrolled_at) "
        "VALUES ('d-1', 'aa', 'pending', '{}', ?)",
        [now],
    )
    with pytest.raises(sqlite3.IntegrityError, match="illegal initial device state"):
        conn.execute(
            "INSERT INTO devices (device_id, public_key, state, capabilities, enrolled_at) "
            "VALUES ('d-2', 'aa', 'quarantined', '{}', ?)",
            [now],
        )
    conn.execute("UPDATE devices SET state='quarantined' WHERE device_id='d-1'")
    refused(
        conn, "illegal device transition", "UPDATE devices SET state='active' WHERE device_id='d-1'"
    )
    _task(conn, "t-1")
    with pytest.raises(sqlite3.IntegrityError, match="illegal initial task state"):
        _task(conn, "t-2", "completed")
    with pytest.raises(sqlite3.IntegrityError, match="illegal initial assignment state"):
        conn.execute(
            "INSERT INTO assignments (task_id, device_id, state, issued_at, expires_at, message) "
            "VALUES ('t-1', 'd-1', 'proved', 0, 0, '{}')"
        )
    conn.execute(
        "INSERT INTO assignments (task_id, device_id, state, issued_at, expires_at, message) "
        "VALUES ('t-1', 'd-1', 'offered', 0, 0, '{}')"
    )
    conn.execute("UPDATE assignments SET state='expired'")
    refused(conn, "illegal assignment transition", "UPDATE assignments SET state='proved'")
    proof = (
        "INSERT INTO proofs (task_id, device_id, pot, signature, output, output_digest, "
        "accepted_at{}) VALUES ('t-1', ?, '{{}}', x'00', x'00', 'ab', 0{})"
    )
    refused(conn, "illegal initial credit state", proof.format(", credit", ", 'verified'"), ["d-1"])
    conn.execute(proof.format("", ""), ["d-1"])  # the column's default is initial
    conn.execute("UPDATE proofs SET credit='void'")
    refused(conn, "illegal credit transition", "UPDATE proofs SET credit='verified'")
    check = (
        "INSERT INTO spot_checks (task_id, device_id, block_height, state, next_attempt_at, "
        "created_at) VALUES ('t-1', 'd-1', 1, ?, 0, 0)"
    )
    refused(conn, "illegal initial spot-check state", check, ["passed"])
    conn.execute(check, ["pending"])
    conn.execute("UPDATE spot_checks SET state='unanswered'")
    refused(conn, "illegal spot-check transition", "UPDATE spot_checks SET state='pending'")
    assert conn.execute("SELECT state FROM devices").fetchall() == [("quarantined",)]
    assert conn.execute("SELECT state FROM assignments").fetchall() == [("expired",)]
    assert conn.execute("SELECT credit FROM proofs").fetchall() == [("void",)]
    assert conn.execute("SELECT state FROM spot_checks").fetchall() == [("unanswered",)]


@pytest.mark.parametrize("lc", LIFECYCLES, ids=IDS)
def test_the_database_and_the_table_agree_on_every_pair(lc: Lifecycle[StrEnum]) -> None:
    """Every (from, to) pair and every initial state, through the rendered SQL itself."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, state TEXT NOT NULL)")
    for sql in lifecycle_triggers.triggers(lc, "t", "state").values():
        conn.execute(sql)
    for new in [*lc.states, "unknown"]:
        try:
            check_transition(lc, None, new)
            conn.execute("INSERT INTO t (id, state) VALUES (1, ?)", [new])
            conn.execute("DELETE FROM t")
        except IllegalTransition:
            with pytest.raises(sqlite3.IntegrityError, match=f"illegal initial {lc.name}"):
                conn.execute("INSERT INTO t (id, state) VALUES (1, ?)", [new])
    conn.execute("DROP TRIGGER lifecycle_t_state_insert")  # to seed rows in any state
    for old in lc.states:
        for new in [*lc.states, "unknown"]:
            conn.execute("INSERT INTO t (id, state) VALUES (1, ?)", [old])
            try:
                check_transition(lc, old, new)
                conn.execute("UPDATE t SET state=?", [new])
                assert conn.execute("SELECT state FROM t").fetchone() == (new,)
            except IllegalTransition:
                with pytest.raises(sqlite3.IntegrityError, match=f"illegal {lc.name} transition"):
                    conn.execute("UPDATE t SET state=?", [new])
                assert conn.execute("SELECT state FROM t").fetchone() == (old,)
            conn.execute("DELETE FROM t")
