"""Heartbeats stored together (coalesce.py, ``devices.record_heartbeats``): those that
wait for the database's writer are written by one job in a few statements, and each is
answered exactly as if it had been stored alone — a replay, a device heard twice, a
device quarantined meanwhile, or one write that fails never changes a neighbour's answer.

The writer is held busy (``tests.support.held``), so the group each test builds is
known, not left to timing."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator.coalesce import Coalescer
from aeamc.coordinator.dbtx import Tx
from aeamc.coordinator.pgdb import LeadershipLost, PostgresDatabase
from aeamc.coordinator.store import devices as device_rows
from aeamc.shared.refusals import Refusal
from tests.support.device import GOOD_TELEMETRY
from tests.support.held import queued, writer_held
from tests.support.inprocess import Fleet, LinkedDevice


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with Fleet(tmp_path) as f:
        yield f


def heartbeat_body(fleet: Fleet, device: LinkedDevice) -> dict[str, Any]:
    """A new signed heartbeat of ``device`` (its next seq), not sent."""
    return device.sim.poa(dict(GOOD_TELEMETRY), timestamp=fleet.clock())


async def send_in_order(
    fleet: Fleet, bodies: Sequence[tuple[LinkedDevice, dict[str, Any]]]
) -> list[asyncio.Task[dict[str, Any]]]:
    """Send each heartbeat once the one before waits for the held writer: one group, in
    this order."""
    writes = fleet.c.heartbeats.writes
    tasks = []
    for device, body in bodies:
        before = writes.waiting
        tasks.append(asyncio.ensure_future(fleet.c.heartbeats.heartbeat(body, device.peer)))
        await queued(writes, before + 1)
    return tasks


async def beside_a_neighbour(
    fleet: Fleet, d: LinkedDevice, other: LinkedDevice, then: Callable[[Tx], None]
) -> tuple[Refusal, dict[str, Any]]:
    """``d``'s and then ``other``'s next heartbeats, waiting in one group while ``then``
    commits just before it: ``d``'s refusal, and ``other``'s heartbeat, which must have
    been accepted (one refused item never costs its neighbour its write)."""
    body, bystander = heartbeat_body(fleet, d), heartbeat_body(fleet, other)
    async with writer_held(fleet.c.db, then=then):
        tasks = await send_in_order(fleet, [(d, body), (other, bystander)])
    await asyncio.wait_for(_all(tasks), 30)
    refusal = tasks[0].exception()
    assert isinstance(refusal, Refusal), refusal
    assert tasks[1].result()["state"] == "active"
    return refusal, bystander


async def stored_seqs(fleet: Fleet, device: LinkedDevice) -> list[int]:
    rows = await fleet.rows(
        "SELECT seq FROM heartbeats WHERE device_id=? ORDER BY seq", [device.device_id]
    )
    return [r["seq"] for r in rows]


async def last_seq(fleet: Fleet, device: LinkedDevice) -> int:
    row = await fleet.row("SELECT last_seq FROM devices WHERE device_id=?", [device.device_id])
    return int(row["last_seq"])


async def test_heartbeats_waiting_for_the_writer_are_stored_by_one_job(fleet: Fleet) -> None:
    devices = [await fleet.enroll() for _ in range(30)]
    writes = fleet.c.heartbeats.writes
    groups, items = writes.groups, writes.items
    bodies = [heartbeat_body(fleet, d) for d in devices]
    async with writer_held(fleet.c.db):
        tasks = [
            asyncio.ensure_future(fleet.c.heartbeats.heartbeat(b, d.peer))
            for d, b in zip(devices, bodies, strict=True)
        ]
        await queued(writes, 30)
    answers = await asyncio.gather(*tasks)
    assert [a["state"] for a in answers] == ["active"] * 30
    assert (writes.groups - groups, writes.items - items) == (1, 30)
    for device, body in zip(devices, bodies, strict=True):
        assert await last_seq(fleet, device) == body["seq"]
        assert (await stored_seqs(fleet, device))[-1] == body["seq"]
        row = await fleet.row(
            "SELECT timestamp, telemetry FROM heartbeats WHERE device_id=? AND seq=?",
            [device.device_id, body["seq"]],
        )
        assert row["timestamp"] == body["timestamp"]
        assert '"battery_pct":' in row["telemetry"]


async def test_a_device_heard_twice_in_one_group_is_taken_in_order(fleet: Fleet) -> None:
    d, other = await fleet.enroll(), await fleet.enroll()
    first, second = heartbeat_body(fleet, d), heartbeat_body(fleet, d)
    async with writer_held(fleet.c.db):
        tasks = await send_in_order(
            fleet, [(d, first), (other, heartbeat_body(fleet, other)), (d, second)]
        )
    assert [t.result()["state"] for t in await asyncio.wait_for(_all(tasks), 30)] == ["active"] * 3
    assert (await stored_seqs(fleet, d))[-2:] == [first["seq"], second["seq"]]
    assert await last_seq(fleet, d) == second["seq"]


async def test_an_older_heartbeat_behind_a_newer_one_is_a_replay(fleet: Fleet) -> None:
    d = await fleet.enroll()
    older, newer = heartbeat_body(fleet, d), heartbeat_body(fleet, d)
    async with writer_held(fleet.c.db):
        tasks = await send_in_order(fleet, [(d, newer), (d, older)])
    await asyncio.wait_for(_all(tasks), 30)
    assert tasks[0].result()["state"] == "active"
    refusal = tasks[1].exception()
    assert isinstance(refusal, Refusal) and refusal.code == "replay"
    assert refusal.extra["last_seq"] == newer["seq"]
    assert older["seq"] not in await stored_seqs(fleet, d)
    assert await last_seq(fleet, d) == newer["seq"]


async def test_a_heartbeat_replayed_beside_itself_is_stored_once(fleet: Fleet) -> None:
    """A LAN host that captured a heartbeat sends it again while the original waits for
    the writer: the process's view let both through, the store takes one."""
    d, other = await fleet.enroll(), await fleet.enroll()
    body, bystander = heartbeat_body(fleet, d), heartbeat_body(fleet, other)
    async with writer_held(fleet.c.db):
        tasks = await send_in_order(fleet, [(d, body), (d, dict(body)), (other, bystander)])
    await asyncio.wait_for(_all(tasks), 30)
    assert tasks[0].result()["state"] == "active"
    refusal = tasks[1].exception()
    assert isinstance(refusal, Refusal) and refusal.code == "replay"
    assert tasks[2].result()["state"] == "active"
    assert (await stored_seqs(fleet, d)).count(body["seq"]) == 1
    assert bystander["seq"] in await stored_seqs(fleet, other)


