"""Clients' content and WASM tasks in-process, on a real SQLite file: uploads are checked
and kept, a task may only name its owner's content, a device may fetch only the content
of a task it was given, and spot-checks re-execute WASM chunks like any other kind's."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from aeamc.coordinator.config import CoordinatorConfig, SpotCheckConfig
from aeamc.coordinator.spotchecks import CONTENT_RETRY_MAX_S, content_retry_delay_s
from aeamc.shared.refusals import Fault, Refusal
from tests.support.inprocess import Fleet, LinkedDevice
from tests.support.kernels import kernels, mandelbrot_input

CHUNKS = 8


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    config = CoordinatorConfig(
        state_dir=tmp_path, spot_checks=SpotCheckConfig(catch_probability=1.0)
    )
    async with Fleet(tmp_path, config) as f:
        yield f


async def upload(fleet: Fleet, kind: str, data: bytes, owner: str | None = None) -> str:
    stored = await fleet.c.content.add(kind, data, owner or fleet.owner)
    return str(stored["digest"])


def wasm_task(module: str, data: str, **over: Any) -> dict[str, Any]:
    params = {"module": module, "input": data, "fuel": 10**9, "memory_mb": 16}
    return {"kind": "wasm", "params": params, "chunks": CHUNKS, **over}


async def refused(coro: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        await coro
    return caught.value


# -- uploads ----------------------------------------------------------------------------------


async def test_an_upload_is_on_disk_and_named_by_its_digest(fleet: Fleet) -> None:
    module = kernels()["mandelbrot"]
    first = await fleet.c.content.add("module", module, fleet.owner)
    digest = hashlib.sha256(module).hexdigest()
    assert first == {"digest": digest, "kind": "module", "size": len(module), "created": True}
    path = fleet.c.content.directory / digest
    assert path.read_bytes() == module and path.stat().st_mode & 0o777 == 0o600
    again = await fleet.c.content.add("module", module, fleet.owner)
    assert again["created"] is False
    assert await fleet.rows("SELECT digest, kind, size FROM blobs") == [
        {"digest": digest, "kind": "module", "size": len(module)}
    ]
    assert await fleet.c.content.read_for_client(digest, fleet.owner) == module


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"MZ\x90\x00 not wasm", "not a valid module"),
        (
            wasmtime.wat2wasm(
                '(module (import "wasi_snapshot_preview1" "fd_write"'
                ' (func (param i32 i32 i32 i32) (result i32))) (memory (export "memory") 1))'
            ),
            "may import nothing",
        ),
    ],
)
async def test_a_module_the_sandbox_would_not_run_is_refused_and_not_kept(
    fleet: Fleet, data: bytes, reason: str
) -> None:
    caught = await refused(fleet.c.content.add("module", data, fleet.owner))
    assert (caught.fault, caught.code) == (Fault.INVALID, "bad_module")
    assert reason in caught.message
    assert await fleet.rows("SELECT * FROM blobs") == []
    assert not fleet.c.content.directory.exists() or not any(fleet.c.content.directory.iterdir())


async def test_oversized_content_is_refused(fleet: Fleet) -> None:
    from aeamc.shared.wasmabi import MAX_MODULE_BYTES

    caught = await refused(fleet.c.content.add("module", b"\0" * (MAX_MODULE_BYTES + 1), "x"))
    assert (caught.fault, caught.code) == (Fault.TOO_LARGE, "body_too_large")


async def test_the_same_bytes_cannot_be_both_kinds(fleet: Fleet) -> None:
    module = kernels()["matmul_int8"]
    await upload(fleet, "module", module)
    caught = await refused(fleet.c.content.add("input", module, fleet.owner))
    assert caught.fault == Fault.CONFLICT


# -- who may use and read what ----------------------------------------------------------------


async def test_a_task_may_only_name_content_its_owner_uploaded(fleet: Fleet) -> None:
    """Another client learning a digest (it is no secret) does not let it run that module
    on its input, nor read either: the digest grants nothing."""
    module = await upload(fleet, "module", kernels()["mandelbrot"])
    data = await upload(fleet, "input", mandelbrot_input())
    other = (await fleet.c.tokens.create_token("client", label="other")).owner
    caught = await refused(fleet.c.tasks.submit_task(wasm_task(module, data), "other", other))
    assert (caught.code, caught.extra.get("field")) == ("unknown_content", "params.module")
    own = await upload(fleet, "input", b"another input", owner=other)
    caught = await refused(fleet.c.tasks.submit_task(wasm_task(module, own), "other", other))
    assert caught.extra.get("field") == "params.module"
    with pytest.raises(Refusal) as unseen:
        await fleet.c.content.read_for_client(data, other)
    assert unseen.value.fault == Fault.NOT_FOUND
    assert await fleet.c.content.read_for_client(data, None) == mandelbrot_input()  # operator
    # Kinds must match: an input named as the module is refused too.
    caught = await refused(fleet.c.tasks.submit_task(wasm_task(data, data), "tests", fleet.owner))
    assert caught.code == "unknown_content" and "is an input" in caught.message
    assert await fleet.rows("SELECT task_id FROM tasks") == []


async def test_a_device_fetches_only_the_content_of_a_task_it_was_given(fleet: Fleet) -> None:
    worker = await fleet.enroll(kinds=("wasm",))
    module = await upload(fleet, "module", kernels()["mandelbrot"])
    data = await upload(fleet, "input", mandelbrot_input())
    unrelated = await upload(fleet, "input", b"someone's private data")
    await fleet.c.tasks.submit_task(wasm_task(module, data), "tests", fleet.owner)
    bystander = await fleet.enroll(kinds=("sha256-chain",))  # gets no WASM work
    assert await fleet.schedule() == 1
    assert worker.assignments and worker.assignments[-1].kind == "wasm"

    assert (
        await fleet.c.content.read_for_device(module, worker.device_id) == kernels()["mandelbrot"]
    )
    assert await fleet.c.content.read_for_device(data, worker.device_id) == mandelbrot_input()
    for device_id, digest in (
        (worker.device_id, unrelated),
        (bystander.device_id, module),
        (bystander.device_id, data),
    ):
        with pytest.raises(Refusal) as caught:
            await fleet.c.content.read_for_device(digest, device_id)
        assert caught.value.fault == Fault.NOT_FOUND


async def test_damaged_content_on_disk_is_never_served(fleet: Fleet) -> None:
    data = await upload(fleet, "input", os.urandom(1000))
    (fleet.c.content.directory / data).write_bytes(b"flipped")
    with pytest.raises(Exception, match="damaged"):
        await fleet.c.content.read_for_client(data, fleet.owner)


# -- WASM tasks run, are proved and are checked ------------------------------------------------


async def wasm_proved(fleet: Fleet, device: LinkedDevice) -> tuple[str, str, str]:
    module = await upload(fleet, "module", kernels()["matmul_int8"])
    m, k, n = 16, 24, 8
    data = await upload(fleet, "input", struct.pack("<3I", m, k, n) + os.urandom(m * k + k * n))
    answer = await fleet.c.tasks.submit_task(wasm_task(module, data), "tests", fleet.owner)
    assert await fleet.schedule() == 1
    for digest in (module, data):  # what the agent fetches before it runs the chunks
        device.sim.wasm_blobs[digest] = await fleet.c.content.read_for_device(
            digest, device.device_id
        )
    await fleet.prove(device, answer["task_id"])
    assert await fleet.c.blocks.form_block() is not None
    return answer["task_id"], module, data


async def test_an_honest_wasm_result_passes_its_spot_check(fleet: Fleet) -> None:
    device = await fleet.enroll(kinds=("wasm",))
    task_id, _, _ = await wasm_proved(fleet, device)
    assert await fleet.spot_checker.round() == 1
    check = await fleet.row("SELECT state FROM spot_checks WHERE task_id=?", [task_id])
    assert check["state"] == "passed"
    view = await fleet.c.tasks.task_view(task_id)
    assert view["verification"] == {"state": "verified", "by": "spot-check"}


async def test_a_device_faking_wasm_chunks_is_caught_by_re_execution(fleet: Fleet) -> None:
    cheat = await fleet.enroll(kinds=("wasm",))
    cheat.sim.cheat_chunks = frozenset(range(CHUNKS))
    task_id, _, _ = await wasm_proved(fleet, cheat)
    assert await fleet.spot_checker.round() == 1
    check = await fleet.row("SELECT state FROM spot_checks WHERE task_id=?", [task_id])
    assert check["state"] == "failed"
    assert fleet.c.devices[cheat.device_id].state == "quarantined"


async def test_claiming_an_output_for_a_chunk_that_has_none_fails_the_check(
    fleet: Fleet,
) -> None:
    """A kernel that always runs out of fuel has no output for any chunk; a device that
    proves one anyway (made-up bytes) fails when the coordinator re-executes."""
    endless = wasmtime.wat2wasm(
        """(module (memory (export "memory") 1)
        (func (export "aeamc_input") (param i32) (result i32) i32.const 16)
        (func (export "aeamc_output") (result i32) i32.const 0)
        (func (export "aeamc_run") (param i32 i32 i32) (result i32) (loop $l br $l) i32.const 0))"""
    )
    liar = await fleet.enroll(kinds=("wasm",))
    liar.sim.cheat_chunks = frozenset(range(CHUNKS))  # it never runs the kernel at all
    module = await upload(fleet, "module", endless)
    data = await upload(fleet, "input", b"x")
    task = wasm_task(module, data)
    task["params"]["fuel"] = 100_000
    answer = await fleet.c.tasks.submit_task(task, "tests", fleet.owner)
    assert await fleet.schedule() == 1
    await fleet.prove(liar, answer["task_id"])
    assert await fleet.c.blocks.form_block() is not None
    assert await fleet.spot_checker.round() == 1
    check = await fleet.row(
        "SELECT state, detail FROM spot_checks WHERE task_id=?", [answer["task_id"]]
    )
    assert check["state"] == "failed" and "out of fuel" in check["detail"]
    assert fleet.c.devices[liar.device_id].state == "quarantined"


async def test_missing_content_at_the_coordinator_never_counts_against_the_device(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """The coordinator cannot re-execute: its own module is gone. The check uses up no
    attempt and blames no device; it is tried again later and later (one log line each
    try, not one every round), and passes once the operator restores the module."""
    device = await fleet.enroll(kinds=("wasm",))
    task_id, module, _ = await wasm_proved(fleet, device)
    held = (fleet.c.content.directory / module).read_bytes()
    (fleet.c.content.directory / module).unlink()  # lost from the coordinator's disk
    retry_s = fleet.config.spot_checks.retry_s
    for tries in (1, 2, 3, 4):
        with caplog.at_level(logging.ERROR, logger="aeamc.coordinator.spotchecks"):
            caplog.clear()
            assert await fleet.spot_checker.round() == 1
        delay_ms = int(content_retry_delay_s(tries, retry_s) * 1000)
        check = await fleet.row(
            "SELECT state, attempts, next_attempt_at FROM spot_checks WHERE task_id=?", [task_id]
        )
        due_at = fleet.clock() + delay_ms
        assert check == {"state": "pending", "attempts": 0, "next_attempt_at": due_at}
        assert [r.levelno for r in caplog.records] == [logging.ERROR]
        assert f"try {tries}" in caplog.text and "not at fault" in caplog.text
        assert await fleet.spot_checker.round() == 0  # not due again at once: backing off
        fleet.clock.advance(delay_ms)
    assert len(fleet.link.challenges_to(device)) == 4  # the device is asked once per try
    record = fleet.c.devices[device.device_id]
    assert record.state == "active"
    assert (record.record.failures, record.record.refusals) == (0, 0)
    (fleet.c.content.directory / module).write_bytes(held)  # the operator restores it
    assert await fleet.spot_checker.round() == 1
    check = await fleet.row("SELECT state, attempts FROM spot_checks WHERE task_id=?", [task_id])
    assert check == {"state": "passed", "attempts": 0}


def test_the_wait_for_missing_content_doubles_up_to_a_cap() -> None:
    assert [content_retry_delay_s(n, 10.0) for n in range(1, 11)] == [
        10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0, CONTENT_RETRY_MAX_S
    ]  # fmt: skip
    assert content_retry_delay_s(10**6, 10.0) == CONTENT_RETRY_MAX_S  # no overflow
    assert content_retry_delay_s(3, 10.0, cap_s=30.0) == 30.0
    with pytest.raises(ValueError, match="from 1"):
        content_retry_delay_s(0, 10.0)


# -- chunk faults ------------------------------------------------------------------------------

ENDLESS = wasmtime.wat2wasm(
    """(module (memory (export "memory") 1)
    (func (export "aeamc_input") (param i32) (result i32) i32.const 16)
    (func (export "aeamc_output") (result i32) i32.const 0)
    (func (export "aeamc_run") (param i32 i32 i32) (result i32) (loop $l br $l) i32.const 0))"""
)


def fault_report(device: LinkedDevice, task_id: str, now: int, **over: Any) -> dict[str, Any]:
    from aeamc.shared.messages import ChunkFaultReport, sign

    fields = {
        "type": "chunk_fault",
        "task_id": task_id,
        "device_id": device.device_id,
        "chunk": 3,
        "code": "out_of_fuel",
        "timestamp": now,
        **over,
    }
    return sign(ChunkFaultReport, fields, device.sim.key).to_dict()


async def offered(
    fleet: Fleet, module_bytes: bytes, data_bytes: bytes = b"x", fuel: int = 100_000
) -> tuple[str, Any]:
    device = await fleet.enroll(kinds=("wasm",))
    module = await upload(fleet, "module", module_bytes)
    data = await upload(fleet, "input", data_bytes)
    task = wasm_task(module, data)
    task["params"]["fuel"] = fuel
    answer = await fleet.c.tasks.submit_task(task, "tests", fleet.owner)
    assert await fleet.schedule() == 1
    return str(answer["task_id"]), device


async def test_a_real_chunk_fault_fails_the_task_without_blame(fleet: Fleet) -> None:
    """The coordinator runs the chunk itself, sees the same fault, and fails the task at
    once: the client learns why, and no device waits out or is charged for the task."""
    task_id, device = await offered(fleet, ENDLESS)
    answer = await fleet.c.faults.report(fault_report(device, task_id, fleet.clock()), device.peer)
    assert answer["state"] == "failed" and "out of fuel" in answer["detail"]
    task = await fleet.row("SELECT state, detail FROM tasks WHERE task_id=?", [task_id])
    assert task["state"] == "failed" and "chunk 3 has no output" in task["detail"]
    assignment = await fleet.row("SELECT state, reason FROM assignments WHERE task_id=?", [task_id])
    assert assignment == {"state": "lost", "reason": "kernel fault"}
    record = fleet.c.devices[device.device_id].record
    assert (record.refusals, record.failures, record.timeouts) == (0, 0, 0)
    # Said again (a retry after a lost answer): the same answer, nothing more happens.
    again = await fleet.c.faults.report(fault_report(device, task_id, fleet.clock()), device.peer)
    assert again["state"] == "failed"
    assert await fleet.schedule() == 0  # a failed task is offered to nobody


async def test_a_claimed_fault_that_is_not_there_is_held_against_the_device(
    fleet: Fleet,
) -> None:
    """A device that says a chunk faults when it does not (to shed work) loses the task,
    which goes to another device, and the claim counts against it."""
    task_id, liar = await offered(fleet, kernels()["mandelbrot"], mandelbrot_input(), fuel=10**9)
    with pytest.raises(Refusal) as caught:
        await fleet.c.faults.report(
            fault_report(liar, task_id, fleet.clock(), code="trap"), liar.peer
        )
    assert (caught.value.fault, caught.value.code) == (Fault.CONFLICT, "not_a_fault")
    state = await fleet.row(
        "SELECT a.state, t.state AS task FROM assignments a JOIN tasks t USING (task_id) "
        "WHERE a.task_id=? AND a.device_id=?",
        [task_id, liar.device_id],
    )
    assert state == {"state": "lost", "task": "queued"}
    assert fleet.c.devices[liar.device_id].record.refusals == 1
    honest = await fleet.enroll(kinds=("wasm",))
    assert await fleet.schedule() == 1
    assert (await fleet.assignments(task_id))[honest.device_id] == "accepted"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"chunk": 8}, "invalid_message"),
        ({"timestamp": 1}, "stale_message"),
        ({"task_id": "t-00000000000000ff"}, "not_found"),
    ],
)
async def test_bad_fault_reports_change_nothing(
    fleet: Fleet, change: dict[str, Any], expected: str
) -> None:
    task_id, device = await offered(fleet, ENDLESS)
    with pytest.raises(Exception) as caught:
        fields = {"task_id": task_id, **change}
        await fleet.c.faults.report(
            fault_report(device, fields.pop("task_id"), fleet.clock(), **fields), device.peer
        )
    assert getattr(caught.value, "code", None) == expected
    assert (await fleet.row("SELECT state FROM tasks WHERE task_id=?", [task_id]))[
        "state"
    ] == "running"


async def test_a_fault_report_must_come_from_the_assigned_device(fleet: Fleet) -> None:
    """Another device (its own valid key and certificate) cannot fail someone's task, nor
    can anyone present the assigned device's report over another certificate."""
    task_id, device = await offered(fleet, ENDLESS)
    other = await fleet.enroll(kinds=("sha256-chain",))
    forged = fault_report(other, task_id, fleet.clock())
    with pytest.raises(Refusal) as caught:
        await fleet.c.faults.report(forged, other.peer)
    assert caught.value.fault == Fault.NOT_FOUND
    with pytest.raises(Exception) as wrong_cert:
        await fleet.c.faults.report(fault_report(device, task_id, fleet.clock()), other.peer)
    assert getattr(wrong_cert.value, "fault", None) == Fault.FORBIDDEN
    signed_by_other = fault_report(device, task_id, fleet.clock())
    signed_by_other["signature"] = forged["signature"]
    with pytest.raises(Exception) as bad_sig:
        await fleet.c.faults.report(signed_by_other, device.peer)
    assert getattr(bad_sig.value, "code", None) == "bad_signature"
    assert (await fleet.row("SELECT state FROM tasks WHERE task_id=?", [task_id]))[
        "state"
    ] == "running"


