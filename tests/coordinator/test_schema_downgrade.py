"""Taking a database back to an older schema (``aeamc-coordinator db downgrade``).

On real SQLite files: every migration's down statements give back exactly the schema of
the version before, keeping the rows of what both versions have. With real processes: a
database migrated by a newer release (a copy of this source tree with one more migration)
goes back to this release, which then serves every proof, block and device accepted
before and after the upgrade.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import aeamc.coordinator as coordinator_package
from aeamc.coordinator import db as db_module
from aeamc.coordinator.db import connect, migrate
from aeamc.coordinator.downgrade import DowngradeRefused, downgrade, plan
from aeamc.coordinator.schema import DOWNGRADES_STORED_FROM, MIGRATIONS
from aeamc.shared import microblock
from tests.support.coordinator import CoordinatorProcess, env_without_coverage
from tests.support.device import SimDevice

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
        kept = {  # the way back itself loses the rows of the versions undone
            t: [col for col in cols if col in latest_shape.get(t, [])]
            for t, cols in shape(c).items()
            if t in latest_shape and t != "schema_downgrades"
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
        "table blob_owners (0 rows)",
        "table blobs (0 rows)",
        "table device_changes (1 row)",
        "column devices.tags (1 non-null value)",
        "table leaders (0 rows)",
        "table progress (0 rows)",
        "column tasks.owner (3 non-null values)",
        "column tasks.placement (0 non-null values)",
        "column tokens.owner (1 non-null value)",
    ]
    c.close()
    assert fingerprint(path) == before


# -- with real processes: a newer release migrates, this one takes the database back ----------

#: The newer release: this source tree with one more migration, a table and a column.
NEXT_MIGRATION = """

