"""A LAN host that hoards connections or never finishes a request is cut off: at both
HTTPS listeners (the coordinator's API and an agent's endpoint) an address holds at most
its cap of open connections, and a connection must complete TLS and its first request
head within the header timeout."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aeamc.agent.daemon import Agent
from aeamc.agent.keystore import create_identity
from tests.agent.conftest import SIM_ENV, test_config
from tests.support.coordinator import CoordinatorProcess

CAP = 8
HEAD_TIMEOUT_S = 2.0
#: How long a test waits for the server to do what it must; never asserted as a duration.
PATIENCE_S = 20.0


def _coordinator(tmp_path: Path, **server: Any) -> CoordinatorProcess:
    proc = CoordinatorProcess(tmp_path / "coord", settings={"server": server})
    proc.init()
    proc.start()
    return proc


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    proc = _coordinator(tmp_path, max_connections_per_address=CAP, header_timeout_s=60.0)
    yield proc
    proc.stop()


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    proc = _coordinator(tmp_path, header_timeout_s=HEAD_TIMEOUT_S)
    yield proc
    proc.stop()


def _closed_by_peer(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (EOF or reset); False while it is open."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


def _count_open(socks: list[socket.socket]) -> int:
    """Open connections among ``socks`` once the count stops changing."""
    deadline = time.monotonic() + PATIENCE_S
    last = -1
    while time.monotonic() < deadline:
        now = sum(not _closed_by_peer(s) for s in socks)
        if now == last:
            return now
        last = now
        time.sleep(0.5)
    return last


def _idle_connections(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]


def _health_from(port: int, context: ssl.SSLContext, source: str) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return tls.recv(64)


def _trickle_until_closed(tls: socket.socket, head: bytes) -> int:
    """Send ``head`` a byte a second; the number of bytes sent when the server closed."""
    tls.settimeout(1.0)
    for sent, byte in enumerate(head):
        try:
            tls.sendall(bytes([byte]))
            if tls.recv(1) == b"":
                return sent
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return sent
    return len(head)


SLOW_HEAD = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 40 + b"\r\n\r\n"


def _never_speaks_tls(port: int) -> bool:
    """Open TCP and send nothing: True if the server closes it within the patience."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(PATIENCE_S)
        try:
            return sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


# -- the coordinator ----------------------------------------------------------------------


def test_coordinator_caps_connections_per_address(capped: CoordinatorProcess) -> None:
    socks = _idle_connections(capped.port, 25 * CAP)
    try:
        assert _count_open(socks) == CAP
        # Another address is not affected by this one's hoard.
        assert _health_from(capped.port, capped.ssl_context(), "127.0.0.2").startswith(
            b"HTTP/1.1 200"
        )
    finally:
        for s in socks:
            s.close()
    # Once they are gone, the address may connect again.
    status, _ = capped.request("GET", "/v1/health", device=None)
    assert status == 200


