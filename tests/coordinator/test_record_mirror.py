"""A device's record (completed tasks, passes, timeouts, refusals) and its state in the
process's view match the store however the view's sources interleave.

After each commit the writer mirrors the count into the registry, and the follower
(follower.py) also reads every changed device row back from the database, this
process's own writes included. When a follower round lands between a commit and its
mirror, the view has the row's new total before the mirror arrives; a mirror that added
one would count that write twice (the view then over-reports to the dashboard and to
reputation until the device's row changes again). Each test here puts a follower round
in exactly that place, through the real store; the last puts an operator's quarantine
there, committed after a heartbeat and mirrored before it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aeamc.coordinator.config import CoordinatorConfig, SchedulerConfig, SpotCheckConfig
from aeamc.coordinator.follower import Follower
from aeamc.coordinator.groupcommit import GroupCommit
from aeamc.coordinator.store.registry import DeviceRegistry
from aeamc.shared.messages import Telemetry, parse
from tests.support.inprocess import GOOD_TELEMETRY, Fleet, LinkedDevice

T = TypeVar("T")
TELEMETRY = parse(Telemetry, GOOD_TELEMETRY)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    config = CoordinatorConfig(
        state_dir=tmp_path,
        scheduler=SchedulerConfig(assignment_timeout_s=60, max_inflight_per_device=4),
        spot_checks=SpotCheckConfig(catch_probability=1.0),
    )
    async with Fleet(tmp_path, config) as f:
        yield f


@dataclass
class Calls:
    """How many calls a hooked method has had."""

    n: int = 0


@contextmanager
def after_each(
    db: GroupCommit, method: str, then: Callable[[int], Awaitable[None]]
) -> Iterator[Calls]:
    """Within the block, each call of ``db.<method>`` (``"write"`` or ``"read"``) runs
    ``then(n)`` (``n``: which call, from 1) once it has returned, before its caller
    resumes: something else happens in exactly that moment, through the real store."""
    calls = Calls()
    original = getattr(db, method)

    async def hooked(job: Callable[[Any], T]) -> T:
        done = await original(job)
        calls.n += 1
        await then(calls.n)
        return done

    setattr(db, method, hooked)
    try:
        yield calls
    finally:
        setattr(db, method, original)


@pytest.fixture
def follow_after_each_write(fleet: Fleet) -> Iterator[Follower]:
    """Every write of the coordinator is followed, before its caller resumes, by a round
    of the follower: the view takes in the committed rows before any mirror of them."""
    follower = Follower(fleet.c)

    async def follow(_: int) -> None:
        await follower.step()

    with after_each(fleet.c.db, "write", follow):
        yield follower


async def record(fleet: Fleet, device: LinkedDevice) -> tuple[dict[str, int], dict[str, int]]:
    """The device's record as stored, and as this process's view has it."""
    columns = ("completed", "passes", "timeouts", "refusals")
    row = await fleet.row(
        f"SELECT {', '.join(columns)} FROM devices WHERE device_id=?",
        [device.device_id],
    )
    view = fleet.c.devices[device.device_id].record
    return {c: row[c] for c in columns}, {c: getattr(view, c) for c in columns}


async def settled(fleet: Fleet, device: LinkedDevice, **expected: int) -> None:
    stored, viewed = await record(fleet, device)
    assert {k: stored[k] for k in expected} == expected
    assert viewed == stored


async def test_proofs_are_counted_once_when_the_follower_reads_them_first(
    fleet: Fleet, follow_after_each_write: Follower
) -> None:
    device = await fleet.enroll()
    tasks = [await fleet.submit(seed=i) for i in range(3)]
    assert await fleet.schedule() == 3
    await fleet.prove(device, tasks[0])
    a, b = (device.sim.proof_for(x, timestamp=fleet.clock()) for x in device.assignments[1:])
    answers = await fleet.c.ingestion.accept_proofs([a, b], device.peer)
    assert [x["task_state"] for x in answers] == ["completed", "completed"]
    assert follow_after_each_write.rounds > 0
    await settled(fleet, device, completed=3)


async def test_a_passed_spot_check_is_counted_once(
    fleet: Fleet, follow_after_each_write: Follower
) -> None:
    device = await fleet.enroll()
    task_id = await fleet.submit()
    assert await fleet.schedule() == 1
    await fleet.prove(device, task_id)
    assert await fleet.c.blocks.form_block() is not None
    assert await fleet.spot_checker.round() == 1
    await settled(fleet, device, completed=1, passes=1)


async def test_timeouts_are_counted_once(fleet: Fleet, follow_after_each_write: Follower) -> None:
    device = await fleet.enroll()
    for i in range(2):
        await fleet.submit(seed=i)
    assert await fleet.schedule() == 2
    fleet.clock.advance(61_000)
    assert await fleet.c.maintenance.expire_assignments() == 2
    await settled(fleet, device, timeouts=2)


async def test_a_refused_offer_is_counted_once(
    fleet: Fleet, follow_after_each_write: Follower
) -> None:
    device = await fleet.enroll()
    device.refuse = "battery low"
    await fleet.submit()
    await fleet.schedule()
    await settled(fleet, device, refusals=1)


async def test_a_heartbeat_mirrored_after_a_quarantine_does_not_undo_it(fleet: Fleet) -> None:
    """The operator quarantines a device while its heartbeat's commit is on the way back:
    the quarantine commits after the heartbeat and is mirrored first. The heartbeat's
    mirror (state active) must not take the device out of quarantine in the view, where
    the scheduler and the proof checks would read it as active."""
    device = await fleet.enroll()

    async def quarantine_after_the_heartbeat(n: int) -> None:
        if n == 1:  # the heartbeat's write (the quarantine's own is the second)
            await fleet.c.fleet.quarantine(device.device_id, "operator: stolen phone")

    with after_each(fleet.c.db, "write", quarantine_after_the_heartbeat) as calls:
        await fleet.heartbeat(device)
    assert calls.n == 2
    row = await fleet.row("SELECT state FROM devices WHERE device_id=?", [device.device_id])
    view = fleet.c.devices[device.device_id]
    assert (row["state"], view.state, view.state_reason) == (
        "quarantined",
        "quarantined",
        "operator: stolen phone",
    )


async def test_each_heartbeat_is_one_proof_of_availability(
    fleet: Fleet, follow_after_each_write: Follower
) -> None:
    """EPS gives work only to a device with ``min_poas`` heartbeats in its window: a
    heartbeat taken in by the follower and then mirrored must not count as two."""
    device = await fleet.enroll(heartbeats=0)
    for _ in range(3):
        fleet.clock.advance(1_000)
        await fleet.heartbeat(device)
    rows = await fleet.rows(
        "SELECT received_at FROM heartbeats WHERE device_id=? ORDER BY received_at",
        [device.device_id],
    )
    view = fleet.c.devices[device.device_id]
    assert list(view.poa_times) == [r["received_at"] for r in rows]
    assert (len(rows), view.last_seq) == (3, 3)


async def test_a_row_read_before_a_later_mirror_does_not_take_the_view_back(
    fleet: Fleet,
) -> None:
    """The follower reads a device's row; before it takes the row in, the device's next
    heartbeat commits and is mirrored. The row is older than the view: taken in as it is,
    it would lower the replay counter (a captured heartbeat would pass the view's replay
    check again) and count availability twice at the next round."""
    device = await fleet.enroll(heartbeats=0)
    follower = Follower(fleet.c)
    for _ in range(2):
        fleet.clock.advance(1_000)
        await fleet.heartbeat(device)
    await follower.step()
    fleet.clock.advance(1_000)
    await fleet.heartbeat(device)  # seq 3: a change the follower has not read

    async def heartbeat_after_the_first_read(n: int) -> None:
        if n == 1:  # the follower's read of the changed rows
            fleet.clock.advance(1_000)
            await fleet.heartbeat(device)  # seq 4, committed and mirrored meanwhile

    with after_each(fleet.c.db, "read", heartbeat_after_the_first_read) as calls:
        await follower.step()
    assert calls.n >= 1
    await follower.step()  # takes in seq 4's row: nothing new for the view
    rows = await fleet.rows(
        "SELECT received_at FROM heartbeats WHERE device_id=? ORDER BY seq",
        [device.device_id],
    )
    view = fleet.c.devices[device.device_id]
    assert (view.last_seq, list(view.poa_times)) == (4, [r["received_at"] for r in rows])
    assert len(rows) == 4


async def test_a_mirror_landing_while_the_follower_reads_heartbeats_counts_once(
    fleet: Fleet,
) -> None:
    """A process's view is two heartbeats behind the store (another process stored
    them); while its follower reads their times, the mirror of the first one lands. Each
    heartbeat is still one proof of availability in the view."""
    device = await fleet.enroll(heartbeats=0)
    since = fleet.clock() - 60_000
    view = DeviceRegistry()
    for _ in range(2):
        fleet.clock.advance(1_000)
        await fleet.heartbeat(device)
    await view.load(fleet.db, since)
    sent = []
    for _ in range(2):  # seq 3 and 4: committed, not yet in ``view``
        fleet.clock.advance(1_000)
        await fleet.heartbeat(device)
        sent.append(fleet.clock())

    async def mirror_after_the_second_read(n: int) -> None:
        if n == 2:  # the follower's read of the heartbeats' times
            view.heartbeat_accepted(device.device_id, 3, sent[0], TELEMETRY, "active")

    with after_each(fleet.db, "read", mirror_after_the_second_read) as calls:
        await view.follow(fleet.db, since)
    assert calls.n == 2
    rows = await fleet.rows(
        "SELECT received_at FROM heartbeats WHERE device_id=? ORDER BY seq",
        [device.device_id],
    )
    got = view[device.device_id]
    assert (got.last_seq, list(got.poa_times)) == (4, [r["received_at"] for r in rows])


async def test_a_refusal_of_an_offer_already_withdrawn_is_held_against_no_one(
    fleet: Fleet,
) -> None:
    """A device refuses an offer the coordinator withdrew while the offer was on its way
    (the operator quarantined the device meanwhile): the store records no refusal, and
    the view, which reputation reads, must not count one either."""
    device = await fleet.enroll()
    device.refuse = "battery low"
    post = fleet.link.post

    async def quarantined_while_the_offer_travels(*args: Any, **kwargs: Any) -> Any:
        await fleet.c.fleet.quarantine(device.device_id, "operator: stolen phone")
        return await post(*args, **kwargs)

    fleet.link.post = quarantined_while_the_offer_travels  # type: ignore[method-assign]
    task_id = await fleet.submit()
    assert await fleet.schedule() == 1
    assert await fleet.assignments(task_id) == {device.device_id: "lost"}
    await settled(fleet, device, refusals=0)
