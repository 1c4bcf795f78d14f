"""The operator's device state changes (SPEC §3), in-process: approval takes only a
pending, unexpired enrollment; quarantine is never left, whatever the operator writes as
the reason, and runs the one cascade. State is read back from the database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aeamc.coordinator.config import CoordinatorConfig
from aeamc.shared.refusals import Fault, Refusal
from tests.support.inprocess import Fleet


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with Fleet(tmp_path, CoordinatorConfig(state_dir=tmp_path)) as f:
        yield f


async def _state(fleet: Fleet, device_id: str) -> tuple[str, str]:
    row = await fleet.row("SELECT state, state_reason FROM devices WHERE device_id=?", [device_id])
    return row["state"], row["state_reason"]


async def test_approval_activates_a_pending_device_once(fleet: Fleet) -> None:
    d = await fleet.enroll(token=False, heartbeats=0)
    assert await _state(fleet, d.device_id) == ("pending", None)
    approved = await fleet.c.fleet.approve(d.device_id, "known to the owner")
    assert approved.state == "active"
    assert await _state(fleet, d.device_id) == ("active", "known to the owner")
    again = await fleet.c.fleet.approve(d.device_id, "twice")
    assert again.state == "active"
    assert await _state(fleet, d.device_id) == ("active", "known to the owner")


@pytest.mark.parametrize("reason", ["approved", "looks fine now"])
async def test_quarantine_is_never_left_whatever_the_reason(fleet: Fleet, reason: str) -> None:
    d = await fleet.enroll()
    task_id = await fleet.submit()
    assert await fleet.schedule() == 1
    await fleet.c.fleet.quarantine(d.device_id, "operator")
    with pytest.raises(Refusal) as refused:
        await fleet.c.fleet.approve(d.device_id, reason)
    assert (refused.value.fault, refused.value.code) == (Fault.CONFLICT, "quarantined")
    assert await _state(fleet, d.device_id) == ("quarantined", "operator")
    assert fleet.c.devices[d.device_id].quarantined
    # The cascade ran in the quarantine's transaction: the assignment is lost, and the
    # task goes to the next eligible device.
    assert await fleet.assignments(task_id) == {d.device_id: "lost"}
    other = await fleet.enroll()
    assert await fleet.schedule() == 1
    assert await fleet.assignments(task_id) == {d.device_id: "lost", other.device_id: "accepted"}


async def test_an_expired_enrollment_is_not_approved(fleet: Fleet) -> None:
    d = await fleet.enroll(token=False, heartbeats=0)
    fleet.clock.advance(fleet.config.enrollment.pending_ttl_s * 1000 + 1)
    with pytest.raises(Refusal) as refused:
        await fleet.c.fleet.approve(d.device_id, "late")
    assert refused.value.code == "pending_expired"
    assert await _state(fleet, d.device_id) == ("pending", None)


async def test_an_unknown_device_is_not_found(fleet: Fleet) -> None:
    for change in (fleet.c.fleet.approve, fleet.c.fleet.quarantine):
        with pytest.raises(Refusal) as refused:
            await change("0" * 64, "who?")
        assert refused.value.fault is Fault.NOT_FOUND
