"""Components attached to the coordinator from outside its services (attached.py): status
sections appear in the summary under their names, in the order attached, and feed the
alerts; the fleet-update view is reloaded when an erasure deletes update reports."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator.attached import ANCHORING, UPDATES, RolloutsView, StatusSection
from aeamc.coordinator.config import CoordinatorConfig
from tests.support.inprocess import Fleet


class Section:
    """A status section with a fixed value, counting how often it was computed."""

    def __init__(self, name: str, value: dict[str, Any]) -> None:
        self.status_name = name
        self.value = value
        self.computed = 0

    async def status(self) -> dict[str, Any]:
        self.computed += 1
        return dict(self.value)


class Reloads:
    """A fleet-update view that records its reloads."""

    def __init__(self) -> None:
        self.loads = 0

    async def load(self) -> None:
        self.loads += 1


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    f = await Fleet(tmp_path, CoordinatorConfig(state_dir=tmp_path)).start()
    yield f
    await f.close()


async def test_sections_are_in_the_summary_in_the_order_attached(fleet: Fleet) -> None:
    plain = await fleet.c.status.summary()
    assert ANCHORING not in plain and UPDATES not in plain
    anchoring: StatusSection = Section(ANCHORING, {"state": "idle", "head": None})
    updates: StatusSection = Section(UPDATES, {"releases": []})
    fleet.c.add_status_section(anchoring)
    fleet.c.add_status_section(updates)
    summary = await fleet.c.status.summary()
    assert list(summary)[-2:] == [ANCHORING, UPDATES]
    assert summary[ANCHORING] == {"state": "idle", "head": None}
    assert summary[UPDATES] == {"releases": []}
    rest = {k: v for k, v in summary.items() if k not in (ANCHORING, UPDATES, "uptime_s")}
    assert json.dumps(rest) == json.dumps({k: v for k, v in plain.items() if k != "uptime_s"})


async def test_the_anchoring_section_feeds_the_alerts(fleet: Fleet) -> None:
    anchoring = Section(ANCHORING, {"state": "idle"})
    fleet.c.add_status_section(anchoring)
    await fleet.c.status.alerts()
    assert anchoring.computed == 1


async def test_an_erasure_reloads_the_attached_rollouts(fleet: Fleet) -> None:
    view = Reloads()
    rollouts: RolloutsView = view
    fleet.c.rollouts = rollouts
    device = await fleet.enroll()
    await fleet.c.privacy.erase_device(device.device_id)
    assert view.loads == 1
