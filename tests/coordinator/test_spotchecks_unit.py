"""The spot-checker (SPEC §14.3, docs/verification.md) one round at a time, in-process:
what a correct, wrong, missing, malformed or oversized answer leads to, how retries back
off, when silence quarantines, and how a dispute is settled by re-execution without any
device answering. Outcomes are read back from the database (tests/support/inprocess.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator.config import CoordinatorConfig, SpotCheckConfig
from aeamc.shared import spotcheck
from aeamc.shared.refusals import Refusal
from tests.support.inprocess import (
    GARBAGE,
    OVERSIZED,
    SILENT,
    UNKNOWN_TASK,
    Fleet,
    LinkedDevice,
)

CHUNKS = 8
#: Small enough that a padded answer is over it, large enough for any real opening.
MAX_ANSWER = 64 * 1024

Start = Callable[..., Awaitable[Fleet]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """Build the fleet with spot-check settings; every receipt of a new device is checked
    (``catch_probability`` 1.0), so each test decides what is checked by what it proves."""
    fleets: list[Fleet] = []

    async def build(**checks: Any) -> Fleet:
        settings = {
            "catch_probability": 1.0,
            "max_attempts": 3,
            "retry_s": 10.0,
            "max_answer_bytes": MAX_ANSWER,
            **checks,
        }
        config = CoordinatorConfig(state_dir=tmp_path, spot_checks=SpotCheckConfig(**settings))
        fleets.append(await Fleet(tmp_path, config).start())
        return fleets[-1]

    yield build
    for f in fleets:
        await f.close()


async def proved(fleet: Fleet, device: LinkedDevice, *, seed: int = 0) -> str:
    """A task run and proved by ``device`` alone, its receipt in a new block."""
    task_id = await fleet.submit(seed=seed, chunks=CHUNKS)
    assert await fleet.schedule() == 1
    assert device.assignments[-1].task_id == task_id
    await fleet.prove(device, task_id)
    assert await fleet.c.blocks.form_block() is not None
    return task_id


async def check(fleet: Fleet, task_id: str) -> dict[str, Any]:
    return await fleet.row(
        "SELECT state, attempts, next_attempt_at, detail, reexecuted_chunks, indices "
        "FROM spot_checks WHERE task_id=?",
        [task_id],
    )


async def proof(fleet: Fleet, task_id: str, device: LinkedDevice) -> dict[str, Any]:
    return await fleet.row(
        "SELECT p.credit, a.state AS assignment, t.state AS task FROM proofs p "
        "JOIN assignments a ON a.task_id = p.task_id AND a.device_id = p.device_id "
        "JOIN tasks t ON t.task_id = p.task_id WHERE p.task_id=? AND p.device_id=?",
        [task_id, device.device_id],
    )


async def record(fleet: Fleet, device: LinkedDevice) -> dict[str, Any]:
    return await fleet.row(
        "SELECT state, passes, failures, unanswered FROM devices WHERE device_id=?",
        [device.device_id],
    )


async def test_a_correct_answer_verifies_the_proof(start: Start) -> None:
    fleet = await start()
    device = await fleet.enroll()
    task_id = await proved(fleet, device)
    assert (await check(fleet, task_id))["state"] == "pending"

    assert await fleet.spot_checker.round() == 1
    assert (await check(fleet, task_id))["state"] == "passed"
    assert (await proof(fleet, task_id, device))["credit"] == "verified"
    assert (await record(fleet, device))["passes"] == 1
    view = await fleet.c.tasks.task_view(task_id)
    assert view["verification"] == {"state": "verified", "by": "spot-check"}
    # The challenge: the chunks the block hash picks, within the configured time and size.
    [call] = fleet.link.challenges_to(device)
    cfg = fleet.config.spot_checks
    assert (call.timeout_s, call.max_bytes) == (cfg.timeout_s, cfg.max_answer_bytes)
    block = await fleet.row("SELECT hash FROM blocks WHERE height=0")
    expected = spotcheck.challenge_indices(bytes(block["hash"]), task_id, cfg.k, CHUNKS)
    assert list(device.challenges[0].indices) == expected
    assert await fleet.spot_checker.round() == 0  # nothing left to check


async def test_a_wrong_answer_fails_and_quarantines(start: Start) -> None:
    fleet = await start()
    cheat = await fleet.enroll()
    cheat.sim.cheat_chunks = frozenset(range(CHUNKS))  # every output byte made up
    task_id = await proved(fleet, cheat)

    assert await fleet.spot_checker.round() == 1
    assert (await check(fleet, task_id))["state"] == "failed"
    assert await record(fleet, cheat) == {
        "state": "quarantined",
        "passes": 0,
        "failures": 1,
        "unanswered": 0,
    }
    assert fleet.c.devices[cheat.device_id].state == "quarantined"
    # Its result is withdrawn and the task runs again; its certificate is revoked.
    assert await proof(fleet, task_id, cheat) == {
        "credit": "void",
        "assignment": "lost",
        "task": "queued",
    }
    revoked = await fleet.rows(
        "SELECT serial FROM revoked_certificates WHERE serial=?", [cheat.peer.serial]
    )
    assert len(revoked) == 1
    with pytest.raises(Refusal) as refused:
        await fleet.heartbeat(cheat)
    assert refused.value.code == "quarantined"


async def test_silence_is_retried_with_backoff_then_voids_the_proof(start: Start) -> None:
    fleet = await start()
    silent = await fleet.enroll()
    silent.answer = SILENT
    task_id = await proved(fleet, silent)
    cfg = fleet.config.spot_checks
    retry_ms = int(cfg.retry_s * 1000)

    for attempt in range(1, cfg.max_attempts):
        assert await fleet.spot_checker.round() == 1
        row = await check(fleet, task_id)
        backoff = retry_ms * 2 ** (attempt - 1)
        assert row["state"] == "pending" and row["attempts"] == attempt
        assert row["next_attempt_at"] == fleet.clock() + backoff
        assert row["detail"] == "TimeoutError"
        fleet.clock.advance(backoff - 1)
        assert await fleet.spot_checker.round() == 0  # not due before its backoff
        fleet.clock.advance(1)
    assert await fleet.spot_checker.round() == 1
    row = await check(fleet, task_id)
    assert row["state"] == "unanswered"
    assert row["detail"] == f"{cfg.max_attempts} attempts: TimeoutError"
    assert len(fleet.link.challenges_to(silent)) == cfg.max_attempts
    # One silence voids the proof and re-queues the task, but does not quarantine.
    assert await proof(fleet, task_id, silent) == {
        "credit": "void",
        "assignment": "lost",
        "task": "queued",
    }
    assert await record(fleet, silent) == {
        "state": "active",
        "passes": 0,
        "failures": 0,
        "unanswered": 1,
    }
    view = await fleet.c.tasks.task_view(task_id)
    assert view["verification"]["state"] == "void"
    # The task runs again, on another device only.
    for _ in range(2):
        await fleet.heartbeat(silent)
    assert await fleet.schedule() == 0
    other = await fleet.enroll()
    assert await fleet.schedule() == 1
    assert await fleet.assignments(task_id) == {
        silent.device_id: "lost",
        other.device_id: "accepted",
    }


async def test_repeated_silence_quarantines(start: Start) -> None:
    fleet = await start(max_attempts=1, quarantine_after_unanswered=2)
    silent = await fleet.enroll()
    silent.answer = SILENT
    first = await proved(fleet, silent, seed=1)
    assert await fleet.spot_checker.round() == 1
    assert (await check(fleet, first))["state"] == "unanswered"
    assert (await record(fleet, silent))["state"] == "active"  # once is not a pattern

    second = await proved(fleet, silent, seed=2)
    assert await fleet.spot_checker.round() == 1
    assert (await check(fleet, second))["state"] == "unanswered"
    assert await record(fleet, silent) == {
        "state": "quarantined",
        "passes": 0,
        "failures": 0,
        "unanswered": 2,
    }
    reason = fleet.c.devices[silent.device_id].state_reason or ""
    assert reason.startswith("2 spot-checks unanswered"), reason


async def test_an_unreachable_device_counts_as_silent(start: Start) -> None:
    fleet = await start(max_attempts=1)
    gone = await fleet.enroll()
    task_id = await proved(fleet, gone)
    gone.reachable = False
    assert await fleet.spot_checker.round() == 1
    assert (await check(fleet, task_id))["state"] == "unanswered"
    assert (await proof(fleet, task_id, gone))["credit"] == "void"


async def test_garbage_is_no_answer_and_a_later_valid_one_still_counts(start: Start) -> None:
    fleet = await start()
    device = await fleet.enroll()
    device.answer = GARBAGE
    task_id = await proved(fleet, device)
    assert await fleet.spot_checker.round() == 1
    row = await check(fleet, task_id)
    assert row["state"] == "pending" and row["attempts"] == 1
    assert row["detail"].startswith("bad opening: ")
    assert (await record(fleet, device))["failures"] == 0  # nothing said about the work

    device.answer = "correct"
    fleet.clock.advance(int(fleet.config.spot_checks.retry_s * 1000))
    assert await fleet.spot_checker.round() == 1
    assert (await check(fleet, task_id))["state"] == "passed"
    assert (await proof(fleet, task_id, device))["credit"] == "verified"


async def test_an_answer_over_max_answer_bytes_is_refused(start: Start) -> None:
    """A valid opening padded past ``max_answer_bytes`` is no answer: retried, then
    ``unanswered``; the same opening without the padding passes."""
    fleet = await start(max_attempts=2)
    big = await fleet.enroll(battery_pct=80)
    big.answer = OVERSIZED
    big_task = await proved(fleet, big, seed=1)
    small = await fleet.enroll(battery_pct=95)  # preferred for the next task
    small_task = await proved(fleet, small, seed=2)
    assert await fleet.spot_checker.round() == 2
    assert (await check(fleet, small_task))["state"] == "passed"
    row = await check(fleet, big_task)
    assert row["state"] == "pending" and row["attempts"] == 1
    assert row["detail"] == f"answer larger than {MAX_ANSWER} bytes"
    fleet.clock.advance(int(fleet.config.spot_checks.retry_s * 1000))
    assert await fleet.spot_checker.round() == 1
    assert (await check(fleet, big_task))["state"] == "unanswered"
    assert (await proof(fleet, big_task, big))["credit"] == "void"
    assert all(c.max_bytes == MAX_ANSWER for c in fleet.link.calls if c.path == "/v1/challenges")


async def test_unknown_task_for_a_signed_proof_quarantines_at_once(start: Start) -> None:
    fleet = await start()
    liar = await fleet.enroll()
    liar.answer = UNKNOWN_TASK
    task_id = await proved(fleet, liar)
    assert await fleet.spot_checker.round() == 1
    row = await check(fleet, task_id)
    assert row["state"] == "unanswered" and row["attempts"] == 0  # no retry for a refusal
    assert (await record(fleet, liar))["state"] == "quarantined"
    assert (await proof(fleet, task_id, liar))["credit"] == "void"


async def test_a_dispute_is_settled_by_re_execution_without_asking_anyone(start: Start) -> None:
    fleet = await start()
    honest = await fleet.enroll()
    cheat = await fleet.enroll()
    cheat.sim.cheat_chunks = frozenset({3, 5})
    task_id = await fleet.submit(replicas=2, chunks=CHUNKS)
    assert await fleet.schedule() == 2
    for d in (honest, cheat):
        await fleet.prove(d, task_id)
    assert (await fleet.row("SELECT state FROM tasks WHERE task_id=?", [task_id]))[
        "state"
    ] == "disputed"
    assert await fleet.c.blocks.form_block() is not None
    checks = await fleet.rows(
        "SELECT device_id, indices FROM spot_checks WHERE task_id=?", [task_id]
    )
    assert {r["indices"] for r in checks} == {"[3, 5]"}

    assert await fleet.spot_checker.round() == 2
    assert fleet.link.challenges_to(honest) == fleet.link.challenges_to(cheat) == []
    assert (await check_of(fleet, task_id, honest))["state"] == "passed"
    failed = await check_of(fleet, task_id, cheat)
    assert failed["state"] == "failed" and failed["reexecuted_chunks"] >= 1
    assert (await record(fleet, cheat))["state"] == "quarantined"
    view = await fleet.c.tasks.task_view(task_id)
    assert view["state"] == "completed"
    assert view["verification"] == {"state": "verified", "by": "re-execution"}
    assert fleet.c.counters["spot_check_chunks_reexecuted"] >= 2


async def check_of(fleet: Fleet, task_id: str, device: LinkedDevice) -> dict[str, Any]:
    return await fleet.row(
        "SELECT state, reexecuted_chunks FROM spot_checks WHERE task_id=? AND device_id=?",
        [task_id, device.device_id],
    )