async def test_a_device_quarantined_while_its_heartbeat_waits_is_refused_alone(
    fleet: Fleet,
) -> None:
    d, other = await fleet.enroll(), await fleet.enroll()
    before = await stored_seqs(fleet, d)

    def quarantine(tx: Tx) -> None:  # the cascade of a failed spot-check, say
        device_rows.quarantine(tx, d.device_id, "failed a spot-check")

    refusal, _ = await beside_a_neighbour(fleet, d, other, quarantine)
    assert refusal.code == "quarantined"
    assert await stored_seqs(fleet, d) == before
    row = await fleet.row("SELECT state FROM devices WHERE device_id=?", [d.device_id])
    assert row["state"] == "quarantined"


async def test_a_device_erased_while_its_heartbeat_waits_is_not_brought_back(
    fleet: Fleet,
) -> None:
    """A device erases itself (SPEC §11) while a heartbeat of its waits: the heartbeat
    is refused, writes nothing under the erased identity, and its neighbour is stored."""
    d, other = await fleet.enroll(), await fleet.enroll()

    def erase(tx: Tx) -> None:
        device_rows.delete_heartbeats(tx, d.device_id)
        device_rows.erase_device(tx, d.device_id, fleet.clock())

    refusal, bystander = await beside_a_neighbour(fleet, d, other, erase)
    assert refusal.code == "not_enrolled"
    assert await stored_seqs(fleet, d) == []
    assert await fleet.rows("SELECT 1 FROM devices WHERE device_id=?", [d.device_id]) == []
    assert bystander["seq"] in await stored_seqs(fleet, other)


