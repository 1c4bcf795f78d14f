"""The scheduler (SPEC §4) one round at a time, in-process: who gets a task, how many
devices, in which order, and what happens to an assignment that expires. The outcome of
each round is read back from the database (tests/support/inprocess.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aeamc.coordinator.config import SchedulerConfig
from tests.support import stores
from tests.support.inprocess import Fleet

HIGH, LOW, TOO_LOW = 95, 60, 20  # battery percentages: EPS ≈ 0.68, 0.54 and 0.38 (min 0.5)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with Fleet(tmp_path, scheduler=SchedulerConfig(assignment_timeout_s=60)) as f:
        yield f


async def test_no_devices_no_assignments(fleet: Fleet) -> None:
    task_id = await fleet.submit()
    assert await fleet.schedule() == 0
    assert await fleet.assignments(task_id) == {}
    assert (await fleet.row("SELECT state FROM tasks WHERE task_id=?", [task_id]))[
        "state"
    ] == "queued"
    assert fleet.c.work_waiting  # a device becoming eligible should start a round
    assert fleet.link.calls == []


async def test_nothing_to_do_leaves_devices_alone(fleet: Fleet) -> None:
    await fleet.enroll()
    assert await fleet.schedule() == 0
    assert not fleet.c.work_waiting
    assert fleet.link.calls == []


async def test_only_eligible_devices_are_offered_work(fleet: Fleet) -> None:
    """Pending, quarantined, silent (too few heartbeats), low-EPS and wrong-kind devices
    get nothing; the one active, eligible device gets the task and accepts it."""
    pending = await fleet.enroll(token=False, heartbeats=0)
    quarantined = await fleet.enroll()
    await fleet.c.fleet.quarantine(quarantined.device_id, "operator")
    silent = await fleet.enroll(heartbeats=1)
    weak = await fleet.enroll(battery_pct=TOO_LOW)
    other_kind = await fleet.enroll(kinds=("classify-int8",))
    able = await fleet.enroll()
    assert fleet.c.devices[pending.device_id].state == "pending"

    task_id = await fleet.submit()
    assert await fleet.schedule() == 1
    assert await fleet.assignments(task_id) == {able.device_id: "accepted"}
    assert (await fleet.row("SELECT state FROM tasks WHERE task_id=?", [task_id]))[
        "state"
    ] == "running"
    assert [a.task_id for a in able.assignments] == [task_id]
    for d in (pending, quarantined, silent, weak, other_kind):
        assert d.assignments == []


async def test_a_busy_device_gets_no_more_than_its_capacity(fleet: Fleet) -> None:
    limit = fleet.config.scheduler.max_inflight_per_device
    device = await fleet.enroll()
    tasks = [await fleet.submit(seed=i) for i in range(limit + 1)]
    assert await fleet.schedule() == limit
    held = [t for t in tasks if await fleet.assignments(t)]
    assert held == tasks[:limit]  # the oldest first
    assert await fleet.schedule() == 0  # still busy
    await fleet.prove(device, tasks[0])  # one slot frees up
    assert await fleet.schedule() == 1
    assert await fleet.assignments(tasks[limit]) == {device.device_id: "accepted"}


async def test_replicas_go_to_distinct_devices(fleet: Fleet) -> None:
    devices = [await fleet.enroll() for _ in range(2)]
    task_id = await fleet.submit(replicas=3)
    assert await fleet.schedule() == 2  # one replica per device, the third waits
    assert set(await fleet.assignments(task_id)) == {d.device_id for d in devices}
    assert await fleet.schedule() == 0  # never a second replica on the same device
    third = await fleet.enroll()
    assert await fleet.schedule() == 1
    held = await fleet.assignments(task_id)
    assert len(held) == 3 and held[third.device_id] == "accepted"


async def test_higher_eps_is_preferred(fleet: Fleet) -> None:
    low = await fleet.enroll(battery_pct=LOW)
    high = await fleet.enroll(battery_pct=HIGH)
    middle = await fleet.enroll(battery_pct=(HIGH + LOW) // 2)
    single = await fleet.submit(seed=1)
    assert await fleet.schedule() == 1
    assert await fleet.assignments(single) == {high.device_id: "accepted"}
    pair = await fleet.submit(replicas=2, seed=2)
    assert await fleet.schedule() == 2
    assert set(await fleet.assignments(pair)) == {high.device_id, middle.device_id}
    assert low.assignments == []


async def test_an_expired_assignment_goes_to_another_device_never_back(fleet: Fleet) -> None:
    slow = await fleet.enroll(battery_pct=HIGH)
    task_id = await fleet.submit()
    assert await fleet.schedule() == 1
    assert await fleet.assignments(task_id) == {slow.device_id: "accepted"}

    fleet.clock.advance(fleet.config.scheduler.assignment_timeout_s * 1000 + 1)
    await fleet.heartbeat(slow, battery_pct=HIGH)  # still alive and eligible
    await fleet.heartbeat(slow, battery_pct=HIGH)
    assert await fleet.schedule() == 0  # expired; only the device that let it expire is left
    assert await fleet.assignments(task_id) == {slow.device_id: "expired"}
    record = await fleet.row("SELECT timeouts FROM devices WHERE device_id=?", [slow.device_id])
    assert record["timeouts"] == 1
    assert fleet.c.devices[slow.device_id].record.timeouts == 1

    other = await fleet.enroll(battery_pct=LOW)
    assert await fleet.schedule() == 1
    assert await fleet.assignments(task_id) == {
        slow.device_id: "expired",
        other.device_id: "accepted",
    }
    assert [a.task_id for a in slow.assignments] == [task_id]  # offered once, never again


async def test_a_refusal_frees_the_task_for_others_and_counts(fleet: Fleet) -> None:
    refuser = await fleet.enroll(battery_pct=HIGH)
    refuser.refuse = "battery low"
    task_id = await fleet.submit()
    assert await fleet.schedule() == 1
    assert await fleet.assignments(task_id) == {refuser.device_id: "refused"}
    row = await fleet.row(
        "SELECT reason FROM assignments WHERE task_id=? AND device_id=?",
        [task_id, refuser.device_id],
    )
    assert row["reason"] == "battery low"
    assert fleet.c.devices[refuser.device_id].record.refusals == 1
    taker = await fleet.enroll(battery_pct=LOW)
    assert await fleet.schedule() == 1
    assert (await fleet.assignments(task_id))[taker.device_id] == "accepted"


async def test_a_refusal_for_the_owners_limits_is_not_held_against_the_device(
    fleet: Fleet,
) -> None:
    """A device refusing a task beyond the limits its owner set (``outside_policy``) is
    doing what it was told: the refusal is recorded, its reputation untouched."""
    careful = await fleet.enroll(battery_pct=HIGH)
    careful.refuse = "outside_policy"
    task_id = await fleet.submit()
    assert await fleet.schedule() == 1
    assert await fleet.assignments(task_id) == {careful.device_id: "refused"}
    assert fleet.c.devices[careful.device_id].record.refusals == 0
    row = await fleet.row("SELECT refusals FROM devices WHERE device_id=?", [careful.device_id])
    assert row["refusals"] == 0


async def test_a_device_quarantined_after_the_round_read_it_is_offered_nothing(
    fleet: Fleet,
) -> None:
    """Another process quarantines the device (and so ends its assignments) after this
    round picked it from its view and before the offer is written: the write refuses, or
    the device would hold the task, quarantined, until the assignment expired."""
    device = await fleet.enroll()
    task_id = await fleet.submit()
    stores.execute_elsewhere(
        fleet.c.db,
        "UPDATE devices SET state='quarantined', state_reason='failed spot-check' "
        "WHERE device_id=?",
        [device.device_id],
    )
    assert fleet.c.devices[device.device_id].state == "active"  # this process's view
    assert await fleet.schedule() == 0
    assert await fleet.assignments(task_id) == {}
    assert device.assignments == []


async def test_an_offer_left_unanswered_by_a_leader_that_ended_is_pushed_again(
    fleet: Fleet,
) -> None:
    """The last leader wrote the offer and died before the device's answer was recorded:
    the next leader pushes the stored, signed offer again instead of leaving the task to
    wait for the assignment to expire."""
    device = await fleet.enroll()
    task_id = await fleet.submit()
    task = await fleet.row("SELECT * FROM tasks WHERE task_id=?", [task_id])
    now = fleet.clock()
    picked = fleet.scheduler._assignment(task, {}, device.device_id, now)
    [offer] = await fleet.scheduler._offer([picked], now)  # written, never pushed: the
    # leader "died" here
    assert await fleet.assignments(task_id) == {device.device_id: "offered"}

    assert await fleet.scheduler.resume_offers() == 1
    await fleet.scheduler.drain()
    assert await fleet.assignments(task_id) == {device.device_id: "accepted"}
    assert [a.signature for a in device.assignments] == [offer.signature]
    assert await fleet.scheduler.resume_offers() == 0  # nothing is pushed twice
