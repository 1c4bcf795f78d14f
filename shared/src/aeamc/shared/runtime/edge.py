"""The network edge of both HTTPS listeners (the coordinator's API, an agent's endpoint).

A LAN host that does not cooperate can otherwise hold a listener's sockets for free: open
hundreds of idle connections, never finish the TLS handshake, or send a request head one
byte at a time. ``GuardedSite`` serves an aiohttp runner like ``web.TCPSite`` does, with
two guards in front of every connection:

* **At most ``max_per_address`` open connections per source address.** A connection
  beyond it is closed the moment it is accepted, before any TLS work. On a LAN each
  device has its own address and holds one or two connections, so a cap in the tens
  only ever stops a host that hoards them.
* **The TLS handshake and the first request head within ``header_timeout_s``** of the
  connection being accepted; otherwise it is closed. Later requests on a kept-alive
  connection are bounded by aiohttp's ``keepalive_timeout`` instead: a connection that
  has not delivered its next complete request head that long after the previous answer
  is closed (aiohttp's own idle check, which partial heads do not reset).

TLS is started here (``loop.start_tls``) rather than by the listener, so that the address
check and the timeout also cover connections that never complete a handshake.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger(__name__)

_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class EdgeLimits:
    """What a listener allows each connection (see the module docstring)."""

    #: Seconds from accepting a connection to its first complete request head (TLS too).
    header_timeout_s: float = 10.0
    #: Open connections one source address may hold at once.
    max_per_address: int = 64


class _Connections:
    """Open connections per source address, and every guard not yet closed."""

    def __init__(self, limits: EdgeLimits) -> None:
        self.limits = limits
        self.per_address: dict[str, int] = {}
        self.open: set[GuardedConnection] = set()
        #: Connections closed at once because their address held its cap.
        self.refused = 0

    def take(self, address: str) -> bool:
        held = self.per_address.get(address, 0)
        if held >= self.limits.max_per_address:
            self.refused += 1
            return False
        self.per_address[address] = held + 1
        return True

    def release(self, address: str) -> None:
        held = self.per_address.get(address, 0) - 1
        if held > 0:
            self.per_address[address] = held
        else:
            self.per_address.pop(address, None)


class GuardedConnection(asyncio.Protocol):
    """One accepted connection: checks its address, runs its TLS handshake under the head
    timeout, then hands the decrypted stream to aiohttp's request handler."""

    def __init__(
        self,
        inner_factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None,
        connections: _Connections,
    ) -> None:
        self._inner_factory = inner_factory
        self._ssl = ssl_context
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self._raw: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | None = None
        self._address: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tls: asyncio.Task[None] | None = None
        self._head_done = False
        self._tail = b""
        #: Bytes decrypted between the handshake's end and ``start_tls`` returning.
        self._early: list[bytes] = []
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = transport
        assert isinstance(raw, asyncio.Transport)
        peer = raw.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._connections.take(address):
            raw.abort()
            return
        self._raw, self._address = raw, address
        self._connections.open.add(self)
        limits = self._connections.limits
        self._timer = self._loop.call_later(limits.header_timeout_s, self._head_timed_out)
        if self._ssl is None:
            self._open(raw)
            return
        raw.pause_reading()  # nothing is read until the TLS layer is in place
        self._tls = self._loop.create_task(self._start_tls(raw, limits.header_timeout_s))

    async def _start_tls(self, raw: asyncio.Transport, timeout_s: float) -> None:
        assert self._ssl is not None
        try:
            app_transport = await self._loop.start_tls(
                raw, self, self._ssl, server_side=True, ssl_handshake_timeout=timeout_s
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError, asyncio.CancelledError):
            # No handshake: the peer went away, spoke something else, or was too slow.
            raw.abort()
            self._release()
            return
        if app_transport is None or self._address is None:
            raw.abort()
            self._release()
            return
        self._open(app_transport)

    def _open(self, transport: asyncio.Transport) -> None:
        self._inner = self._inner_factory()
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self._inner.data_received(data)
        if self._early_eof:
            self._inner.eof_received()

    def _head_timed_out(self) -> None:
        self._timer = None
        if not self._head_done and self._raw is not None:
            log.debug("closed a connection from %s: no request head in time", self._address)
            self._raw.abort()
            if self._inner is None:
                self._release()

    def abort(self) -> None:
        """Close now (the listener is stopping)."""
        if self._raw is not None:
            self._raw.abort()
        if self._inner is None:
            self._release()

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._tls is not None and not self._tls.done():
            self._tls.cancel()
        if self._address is not None:
            self._connections.release(self._address)
            self._connections.open.discard(self)
            self._address = None

    # -- the decrypted stream, passed on -------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self._head_done:
            if _HEAD_END in self._tail + data:
                self._head_done = True
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            else:
                self._tail = (self._tail + data)[-(len(_HEAD_END) - 1) :]
        if self._inner is not None:
            self._inner.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            self._early_eof = True
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GuardedSite(web.BaseSite):
    """Serve ``runner`` on ``host:port`` or on a bound ``sock``, HTTPS when ``ssl_context``
    is given, each connection under ``limits`` (see the module docstring)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        *,
        limits: EdgeLimits,
        ssl_context: ssl.SSLContext | None = None,
        host: str | None = None,
        port: int = 0,
        sock: socket.socket | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._tls_context = ssl_context
        self._host, self._port, self._sock = host, port, sock
        self.connections = _Connections(limits)

    @property
    def name(self) -> str:
        scheme = "https" if self._tls_context is not None else "http"
        return f"{scheme}://{self._host or '0.0.0.0'}:{self.port}"  # noqa: S104

    @property
    def port(self) -> int:
        """The bound port (the requested one until started)."""
        sockets = getattr(self._server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def factory() -> GuardedConnection:
            return GuardedConnection(server, self._tls_context, self.connections)

        if self._sock is not None:
            self._server = await loop.create_server(factory, sock=self._sock, backlog=self._backlog)
        else:
            self._server = await loop.create_server(
                factory, self._host, self._port, backlog=self._backlog, reuse_address=True
            )

    async def stop(self) -> None:
        await super().stop()
        for guard in list(self.connections.open):
            if guard._inner is None:  # still in its handshake or head: aiohttp never saw it
                guard.abort()
