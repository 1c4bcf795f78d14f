"""The work in hand that heartbeats report (SPEC §2.4), in-process: stored with the
heartbeat and shown per assignment in the task's view, taken only for assignments the
reporting device holds and within the task's chunks, and gone when the assignment ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aeamc.coordinator.config import SchedulerConfig
from aeamc.coordinator.progress import kept_reports
from aeamc.coordinator.store import tasks as task_rows
from aeamc.shared.messages import MAX_WORK_REPORTS, WorkReport
from aeamc.shared.refusals import Refusal
from tests.support.device import GOOD_TELEMETRY
from tests.support.inprocess import Fleet


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    scheduler = SchedulerConfig(assignment_timeout_s=60, max_inflight_per_device=1)
    async with Fleet(tmp_path, scheduler=scheduler) as f:
        yield f


async def held(fleet: Fleet) -> set[tuple[str, str]]:
    """Every (task, device) with stored progress."""
    return await fleet.c.db.read(task_rows.progress_held)


async def chunks_done(fleet: Fleet, task_id: str) -> dict[str, int | None]:
    """Each assignment's ``chunks_done`` in the task's view, by device."""
    view = await fleet.c.tasks.task_view(task_id)
    return {a["device_id"]: a["chunks_done"] for a in view["assignments"]}


async def test_the_view_shows_what_the_device_last_reported(fleet: Fleet) -> None:
    d = await fleet.enroll()
    task_id = await fleet.submit(chunks=8)
    assert await fleet.schedule() == 1
    assert await chunks_done(fleet, task_id) == {d.device_id: None}  # nothing said yet
    answer = await fleet.heartbeat(d, work=[(task_id, 3)])
    assert answer["reads_work"] is True
    assert await chunks_done(fleet, task_id) == {d.device_id: 3}
    await fleet.heartbeat(d, work=[(task_id, 8)])
    assert await chunks_done(fleet, task_id) == {d.device_id: 8}
    # Started again from chunk 0 (the agent restarted): the latest word counts.
    await fleet.heartbeat(d, work=[(task_id, 0)])
    assert await chunks_done(fleet, task_id) == {d.device_id: 0}
    # A heartbeat without work (an agent too old to report it) leaves nothing known.
    await fleet.heartbeat(d)
    assert await chunks_done(fleet, task_id) == {d.device_id: None}
    assert await held(fleet) == set()
    await fleet.heartbeat(d, work=[(task_id, 5)])
    await fleet.prove(d, task_id)
    # Proved: its proof covers every chunk, whatever was last reported.
    assert await chunks_done(fleet, task_id) == {d.device_id: 8}
    assert await fleet.c.maintenance.forget_ended_progress() == 1
    assert await held(fleet) == set()


async def test_a_device_cannot_report_work_it_does_not_hold(fleet: Fleet) -> None:
    """A hostile device names another device's task, tasks that do not exist, and its own
    task with more chunks than it has, or twice: its heartbeat is taken (its liveness is
    its own), but nothing it names changes anything, and the coordinator keeps one entry
    per live assignment at most, never one for a task the device does not hold."""
    honest = await fleet.enroll()
    hostile = await fleet.enroll()
    first = await fleet.submit(chunks=8, seed=1)
    second = await fleet.submit(chunks=8, seed=2)
    assert await fleet.schedule() == 2
    holders = {t: next(iter(await fleet.assignments(t))) for t in (first, second)}
    theirs = next(t for t, d in holders.items() if d == honest.device_id)
    own = next(t for t, d in holders.items() if d == hostile.device_id)
    await fleet.heartbeat(honest, work=[(theirs, 3)])

    made_up = [(f"t-{i:016x}", 0) for i in range(MAX_WORK_REPORTS - 3)]
    answer = await fleet.heartbeat(
        hostile, work=[(theirs, 7), (own, 65_536), ("t-not-a-task", 1), *made_up]
    )
    assert answer["state"] == "active"
    assert await chunks_done(fleet, theirs) == {honest.device_id: 3}
    assert await chunks_done(fleet, own) == {hostile.device_id: None}
    assert await held(fleet) == {(theirs, honest.device_id)}

    # Its own task named twice contradicts itself: ignored, even with plausible counts.
    await fleet.heartbeat(hostile, work=[(own, 2), (own, 3)])
    assert await chunks_done(fleet, own) == {hostile.device_id: None}
    # Within bounds, on its own task, it is believed: that is all it can change.
    await fleet.heartbeat(hostile, work=[(own, 8), (theirs, 0)])
    assert await chunks_done(fleet, own) == {hostile.device_id: 8}
    assert await chunks_done(fleet, theirs) == {honest.device_id: 3}
    assert await held(fleet) == {(theirs, honest.device_id), (own, hostile.device_id)}


async def test_progress_goes_when_the_assignment_expires(fleet: Fleet) -> None:
    d = await fleet.enroll()
    task_id = await fleet.submit(chunks=8)
    assert await fleet.schedule() == 1
    await fleet.heartbeat(d, work=[(task_id, 4)])
    fleet.clock.advance(61_000)
    assert await fleet.c.maintenance.expire_assignments() == 1
    assert await fleet.assignments(task_id) == {d.device_id: "expired"}
    assert await held(fleet) == set()
    assert await chunks_done(fleet, task_id) == {d.device_id: None}
    # The device, not yet aware, reports it again: it no longer holds it.
    await fleet.heartbeat(d, work=[(task_id, 5)])
    assert await held(fleet) == set()


async def test_progress_of_a_quarantined_device_goes_within_a_heartbeat_window(
    fleet: Fleet,
) -> None:
    """Its heartbeats are refused from then on, so no report of its own clears it: the
    view shows nothing at once, and the periodic sweep drops it within a window."""
    d = await fleet.enroll()
    task_id = await fleet.submit(chunks=8)
    assert await fleet.schedule() == 1
    await fleet.heartbeat(d, work=[(task_id, 4)])
    await fleet.c.fleet.quarantine(d.device_id, "operator")
    assert await chunks_done(fleet, task_id) == {d.device_id: None}
    await fleet.c.maintenance.expire_assignments()
    assert len(await held(fleet)) == 1  # a round with nothing due sweeps once a window
    fleet.clock.advance(fleet.config.protocol.heartbeat_window_s * 1000)
    await fleet.c.maintenance.expire_assignments()
    assert await held(fleet) == set()


async def test_an_older_heartbeat_changes_nothing(fleet: Fleet) -> None:
    """Two heartbeats of one device answered out of order: the later seq stands, as the
    older one is refused (its seq is not above the newer one's)."""
    d = await fleet.enroll()
    task_id = await fleet.submit(chunks=8)
    assert await fleet.schedule() == 1
    work = {"work": [{"task_id": task_id, "chunks_done": 2}]}
    older = d.sim.poa(GOOD_TELEMETRY, timestamp=fleet.clock(), **work)
    await fleet.heartbeat(d, work=[(task_id, 5)])
    with pytest.raises(Refusal) as refused:
        await fleet.c.heartbeats.heartbeat(older, d.peer)
    assert refused.value.code == "replay"
    assert await chunks_done(fleet, task_id) == {d.device_id: 5}


def test_only_reports_of_held_tasks_within_their_chunks_are_kept() -> None:
    held = {"a": 4, "b": 4}
    work = (WorkReport("a", 1), WorkReport("b", 5), WorkReport("c", 0), WorkReport("d", 1))
    assert kept_reports(work, held) == {"a": 1}
    assert kept_reports((WorkReport("a", 1), WorkReport("a", 2)), held) == {}
    assert kept_reports(None, held) == {}
