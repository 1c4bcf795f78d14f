"""Block membership as seq ranges (schema v7), against real SQLite files and the
coordinator's own block formation: the migration from per-proof block heights keeps every
receipt where it was, the chain continues, a receipt is in exactly one block (also after
an erasure), and random spot-checks get their indices derived as SPEC §2 says."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator.blocks import RECEIPTS_SQL
from aeamc.coordinator.config import CoordinatorConfig, SpotCheckConfig
from aeamc.coordinator.db import Database, connect
from aeamc.coordinator.membership import height_of
from aeamc.coordinator.schema import MIGRATIONS
from aeamc.coordinator.service import Coordinator
from aeamc.coordinator.store.proofs import check_all_sql
from aeamc.shared import microblock, proofs, spotcheck
from aeamc.shared.identity import SigningKey
from aeamc.shared.lifecycle import TASK_LIFECYCLE
from aeamc.shared.tasks.registry import discover
from tests.support.lifecycle import path_to, walk

CAPS = json.dumps(
    {
        "kinds": ["sha256-chain"],
        "cpus": 1,
        "mem_mb": 64,
        "battery": False,
        "version": "1.0",
        "endpoint": None,
    }
)
DEVICES = {"a": "aa" * 16, "b": "bb" * 16}
CHUNKS = 4


def _output(tag: int) -> bytes:
    return proofs.encode_output([bytes([tag, i]) * 16 for i in range(CHUNKS)])


def _add_device(c: sqlite3.Connection, device_id: str, passes: int = 0) -> None:
    c.execute(
        "INSERT INTO devices (device_id, public_key, state, capabilities, enrolled_at, passes) "
        "VALUES (?, ?, 'active', ?, 0, ?)",
        [device_id, "00" * 32, CAPS, passes],
    )


def _add_proof(
    c: sqlite3.Connection,
    task_id: str,
    device: str,
    *,
    state: str = "completed",
    tag: int = 0,
    chunks: int = CHUNKS,
    v6: bool = False,
) -> int:
    states = path_to(TASK_LIFECYCLE, state)
    cur = c.execute(
        "INSERT OR IGNORE INTO tasks (task_id, kind, params, chunks, replicas, created_at, state) "
        "VALUES (?, 'sha256-chain', '{}', ?, 1, 0, ?)",
        [task_id, chunks, states[0]],
    )
    if cur.rowcount:
        walk(c, "tasks", "state", states, where="task_id=?", args=[task_id])
    # Schema v6 had no chunks column on proofs; v7 copies the task's when storing a proof.
    columns, marks = ("", "") if v6 else (", chunks", ", ?")
    cur = c.execute(
        "INSERT INTO proofs (task_id, device_id, pot, signature, output, output_digest, "
        f"accepted_at{columns}) VALUES (?, ?, '{{\"signed\": true}}', ?, ?, '00', 1{marks})",
        [task_id, DEVICES[device], os.urandom(64), _output(tag)] + ([] if v6 else [chunks]),
    )
    return int(cur.lastrowid or 0)


def _v6_database(path: Path) -> tuple[dict[str, int | None], list[bytes]]:
    """A database as schema v6 left it: three blocks formed the v6 way (each proof row
    marked with its block's height), a proof erased before any block took it (a gap in
    block 1), receipts waiting for a block and a stored spot-check. Returns every proof's
    height by task and the block hashes."""
    c = connect(path)
    for version, migration in enumerate(MIGRATIONS[:6], start=1):
        for sql in migration.up:
            c.execute(sql)
        c.execute(f"PRAGMA user_version={version}")
    for device_id in DEVICES.values():
        _add_device(c, device_id)
    previous, hashes = microblock.GENESIS_PREVIOUS, []
    tasks = iter(f"t-{i:02d}" for i in range(100))
    for height, size in enumerate((4, 3, 3)):
        seqs = [_add_proof(c, next(tasks), "ab"[i % 2], v6=True) for i in range(size)]
        if height == 1:  # the middle one goes before a block takes it
            c.execute("DELETE FROM proofs WHERE seq=?", [seqs[1]])
        rows = c.execute(
            "SELECT seq, task_id, device_id, signature FROM proofs WHERE block_height IS NULL "
            "ORDER BY seq"
        ).fetchall()
        block = microblock.build_block(
            cluster_id=1,
            timestamp=1000 + height,
            previous_hash=previous,
            receipts=[microblock.Receipt(r[1], r[2], r[3]) for r in rows],
        )
        c.execute(
            "INSERT INTO blocks (height, hash, previous_hash, timestamp, receipt_count, header, "
            "payload) VALUES (?,?,?,?,?,?,?)",
            [
                height,
                block.block_hash,
                previous,
                1000 + height,
                len(rows),
                block.header.encode(),
                block.payload,
            ],
        )
        c.execute(
            "UPDATE proofs SET block_height=? WHERE block_height IS NULL AND seq <= ?",
            [height, rows[-1][0]],
        )
        previous = block.block_hash
        hashes.append(block.block_hash)
    for _ in range(3):
        _add_proof(c, next(tasks), "a", v6=True)
    c.execute(
        "INSERT INTO spot_checks (task_id, device_id, block_height, indices, state, "
        "next_attempt_at, created_at) VALUES ('t-00', ?, 0, '[3, 1]', 'pending', 0, 0)",
        [DEVICES["a"]],
    )
    heights = dict(c.execute("SELECT task_id, block_height FROM proofs").fetchall())
    c.close()
    return heights, hashes


def _coordinator(db: Database, **checks: Any) -> Coordinator:
    config = CoordinatorConfig(state_dir=db.path.parent, spot_checks=SpotCheckConfig(**checks))
    return Coordinator(config, SigningKey.from_seed(bytes(32)), db, discover())


def _check_membership(c: sqlite3.Connection) -> None:
    """Every proof is in at most one block, every block's payload is exactly the proofs of
    its range, and the decoded chain links from genesis."""
    for (seq,) in c.execute("SELECT seq FROM proofs").fetchall():
        n = c.execute(
            "SELECT count(*) FROM blocks WHERE ? BETWEEN first_seq AND last_seq", [seq]
        ).fetchone()[0]
        assert n <= 1, seq
    chain = []
    for first, last, count, header, payload in c.execute(
        "SELECT first_seq, last_seq, receipt_count, header, payload FROM blocks ORDER BY height"
    ).fetchall():
        block = microblock.decode(bytes(header) + bytes(payload))
        in_range = c.execute(
            "SELECT task_id, device_id, signature FROM proofs WHERE seq BETWEEN ? AND ? "
            "ORDER BY seq",
            [first, last],
        ).fetchall()
        assert [(r.task_id, r.device_id, r.signature) for r in block.receipts] == [
            (t, d, bytes(s)) for t, d, s in in_range
        ]
        assert count == len(in_range)
        chain.append(block)
    microblock.verify_chain(chain)


async def test_v6_to_v7_keeps_every_receipt_in_its_block_and_the_chain_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "coordinator.db"
    heights, hashes = _v6_database(path)
    assert sorted(h for h in heights.values() if h is not None) == [0] * 4 + [1] * 2 + [2] * 3
    db = Database(path)
    db.open()  # migrates to v7
    try:
        c = connect(path)
        assert c.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) >= 7
        assert "block_height" not in {r[1] for r in c.execute("PRAGMA table_info(proofs)")}
        indexes = {r[1] for r in c.execute("PRAGMA index_list(proofs)")}
        assert "proofs_unblocked" not in indexes and "proofs_receipts" in indexes
        assert c.execute(
            "SELECT height, first_seq, last_seq FROM blocks ORDER BY height"
        ).fetchall() == [(0, 1, 4), (1, 5, 7), (2, 8, 10)]
        # Every proof got its task's chunk count.
        assert c.execute("SELECT DISTINCT chunks FROM proofs").fetchall() == [(CHUNKS,)]
        derived = dict(c.execute(f"SELECT task_id, {height_of('p.seq')} FROM proofs p"))
        assert derived == heights  # exactly, the waiting ones included (None)
        assert c.execute("SELECT indices FROM spot_checks").fetchall() == [("[3, 1]",)]
        # Forming a block reads the narrow index, never the proof rows with PoT and output.
        for sql, args in ((RECEIPTS_SQL, [0, 10]), (check_all_sql(1), [0, 0, 0, 1, 2, "d"])):
            plan = " ".join(r[3] for r in c.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            assert "USING COVERING INDEX proofs_receipts" in plan, plan
        _check_membership(c)

        coordinator = _coordinator(db)
        await coordinator.load()
        view = await coordinator.tasks.task_view("t-04")
        assert [p["block_height"] for p in view["proofs"]] == [1]
        assert (await coordinator.status.summary())["unblocked_receipts"] == 3
        assert await coordinator.blocks.form_block() == 3
        assert await coordinator.blocks.form_block() is None
        assert (await coordinator.status.summary())["unblocked_receipts"] == 0
        row = c.execute(
            "SELECT first_seq, last_seq, previous_hash FROM blocks WHERE height=3"
        ).fetchone()
        assert row == (11, 13, hashes[2])
        _check_membership(c)
        assert {
            p["block_height"] for p in (await coordinator.tasks.task_view("t-10"))["proofs"]
        } == {3}
        # The database itself refuses a block that overlaps an earlier one, or a moved range.
        with pytest.raises(sqlite3.IntegrityError, match="seq range past"):
            c.execute(
                "INSERT INTO blocks (height, hash, previous_hash, timestamp, receipt_count, "
                "header, payload, first_seq, last_seq) VALUES (4, x'01', x'00', 0, 1, x'', "
                "x'', 13, 14)"
            )
        with pytest.raises(sqlite3.IntegrityError, match="never changes"):
            c.execute("UPDATE blocks SET last_seq=last_seq+1 WHERE height=3")
        c.close()
    finally:
        db.close()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """An opened, migrated coordinator database, closed after the test."""
    database = Database(tmp_path / "coordinator.db")
    database.open()
    yield database
    database.close()


async def test_erasure_keeps_a_blocked_receipt_in_its_block_and_gaps_stay_empty(
    db: Database,
) -> None:
    def fill(d: Any, plan: list[tuple[str, str]]) -> None:
        for task_id, device in plan:
            _add_proof(d.conn, task_id, device)

    await db.write(lambda d: [_add_device(d.conn, x) for x in DEVICES.values()])
    coordinator = _coordinator(db)
    await coordinator.load()
    await db.write(lambda d: fill(d, [("t-a1", "a"), ("t-b1", "b")]))
    assert await coordinator.blocks.form_block() == 0
    # Waiting for a block: b's, then a's (to be erased), then b's again.
    await db.write(lambda d: fill(d, [("t-b2", "b"), ("t-a2", "a"), ("t-b3", "b")]))
    erased = await coordinator.privacy.erase_device(DEVICES["a"])
    assert erased["deleted"]["unblocked_proofs"] == 1
    assert erased["deleted"]["receipts_kept"] == 1
    assert await coordinator.blocks.form_block() == 1
    c = connect(db.path)
    assert c.execute("SELECT first_seq, last_seq, receipt_count FROM blocks").fetchall() == [
        (1, 2, 2),
        (3, 5, 2),  # seq 4 was a's unblocked proof: deleted, so no receipt
    ]
    # a's blocked proof stays in block 0, stripped of its PoT, with the block's time.
    assert c.execute(
        f"SELECT pot, accepted_at, {height_of('p.seq')} FROM proofs p WHERE task_id='t-a1'"
    ).fetchone() == (
        "",
        c.execute("SELECT timestamp FROM blocks WHERE height=0").fetchone()[0],
        0,
    )
    assert [p["block_height"] for p in (await coordinator.tasks.task_view("t-a1"))["proofs"]] == [0]
    _check_membership(c)
    c.close()


def test_derived_challenge_indices_are_the_spec_vectors(
    tmp_path: Path, vectors: dict[str, Any]
) -> None:
    v = vectors["spot_check"]
    db = Database(tmp_path / "c.db")
    coordinator = _coordinator(db, k=v["k"])
    block_hash = bytes.fromhex(v["block_hash"])
    assert (
        coordinator.blocks.challenge_indices(None, block_hash, v["task_id"], v["chunks"])
        == (v["indices"])
    )
    # Stored indices (a dispute's differing chunks) are used as they are.
    assert coordinator.blocks.challenge_indices("[0]", block_hash, v["task_id"], v["chunks"]) == [0]


async def test_formation_schedules_checks_lazily_and_disputes_on_the_differing_chunks(
    db: Database,
) -> None:
    def fill(d: Any) -> None:
        _add_device(d.conn, DEVICES["a"], passes=0)  # new: every receipt is checked
        _add_device(d.conn, DEVICES["b"], passes=10_000)  # trusted: at the floor rate
        _add_proof(d.conn, "t-new", "a")
        for i in range(200):
            _add_proof(d.conn, f"t-old-{i:03d}", "b")
        # A disputed task: two replicas that differ on chunk 2 only.
        _add_proof(d.conn, "t-disputed", "a", state="disputed")
        d.conn.execute(
            "INSERT INTO proofs (task_id, device_id, pot, signature, output, "
            "output_digest, accepted_at) VALUES ('t-disputed', ?, '{}', ?, ?, '01', 1)",
            [
                DEVICES["b"],
                os.urandom(64),
                proofs.encode_output(
                    [bytes([0, i]) * 16 if i != 2 else b"x" * 32 for i in range(CHUNKS)]
                ),
            ],
        )

    await db.write(fill)
    # catch_probability 1: a new device's every task is checked, so t-new surely is.
    coordinator = _coordinator(db, floor=0.1, catch_probability=1.0)
    await coordinator.load()
    assert await coordinator.blocks.form_block() == 0
    c = connect(db.path)
    checks = {
        (t, d): i for t, d, i in c.execute("SELECT task_id, device_id, indices FROM spot_checks")
    }
    assert checks[("t-new", DEVICES["a"])] is None  # derived when sent
    assert checks[("t-disputed", DEVICES["a"])] == "[2]"
    assert checks[("t-disputed", DEVICES["b"])] == "[2]"
    trusted = [k for k in checks if k[0].startswith("t-old-")]
    assert 0 < len(trusted) < 200  # drawn, about one in ten
    assert all(checks[k] is None for k in trusted)
    # The export shows the indices the challenge will carry: the SPEC derivation.
    block_hash = bytes(c.execute("SELECT hash FROM blocks").fetchone()[0])
    exported = {
        s["task_id"]: s["indices"]
        for s in (await coordinator.privacy.export_device(DEVICES["a"]))["spot_checks"]
    }
    assert exported == {
        "t-new": spotcheck.challenge_indices(block_hash, "t-new", 4, CHUNKS),
        "t-disputed": [2],
    }
    c.close()


async def test_a_new_devices_check_rate_follows_its_tasks_chunk_counts(db: Database) -> None:
    """Under the default assurance target a new device's 32-chunk tasks are drawn at the
    derived rate, while its 1-chunk tasks (too small for the target) are always checked;
    a proof whose chunk count is unknown (0) is always checked too."""

    def fill(d: Any) -> None:
        _add_device(d.conn, DEVICES["a"], passes=0)
        for i in range(400):
            _add_proof(d.conn, f"t-big-{i:03d}", "a", chunks=32)
            _add_proof(d.conn, f"t-one-{i:03d}", "a", chunks=1)
        _add_proof(d.conn, "t-unknown", "a", chunks=0)

    await db.write(fill)
    coordinator = _coordinator(db)
    rate = coordinator.config.spot_checks.new_device_rate(32)
    assert 0.5 < rate < 0.7 and coordinator.config.spot_checks.new_device_rate(1) == 1.0
    await coordinator.load()
    assert await coordinator.blocks.form_block() == 0
    c = connect(db.path)
    checked = [t for (t,) in c.execute("SELECT task_id FROM spot_checks")]
    c.close()
    assert sum(t.startswith("t-one-") for t in checked) == 400
    assert "t-unknown" in checked
    # 400 draws at ~0.6: mean 240, sd 10; every task (400) or the floor (40) is far off.
    assert 180 < sum(t.startswith("t-big-") for t in checked) < 300