# -- a device that erases itself while its fault report is re-executed --------------------------


async def erased_during_reexecution(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch, task_id: str, device: LinkedDevice
) -> dict[str, Any]:
    """Send the device's fault report, erase the device (its owner's signed request, as
    ``DELETE /v1/devices/<id>`` carries it out) while the coordinator runs the chunk, and
    return the report's answer (a refusal as its fault and code)."""

    async def erase() -> None:
        answer = await fleet.c.privacy.erase_device(device.device_id)
        assert answer["state"] == "erased" and answer["deleted"]["assignments"] == 1

    return await during_reexecution(fleet, monkeypatch, task_id, device, erase)


async def during_reexecution(
    fleet: Fleet,
    monkeypatch: pytest.MonkeyPatch,
    task_id: str,
    device: LinkedDevice,
    meanwhile: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    """The answer to the device's fault report when ``meanwhile`` happens while the
    coordinator runs the chunk (a refusal as its fault and code)."""
    started, erased = threading.Event(), threading.Event()
    read = fleet.c.content.get

    def read_after_the_erasure(digest: str) -> bytes:  # in the re-execution's thread
        started.set()
        assert erased.wait(60)
        return read(digest)

    monkeypatch.setattr(fleet.c.content, "get", read_after_the_erasure)
    report = asyncio.create_task(
        fleet.c.faults.report(fault_report(device, task_id, fleet.clock()), device.peer)
    )
    assert await asyncio.to_thread(started.wait, 60)
    try:
        await meanwhile()
    finally:
        erased.set()
    try:
        return await report
    except Refusal as refusal:
        return {"fault": refusal.fault, "code": refusal.code}


async def nothing_left_of(fleet: Fleet, device: LinkedDevice) -> None:
    assert device.device_id not in fleet.c.devices
    for table in ("devices", "assignments", "spot_checks", "proofs"):
        rows = await fleet.rows(f"SELECT * FROM {table} WHERE device_id=?", [device.device_id])
        assert rows == [], table
    assert await fleet.rows(
        "SELECT device_id FROM erased_devices WHERE device_id=?", [device.device_id]
    ) == [{"device_id": device.device_id}]


async def test_a_false_fault_claim_of_a_device_erased_meanwhile_is_answered_erased(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk has an output, but the device is gone by then: the erasure already took
    its assignment back for other devices, there is no record left to blame, and the device is told
    it was erased (not that its assignment is withdrawn). The task runs elsewhere."""
    task_id, device = await offered(fleet, kernels()["mandelbrot"], mandelbrot_input(), fuel=10**9)
    answer = await erased_during_reexecution(fleet, monkeypatch, task_id, device)
    assert answer == {"fault": Fault.FORBIDDEN, "code": "erased"}
    # As the erasure left it: open, for other devices, with no word of the claim.
    task = await fleet.row("SELECT state, detail FROM tasks WHERE task_id=?", [task_id])
    assert task["state"] == "running" and "claimed" not in (task["detail"] or "")
    await nothing_left_of(fleet, device)
    honest = await fleet.enroll(kinds=("wasm",))
    assert await fleet.schedule() == 1
    assert await fleet.assignments(task_id) == {honest.device_id: "accepted"}
    assert fleet.c.devices[honest.device_id].record.refusals == 0


async def test_a_real_fault_reported_by_a_device_erased_meanwhile_still_fails_the_task(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator's own run shows the fault: the task cannot be done by anyone, so it
    fails, whoever reported it; nothing is recreated for the erased device."""
    task_id, device = await offered(fleet, ENDLESS)
    answer = await erased_during_reexecution(fleet, monkeypatch, task_id, device)
    assert answer["state"] == "failed" and "out of fuel" in answer["detail"]
    task = await fleet.row("SELECT state, detail FROM tasks WHERE task_id=?", [task_id])
    assert task["state"] == "failed" and "chunk 3 has no output" in task["detail"]
    await nothing_left_of(fleet, device)
    await fleet.enroll(kinds=("wasm",))
    assert await fleet.schedule() == 0  # a failed task is offered to nobody


async def test_a_false_fault_claim_of_a_device_quarantined_meanwhile_is_not_counted_twice(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator quarantines the device while its claim is checked: the quarantine
    already took its assignment back, so the claim adds no refusal to its record."""
    task_id, device = await offered(fleet, kernels()["mandelbrot"], mandelbrot_input(), fuel=10**9)

    async def quarantine() -> None:
        await fleet.c.fleet.quarantine(device.device_id, "operator")

    answer = await during_reexecution(fleet, monkeypatch, task_id, device, quarantine)
    assert answer == {"fault": Fault.CONFLICT, "code": "conflict"}
    assignment = await fleet.row(
        "SELECT state, reason FROM assignments WHERE task_id=? AND device_id=?",
        [task_id, device.device_id],
    )
    assert assignment == {"state": "lost", "reason": "device quarantined"}
    assert fleet.c.devices[device.device_id].record.refusals == 0
    row = await fleet.row("SELECT refusals FROM devices WHERE device_id=?", [device.device_id])
    assert row == {"refusals": 0}
