"""Devices seen over mDNS but never enrolled (candidates), in-process on a real SQLite file:
the operator can export and erase them, they expire, an erased identity that keeps
advertising is never recorded again, and erasures lost by restoring an older database are
carried out again."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator.config import CoordinatorConfig
from aeamc.coordinator.discovery import Discovery
from aeamc.coordinator.privacypolicy import PrivacyConfig
from aeamc.shared.discovery import AGENT_SERVICE_TYPE
from aeamc.shared.identity import SigningKey
from aeamc.shared.refusals import Refusal
from aeamc.shared.runtime.services import ADDED, UPDATED, ServiceEvent, ServiceRecord
from tests.support.device import agent_advert
from tests.support.inprocess import Fleet

DAY_MS = 86_400_000


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with Fleet(tmp_path, privacy=PrivacyConfig(candidate_retention_days=3)) as f:
        yield f


def advert_event(key: SigningKey, *, port: int = 9999, change: str = ADDED) -> ServiceEvent:
    """What the mDNS browser reports for an agent advertising under ``key``."""
    advert = agent_advert(key)
    name = f"{key.device_id}.{AGENT_SERVICE_TYPE}"
    record = ServiceRecord(
        name=name,
        service_type=AGENT_SERVICE_TYPE,
        addresses=("192.0.2.7",),
        port=port,
        properties=advert.txt(),
        server=None,
    )
    return ServiceEvent(change, name, AGENT_SERVICE_TYPE, record)


async def announce(fleet: Fleet, discovery: Discovery, event: ServiceEvent) -> None:
    """Hand ``event`` to discovery as its browser would, and wait for what it started."""
    discovery._on_agent(event)
    await asyncio.gather(*list(fleet.c._background))


async def candidates(fleet: Fleet) -> dict[str, dict[str, Any]]:
    return {r["device_id"]: r for r in await fleet.rows("SELECT * FROM candidates")}


async def test_a_candidate_is_exported_then_erased_and_never_recorded_again(
    fleet: Fleet,
) -> None:
    discovery = Discovery(fleet.c, 0)
    key = SigningKey.from_seed(os.urandom(32))
    await announce(fleet, discovery, advert_event(key))
    assert key.device_id in await candidates(fleet)

    export = await fleet.c.privacy.export_device(key.device_id)
    assert export["device"] is None and export["heartbeats"] == []
    seen = export["mdns_candidate"]
    assert seen["port"] == 9999 and seen["address"] == "192.0.2.7"
    assert seen["txt"]["pk"] == key.public_key.hex()

    erased = await fleet.c.privacy.erase_device(key.device_id)
    assert erased["state"] == "erased" and erased["deleted"] == {"candidates": 1}
    assert await candidates(fleet) == {}
    # It keeps advertising, changes its advert, announces again: nothing is recorded.
    await announce(fleet, discovery, advert_event(key, port=9998, change=UPDATED))
    await announce(fleet, discovery, advert_event(key))
    assert await candidates(fleet) == {}
    assert not await discovery.record_candidate(
        {"device_id": key.device_id, "address": None, "port": 1, "txt": "{}", "last_seen": 0}
    )
    # Nothing is held any more: export and erasure find nothing.
    for call in (fleet.c.privacy.export_device, fleet.c.privacy.erase_device):
        with pytest.raises(Refusal) as refused:
            await call(key.device_id)
        assert refused.value.code == "not_found"


async def test_an_enrolled_device_that_is_erased_is_not_recorded_as_a_candidate(
    fleet: Fleet,
) -> None:
    discovery = Discovery(fleet.c, 0)
    device = await fleet.enroll()
    await fleet.c.privacy.erase_device(device.device_id)
    await announce(fleet, discovery, advert_event(device.sim.key))
    assert await candidates(fleet) == {}


async def test_an_unknown_id_is_not_found(fleet: Fleet) -> None:
    nobody = SigningKey.from_seed(os.urandom(32)).device_id
    for call in (fleet.c.privacy.export_device, fleet.c.privacy.erase_device):
        with pytest.raises(Refusal) as refused:
            await call(nobody)
        assert refused.value.code == "not_found"
    assert await fleet.rows("SELECT * FROM erased_devices") == []


async def test_candidates_not_announced_within_the_retention_are_deleted(fleet: Fleet) -> None:
    discovery = Discovery(fleet.c, 0)
    old, recent = (SigningKey.from_seed(os.urandom(32)) for _ in range(2))
    await announce(fleet, discovery, advert_event(old))
    fleet.clock.advance(2 * DAY_MS)
    await announce(fleet, discovery, advert_event(recent))
    fleet.clock.advance(DAY_MS + 1)  # old: 3 days and 1 ms; recent: 1 day and 1 ms
    assert await fleet.c.maintenance.purge_candidates() == 1
    assert set(await candidates(fleet)) == {recent.device_id}


async def test_a_restored_database_has_its_later_erasures_carried_out_again(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    config = CoordinatorConfig(state_dir=state)
    fleet = await Fleet(state, config).start()
    discovery = Discovery(fleet.c, 0)
    device = await fleet.enroll()
    seen = SigningKey.from_seed(os.urandom(32))
    await announce(fleet, discovery, advert_event(seen))
    await fleet.db.checkpoint()
    backup = tmp_path / "backup.db"
    shutil.copyfile(state / "coordinator.db", backup)  # the operator's backup
    await fleet.c.privacy.erase_device(device.device_id)
    await fleet.c.privacy.erase_device(seen.device_id)
    await fleet.close()

    # The operator restores the backup (and only the database, as the runbook says).
    for name in ("coordinator.db-wal", "coordinator.db-shm"):
        (state / name).unlink(missing_ok=True)
    shutil.copyfile(backup, state / "coordinator.db")
    fleet = await Fleet(state, config).start()
    try:
        assert device.device_id in fleet.c.devices  # the backup still holds it
        again = await fleet.c.privacy.reapply_erasures()
        assert sorted(again) == sorted([device.device_id, seen.device_id])
        assert device.device_id not in fleet.c.devices
        for table in ("devices", "heartbeats", "candidates", "certificates"):
            left = await fleet.rows(f"SELECT device_id FROM {table}")
            assert left == [], (table, left)
        erased = {r["device_id"] for r in await fleet.rows("SELECT * FROM erased_devices")}
        assert erased == {device.device_id, seen.device_id}
        assert await fleet.c.privacy.reapply_erasures() == []  # nothing left to redo
        # Carried out again, not journaled again: one line per erasure.
        journal = fleet.c.privacy.journal_path.read_text().splitlines()
        assert sorted(line.split()[0] for line in journal) == sorted(erased)
    finally:
        await fleet.close()


async def test_an_erasure_interrupted_by_a_crash_is_carried_out_at_the_next_start(
    tmp_path: Path,
) -> None:
    """The journal is written before the database: a coordinator that dies between the two
    (here: its database write never happens) still erases the device when it starts again."""
    state = tmp_path / "state"
    config = CoordinatorConfig(state_dir=state)
    fleet = await Fleet(state, config).start()
    device = await fleet.enroll()
    seen = SigningKey.from_seed(os.urandom(32))
    await announce(fleet, Discovery(fleet.c, 0), advert_event(seen))

    class Crash(BaseException):
        """The process dies here: nothing after it runs."""

    async def dies(fn: Any) -> Any:
        raise Crash

    write = fleet.c.privacy.ctx.db.write
    fleet.c.privacy.ctx.db.write = dies  # type: ignore[method-assign]
    for device_id in (device.device_id, seen.device_id):
        with pytest.raises(Crash):
            await fleet.c.privacy.erase_device(device_id)
    fleet.c.privacy.ctx.db.write = write  # type: ignore[method-assign]
    assert await fleet.rows("SELECT device_id FROM erased_devices") == []
    await fleet.close()

    fleet = await Fleet(state, config).start()
    try:
        again = await fleet.c.privacy.reapply_erasures()
        assert sorted(again) == sorted([device.device_id, seen.device_id])
        assert device.device_id not in fleet.c.devices
        assert await fleet.rows("SELECT device_id FROM candidates") == []
        erased = {r["device_id"] for r in await fleet.rows("SELECT * FROM erased_devices")}
        assert erased == {device.device_id, seen.device_id}
    finally:
        await fleet.close()


async def test_erasing_an_unknown_id_journals_nothing(fleet: Fleet) -> None:
    """A made-up id is not found, and leaves no line that a later start would act on."""
    with pytest.raises(Refusal):
        await fleet.c.privacy.erase_device("ab" * 16)
    assert not fleet.c.privacy.journal_path.exists()
