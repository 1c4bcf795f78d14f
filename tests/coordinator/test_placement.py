"""Placement (SPEC §4.1) on a real coordinator, in-process: a task goes only where it
fits — the kind, the client the device's owner accepts, the tags (the device's own or the
operator's), CPUs and memory, and a WASM task's limits — and a task nothing fits says why.
A device the coordinator would rank first but that does not fit never sees the task."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator.config import CoordinatorConfig
from aeamc.shared.refusals import Fault, Refusal
from tests.support.inprocess import Fleet
from tests.support.kernels import kernels, mandelbrot_input

HIGH, LOW = 95, 60  # battery percentages: the first ranks above the second


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    async with Fleet(tmp_path, CoordinatorConfig(state_dir=tmp_path)) as f:
        yield f


async def view(fleet: Fleet, task_id: str) -> dict[str, Any]:
    return await fleet.c.tasks.task_view(task_id)


async def test_a_required_tag_passes_over_a_better_device_without_it(fleet: Fleet) -> None:
    best = await fleet.enroll(battery_pct=HIGH)
    tagged = await fleet.enroll(battery_pct=LOW, caps={"tags": ["gpu", "lab"]})
    task_id = await fleet.submit(requires={"tags": ["gpu"]})
    assert await fleet.schedule() == 1
    assert await fleet.assignments(task_id) == {tagged.device_id: "accepted"}
    assert not best.assignments
    untagged = await fleet.submit(seed=1)  # requires nothing: the best device
    await fleet.schedule()
    assert await fleet.assignments(untagged) == {best.device_id: "accepted"}
    stored = await fleet.row("SELECT placement FROM tasks WHERE task_id=?", [task_id])
    assert json.loads(stored["placement"]) == {"tags": ["gpu"]}
    assert (await view(fleet, task_id))["requires"] == {"tags": ["gpu"]}


async def test_the_operators_tags_place_work_and_outlive_a_restart(fleet: Fleet) -> None:
    device = await fleet.enroll(caps={"tags": ["lab"]})
    task_id = await fleet.submit(requires={"tags": ["lab", "rack-2"]})
    assert await fleet.schedule() == 0
    assert (await view(fleet, task_id))["unplaced"] == (
        "no enrolled device fits: lacks the tag rack-2 (1 device)"
    )
    changed = await fleet.c.fleet.set_tags(device.device_id, ["rack-2", "spare"], ["spare"])
    assert changed.operator_tags == ("rack-2",)
    shown = fleet.c.fleet.device_view(changed)["tags"]
    assert shown == {"device": ["lab"], "operator": ["rack-2"]}
    assert await fleet.schedule() == 1
    assert await fleet.assignments(task_id) == {device.device_id: "accepted"}
    assert (await view(fleet, task_id))["unplaced"] is None
    # What is held about the device, the operator's tags included, is in its export.
    exported = await fleet.c.privacy.export_device(device.device_id)
    assert exported["device"]["tags"] == ["rack-2"]
    # The database holds them: a restarted coordinator's registry has them back.
    await fleet.c.devices.load(fleet.db, 0)
    assert fleet.c.devices[device.device_id].operator_tags == ("rack-2",)
    # Removing one the device carries itself changes nothing: its tags are its owner's.
    again = await fleet.c.fleet.set_tags(device.device_id, [], ["lab", "rack-2"])
    assert again.operator_tags == () and again.capabilities.tags == ("lab",)


async def test_tagging_an_unknown_or_erased_device_is_not_found_and_writes_nothing(
    fleet: Fleet,
) -> None:
    device = await fleet.enroll()
    with pytest.raises(Refusal) as caught:
        await fleet.c.fleet.set_tags("00" * 16, ["lab"], [])
    assert caught.value.fault is Fault.NOT_FOUND
    await fleet.c.privacy.erase_device(device.device_id)
    with pytest.raises(Refusal) as caught:
        await fleet.c.fleet.set_tags(device.device_id, ["lab"], [])
    assert caught.value.fault is Fault.NOT_FOUND
    assert await fleet.rows("SELECT tags FROM devices") == []


async def test_too_many_operator_tags_are_refused(fleet: Fleet) -> None:
    device = await fleet.enroll()
    with pytest.raises(Refusal) as caught:
        await fleet.c.fleet.set_tags(device.device_id, [f"t{i}" for i in range(11)], [])
    assert caught.value.fault is Fault.INVALID
    assert await fleet.rows("SELECT tags FROM devices") == [{"tags": "[]"}]


async def test_a_device_gets_only_the_clients_its_owner_accepts(fleet: Fleet) -> None:
    other = (await fleet.c.tokens.create_token("client", label="other")).owner
    picky = await fleet.enroll(battery_pct=HIGH, caps={"clients": [other]})
    anyone = await fleet.enroll(battery_pct=LOW)
    task_id = await fleet.submit()
    await fleet.schedule()
    assert await fleet.assignments(task_id) == {anyone.device_id: "accepted"}
    assert not picky.assignments
    # The signed assignment names the client, so the device can check it too.
    assert [a.client for a in anyone.assignments] == [fleet.owner]
    theirs = await fleet.c.tasks.submit_task(
        {"kind": "sha256-chain", "params": {"seed": "11" * 32, "iterations": 5}, "chunks": 2},
        "other",
        other,
    )
    await fleet.schedule()
    assert await fleet.assignments(theirs["task_id"]) == {picky.device_id: "accepted"}


async def test_cpus_and_memory_are_minimums(fleet: Fleet) -> None:
    small = await fleet.enroll(battery_pct=HIGH)  # 2 CPUs, 1024 MiB
    big = await fleet.enroll(battery_pct=LOW, caps={"cpus": 8, "mem_mb": 16384})
    for requires in ({"min_cpus": 4}, {"min_mem_mb": 2048}):
        task_id = await fleet.submit(
            requires=requires, seed=len(requires) + requires.get("min_cpus", 0)
        )
        await fleet.schedule()
        assert await fleet.assignments(task_id) == {big.device_id: "accepted"}
    assert not small.assignments


async def test_a_wasm_task_goes_only_within_the_owners_limits(fleet: Fleet) -> None:
    module = kernels()["mandelbrot"]
    stored = await fleet.c.content.add("module", module, fleet.owner)
    data = await fleet.c.content.add("input", mandelbrot_input(), fleet.owner)
    limits = {"max_memory_mb": 8, "max_fuel": 10**9, "max_module_bytes": 1 << 20}
    kinds = ("sha256-chain", "wasm")
    low_memory = await fleet.enroll(battery_pct=HIGH, kinds=kinds, caps={"wasm": limits})
    small_modules = await fleet.enroll(
        battery_pct=HIGH,
        kinds=kinds,
        caps={"wasm": {**limits, "max_memory_mb": 64, "max_module_bytes": len(module) - 1}},
    )
    task = {
        "kind": "wasm",
        "params": {
            "module": stored["digest"],
            "input": data["digest"],
            "fuel": 10**8,
            "memory_mb": 16,
        },
        "chunks": 4,
    }
    task_id = (await fleet.c.tasks.submit_task(task, "tests", fleet.owner))["task_id"]
    assert await fleet.schedule() == 0
    unplaced = (await view(fleet, task_id))["unplaced"]
    assert unplaced.startswith("no enrolled device fits: ")
    assert "allows 8 MiB per chunk, the task asks 16 (1 device)" in unplaced
    assert f"allows modules of {len(module) - 1} bytes, the task's has {len(module)}" in unplaced
    roomy = await fleet.enroll(
        battery_pct=LOW, kinds=kinds, caps={"wasm": {**limits, "max_memory_mb": 16}}
    )
    assert await fleet.schedule() == 1
    assert await fleet.assignments(task_id) == {roomy.device_id: "accepted"}
    assert not low_memory.assignments and not small_modules.assignments
    stored_placement = await fleet.row("SELECT placement FROM tasks WHERE task_id=?", [task_id])
    assert json.loads(stored_placement["placement"]) == {"module_bytes": len(module)}
    assert (await view(fleet, task_id))["requires"] == {}


async def test_with_no_device_at_all_the_task_says_so(fleet: Fleet) -> None:
    task_id = await fleet.submit()
    assert (await view(fleet, task_id))["unplaced"] == "no device is enrolled and approved"
    await fleet.enroll()
    assert (await view(fleet, task_id))["unplaced"] is None


@pytest.mark.parametrize(
    "requires",
    [{"tags": ["GPU"]}, {"tags": "gpu"}, {"min_cpus": 0}, {"gpus": 1}, ["gpu"]],
)
async def test_a_malformed_requirement_is_refused_and_nothing_is_queued(
    fleet: Fleet, requires: Any
) -> None:
    task = {
        "kind": "sha256-chain",
        "params": {"seed": "00" * 32, "iterations": 5},
        "chunks": 1,
        "requires": requires,
    }
    with pytest.raises(Exception) as caught:
        await fleet.c.tasks.submit_task(task, "tests", fleet.owner)
    assert "requires" in str(caught.value)
    assert await fleet.rows("SELECT task_id FROM tasks") == []
