"""The durable work queue: accepted work survives kill -9, is bounded, waits for energy,
and leaves the queue only with its proof in the outbox or a recorded, permanent reason."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import psutil
import pytest

from aeamc.agent.config import ConfigError, config_from_mapping
from aeamc.agent.runner import MAX_WORKER_CRASHES
from aeamc.agent.status import daemon_status, offline_status
from aeamc.agent.worker import WorkerCrashed
from aeamc.agent.workqueue import WorkQueue
from aeamc.shared.proofs import Trace, verify_pot
from tests.support.agent import AgentProcess
from tests.support.device import fresh_pot

from .conftest import FAST_PARAMS, GOOD, eventually, write_profile
from .fakecoord import FakeCoordinator, coordinator_session, now_ms

#: Tens of milliseconds per chunk.
SLOW = {"seed": "cd" * 32, "iterations": 60_000}
#: Roughly a quarter of a second per chunk.
SLOWER = {"seed": "ce" * 32, "iterations": 600_000}


async def post(endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with (
        coordinator_session(body["coordinator_id"]) as s,
        s.post(endpoint + "/v1/assignments", json=body) as r,
    ):
        return r.status, await r.json()


def proof_ids(fake_coordinator: FakeCoordinator) -> list[str]:
    return [p.task_id for p, _ in fake_coordinator.proofs]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_accepted_work_survives_kill_9(
    fake_coordinator: FakeCoordinator, tmp_path: Path
) -> None:
    """202 means "on disk": kill -9 right after the answers, restart, everything runs."""
    agent = AgentProcess(
        tmp_path / "agent",
        coordinator_url=fake_coordinator.url,
        mdns=False,
        heartbeat_interval_s=0.3,
    )
    try:
        await asyncio.to_thread(agent.start)
        await eventually(lambda: fake_coordinator.heartbeats, timeout=15)
        endpoint = agent.endpoint
        assert endpoint
        tasks = [
            fake_coordinator.assignment(agent.device_id, task_id="t-0", params=SLOWER, chunks=6),
            *(
                fake_coordinator.assignment(agent.device_id, task_id=f"t-{i}", params=FAST_PARAMS)
                for i in (1, 2, 3)
            ),
        ]
        answers = [await post(endpoint, a.to_dict()) for a in tasks]
        assert [a[0] for a in answers] == [202] * 4
        assert [a[1]["state"] for a in answers] == ["running", "queued", "queued", "queued"]
        daemon = psutil.Process(agent.status()["pid"])
        workers = await eventually(daemon.children, timeout=15)  # the chunk worker
        await asyncio.to_thread(agent.kill)
        # The worker dies with its daemon: nothing keeps computing for a dead agent.
        await eventually(lambda: not any(map(_alive, workers)))

        # Nothing finished, nothing lost: every accepted assignment is in the queue.
        assert not fake_coordinator.proofs
        queued = [json.loads(p.read_text())["assignment"] for p in agent.files("queue")]
        assert queued == [a.to_dict() for a in tasks]
        assert agent.status()["queue"]["task_ids"] == ["t-0", "t-1", "t-2", "t-3"]

        await asyncio.to_thread(agent.start)
        await eventually(lambda: len(fake_coordinator.proofs) == 4, timeout=30)
        assert proof_ids(fake_coordinator) == ["t-0", "t-1", "t-2", "t-3"]  # in order, once each
        key = bytes.fromhex(fake_coordinator.enrollments[-1].public_key)
        for a, (pot, output) in zip(tasks, fake_coordinator.proofs, strict=True):
            verify_pot(pot, output, public_key=key, assignment=a, now_ms=now_ms())
        status = await asyncio.to_thread(
            agent.wait_status, lambda s: s["queue"]["count"] == 0 and s["outbox"]["count"] == 0
        )
        assert status["queue"]["abandoned"] == 0 and not agent.files("queue")
        assert "4 accepted assignments waiting from before the restart" in agent.log_text()
    finally:
        await asyncio.to_thread(agent.close)


async def test_bound_of_one_means_only_the_running_task(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url, max_queued_tasks=1)
    await eventually(lambda: agent.link.pin is not None)
    url = agent.endpoint()
    first = fake_coordinator.assignment(agent.device_id, task_id="a", params=SLOW, chunks=20)
    assert (await post(url, first.to_dict()))[1]["state"] == "running"
    second = fake_coordinator.assignment(agent.device_id, task_id="b", params=FAST_PARAMS)
    status, body = await post(url, second.to_dict())
    assert (status, body["error"]["code"], body["error"]["reason"]) == (409, "refused", "busy")
    assert daemon_status(agent)["queue"] | {"task_ids": None} == {
        "count": 1,
        "max": 1,
        "task_ids": None,
        "abandoned": 0,
    }
    # Once the running task's proof is queued there is room again.
    await eventually(lambda: proof_ids(fake_coordinator) == ["a"], timeout=15)
    assert (await post(url, second.to_dict()))[0] == 202
    await eventually(lambda: proof_ids(fake_coordinator) == ["a", "b"])


async def test_expired_while_waiting_is_dropped_with_a_record(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: agent.link.pin is not None)
    url = agent.endpoint()
    long = fake_coordinator.assignment(agent.device_id, task_id="long", params=SLOW, chunks=40)
    short = fake_coordinator.assignment(
        agent.device_id, task_id="short", params=FAST_PARAMS, ttl_ms=300
    )
    after = fake_coordinator.assignment(agent.device_id, task_id="after", params=FAST_PARAMS)
    for a in (long, short, after):
        assert (await post(url, a.to_dict()))[0] == 202
    await eventually(lambda: proof_ids(fake_coordinator) == ["long", "after"], timeout=20)
    assert agent.queue.count == 0
    (record,) = agent.queue.abandoned()
    assert record["reason"] == "expired" and record["assignment"] == short.to_dict()
    assert record["at_ms"] >= short.expires_at
    assert daemon_status(agent)["queue"]["abandoned"] == 1
    assert not agent.traces.has("short")


async def test_expired_across_a_restart_is_dropped_unrun(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url, start=False)
    stale = fake_coordinator.assignment(
        agent.device_id, task_id="gone", issued_at=now_ms() - 5_000, ttl_ms=1_000
    )
    fresh = fake_coordinator.assignment(agent.device_id, task_id="fresh", params=FAST_PARAMS)
    agent.queue.add(stale, now_ms() - 4_000)
    agent.queue.add(fresh, now_ms())
    await agent.start()
    await eventually(lambda: proof_ids(fake_coordinator) == ["fresh"], timeout=15)
    records = agent.queue.abandoned()
    assert [(r["assignment"]["task_id"], r["reason"]) for r in records] == [("gone", "expired")]
    assert agent.queue.count == 0 and not agent.traces.has("gone")


async def test_queued_work_waits_for_energy_and_runs_in_order(
    fake_coordinator, make_agent, tmp_path
) -> None:
    profile = tmp_path / "profile.json"
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: agent.link.pin is not None)
    url = agent.endpoint()
    tasks = [
        fake_coordinator.assignment(agent.device_id, task_id=f"q-{i}", params=SLOW, chunks=chunks)
        for i, chunks in enumerate((20, 5, 5))
    ]
    for a in tasks:
        assert (await post(url, a.to_dict()))[0] == 202
    await eventually(lambda: agent.runner.current and agent.runner.current.chunks_done >= 1)
    write_profile(profile, **{**GOOD, "cpu_temp_c": 90})
    await eventually(lambda: agent.runner.current.suspended_reason == "too_hot")
    frozen = agent.runner.current.chunks_done
    await asyncio.sleep(0.3)
    # Suspended, not refused or dropped: the queue is intact and nothing advanced.
    assert agent.runner.current.chunks_done == frozen and agent.queue.count == 3
    assert not fake_coordinator.proofs
    # New work is refused at acceptance while too hot, as before.
    extra = fake_coordinator.assignment(agent.device_id, task_id="extra")
    assert (await post(url, extra.to_dict()))[1]["error"]["reason"] == "too_hot"
    write_profile(profile, **GOOD)
    await eventually(lambda: len(fake_coordinator.proofs) == 3, timeout=20)
    assert proof_ids(fake_coordinator) == ["q-0", "q-1", "q-2"]
    assert agent.queue.count == 0 and agent.queue.abandoned() == []


async def test_quarantine_holds_the_queue(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: agent.link.pin is not None)
    fake_coordinator.enroll_state = "quarantined"
    await eventually(lambda: agent.link.state == "quarantined")
    agent.queue.add(fake_coordinator.assignment(agent.device_id, params=FAST_PARAMS), now_ms())
    agent.runner.wake()
    await eventually(lambda: agent.runner.current and agent.runner.current.suspended_reason)
    assert agent.runner.current.suspended_reason == "quarantined"
    await asyncio.sleep(0.2)
    assert agent.runner.current.chunks_done == 0 and not fake_coordinator.proofs
    fake_coordinator.enroll_state = "active"
    await eventually(lambda: fake_coordinator.proofs, timeout=10)


async def test_done_before_a_crash_is_not_run_twice(fake_coordinator, make_agent) -> None:
    """A crash after the proof was queued but before the entry left the queue."""
    agent = await make_agent(coordinator_url=fake_coordinator.url, start=False)
    a = fake_coordinator.assignment(agent.device_id, task_id="once", chunks=2)
    trace = Trace((b"x", b"y"))
    pot = fresh_pot(agent.key, agent.device_id, a.task_id, trace)
    agent.queue.add(a, now_ms())
    agent.traces.save(a, trace, now_ms())
    agent.outbox.add(pot, trace.output, now_ms())
    await agent.start()
    await eventually(lambda: agent.queue.count == 0 and agent.outbox.count == 0)
    assert proof_ids(fake_coordinator) == ["once"] and not agent.pool.started
    assert agent.runner.last.detail == "the proof was already in the outbox"


async def test_worker_crashes_retry_then_abandon(fake_coordinator, make_agent, monkeypatch) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url, start=False)
    monkeypatch.setattr("aeamc.agent.runner.STORAGE_RETRY_S", 0.01)
    calls = []

    async def crash(*args: Any) -> tuple[bytes, int]:
        calls.append(args)
        raise WorkerCrashed("the worker process died while running a chunk")

    monkeypatch.setattr(agent.pool, "run", crash)
    a = fake_coordinator.assignment(agent.device_id, task_id="crashy")
    agent.queue.add(a, now_ms())
    await agent.start()
    await eventually(lambda: agent.queue.count == 0)
    assert len(calls) == MAX_WORKER_CRASHES
    (record,) = agent.queue.abandoned()
    assert record["reason"] == "failed" and "3 times" in record["detail"]


def test_unreadable_entry_is_recorded_not_fatal(tmp_path: Path) -> None:
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    (queue_dir / "000000000001-t-1.json").write_text('{"assignment": {"type": "assi')
    (queue_dir / ".000000000002-t-2.json.tmp-99").write_text("half written")
    q = WorkQueue(queue_dir, tmp_path / "abandoned")
    assert q.count == 0 and list(queue_dir.iterdir()) == []
    (record,) = q.abandoned()
    assert record["reason"] == "unreadable" and record["file"] == "000000000001-t-1.json"
    assert q.prune_abandoned(now_ms(), 60_000) == 0
    assert q.prune_abandoned(now_ms() + 120_000, 60_000) == 1


def test_queue_files_are_private_and_ordered(tmp_path: Path) -> None:
    fc = FakeCoordinator()
    q = WorkQueue(tmp_path / "queue", tmp_path / "abandoned")
    added = [q.add(fc.assignment("00" * 16, task_id=f"t-{i}"), now_ms()) for i in range(3)]
    assert all(os.stat(e.path).st_mode & 0o777 == 0o600 for e in added)
    q.remove(added[1])
    again = WorkQueue(tmp_path / "queue", tmp_path / "abandoned")
    assert [e.task_id for e in again.entries()] == ["t-0", "t-2"]
    assert again.add(fc.assignment("00" * 16, task_id="t-3"), now_ms()).number == 4


def test_max_queued_tasks_config(tmp_path: Path) -> None:
    assert config_from_mapping({}).max_queued_tasks == 4
    assert config_from_mapping({"max_queued_tasks": 20}).max_queued_tasks == 20
    for bad in (0, 5000):
        with pytest.raises(ConfigError, match="max_queued_tasks"):
            config_from_mapping({"max_queued_tasks": bad})
    documented = (Path(__file__).parents[2] / "docs" / "agent.md").read_text()
    assert "| `max_queued_tasks` | `4` |" in documented


def test_offline_status_shows_the_queue(tmp_path: Path) -> None:
    config = config_from_mapping({"state_dir": str(tmp_path / "state"), "max_queued_tasks": 3})
    q = WorkQueue(tmp_path / "state" / "queue", tmp_path / "state" / "abandoned")
    q.add(FakeCoordinator().assignment("00" * 16, task_id="waiting"), now_ms())
    status = offline_status(
        config,
        device_id=None,
        public_key=None,
        identity_error=None,
        source=None,
        source_error=None,
    )
    assert status["queue"] == {"count": 1, "task_ids": ["waiting"], "abandoned": 0, "max": 3}
