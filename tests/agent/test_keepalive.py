"""The agent's HTTP client keeps its connection to the coordinator between heartbeats, and a
kept-alive connection the server has closed costs a retry, not a lost request.

The servers here are real sockets speaking HTTP/1.1: one that, like a server whose idle
timer fires just as the next request arrives, closes a kept-alive connection instead of
answering the request on it; one that closes every connection unanswered.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aeamc.agent.client import CoordinatorClient, Unreachable
from aeamc.agent.net import client_session, heartbeat_keepalive_s

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


class Http11Server:
    """Answers ``answered_per_connection`` requests on each connection, then closes it
    on reading the next one (0: closes every connection on its first request)."""

    def __init__(self, answered_per_connection: int) -> None:
        self.answered_per_connection = answered_per_connection
        self.connections = 0
        #: (connection number, request body) of every request read, answered or not.
        self.requests: list[tuple[int, bytes]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append((number, await reader.readexactly(length)))
                if answered >= self.answered_per_connection:
                    break  # closed with the request unanswered
                writer.write(OK)
                await writer.drain()
                answered += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def session() -> AsyncIterator[object]:
    s = client_session(timeout_s=5.0, keepalive_s=heartbeat_keepalive_s(60.0))
    yield s
    await s.close()


async def test_a_request_on_a_connection_the_server_closed_is_sent_again(session) -> None:
    server = Http11Server(answered_per_connection=1)
    url = await server.start()
    try:
        client = CoordinatorClient(session)  # type: ignore[arg-type]
        first = await client.post(url, "/v1/heartbeats", {"seq": 1})
        # The second goes on the kept-alive connection, which the server closes unanswered:
        # the client sends it again on a new connection, and the caller sees the answer.
        second = await client.post(url, "/v1/heartbeats", {"seq": 2})
        assert (first.status, first.body) == (200, {"ok": True})
        assert (second.status, second.body) == (200, {"ok": True})
        assert server.connections == 2
        assert server.requests == [(1, b'{"seq":1}'), (1, b'{"seq":2}'), (2, b'{"seq":2}')]
    finally:
        await server.stop()


async def test_a_fresh_connection_closed_unanswered_is_not_retried(session) -> None:
    """Only the keep-alive race is retried: a server that drops a request on a connection
    made for it is unreachable, and the request is sent once."""
    server = Http11Server(answered_per_connection=0)
    url = await server.start()
    try:
        client = CoordinatorClient(session)  # type: ignore[arg-type]
        with pytest.raises(Unreachable, match="ServerDisconnected"):
            await client.post(url, "/v1/heartbeats", {"seq": 1})
        assert server.connections == 1 and server.requests == [(1, b'{"seq":1}')]
    finally:
        await server.stop()
