"""Taking a database back to an older schema (``aeamc-coordinator db downgrade``).

On real SQLite files: every migration's down statements give back exactly the schema of
the version before, keeping the rows of what both versions have. With real processes: a
database migrated by a newer release (a copy of this source tree with one more migration)
goes back to this release, which then serves every proof, block and device accepted
before and after the upgrade.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator import db as db_module
from aeamc.coordinator.db import connect, migrate
from aeamc.coordinator.downgrade import DowngradeRefused, downgrade, plan
from aeamc.coordinator.schema import DOWNGRADES_STORED_FROM, MIGRATIONS

LATEST = len(MIGRATIONS)


def schema(c: sqlite3.Connection) -> list[tuple[str, str, str, str | None]]:
    """``sqlite_master`` without SQLite's own AUTOINCREMENT table, which nothing drops."""
    return sorted(
        c.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name != 'sqlite_sequence'"
        ).fetchall(),
        key=lambda r: (r[0], r[1]),
    )


def migrate_to(c: sqlite3.Connection, version: int) -> None:
    """What the release whose latest migration is ``version`` does at start."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(db_module, "MIGRATIONS", MIGRATIONS[:version])
        migrate(c)


def fingerprint(path: Path) -> tuple[int, str]:
    """user_version and a digest of every row and schema entry: equal means unchanged."""
    c = sqlite3.connect(path)
    try:
        dump = "\n".join(c.iterdump())
        return c.execute("PRAGMA user_version").fetchone()[0], hashlib.sha256(
            dump.encode()
        ).hexdigest()
    finally:
        c.close()


def fill(c: sqlite3.Connection) -> None:
    """A few rows in the core tables of the latest schema."""
    c.execute(
        "INSERT INTO devices (device_id, public_key, state, capabilities, enrolled_at) "
        "VALUES ('d1', 'pk', 'active', '{}', 1)"
    )
    c.execute(
        "INSERT INTO heartbeats VALUES ('d1', 1, 2, 3, '{\"battery\": 90}')",
    )
    c.execute(
        "INSERT INTO tokens (token_hash, role, label, created_at, owner) "
        "VALUES ('h1', 'client', 'c', 1, 'aaaaaaaa')"
    )
    for i in range(3):
        c.execute(
            "INSERT INTO tasks (task_id, kind, params, chunks, replicas, created_at, state, owner)"
            " VALUES (?, 'sha256-chain', '{}', 4, 1, ?, 'queued', 'aaaaaaaa')",
            [f"t{i}", i],
        )
        c.execute(
            "INSERT INTO proofs (task_id, device_id, pot, signature, output, output_digest, "
            "accepted_at, chunks) VALUES (?, 'd1', '{}', x'01', x'02', 'dg', ?, 4)",
            [f"t{i}", i],
        )
    c.execute(
        "INSERT INTO blocks (height, hash, previous_hash, timestamp, receipt_count, header, "
        "payload, first_seq, last_seq) VALUES (0, x'aa', x'00', 5, 2, x'01', x'02', 1, 2)"
    )
    c.execute(
        "INSERT INTO spot_checks (task_id, device_id, block_height, indices, state, "
        "next_attempt_at, created_at) VALUES ('t0', 'd1', 0, '[1, 3]', 'pending', 0, 0)"
    )
    c.execute("INSERT INTO erased_devices VALUES ('gone', 7)")
    c.execute("INSERT INTO flags VALUES ('f', 50, 1, 'op')")


def rows(c: sqlite3.Connection) -> dict[str, list[dict[str, Any]]]:
    """Every row of every data table, by column name."""
    out = {}
    for table in shape(c):
        cursor = c.execute(f"SELECT * FROM {table}")
        names = [d[0] for d in cursor.description]
        out[table] = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    return out


def project(data: dict[str, list[dict[str, Any]]], columns: dict[str, list[str]]) -> Any:
    return {
        t: sorted((tuple(r[col] for col in cols) for r in data[t]), key=repr)
        for t, cols in columns.items()
    }


def shape(c: sqlite3.Connection) -> dict[str, list[str]]:
    tables = [
        r[0]
        for r in c.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {t: [r[1] for r in c.execute(f"PRAGMA table_info({t})")] for t in tables}


def test_every_migration_goes_down_to_exactly_the_schema_before_and_up_again(
    tmp_path: Path,
) -> None:
    # The schema each release leaves, one version at a time.
    ref = connect(tmp_path / "ref.db")
    schemas = {}
    for version in range(1, LATEST + 1):
        migrate_to(ref, version)
        schemas[version] = schema(ref)
    assert schemas[LATEST] == schema(ref) and len({repr(s) for s in schemas.values()}) == LATEST

    path = tmp_path / "coordinator.db"
    c = connect(path)
    migrate(c)
    fill(c)
    latest_shape = shape(c)
    for target in range(LATEST - 1, 0, -1):
        before = rows(c)
        p = plan(c, target)
        assert [v for v, _ in p.steps] == list(range(LATEST, target, -1))
        downgrade(c, p)
        assert c.execute("PRAGMA user_version").fetchone()[0] == target
        assert schema(c) == schemas[target], f"v{target + 1}'s down"
        kept = {
            t: [col for col in cols if col in latest_shape.get(t, [])]
            for t, cols in shape(c).items()
            if t in latest_shape
        }
        assert project(rows(c), kept) == project(before, kept)
        migrate(c)  # and up again, as the newer release does at its start
        assert schema(c) == schemas[LATEST], f"up again from v{target}"
        assert project(rows(c), kept) == project(before, kept)
    # v1's down leaves nothing but SQLite's own AUTOINCREMENT table.
    one = connect(tmp_path / "one.db")
    migrate_to(one, 1)
    for sql in MIGRATIONS[0].down:
        one.execute(sql)
    assert schema(one) == []


def test_v7_down_gives_proofs_their_block_height_and_keeps_the_sequence(tmp_path: Path) -> None:
    c = connect(tmp_path / "coordinator.db")
    migrate(c)
    fill(c)
    c.execute("DELETE FROM proofs WHERE task_id = 't2'")  # seq 3 is never reused
    downgrade(c, plan(c, 6))
    assert c.execute("SELECT task_id, block_height FROM proofs ORDER BY seq").fetchall() == [
        ("t0", 0),
        ("t1", 0),
    ]
    assert c.execute("SELECT seq FROM sqlite_sequence WHERE name = 'proofs'").fetchone() == (3,)
    assert (
        c.execute("SELECT count(*) FROM sqlite_sequence WHERE name = 'proofs_v7'").fetchone()[0]
        == 0
    )


def test_the_database_holds_the_down_statements_of_every_version(tmp_path: Path) -> None:
    c = connect(tmp_path / "coordinator.db")
    migrate_to(c, DOWNGRADES_STORED_FROM - 1)  # a database from before they were stored
    migrate(c)
    stored = dict(c.execute("SELECT version, statements FROM schema_downgrades").fetchall())
    assert {v: json.loads(s) for v, s in stored.items()} == {
        v: m.down for v, m in enumerate(MIGRATIONS, start=1)
    }


def test_a_version_without_stored_down_statements_is_refused_and_nothing_changes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "coordinator.db"
    c = connect(path)
    migrate(c)
    fill(c)
    c.execute("DELETE FROM schema_downgrades WHERE version = ?", [LATEST - 1])
    c.close()
    before = fingerprint(path)
    c = connect(path)
    with pytest.raises(DowngradeRefused, match=f"no down statements for v{LATEST - 1}"):
        plan(c, LATEST - 2)
    assert plan(c, LATEST - 1).steps  # the newest alone is still possible
    c.close()
    assert fingerprint(path) == before


def test_the_drops_are_listed_before_anything_is_done(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    c = connect(path)
    migrate(c)
    fill(c)
    c.close()
    before = fingerprint(path)
    c = connect(path)
    p = plan(c, 8)
    assert p.drops == [
        "column tasks.owner (3 non-null values)",
        "column tokens.owner (1 non-null value)",
    ]
    c.close()
    assert fingerprint(path) == before
