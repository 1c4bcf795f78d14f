"""Proof ingestion in-process: a proof is stored only while its assignment is live at the
moment of the write, not only when it was read (another worker may quarantine the device
or expire the assignment in between)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator.config import SchedulerConfig
from aeamc.coordinator.store import tasks as task_rows
from aeamc.shared.refusals import Refusal
from tests.support import stores
from tests.support.inprocess import Fleet, LinkedDevice


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    scheduler = SchedulerConfig(assignment_timeout_s=60, max_inflight_per_device=10)
    async with Fleet(tmp_path, scheduler=scheduler) as f:
        yield f


def _ending_after_check(fleet: Fleet, task_id: str, device_id: str, state: str) -> None:
    """Make the assignment ``state`` right after the proof of it was checked, from another
    connection to the database, as another worker process would."""
    check: Callable[..., Any] = fleet.c.ingestion._check_proof

    def checked_then_ended(*args: Any) -> Any:
        out = check(*args)
        if args[1].task_id == task_id:
            stores.execute_elsewhere(
                fleet.c.db,
                "UPDATE assignments SET state=?, reason='ended by another worker' "
                "WHERE task_id=? AND device_id=?",
                [state, task_id, device_id],
            )
        return out

    fleet.c.ingestion._check_proof = checked_then_ended  # type: ignore[method-assign]


async def _assigned(fleet: Fleet, n: int) -> tuple[LinkedDevice, list[str]]:
    device = await fleet.enroll()
    ids = [await fleet.submit(seed=i) for i in range(n)]
    assert await fleet.schedule() == n
    return device, ids


@pytest.mark.parametrize("state", ["lost", "expired"])
async def test_a_batch_proof_whose_assignment_ended_after_its_check_is_refused_alone(
    fleet: Fleet, state: str
) -> None:
    device, (ended, kept) = await _assigned(fleet, 2)
    _ending_after_check(fleet, ended, device.device_id, state)
    bodies = [
        device.sim.proof_for(
            next(a for a in device.assignments if a.task_id == t), timestamp=fleet.clock()
        )
        for t in (ended, kept)
    ]
    refused, accepted = await fleet.c.ingestion.accept_proofs(bodies, device.peer)
    assert isinstance(refused, Refusal)
    assert (refused.code, refused.message) == ("assignment_expired", f"the assignment is {state}")
    assert isinstance(accepted, dict) and accepted["task_state"] == "completed"
    # Nothing of the refused proof was stored; its neighbour was, and counted once.
    proofs = await fleet.c.db.read(
        lambda db: [r["task_id"] for r in db.query("SELECT task_id FROM proofs")]
    )
    assert proofs == [kept]
    row = await fleet.c.db.read(lambda db: task_rows.assignment_row(db, ended, device.device_id))
    assert row["state"] == state
    completed = await fleet.c.db.read(
        lambda db: db.execute(
            "SELECT completed FROM devices WHERE device_id=?", [device.device_id]
        ).fetchone()[0]
    )
    assert completed == 1


async def test_a_single_proof_whose_assignment_was_lost_after_its_check_is_refused(
    fleet: Fleet,
) -> None:
    device, (task_id,) = await _assigned(fleet, 1)
    _ending_after_check(fleet, task_id, device.device_id, "lost")
    with pytest.raises(Refusal) as refused:
        await fleet.prove(device, task_id)
    assert refused.value.code == "assignment_expired"
    assert await fleet.c.db.read(
        lambda db: db.execute("SELECT count(*) FROM proofs").fetchone()
    ) == (0,)