async def test_a_write_that_fails_costs_its_neighbours_nothing(fleet: Fleet) -> None:
    def write_many(tx: Tx, items: Sequence[str]) -> list[str]:
        for item in items:
            if item == "bad":
                raise ValueError("a bad item")
            tx.execute("INSERT INTO meta (key, value) VALUES (?,?)", [f"coalesced-{item}", item])
        return [f"stored {item}" for item in items]

    coalescer: Coalescer[str, str] = Coalescer(fleet.c.db, write_many)
    async with writer_held(fleet.c.db):
        tasks = []
        for n, item in enumerate(["a", "bad", "c"], start=1):
            tasks.append(asyncio.ensure_future(coalescer.submit(item)))
            await queued(coalescer, n)
    await asyncio.wait_for(_all(tasks), 30)
    assert tasks[0].result() == "stored a" and tasks[2].result() == "stored c"
    assert isinstance(tasks[1].exception(), ValueError)
    rows = await fleet.rows("SELECT key FROM meta WHERE key LIKE 'coalesced-%' ORDER BY key")
    assert [r["key"] for r in rows] == ["coalesced-a", "coalesced-c"]


@asynccontextmanager
async def writes_refused_before_they_begin(fleet: Fleet) -> AsyncIterator[type[Exception]]:
    """Every write fails at ``BEGIN``, before any job of it runs, as it does for real: on
    PostgreSQL the node's leader lock is gone (its writes are fenced off); on SQLite
    another process holds the write lock past the writer's busy timeout. Yields the
    error the writes fail with."""
    db = fleet.c.db
    if isinstance(db, PostgresDatabase):
        db.fence = lambda: 0  # no session 0 holds the leader lock
        try:
            yield LeadershipLost
        finally:
            db.fence = None
        return
    await db.write(lambda tx: tx.execute("PRAGMA busy_timeout=200"))
    other = sqlite3.connect(fleet.db.path, isolation_level=None)  # type: ignore[attr-defined]
    other.execute("BEGIN IMMEDIATE")
    try:
        yield sqlite3.OperationalError
    finally:
        other.execute("ROLLBACK")
        other.close()
        await db.write(lambda tx: tx.execute("PRAGMA busy_timeout=30000"))


async def test_heartbeats_whose_write_never_began_are_answered_and_strand_nothing(
    fleet: Fleet,
) -> None:
    """A group whose write fails before it begins took nothing yet: every heartbeat that
    waited for it is answered with that failure (the agent retries), and the next
    heartbeat is written by a job of its own. Unanswered, they would hold their requests
    open for good, and every later heartbeat would queue behind them with no job to take
    it: the node would accept no heartbeat again."""
    a, b = await fleet.enroll(), await fleet.enroll()
    writes = fleet.c.heartbeats.writes
    async with writes_refused_before_they_begin(fleet) as refused:
        tasks = [
            asyncio.ensure_future(fleet.c.heartbeats.heartbeat(heartbeat_body(fleet, d), d.peer))
            for d in (a, b)
        ]
        await asyncio.wait_for(_all(tasks), 30)
    assert [type(t.exception()) for t in tasks] == [refused, refused]
    assert writes.waiting == 0
    seqs = [await last_seq(fleet, d) for d in (a, b)]
    answers = await asyncio.wait_for(
        asyncio.gather(
            *(fleet.c.heartbeats.heartbeat(heartbeat_body(fleet, d), d.peer) for d in (a, b))
        ),
        30,
    )
    assert len(answers) == 2
    assert [await last_seq(fleet, d) for d in (a, b)] == [s + 2 for s in seqs]


async def _all(tasks: Sequence[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    """Wait for every task, whatever each ends with; the tasks themselves."""
    await asyncio.gather(*tasks, return_exceptions=True)
    return list(tasks)