MIGRATIONS.append(
    Migration(
        up=[
            "CREATE TABLE device_notes (device_id TEXT PRIMARY KEY, note TEXT NOT NULL)",
            "ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        ],
        down=["ALTER TABLE tasks DROP COLUMN priority", "DROP TABLE device_notes"],
    )
)
"""
TASK = {"kind": "sha256-chain", "params": {"seed": "ab" * 32, "iterations": 20}, "chunks": 2}


def next_release(root: Path) -> dict[str, str]:
    """The environment that runs the newer release's code (a copy of this one's source)."""
    src = root / "src"
    shutil.copytree(
        Path(coordinator_package.__file__).parents[2],
        src,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    with (src / "aeamc" / "coordinator" / "schema.py").open("a") as f:
        f.write(NEXT_MIGRATION)
    # Not measured: the copy is not this tree's source, and would count as uncovered code.
    env = env_without_coverage()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    return env


async def blocked_tasks(coord: CoordinatorProcess, count: int) -> list[str]:
    """Submits ``count`` tasks; their ids once each is completed and its proof in a block."""
    ids = [coord.submit_task(TASK) for _ in range(count)]

    def done() -> bool:
        tasks = [coord.read(f"/v1/tasks/{t}", "client") for t in ids]
        return all(
            t["state"] == "completed" and t["proofs"][0]["block_height"] is not None for t in tasks
        )

    for _ in range(300):
        if done():
            return ids
        await asyncio.sleep(0.1)
    raise AssertionError("tasks not completed and blocked in time")


def chain_of(coord: CoordinatorProcess) -> list[microblock.Microblock]:
    listing = coord.read("/v1/microblocks?limit=1000")["microblocks"]
    return [
        microblock.decode(coord.request("GET", f"/v1/microblocks/{b['height']}/raw")[1])
        for b in listing
    ]


def columns(path: Path, table: str) -> set[str]:
    c = sqlite3.connect(path)
    try:
        return {r[1] for r in c.execute(f"PRAGMA table_info({table})")}
    finally:
        c.close()


async def test_rollback_across_a_migration_keeps_data_from_before_and_after_it(
    tmp_path: Path,
) -> None:
    old = CoordinatorProcess(tmp_path / "coord")
    new = CoordinatorProcess(old.root, env=next_release(tmp_path / "next"))
    db_path = old.state_dir / "coordinator.db"
    old.init()
    old.start()
    device = await SimDevice(old.url).start()
    try:
        # This release: a device, its heartbeats, two tasks proved and in a block.
        await device.join(old.issue_token("enroll", uses=5))
        before = await blocked_tasks(old, 2)
        assert old.stop() == 0

        # The newer release migrates the same state and accepts more.
        new.start()
        device.coordinator_url = new.url
        assert (await device.heartbeat())[0] == 202
        after = await blocked_tasks(new, 2)
        running = old.cli("db", "downgrade", "--yes", check=False)
        assert running.returncode == 1 and "coordinator is running" in running.stderr
        assert new.stop() == 0
        c = sqlite3.connect(db_path)
        with c:
            c.execute("INSERT INTO device_notes VALUES (?, 'rack 4')", [device.device_id])
            c.execute("UPDATE tasks SET priority = 5 WHERE task_id = ?", [after[0]])
        c.close()
        upgraded = fingerprint(db_path)
        assert upgraded[0] == LATEST + 1

        # This release again: refuses to start, and says what to do.
        with pytest.raises(AssertionError, match="coordinator exited"):
            old.start()
        assert old.process is not None and old.process.returncode == 78
        assert old.log is not None and "db downgrade" in old.log.read_text()
        status = old.cli("db", "status").stdout
        assert f"software schema  v{LATEST}" in status and f"v{LATEST + 1}" in status
        assert fingerprint(db_path) == upgraded

        # Without --yes nothing happens; the drops are named first.
        asked = old.cli("db", "downgrade", check=False)
        assert asked.returncode == 64, asked.stderr
        assert "table device_notes (1 row)" in asked.stdout
        assert "column tasks.priority (4 non-null values)" in asked.stdout
        assert fingerprint(db_path) == upgraded
        assert not list(old.state_dir.glob("coordinator.db.before-downgrade-*"))

        done = old.cli("db", "downgrade", "--yes")
        backup = old.state_dir / f"coordinator.db.before-downgrade-v{LATEST + 1}"
        assert str(backup) in done.stdout
        assert backup.stat().st_mode & 0o777 == 0o600
        assert fingerprint(backup)[0] == LATEST + 1
        assert fingerprint(db_path)[0] == LATEST
        c = sqlite3.connect(db_path)
        names = {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
        c.close()
        assert "device_notes" not in names
        assert "priority" not in columns(db_path, "tasks")

        # And it runs: everything accepted before and after the upgrade is there.
        old.start()
        device.coordinator_url = old.url
        for task_id in before + after:
            task = old.read(f"/v1/tasks/{task_id}", "client")
            assert task["state"] == "completed", task
            assert task["proofs"][0]["device_id"] == device.device_id
        assert old.read(f"/v1/devices/{device.device_id}")["state"] == "active"
        chain = chain_of(old)
        microblock.verify_chain(chain)
        receipts = {r.key for b in chain for r in b.receipts}
        assert {(t, device.device_id) for t in before + after} <= receipts
        assert (await device.heartbeat())[0] == 202
        await blocked_tasks(old, 1)
    finally:
        await device.stop()
        old.stop()
        new.stop()


def test_downgrade_refuses_a_version_without_stored_down_statements(tmp_path: Path) -> None:
    coord = CoordinatorProcess(tmp_path / "coord")
    coord.init()
    db_path = coord.state_dir / "coordinator.db"
    c = sqlite3.connect(db_path)
    c.execute(f"PRAGMA user_version = {LATEST + 1}")  # migrated by a release that kept no way back
    c.close()
    before = fingerprint(db_path)
    refused = coord.cli("db", "downgrade", "--yes", check=False)
    assert refused.returncode == 1
    assert f"no down statements for v{LATEST + 1}" in refused.stderr
    unknown = coord.cli("db", "downgrade", "--to-version", str(LATEST + 1), "--yes", check=False)
    assert unknown.returncode == 64 and f"up to v{LATEST}" in unknown.stderr
    assert fingerprint(db_path) == before
    assert not list(coord.state_dir.glob("coordinator.db.before-downgrade-*"))


def test_the_rollback_sop_commands_parse() -> None:
    """Every ``aeamc-coordinator`` command the runbook's rollback SOP gives is one the CLI
    takes (placeholders ``<N>`` filled in)."""
    from aeamc.coordinator.cli import build_parser

    runbook = (Path(__file__).parents[2] / "docs" / "runbook.md").read_text()
    sop = runbook.split("## SOP: rolling back a deployment\n")[1].split("\n## ")[0]
    commands = re.findall(r"aeamc-coordinator((?: [-\w./<>]+)+)", sop)
    commands += re.findall(r"`(db [^`]+)`", sop)  # the ones the text names
    assert any("db downgrade --yes" in c for c in commands), commands
    assert any("--to-version" in c for c in commands), commands
    for command in commands:
        args = build_parser().parse_args(command.replace("<N>", "9").split())
        assert args.func.__name__.startswith("cmd_db"), command