def test_coordinator_closes_a_slow_request_head(impatient: CoordinatorProcess) -> None:
    context = impatient.ssl_context()
    with (
        socket.create_connection(("127.0.0.1", impatient.port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        sent = _trickle_until_closed(tls, SLOW_HEAD)
    assert sent < len(SLOW_HEAD)
    status, _ = impatient.request("GET", "/v1/health", device=None)
    assert status == 200


def test_coordinator_closes_a_connection_that_never_starts_tls(
    impatient: CoordinatorProcess,
) -> None:
    assert _never_speaks_tls(impatient.port)


# -- an agent's endpoint ----------------------------------------------------------------


async def _agent(tmp_path: Path, **listen: Any) -> Agent:
    config = test_config(tmp_path, **listen)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    create_identity(config.state_dir)
    agent = Agent(config, env=SIM_ENV)
    await agent.start()
    return agent


async def test_agent_endpoint_caps_connections_per_address(tmp_path: Path) -> None:
    agent = await _agent(
        tmp_path, listen_max_connections_per_address=CAP, listen_header_timeout_s=60.0
    )
    socks = await asyncio.to_thread(_idle_connections, agent.port, 25 * CAP)
    try:
        assert await asyncio.to_thread(_count_open, socks) == CAP
    finally:
        for s in socks:
            s.close()
        await agent.stop()


def _unverified_tls() -> ssl.SSLContext:
    """A client context that takes any certificate: these peers only hold sockets."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _slow_heads(port: int, n: int, context: ssl.SSLContext) -> list[ssl.SSLSocket]:
    """Open ``n`` connections, each completing TLS and sending the start of a request
    head it never finishes; the ones the server let through the handshake."""
    held = []
    for _ in range(n):
        raw = socket.create_connection(("127.0.0.1", port))
        try:
            tls = context.wrap_socket(raw, server_hostname="127.0.0.1")
            tls.sendall(SLOW_HEAD[:10])
        except (OSError, ssl.SSLError):
            raw.close()
            continue
        held.append(tls)
    return held


def _tls_closed_by_peer(tls: ssl.SSLSocket) -> bool:
    """True once the server closed ``tls`` (EOF, reset or a TLS close); False while open."""
    tls.setblocking(False)
    try:
        return tls.recv(1) == b""
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except (OSError, ssl.SSLError):
        return True


async def test_agent_endpoint_caps_slow_request_heads_per_address(tmp_path: Path) -> None:
    """Slow request heads from one address hold at most its cap of connections: the
    rest are closed before their TLS handshake, and the address gets in again once they
    are gone."""
    agent = await _agent(
        tmp_path, listen_max_connections_per_address=CAP, listen_header_timeout_s=60.0
    )
    context = _unverified_tls()
    held: list[ssl.SSLSocket] = []
    try:
        held = await asyncio.to_thread(_slow_heads, agent.port, 3 * CAP, context)
        assert len(held) == CAP
        await asyncio.sleep(1.0)
        assert sum(not _tls_closed_by_peer(s) for s in held) == CAP
        for s in held:
            s.close()
        reply = await asyncio.to_thread(_health_when_free, agent.port, context)
        assert reply.startswith(b"HTTP/1.1 200")
    finally:
        for s in held:
            s.close()
        await agent.stop()


def _health_when_free(port: int, context: ssl.SSLContext) -> bytes:
    """The health answer once the server has seen the closed connections go."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            return _health_from(port, context, "127.0.0.1")
        except (OSError, ssl.SSLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def test_agent_endpoint_closes_a_slow_request_head(tmp_path: Path) -> None:
    """A request head sent a byte a second is cut off at the header timeout, long before
    it is complete; the endpoint answers others meanwhile and after. (The idle timeout of
    kept-alive connections is set far off, so only the header timeout can cut it.)"""
    agent = await _agent(
        tmp_path, listen_header_timeout_s=HEAD_TIMEOUT_S, listen_keepalive_timeout_s=3600.0
    )
    context = _unverified_tls()

    def trickle() -> int:
        with (
            socket.create_connection(("127.0.0.1", agent.port)) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return _trickle_until_closed(tls, SLOW_HEAD)

    try:
        slow = asyncio.create_task(asyncio.to_thread(trickle))
        health = await asyncio.to_thread(_health_from, agent.port, context, "127.0.0.1")
        assert health.startswith(b"HTTP/1.1 200")
        sent = await slow
        assert sent < len(SLOW_HEAD)
        health = await asyncio.to_thread(_health_from, agent.port, context, "127.0.0.1")
        assert health.startswith(b"HTTP/1.1 200")
    finally:
        await agent.stop()


async def test_agent_endpoint_closes_a_connection_that_never_starts_tls(tmp_path: Path) -> None:
    agent = await _agent(tmp_path, listen_header_timeout_s=HEAD_TIMEOUT_S)
    try:
        assert await asyncio.to_thread(_never_speaks_tls, agent.port)
    finally:
        await agent.stop()
