"""The outbox: durable across crashes, bounded without dropping, delivered as specified."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aeamc.agent.backoff import Backoff, jittered
from aeamc.agent.client import CoordinatorClient
from aeamc.agent.locator import CoordinatorLocator
from aeamc.agent.net import client_session
from aeamc.agent.outbox import Outbox, reason_path, summary
from aeamc.agent.sender import DELIVERED, REJECTED, RESIGNED, RETRY, OutboxSender
from aeamc.agent.tls import AgentTls
from aeamc.shared.identity import SigningKey, verify_signature
from aeamc.shared.proofs import Trace, build_pot, verify_pot
from tests.support.device import fresh_pot

from .conftest import FAST_PARAMS, eventually
from .fakecoord import FakeCoordinator, Scripted, now_ms

KEY = SigningKey.from_seed(bytes(range(32)))


def make_proof(task_id: str, outputs: tuple[bytes, ...] = (b"a", b"bc"), *, timestamp: int = 0):
    trace = Trace(outputs)
    pot = build_pot(
        KEY,
        task_id=task_id,
        device_id=KEY.device_id,
        trace=trace,
        nonce=os.urandom(16),
        timestamp=timestamp or now_ms(),
        execution_time_ms=5,
        cpu_time_ms=4,
    )
    return pot, trace.output


def new_outbox(tmp_path: Path, **limits: int) -> Outbox:
    return Outbox(
        tmp_path / "outbox",
        tmp_path / "rejected",
        max_count=limits.get("max_count", 100),
        max_bytes=limits.get("max_bytes", 1 << 20),
    )


def test_survives_a_crash_in_order(tmp_path: Path) -> None:
    box = new_outbox(tmp_path)
    ids = ["t-3", "t-1", "t-2"]
    queued = [make_proof(t) for t in ids]
    for pot, output in queued:
        box.add(pot, output, now_ms())
    # A write that was interrupted before its rename leaves a temp file: not a proof.
    (tmp_path / "outbox" / ".000000000004-t-9.json.tmp-123").write_text("{partial")
    del box  # "crash": nothing is flushed or closed

    reopened = new_outbox(tmp_path)
    entries = reopened.entries()
    assert [e.task_id for e in entries] == ids
    for entry, (pot, output) in zip(entries, queued, strict=True):
        proof = reopened.load(entry)
        assert proof.pot == pot and proof.output == output
    assert not list((tmp_path / "outbox").glob(".*tmp*"))
    # Numbering continues after the last queued proof.
    assert reopened.add(*make_proof("t-4"), now_ms()).number == 4


def test_files_are_private_and_complete(tmp_path: Path) -> None:
    box = new_outbox(tmp_path)
    entry = box.add(*make_proof("t-1"), now_ms())
    assert entry.path.stat().st_mode & 0o777 == 0o600
    data = json.loads(entry.path.read_text())
    assert set(data) == {"pot", "output", "queued_at_ms"}


def test_bounded_by_count_and_bytes(tmp_path: Path) -> None:
    box = new_outbox(tmp_path, max_count=2)
    assert box.has_room()
    box.add(*make_proof("t-1"), now_ms())
    box.add(*make_proof("t-2"), now_ms())
    assert not box.has_room()
    # Over the limit a proof is still queued, never dropped.
    box.add(*make_proof("t-3"), now_ms())
    assert box.count == 3
    big = new_outbox(tmp_path / "b", max_bytes=1024)
    big.add(*make_proof("t-1", (b"x" * 600,)), now_ms())
    assert not big.has_room()
    assert summary(tmp_path / "outbox", tmp_path / "rejected")["count"] == 3


async def test_full_outbox_refuses_new_assignments(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url="https://127.0.0.1:9", outbox_max_count=1)
    agent.outbox.add(*make_proof("old"), now_ms())
    assert agent.refusal_reason() == "outbox_full"


def test_a_retry_after_is_waited_out_with_jitter_above_it() -> None:
    top = Backoff(1.0, 8.0, uniform=lambda lo, hi: hi)
    bottom = Backoff(1.0, 8.0, uniform=lambda lo, hi: lo)
    assert bottom.after(7) == 7.0  # never sooner than asked
    assert top.after(7) == 10.5  # spread over half of it again: a fleet does not return in step
    assert top.after(1) == 2.0  # the backoff itself, when it is longer
    assert top.failures == 2


def test_backoff_grows_to_the_cap_with_jitter() -> None:
    b = Backoff(1.0, 8.0, uniform=lambda lo, hi: hi)
    assert [b.next_delay() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    b.reset()
    assert b.next_delay() == 1
    assert Backoff(1.0, 8.0, uniform=lambda lo, hi: lo).next_delay() == 0.1  # never zero
    assert jittered(10, 0.1, lambda lo, hi: hi) == pytest.approx(11)


# --- delivery against a real server -------------------------------------------------------


@pytest.fixture
async def sender(tmp_path: Path, fake_coordinator: FakeCoordinator) -> AsyncIterator[OutboxSender]:
    fake_coordinator.device_keys[KEY.device_id] = KEY.public_key
    session = client_session(timeout_s=2)
    agent_tls = AgentTls(tmp_path, KEY.device_id)
    fake_coordinator.certify(agent_tls)
    clock = [now_ms() + 10_000]  # ahead of the proofs made below

    def tick() -> int:
        clock[0] += 1
        return clock[0]

    s = OutboxSender(
        outbox=new_outbox(tmp_path),
        client=CoordinatorClient(session, tls=agent_tls),
        locator=CoordinatorLocator(fake_coordinator.url),
        signer=KEY,
        clock_ms=tick,
        backoff=Backoff(0.01, 0.05),
    )
    yield s
    await session.close()


def queue_for(fake_coordinator: FakeCoordinator, box: Outbox, task_id: str):
    a = fake_coordinator.assignment(KEY.device_id, task_id=task_id, chunks=2, params=FAST_PARAMS)
    pot, output = make_proof(task_id)
    box.add(pot, output, now_ms())
    return a, pot


async def test_accepted_proof_is_deleted(sender, fake_coordinator) -> None:
    _, pot = queue_for(fake_coordinator, sender.outbox, "t-1")
    assert await sender.deliver_all(fake_coordinator.url) is None
    assert sender.outbox.count == 0
    assert fake_coordinator.proofs[0][0] == pot


async def test_delivered_in_order(sender, fake_coordinator) -> None:
    for t in ("t-b", "t-a", "t-c"):
        queue_for(fake_coordinator, sender.outbox, t)
    await sender.deliver_all(fake_coordinator.url)
    assert [p.task_id for p, _ in fake_coordinator.proofs] == ["t-b", "t-a", "t-c"]


async def test_duplicate_means_delivered(sender, fake_coordinator) -> None:
    queue_for(fake_coordinator, sender.outbox, "t-1")
    fake_coordinator.queue(
        "/v1/proofs", Scripted(409, {"error": {"code": "duplicate", "message": "x"}})
    )
    assert await sender.deliver(fake_coordinator.url, sender.outbox.entries()[0]) == DELIVERED
    assert sender.outbox.count == 0


async def test_stale_proof_is_resigned_with_the_same_commitment(sender, fake_coordinator) -> None:
    a, pot = queue_for(fake_coordinator, sender.outbox, "t-1")
    fake_coordinator.queue(
        "/v1/proofs", Scripted(400, {"error": {"code": "stale_message", "message": "old"}})
    )
    entry = sender.outbox.entries()[0]
    assert await sender.deliver(fake_coordinator.url, entry) == RESIGNED
    resigned = sender.outbox.load(entry).pot
    assert resigned.timestamp > pot.timestamp
    for field in ("device_nonce", "trace_root", "checkpoint", "output_digest", "task_id"):
        assert getattr(resigned, field) == getattr(pot, field)
    verify_signature(resigned.to_dict(), KEY.public_key)
    # And the re-signed proof is then accepted.
    assert await sender.deliver_all(fake_coordinator.url) is None
    delivered, output = fake_coordinator.proofs[0]
    assert delivered == resigned
    verify_pot(delivered, output, public_key=KEY.public_key, assignment=a, now_ms=now_ms())


async def test_stale_twice_backs_off_instead_of_looping(sender, fake_coordinator) -> None:
    queue_for(fake_coordinator, sender.outbox, "t-1")
    stale = Scripted(400, {"error": {"code": "stale_message", "message": "old"}})
    fake_coordinator.queue("/v1/proofs", stale, stale)
    assert await sender.deliver_all(fake_coordinator.url) is not None  # a backoff delay
    assert sender.outbox.count == 1
    assert "stale" in sender.last_error


@pytest.mark.parametrize("code", ["assignment_expired", "unknown_assignment"])
async def test_gone_moves_to_rejected_with_reason(sender, fake_coordinator, tmp_path, code) -> None:
    queue_for(fake_coordinator, sender.outbox, "t-1")
    fake_coordinator.queue(
        "/v1/proofs", Scripted(410, {"error": {"code": code, "message": "too late"}})
    )
    assert await sender.deliver(fake_coordinator.url, sender.outbox.entries()[0]) == REJECTED
    assert sender.outbox.count == 0
    kept = sender.outbox.rejected()
    assert len(kept) == 1 and kept[0].task_id == "t-1"
    reason = json.loads(reason_path(kept[0].path).read_text())
    assert reason == {"http_status": 410, "code": code, "message": "too late"}
    assert sender.outbox.load(kept[0]).pot.task_id == "t-1"  # the proof itself is kept


async def test_unexpected_4xx_is_kept_as_rejected(sender, fake_coordinator) -> None:
    queue_for(fake_coordinator, sender.outbox, "t-1")
    fake_coordinator.queue("/v1/proofs", Scripted(422, "not even an error body"))
    assert await sender.deliver(fake_coordinator.url, sender.outbox.entries()[0]) == REJECTED
    assert (
        json.loads(reason_path(sender.outbox.rejected()[0].path).read_text())["code"] == "http_422"
    )


@pytest.mark.parametrize(
    "answer",
    [
        Scripted(503, {"error": {"code": "unavailable", "message": "db"}}),
        Scripted(500, None),
        Scripted(429, {"error": {"code": "slow_down", "message": "x"}}),
        Scripted(403, {"error": {"code": "not_enrolled", "message": "who?"}}),
        Scripted(0),  # connection dropped without an answer
    ],
)
async def test_transient_failures_keep_and_retry(sender, fake_coordinator, answer) -> None:
    _, pot = queue_for(fake_coordinator, sender.outbox, "t-1")
    fake_coordinator.queue("/v1/proofs", answer)
    assert await sender.deliver(fake_coordinator.url, sender.outbox.entries()[0]) == RETRY
    assert sender.outbox.count == 1
    assert await sender.deliver_all(fake_coordinator.url) is None  # next attempt gets through
    assert fake_coordinator.proofs[0][0] == pot


@pytest.mark.parametrize("route", ["/v1/proofs", "/v1/proofs/batch"])
async def test_a_shed_delivery_waits_out_retry_after(sender, fake_coordinator, route) -> None:
    """503 ``overloaded`` with ``Retry-After``, to one proof or to a batch: every proof is
    kept, and the next attempt is not sooner than the header says (the sender's own
    backoff here is 0.05 s at most); once delivered, nothing is left."""
    if route == "/v1/proofs/batch":
        await restart_with_batches(fake_coordinator)
    tasks = ("t-1", "t-2")
    for t in tasks:
        queue_for(fake_coordinator, sender.outbox, t)
    shed = Scripted(
        503, {"error": {"code": "overloaded", "message": "x"}}, headers={"Retry-After": "6"}
    )
    fake_coordinator.queue(route, shed)
    delay = await sender.deliver_all(fake_coordinator.url)
    assert delay is not None and delay >= 6
    assert sender.outbox.count == len(tasks)
    assert await sender.deliver_all(fake_coordinator.url) is None
    assert sender.outbox.count == 0
    assert len(fake_coordinator.proofs) == len(tasks)


async def test_retries_through_an_outage_until_the_coordinator_returns(
    tmp_path, fake_coordinator
) -> None:
    """Connection refused, then a coordinator appears on that port: the run loop delivers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    later = FakeCoordinator(key=fake_coordinator.key)
    later.device_keys[KEY.device_id] = KEY.public_key
    box = new_outbox(tmp_path)
    session = client_session(timeout_s=1)
    agent_tls = AgentTls(tmp_path, KEY.device_id)
    later.certify(agent_tls)
    sender = OutboxSender(
        outbox=box,
        client=CoordinatorClient(session, tls=agent_tls),
        locator=CoordinatorLocator(f"https://127.0.0.1:{port}"),
        signer=KEY,
        clock_ms=now_ms,
        backoff=Backoff(0.02, 0.1),
    )
    later.assignment(KEY.device_id, task_id="t-1", chunks=2)
    box.add(*make_proof("t-1"), now_ms())
    import asyncio

    task = asyncio.create_task(sender.run())
    try:
        await eventually(lambda: sender.last_error and "unreachable" in sender.last_error)
        assert box.count == 1
        await later.start(port)
        await eventually(lambda: later.proofs, timeout=5)
        await eventually(lambda: box.count == 0)
    finally:
        task.cancel()
        await later.stop()
        await session.close()


