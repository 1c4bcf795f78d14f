"""Proofs stored together (coalesce.py over ``ProofIngestion._store_proofs``): single
proofs and batches that wait for the database's writer are stored by one job, and each
proof is answered exactly as if it had been stored alone — a copy of a proof sent again
meanwhile, in another request, is refused as a duplicate and stored once.

The writer is held busy (``tests.support.held``), so each group is known."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator.config import SchedulerConfig
from aeamc.shared.refusals import Refusal
from tests.support.held import queued, writer_held
from tests.support.inprocess import Fleet, LinkedDevice


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    scheduler = SchedulerConfig(assignment_timeout_s=60, max_inflight_per_device=2)
    async with Fleet(tmp_path, scheduler=scheduler) as f:
        yield f


def proof_of(fleet: Fleet, device: LinkedDevice, task_id: str) -> dict[str, Any]:
    a = next(a for a in device.assignments if a.task_id == task_id)
    return device.sim.proof_for(a, timestamp=fleet.clock())


async def stored(fleet: Fleet) -> list[tuple[str, str]]:
    rows = await fleet.rows("SELECT task_id, device_id FROM proofs ORDER BY task_id")
    return [(r["task_id"], r["device_id"]) for r in rows]


async def test_single_proofs_and_a_batch_waiting_together_are_stored_by_one_job(
    fleet: Fleet,
) -> None:
    a, b = await fleet.enroll(), await fleet.enroll()
    tasks = [await fleet.submit(seed=i) for i in range(4)]
    assert await fleet.schedule() == 4
    held_by = {t: d for d in (a, b) for t in (x.task_id for x in d.assignments)}
    singles = [t for t in tasks if held_by[t] is a]
    batch = [t for t in tasks if held_by[t] is b]
    assert singles and batch
    writes = fleet.c.ingestion.writes
    groups, items = writes.groups, writes.items
    async with writer_held(fleet.c.db):
        sent = []
        for t in singles:
            sent.append(asyncio.ensure_future(fleet.prove(a, t)))
            await queued(writes, len(sent))
        bodies = [proof_of(fleet, b, t) for t in batch]
        sent_batch = asyncio.ensure_future(fleet.c.ingestion.accept_proofs(bodies, b.peer))
        await queued(writes, len(tasks))
    answers = [await s for s in sent] + await sent_batch
    assert [x["task_state"] for x in answers] == ["completed"] * 4
    assert (writes.groups - groups, writes.items - items) == (1, 4)
    assert await stored(fleet) == sorted((t, held_by[t].device_id) for t in tasks)
    row = await fleet.row("SELECT completed FROM devices WHERE device_id=?", [a.device_id])
    assert row["completed"] == len(singles)


async def test_a_proof_sent_again_while_the_first_copy_waits_is_stored_once(
    fleet: Fleet,
) -> None:
    """A device (or a LAN host that captured its request) sends the same proof in two
    requests at once: both pass every check on the process's view, the store takes one."""
    d = await fleet.enroll()
    task_id = await fleet.submit()
    assert await fleet.schedule() == 1
    body = proof_of(fleet, d, task_id)
    writes = fleet.c.ingestion.writes
    groups, items = writes.groups, writes.items
    async with writer_held(fleet.c.db):
        first = asyncio.ensure_future(fleet.c.ingestion.accept_proof(body, d.peer))
        await queued(writes, 1)
        again = asyncio.ensure_future(fleet.c.ingestion.accept_proofs([dict(body)], d.peer))
        await queued(writes, 2)
    assert (await first)["task_state"] == "completed"
    [refused] = await again
    assert isinstance(refused, Refusal) and refused.code == "duplicate"
    # Refused within the group's write, which stood: not by a failed write taken apart.
    assert (writes.groups - groups, writes.items - items) == (1, 2)
    assert await stored(fleet) == [(task_id, d.device_id)]
    row = await fleet.row("SELECT completed FROM devices WHERE device_id=?", [d.device_id])
    assert row["completed"] == 1
