"""Several worker processes on one coordinator (``[server] workers``, SPEC §13), with real
processes: the workers share the port, relay to the leader what only it answers, keep
trust decisions exact whichever worker a request reaches, and survive ``kill -9`` of any
of them under load without losing or repeating anything they acknowledged."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from aeamc.coordinator.forwarding import new_relay_address, publish_relay, published_relay
from aeamc.coordinator.leadership import LeaderLock
from aeamc.shared import microblock
from aeamc.shared.messages import Assignment, Privacy, sign
from tests.support.coordinator import CoordinatorProcess, microblock_chain
from tests.support.device import SimDevice, now_ms

WORKERS = 2


def _workers(coord: CoordinatorProcess) -> list[psutil.Process]:
    assert coord.process is not None
    return psutil.Process(coord.process.pid).children()


def _leader(coord: CoordinatorProcess, timeout: float = 30.0) -> psutil.Process:
    """The worker holding the leader lock (only the holder keeps the lock file open)."""
    lock = str(coord.state_dir / "leader.lock")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in _workers(coord):
            try:
                if any(f.path == lock for f in w.open_files()):
                    return w
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.1)
    raise AssertionError("no worker holds the leader lock")


def _start(tmp_path: Path, **settings: Any) -> CoordinatorProcess:
    coord = CoordinatorProcess(
        tmp_path / "coord", settings={"server": {"workers": WORKERS}, **settings}
    )
    coord.init()
    coord.start()
    assert len(_workers(coord)) == WORKERS
    return coord


async def _enroll_token(session: aiohttp.ClientSession, coord: CoordinatorProcess) -> str:
    operator = {"Authorization": f"Bearer {coord.token('operator')}"}
    async with session.post(
        f"{coord.url}/v1/tokens", json={"role": "enroll", "uses": 100}, headers=operator
    ) as resp:
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["token"])


async def _post_alone(
    coord: CoordinatorProcess, device: SimDevice, path: str, body: Any, headers: Any = None
) -> tuple[int, Any]:
    """POST on a connection of its own (so it may reach any worker), as ``device``."""
    connector = aiohttp.TCPConnector(ssl=device.client_context(), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(coord.url + path, json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def _quarantine(
    session: aiohttp.ClientSession,
    coord: CoordinatorProcess,
    device: SimDevice,
    operator: dict[str, str],
) -> None:
    """The operator quarantines ``device`` (through whichever worker takes the request)."""
    async with session.post(
        f"{coord.url}/v1/devices/{device.device_id}/quarantine",
        json={"reason": "test"},
        headers=operator,
    ) as resp:
        assert resp.status == 200, await resp.text()


async def _metric(session: aiohttp.ClientSession, coord: CoordinatorProcess, name: str) -> float:
    async with session.get(f"{coord.url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def _accepted_heartbeats(coord: CoordinatorProcess) -> int:
    """Heartbeats the database holds (each accepted one is a row)."""
    with sqlite3.connect(coord.state_dir / "coordinator.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM heartbeats").fetchone()[0])


async def test_workers_share_the_port_and_every_one_judges_devices_as_the_store_does(
    tmp_path: Path,
) -> None:
    coord = _start(tmp_path)
    session = coord.session()
    devices: list[SimDevice] = []
    try:
        operator = {"Authorization": f"Bearer {coord.token('operator')}"}
        token = await _enroll_token(session, coord)
        devices = [await SimDevice(coord.url).start() for _ in range(16)]
        # Enrollment is relayed to the leader by whichever worker gets it; the first
        # heartbeats may reach a worker that has not followed the enrollment yet.
        for d in devices:
            await d.join(token)
        # Kept-alive connections are spread by the kernel over both workers.
        port = coord.port
        held = [
            sum(
                1
                for c in w.net_connections()
                if c.status == "ESTABLISHED" and c.laddr and c.laddr.port == port
            )
            for w in _workers(coord)
        ]
        assert all(n > 0 for n in held), held

        # One heartbeat sent at once on 12 connections: accepted exactly once, whichever
        # workers the copies reach (the store's replay counter, not a worker's view).
        d = devices[0]
        poa = d.poa()
        answers = await asyncio.gather(
            *(_post_alone(coord, d, "/v1/heartbeats", poa) for _ in range(12))
        )
        assert sorted(s for s, _ in answers) == [202] + [409] * 11, answers
        assert all(b["error"]["code"] == "replay" for s, b in answers if s == 409)

        # Quarantine is in force on every worker at once: the very next heartbeat is
        # refused wherever it lands, though a worker may not have followed the change.
        for q in devices[8:]:
            await _quarantine(session, coord, q, operator)
            status, body = await _post_alone(coord, q, "/v1/heartbeats", q.poa())
            # (A worker that followed the revocation of its certificate says that first.)
            assert status == 403, body
            assert body["error"]["code"] in ("quarantined", "certificate_revoked"), body

        # A flag set through any worker reaches every worker's answers.
        async with session.put(
            f"{coord.url}/v1/flags/everywhere", json={"percent": 100}, headers=operator
        ) as resp:
            assert resp.status == 200, await resp.text()
        for _ in range(100):
            answers = await asyncio.gather(
                *(_post_alone(coord, d, "/v1/heartbeats", d.poa()) for d in devices[:8])
            )
            if all(s == 202 and "everywhere" in b["flags"] for s, b in answers):
                break
            await asyncio.sleep(0.1)
        assert all(s == 202 and "everywhere" in b["flags"] for s, b in answers), answers

        # /metrics counts every worker's heartbeats, whichever worker answers the scrape.
        accepted = await _metric(session, coord, "aeamc_coordinator_heartbeats_total")
        for _ in range(100):
            if accepted == await _accepted_heartbeats(coord):
                break
            await asyncio.sleep(0.1)
            accepted = await _metric(session, coord, "aeamc_coordinator_heartbeats_total")
        assert accepted == await _accepted_heartbeats(coord)
    finally:
        await session.close()
        for d in devices:
            await d.stop()
        assert coord.stop() == 0


async def test_a_proof_from_a_device_quarantined_a_moment_ago_is_refused_by_every_worker(
    tmp_path: Path,
) -> None:
    """The quarantine is committed by the leader; the very next proof of each device,
    on a connection of its own, reaches a worker that may still see the device active.
    It is refused all the same (its assignment ended in the quarantine's commit), and
    nothing of it is stored."""
    coord = _start(tmp_path, scheduler={"max_inflight_per_device": 1})
    session = coord.session()
    devices = [await SimDevice(coord.url, auto_prove=False).start() for _ in range(8)]
    try:
        operator = {"Authorization": f"Bearer {coord.token('operator')}"}
        client = {"Authorization": f"Bearer {coord.token('client')}"}
        token = await _enroll_token(session, coord)
        for d in devices:
            await d.join(token)
        for i in range(len(devices)):
            task = {
                "kind": "sha256-chain",
                "params": {"seed": f"{i:064x}", "iterations": 1},
                "chunks": 1,
            }
            async with session.post(f"{coord.url}/v1/tasks", json=task, headers=client) as resp:
                assert resp.status == 202
        for _ in range(300):
            if all(d.assignments for d in devices):
                break
            await asyncio.sleep(0.1)
        assert [len(d.assignments) for d in devices] == [1] * len(devices), (
            [len(d.assignments) for d in devices],
            coord.log_text()[-3000:],
        )
        for d in devices:
            (assignment,) = d.assignments
            await _quarantine(session, coord, d, operator)
            status, body = await _post_alone(coord, d, "/v1/proofs", d.proof_for(assignment))
            assert status in (403, 410), body
        with sqlite3.connect(coord.state_dir / "coordinator.db") as db:
            assert db.execute("SELECT COUNT(*) FROM proofs").fetchone()[0] == 0
    finally:
        await session.close()
        for d in devices:
            await d.stop()
        coord.stop()


async def test_relay_headers_from_the_network_are_not_believed(tmp_path: Path) -> None:
    """A LAN host sending the headers a worker adds when it relays (the client's address,
    its certificate) gets no more than it would without them: on the TLS port they are
    ignored, whichever worker the connection reaches."""
    coord = _start(tmp_path)
    session = coord.session()
    victim = await SimDevice(coord.url).start()
    thief = await SimDevice(coord.url).start()
    try:
        token = await _enroll_token(session, coord)
        await victim.join(token)
        await thief.join(token)
        forged = {
            "X-AEAMC-Forwarded-Peer": f"{victim.device_id};device;1",
            "X-AEAMC-Forwarded-For": "127.0.0.1",
        }
        # The victim's own export request, signed by the victim (captured on the LAN), sent
        # over the thief's connection claiming the victim's certificate: refused by every
        # worker. The victim itself gets it.
        for _ in range(8):
            status, body = await _post_alone(
                coord,
                thief,
                f"/v1/devices/{victim.device_id}/export",
                _privacy(victim, "export"),
                headers=forged,
            )
            assert status == 403, body
        status, body = await _post_alone(
            coord, victim, f"/v1/devices/{victim.device_id}/export", _privacy(victim, "export")
        )
        assert status == 200 and body["device"]["device_id"] == victim.device_id, body
    finally:
        await session.close()
        await victim.stop()
        await thief.stop()
        coord.stop()


def _privacy(device: SimDevice, action: str) -> dict[str, Any]:
    body = {
        "type": "privacy",
        "device_id": device.device_id,
        "action": action,
        "timestamp": now_ms(),
    }
    return sign(Privacy, body, device.key).to_dict()


def _as_other_user(address: str, request: bytes) -> bytes:
    """Connect to ``address`` as user ``nobody`` (a forked child), send ``request``, and
    return the answer's first line."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python clean-up, only its answer through the pipe
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(30)
                sock.connect(address)
                sock.sendall(request)
                os.write(write_end, sock.recv(65536).split(b"\r\n", 1)[0])
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as answer:
        return answer.read()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
async def test_another_local_user_cannot_use_the_relay_socket(tmp_path: Path) -> None:
    """The leader's relay socket believes the headers a worker adds; a process of another
    user on the host that connects to it is refused before anything is read."""
    coord = _start(tmp_path)
    try:
        _leader(coord)
        address = published_relay(coord.state_dir)
        assert address is not None
        request = (
            b"GET /v1/devices HTTP/1.1\r\nHost: leader\r\n"
            b"X-AEAMC-Forwarded-For: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        first_line = await asyncio.to_thread(_as_other_user, address, request)
        assert first_line.startswith(b"HTTP/1.1 403"), first_line
    finally:
        coord.stop()


def _held_lock(coord: CoordinatorProcess) -> LeaderLock:
    """The leader lock, taken by the test: no worker can lead until it is released."""
    lock = LeaderLock(coord.state_dir)
    assert lock.try_acquire()
    return lock


async def _relayed_status(coord: CoordinatorProcess) -> tuple[int, dict[str, Any], str]:
    """``GET /v1/status`` as the operator (a relayed route) over a new connection: the
    status, the body and the ``Retry-After`` header."""
    async with (
        coord.session() as session,
        session.get(
            f"{coord.url}/v1/status",
            headers={"Authorization": f"Bearer {coord.token('operator')}"},
        ) as resp,
    ):
        return resp.status, await resp.json(), resp.headers.get("Retry-After", "")


async def _served_by_a_leader(coord: CoordinatorProcess) -> None:
    """Until a relayed route is answered 200: a worker leads and its relay works."""
    for _ in range(100):
        status, body, _ = await _relayed_status(coord)
        if status == 200:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no leader answers: {status} {body}")


async def test_while_no_worker_leads_relayed_routes_are_503_and_devices_are_served(
    tmp_path: Path,
) -> None:
    """With the leader lock held elsewhere (a leader that hangs), every worker still takes
    heartbeats; what only a leader answers is 503 ``unavailable`` with ``Retry-After``,
    until a worker can lead."""
    coord = _start(tmp_path)
    devices = [SimDevice(coord.url, port=1) for _ in range(2)]
    token = coord.issue_token("enroll", uses=len(devices) + 1)
    for d in devices:
        status, body = coord.request("POST", "/v1/enroll", d.enroll_message(token))
        assert status == 202, body
    assert coord.stop() == 0
    lock = _held_lock(coord)
    try:
        coord.start()
        for _ in range(3):
            for d in devices:
                status, body = coord.request("POST", "/v1/heartbeats", d.poa())
                assert status == 202, body
        late = SimDevice(coord.url, port=1)
        status, body = coord.request("POST", "/v1/enroll", late.enroll_message(token))
        assert (status, body["error"]["code"]) == (503, "unavailable"), body
        status, body, retry_after = await _relayed_status(coord)
        assert (status, body["error"]["code"], retry_after) == (503, "unavailable", "1"), body
        lock.release()
        _leader(coord)
        await _served_by_a_leader(coord)
        # The refused enrollment changed nothing: the token still has its last use.
        status, body = coord.request("POST", "/v1/enroll", late.enroll_message(token))
        assert status == 202, body
    finally:
        lock.release()
        coord.stop()


def _squat(address: str, ready: int, stop: int, got: int) -> None:
    """As user ``nobody`` (a forked child): listen on ``address``, say so on ``ready``,
    then write to ``got`` every byte any connection sends, until ``stop`` has data."""
    os.setgid(65534)
    os.setuid(65534)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(address)
        listener.listen(16)
        listener.setblocking(False)
        os.write(ready, b"1")
        conns: list[socket.socket] = []
        while True:
            readable, _, _ = select.select([listener, stop, *conns], [], [], 5)
            if stop in readable:
                return
            for r in readable:
                if r is listener:
                    conns.append(listener.accept()[0])
                else:
                    data = r.recv(65536)
                    if data:
                        os.write(got, data)
                    else:
                        conns.remove(r)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
async def test_a_relay_socket_held_by_another_user_is_sent_nothing(tmp_path: Path) -> None:
    """Another local user binds the relay name last published (as it could once the leader
    that bound it died): workers find it is not their user's and send it nothing, not
    even the operator's token; they answer 503 until a new leader publishes its own."""
    coord = CoordinatorProcess(tmp_path / "coord", settings={"server": {"workers": WORKERS}})
    coord.init()
    squatted = new_relay_address()
    publish_relay(coord.state_dir, squatted)
    ready_r, ready_w = os.pipe()
    stop_r, stop_w = os.pipe()
    got_r, got_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python clean-up
        try:
            _squat(squatted, ready_w, stop_r, got_w)
        finally:
            os._exit(0)
    os.close(got_w)
    lock = _held_lock(coord)  # after the fork: the child must not share the lock
    try:
        assert os.read(ready_r, 1) == b"1"
        coord.start()
        for _ in range(4):  # new connections: different workers
            status, body, retry_after = await _relayed_status(coord)
            assert (status, body["error"]["code"], retry_after) == (503, "unavailable", "1")
        lock.release()
        _leader(coord)
        await _served_by_a_leader(coord)
        assert published_relay(coord.state_dir) not in (None, squatted)
    finally:
        lock.release()
        os.write(stop_w, b"1")
        os.waitpid(pid, 0)
        coord.stop()
    with os.fdopen(got_r, "rb") as got:
        assert got.read() == b""


async def test_a_worker_that_cannot_take_over_frees_the_lock(tmp_path: Path) -> None:
    """A worker that gets the lock but cannot start the leader's duties (here: it cannot
    publish its relay socket) gives the lock up and goes on serving devices; the workers
    try again, each waiting longer, and once the fault is gone one of them leads."""
    coord = CoordinatorProcess(tmp_path / "coord", settings={"server": {"workers": WORKERS}})
    coord.init()
    lock = _held_lock(coord)
    blocker = coord.state_dir / "leader.relay"
    blocker.mkdir()  # what the leader writes cannot be replaced
    try:
        coord.start()
        pids = {w.pid for w in _workers(coord)}
        lock.release()
        # A worker takes the lock, fails and gives it up; one that takes it next fails too.
        failed = "starting the leader's duties failed"
        for _ in range(300):
            if coord.log_text().count(failed) >= 2:
                break
            await asyncio.sleep(0.1)
        assert coord.log_text().count(failed) >= 2
        # No worker ended: devices are served all along, relayed routes wait for a leader.
        assert {w.pid for w in _workers(coord)} == pids
        status, body, _ = await _relayed_status(coord)
        assert (status, body["error"]["code"]) == (503, "unavailable"), body
        blocker.rmdir()
        _leader(coord, timeout=90)  # (each worker waits longer between its attempts)
        await _served_by_a_leader(coord)
    finally:
        lock.release()
        coord.stop()


PROOFS = 600
DEVICES = 4
KILL_AFTER = 200


@pytest.mark.parametrize("victim", ["leader", "follower"])
async def test_kill_9_of_a_worker_under_load_loses_and_repeats_nothing(
    tmp_path: Path, victim: str
) -> None:
    coord = _start(
        tmp_path,
        scheduler={"max_inflight_per_device": PROOFS},
        blocks={"max_receipts": 100, "interval_s": 0.3},
    )
    session = coord.session()
    devices = [await SimDevice(coord.url, auto_prove=False).start() for _ in range(DEVICES)]
    try:
        client = {"Authorization": f"Bearer {coord.token('client')}"}
        token = await _enroll_token(session, coord)
        for d in devices:
            await d.join(token)
        task = {"kind": "sha256-chain", "params": {"seed": "ab" * 32, "iterations": 1}, "chunks": 1}
        for _ in range(PROOFS):
            async with session.post(f"{coord.url}/v1/tasks", json=task, headers=client) as resp:
                assert resp.status == 202
        for _ in range(600):
            if sum(len(d.assignments) for d in devices) == PROOFS:
                break
            await asyncio.sleep(0.1)
        work: list[tuple[SimDevice, Assignment]] = [(d, a) for d in devices for a in d.assignments]
        assert len(work) == PROOFS

        leader = _leader(coord)
        target = leader if victim == "leader" else next(w for w in _workers(coord) if w != leader)
        acked: set[tuple[str, str]] = set()
        beats: list[tuple[SimDevice, dict[str, Any]]] = []
        killed = asyncio.Event()
        gate = asyncio.Semaphore(24)

        async def submit(d: SimDevice, a: Assignment) -> None:
            async with gate:
                try:
                    status, _ = await d.post("/v1/proofs", d.proof_for(a))
                    poa = d.poa()
                    hb, _ = await d.post("/v1/heartbeats", poa)
                except (aiohttp.ClientError, OSError):
                    return
                if hb == 202:
                    beats.append((d, poa))
                if status == 202:
                    acked.add((a.task_id, d.device_id))
                    if len(acked) >= KILL_AFTER and not killed.is_set():
                        killed.set()
                        os.kill(target.pid, signal.SIGKILL)

        await asyncio.gather(*(submit(d, a) for d, a in work))
        assert killed.is_set() and len(acked) >= KILL_AFTER

        # The supervisor starts a worker again; a leader serves (the survivor took over
        # if the leader was the one killed).
        for _ in range(300):
            if len(_workers(coord)) == WORKERS and target.pid not in {
                w.pid for w in _workers(coord)
            }:
                break
            await asyncio.sleep(0.1)
        assert len(_workers(coord)) == WORKERS
        new_leader = _leader(coord)
        if victim == "leader":
            assert new_leader.pid != leader.pid

        # No acknowledged heartbeat's seq can be used again, on any worker.
        for d, poa in beats[-20:]:
            status, body = await _post_alone(coord, d, "/v1/heartbeats", poa)
            assert (status, body["error"]["code"]) == (409, "replay"), body
        # Every proof not acknowledged is delivered again: accepted, or refused as a
        # duplicate when it had been committed before the kill without its 202 arriving.
        for d, a in work:
            if (a.task_id, d.device_id) not in acked:
                for _ in range(50):
                    try:
                        status, body = await d.post("/v1/proofs", d.proof_for(a))
                    except (aiohttp.ClientError, OSError):
                        await asyncio.sleep(0.1)
                        continue
                    break
                assert status == 202 or body["error"]["code"] == "duplicate", body
        for _ in range(300):
            chain = await microblock_chain(session, coord.url)
            if sum(len(b.receipts) for b in chain) == PROOFS:
                break
            await asyncio.sleep(0.2)
        microblock.verify_chain(chain)  # links from genesis, no receipt twice
        keys = [r.key for b in chain for r in b.receipts]
        assert len(keys) == len(set(keys)) == PROOFS
        assert set(keys) == {(a.task_id, d.device_id) for d, a in work}
        assert acked <= set(keys)
        # Every worker reads the proofs waiting for a block from the store: none now, though
        # some were accepted by a worker that forms no blocks.
        for _ in range(8):  # new connections: different workers
            fresh = coord.session()
            try:
                assert await _metric(fresh, coord, "aeamc_coordinator_unblocked_receipts") == 0
            finally:
                await fresh.close()
    finally:
        await session.close()
        for d in devices:
            await d.stop()
        coord.stop()