async def test_agent_restart_delivers_what_a_crash_left(fake_coordinator, make_agent) -> None:
    """Proofs queued before a crash go out, in order, when the agent starts again."""
    agent = await make_agent(coordinator_url=fake_coordinator.url, start=False)
    for t in ("t-1", "t-2"):
        a = fake_coordinator.assignment(agent.device_id, task_id=t, chunks=2)
        trace = Trace((b"x", b"y"))
        pot = fresh_pot(agent.key, agent.device_id, t, trace)
        agent.outbox.add(pot, trace.output, now_ms())
        del a
    await agent.start()
    await eventually(lambda: len(fake_coordinator.proofs) == 2)
    assert [p.task_id for p, _ in fake_coordinator.proofs] == ["t-1", "t-2"]
    await eventually(lambda: agent.outbox.count == 0)


async def test_damaged_entry_is_kept_aside_not_lost(sender, fake_coordinator) -> None:
    queue_for(fake_coordinator, sender.outbox, "t-1")
    queue_for(fake_coordinator, sender.outbox, "t-2")
    first = sender.outbox.entries()[0]
    first.path.write_text('{"pot": {"type": "pot"}')  # damaged, e.g. by a failing disk
    assert await sender.deliver_all(fake_coordinator.url) is None
    assert [p.task_id for p, _ in fake_coordinator.proofs] == ["t-2"]  # the queue moved on
    kept = sender.outbox.rejected()
    assert [e.task_id for e in kept] == ["t-1"]
    assert json.loads(reason_path(kept[0].path).read_text())["code"] == "unreadable"


