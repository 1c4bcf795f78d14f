"""Worker process, trace store, state files and daemon helpers, each on its own."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

import pytest

from aeamc.agent.advertising import advertised_addresses
from aeamc.agent.endpoint import source_address_towards
from aeamc.agent.lifecycle import Lifecycle
from aeamc.agent.state import CoordinatorPin, SeqCounter, StateError
from aeamc.agent.traces import TraceStore
from aeamc.agent.worker import ChunkPool, WorkerCrashed, run_chunk
from aeamc.shared.identity import SigningKey
from aeamc.shared.proofs import Trace
from aeamc.shared.runtime.logs import REQUEST_ID, LogfmtFormatter, configure
from aeamc.shared.runtime.systemd import notify as _notify_systemd
from aeamc.shared.tasks.registry import discover

from .conftest import FAST_PARAMS, eventually
from .fakecoord import FakeCoordinator, agent_session

SLOW = {"seed": "01" * 32, "iterations": 3_000_000}  # about a second


def test_run_chunk_in_process_matches_the_kind() -> None:
    output, cpu_ns = run_chunk("sha256-chain", FAST_PARAMS, 3, 5)
    assert output == discover().get("sha256-chain").run_chunk(FAST_PARAMS, 3, 5)
    assert cpu_ns > 0


async def test_pool_runs_in_another_process_and_survives_a_crash() -> None:
    pool = ChunkPool()
    assert not pool.started
    out, _ = await pool.run("sha256-chain", FAST_PARAMS, 0, 1)
    assert out == run_chunk("sha256-chain", FAST_PARAMS, 0, 1)[0]
    # Kill the worker in the middle of a chunk: the chunk fails, the pool recovers.
    running = asyncio.create_task(pool.run("sha256-chain", SLOW, 0, 1))
    await asyncio.sleep(0.3)
    for process in list(pool._executor._processes.values()):  # type: ignore[union-attr]
        process.kill()
    with pytest.raises(WorkerCrashed):
        await running
    assert not pool.started
    out, _ = await pool.run("sha256-chain", FAST_PARAMS, 0, 1)
    assert out == run_chunk("sha256-chain", FAST_PARAMS, 0, 1)[0]
    await pool.close(1)


async def test_pool_close_abandons_a_long_chunk() -> None:
    pool = ChunkPool()
    await pool.run("sha256-chain", FAST_PARAMS, 0, 1)  # the worker exists
    running = asyncio.create_task(pool.run("sha256-chain", SLOW, 0, 1))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await pool.close(0.1)
    assert time.monotonic() - started < 1.0
    with pytest.raises((WorkerCrashed, asyncio.CancelledError, Exception)):
        await running
    await ChunkPool().close(0)  # closing an unused pool is a no-op


async def test_shutdown_mid_task_keeps_it_queued(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url, shutdown_grace_s=0.2)
    await eventually(lambda: agent.link.pin is not None)
    a = fake_coordinator.assignment(agent.device_id, params=SLOW, chunks=2)
    async with (
        agent_session(agent) as s,
        s.post(agent.endpoint() + "/v1/assignments", json=a.to_dict()) as r,
    ):
        assert r.status == 202
    await eventually(lambda: agent.pool.started)
    started = time.monotonic()
    await agent.stop()
    assert time.monotonic() - started < 3
    assert agent.runner.last.result == "interrupted"
    # Nothing half-done is kept: no proof, no trace; the assignment waits in the queue.
    assert agent.outbox.count == 0 and not agent.traces.has(a.task_id)
    assert [e.assignment for e in agent.queue.entries()] == [a]
    assert json.loads((agent.config.state_dir / "status.json").read_text())["running"] is False
    # The next start runs it again from chunk 0, to a valid proof.
    again = await make_agent(coordinator_url=fake_coordinator.url)
    # A fresh agent process starts and reruns the task: slow on a machine busy with others.
    await eventually(lambda: fake_coordinator.proofs, timeout=60)
    assert [p.task_id for p, _ in fake_coordinator.proofs] == [a.task_id]
    assert fake_coordinator.proofs[0][0].execution_metadata.chunks == 2
    await eventually(lambda: again.queue.count == 0)


async def test_broken_plugin_kind_is_refused(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: agent.link.pin is not None)
    agent.registry = discover(extra=[("broken-kind", "no_such_module_anywhere:KIND")])
    a = fake_coordinator.assignment(agent.device_id, kind="broken-kind")
    async with (
        agent_session(agent) as s,
        s.post(agent.endpoint() + "/v1/assignments", json=a.to_dict()) as r,
    ):
        body = await r.json()
    assert (r.status, body["error"]["reason"]) == (409, "unknown_kind")


def test_trace_store_retention(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "traces", retention_ms=1000)
    fc = FakeCoordinator()
    a = fc.assignment("00" * 16, task_id="t-1", chunks=2)
    store.save(a, Trace((b"a", b"b")), now_ms=10_000)
    kept = store.load("t-1", now_ms=10_500)
    assert kept is not None and kept.trace.outputs == (b"a", b"b") and kept.assignment == a
    assert store.load("t-1", now_ms=11_001) is None  # past retention: not answered
    assert store.count() == 1
    # An interrupted save (no JSON) is not a trace, and is cleaned up once old.
    (tmp_path / "traces" / "t-2.bin").write_bytes(b"partial")
    (tmp_path / "traces" / "junk.json").write_text("{")
    assert store.load("t-2", now_ms=10_500) is None
    assert sorted(store.prune(now_ms=11_001)) == ["junk", "t-1"]
    assert not (tmp_path / "traces" / "t-1.bin").exists()
    store.prune(now_ms=int(time.time() * 1000) + 7_200_000)
    assert not (tmp_path / "traces" / "t-2.bin").exists()


def test_seq_counter_and_pin_refuse_corrupt_files(tmp_path: Path) -> None:
    (tmp_path / "seq").write_text("12x")
    with pytest.raises(StateError, match="decimal"):
        SeqCounter(tmp_path)
    (tmp_path / "seq").write_text("41\n")
    seq = SeqCounter(tmp_path)
    assert seq.next() == 42 and (tmp_path / "seq").read_text() == "42\n"
    seq.skip_past(10)  # never goes back
    assert seq.next() == 43
    (tmp_path / "coordinator.json").write_text(
        json.dumps(
            {
                "coordinator_id": "00" * 16,  # does not fit the key
                "public_key": SigningKey.from_seed(b"\x01" * 32).public_key.hex(),
                "cluster_id": 1,
                "state": "active",
            }
        )
    )
    with pytest.raises(StateError, match="coordinator pin"):
        CoordinatorPin.load(tmp_path)


async def test_finished_background_tasks_are_let_go() -> None:
    """A daemon running for months spawns many short jobs (chunk-fault reports): each is
    held only while it runs, and stopping still cancels and awaits the live ones."""
    life = Lifecycle()
    release, stopped = asyncio.Event(), asyncio.Event()

    async def job() -> None:
        await release.wait()

    async def crashing() -> None:
        await release.wait()
        raise RuntimeError("a bug in a job")

    async def loop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    for i in range(20):
        life.spawn(job(), f"job-{i}")
    life.spawn(crashing(), "crashing")
    life.spawn(loop(), "loop")
    assert life.live == 22
    release.set()
    await eventually(lambda: life.live == 1)
    await life.cancel_loops()  # a crashed job is not raised again at shutdown
    assert stopped.is_set() and life.live == 0


async def test_a_delivered_fault_report_is_let_go(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: agent.link.pin is not None)
    loops = agent.lifecycle.live
    a = fake_coordinator.assignment(agent.device_id)
    agent.runner.report_fault(a, 0, "trap")
    assert agent.lifecycle.live == loops + 1
    await eventually(lambda: agent.lifecycle.live == loops)  # answered (404 here): done


async def test_endpoint_variants(fake_coordinator, make_agent) -> None:
    fixed = await make_agent(subdir="a", advertise_address="192.0.2.77")
    assert fixed.endpoint() == f"https://192.0.2.77:{fixed.port}"
    assert advertised_addresses(fixed.config) == ["192.0.2.77"]
    wildcard = await make_agent(
        subdir="b", listen_host="0.0.0.0", coordinator_url=fake_coordinator.url
    )
    assert wildcard.endpoint() == f"https://127.0.0.1:{wildcard.port}"  # the route to it
    assert advertised_addresses(wildcard.config)  # every IPv4 address of the host
    lonely = await make_agent(subdir="c", listen_host="0.0.0.0")
    assert lonely.endpoint() is None  # nothing to route towards yet
    assert source_address_towards("http://[::1]:80") in ("::1", None)
    assert source_address_towards("http:///nohost") is None


def test_sd_notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        _notify_systemd("READY=1")
        assert server.recv(64) == b"READY=1"
    monkeypatch.setenv("NOTIFY_SOCKET", "@aeamc-test-abstract-nobody-listens")
    _notify_systemd("READY=1")  # nobody listening: ignored
    monkeypatch.delenv("NOTIFY_SOCKET")
    _notify_systemd("READY=1")


def test_logfmt(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import logging

    stream = io.StringIO()
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    configure(1, stream, fmt="logfmt")
    logging.getLogger("aeamc.agent.test").info('a "quoted" = value')
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("aeamc.agent.test").exception("failed")
    lines = stream.getvalue().splitlines()
    assert lines[0] == 'level=info logger=aeamc.agent.test msg="a \\"quoted\\" = value"'
    assert lines[1].startswith("level=error") and "exc=" in lines[1] and "boom" in lines[1]
    stamped = LogfmtFormatter(timestamps=True).format(
        logging.LogRecord("x", logging.WARNING, "", 0, "plain", None, None)
    )
    assert stamped.startswith("ts=") and stamped.endswith("msg=plain")
    assert os.environ["JOURNAL_STREAM"]


def test_json_logs_carry_request_id_and_context(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import logging

    from aeamc.agent import logs

    stream = io.StringIO()
    monkeypatch.delenv("AEAMC_LOG_FORMAT", raising=False)
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    configure(0, stream)  # JSON is the default
    logger = logging.getLogger("aeamc.agent.test")
    token = REQUEST_ID.set("task-abc")
    try:
        logger.info("ran %s", "t-1", extra={"task_id": "t-1"})
    finally:
        REQUEST_ID.reset(token)
    logger.debug("hidden without -v")
    monkeypatch.delenv("JOURNAL_STREAM")
    configure(0, stream)
    logger.warning("stamped")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0] == {
        "level": "info",
        "logger": "aeamc.agent.test",
        "msg": "ran t-1",
        "task_id": "t-1",
        "request_id": "task-abc",
    }
    assert len(lines) == 2 and lines[1]["ts"].endswith("Z") and "request_id" not in lines[1]
    # An assignment's id is remembered for its task; otherwise it is derived from the task id.
    logs.remember_task("t-2", "abc-123")
    assert logs.task_request_id("t-2") == "abc-123"
    logs.remember_task("t-3", "bad id\n")
    assert logs.task_request_id("t-3").startswith("task-")