async def restart_with_batches(fake_coordinator: FakeCoordinator) -> None:
    """The coordinator comes back, on the same port, as one that takes proof batches."""
    fake_coordinator.batch = True
    await fake_coordinator.stop()
    await fake_coordinator.start(fake_coordinator.port)


async def test_waiting_proofs_go_in_one_batch_each_judged_alone(
    sender: OutboxSender, fake_coordinator: FakeCoordinator
) -> None:
    await restart_with_batches(fake_coordinator)
    for t in ("t-1", "t-2", "t-3"):
        queue_for(fake_coordinator, sender.outbox, t)
    fake_coordinator.stored.add(("t-2", KEY.device_id))  # delivered earlier: 409 duplicate
    del fake_coordinator.assignments["t-3"]  # refused for good: 410
    assert await sender.deliver_all(fake_coordinator.url) is None
    assert fake_coordinator.batches == [3]
    assert [p.task_id for p, _ in fake_coordinator.proofs] == ["t-1"]
    assert sender.outbox.count == 0
    (rejected,) = sender.outbox.rejected()
    assert rejected.task_id == "t-3"


async def test_a_coordinator_without_batches_gets_proofs_one_by_one(
    sender: OutboxSender, fake_coordinator: FakeCoordinator
) -> None:
    for t in ("t-1", "t-2"):
        queue_for(fake_coordinator, sender.outbox, t)
    assert await sender.deliver_all(fake_coordinator.url) is None
    assert not sender.batch_supported
    assert [p.task_id for p, _ in fake_coordinator.proofs] == ["t-1", "t-2"]
    assert [path for path, _ in fake_coordinator.requests].count("/v1/proofs") == 2


async def test_a_failing_batch_is_retried_and_nothing_is_lost(
    sender: OutboxSender, fake_coordinator: FakeCoordinator
) -> None:
    await restart_with_batches(fake_coordinator)
    for t in ("t-1", "t-2"):
        queue_for(fake_coordinator, sender.outbox, t)
    fake_coordinator.queue(
        "/v1/proofs/batch", Scripted(503, {"error": {"code": "x", "message": "y"}})
    )
    assert await sender.deliver_all(fake_coordinator.url) is not None  # back off, keep both
    assert sender.outbox.count == 2
    assert await sender.deliver_all(fake_coordinator.url) is None
    assert [p.task_id for p, _ in fake_coordinator.proofs] == ["t-1", "t-2"]


@pytest.mark.parametrize(
    ("raw", "fault"),
    [
        (b'{"status": "accepted", "status": "rejected"}', "'status' appears twice"),
        (b'{"status": "accepted", "server_time_ms": NaN}', "NaN is not a JSON number"),
    ],
)
async def test_an_ambiguous_answer_is_no_answer(sender, fake_coordinator, raw, fault) -> None:
    """A 201 whose JSON a lax parser would take does not count as delivery: the proof
    stays in the outbox, the error says why, and the next attempt delivers it."""
    _, pot = queue_for(fake_coordinator, sender.outbox, "t-1")
    fake_coordinator.queue("/v1/proofs", Scripted(201, raw=raw))
    assert await sender.deliver(fake_coordinator.url, sender.outbox.entries()[0]) == RETRY
    assert sender.outbox.count == 1 and not sender.outbox.rejected()
    assert fault in sender.last_error
    assert await sender.deliver_all(fake_coordinator.url) is None
    assert fake_coordinator.proofs[0][0] == pot
