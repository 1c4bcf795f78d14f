"""Requests a worker that does not lead passes to the one that does (SPEC §16).

Every worker process accepts connections on the coordinator's port (``SO_REUSEPORT``), so
any request can reach any worker. The hot device routes — heartbeats and proofs — are
served where they arrive: their checks need nothing but the database and views every
worker keeps in step (``follower.py``). Every other route (enrollment, the operator's and
clients' API, the dashboard, updates) is answered by the leader (``leadership.py``), the
one process whose in-memory state — sessions, rollouts, the scheduler's wake-ups — is
the coordinator's; the worker relays it over the leader's Unix socket in the state
directory, unchanged, with the client's address and verified TLS identity in two
headers.

Those headers are believed only on that socket, which only the coordinator's own user
can open: on the TLS port they are ignored, so no client can claim another's address or
certificate by sending them.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from aeamc.shared.runtime.tls import Peer, peer_of

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Routes every worker serves itself: (method, route).
HOT_ROUTES = frozenset(
    {
        ("POST", "/v1/heartbeats"),
        ("POST", "/v1/proofs"),
        ("POST", "/v1/proofs/batch"),
    }
)
FORWARDED_FOR = "X-AEAMC-Forwarded-For"
FORWARDED_PEER = "X-AEAMC-Forwarded-Peer"
#: Where a relayed request's verified TLS identity is kept (None: it had none).
PEER_KEY: web.RequestKey[Peer | None] = web.RequestKey("aeamc_peer", object)  # type: ignore[arg-type]
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        FORWARDED_FOR.lower(),
        FORWARDED_PEER.lower(),
    }
)
#: Seconds to wait for the leader's answer beyond the longest a request may be held.
_ANSWER_MARGIN_S = 30.0


def request_peer(request: web.Request) -> Peer | None:
    """The verified TLS identity of the client: the connection's, or for a request relayed
    by another worker, the one that worker saw."""
    if PEER_KEY in request:
        return request[PEER_KEY]
    return peer_of(request.transport)


def relayed_by_worker(request: web.Request) -> bool:
    """Whether the request came over a Unix socket (only the leader's relay socket is one)
    from a process of this coordinator's own user; one from any other user is not."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return False
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    if uid != os.getuid():
        raise web.HTTPForbidden(reason="relay socket: another user")
    return True


def _encode_peer(peer: Peer | None) -> str:
    return "" if peer is None else f"{peer.name};{peer.role};{peer.serial}"


def _decode_peer(value: str) -> Peer | None:
    parts = value.split(";")
    if len(parts) != 3 or not all(parts):
        return None
    return Peer(name=parts[0], role=parts[1], serial=parts[2])


class Forwarding:
    """The relay of one worker process (see the module docstring)."""

    def __init__(self, address: str, leading: Callable[[], bool], answer_timeout_s: float) -> None:
        #: The leader's relay socket (app.relay_address).
        self.address = address
        self.leading = leading
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=5.0, sock_read=answer_timeout_s + _ANSWER_MARGIN_S
        )
        self._session: aiohttp.ClientSession | None = None
        self.relayed = 0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Outermost: adopt what the relaying worker saw on a relayed request; relay a
        request this worker does not serve while another leads; serve the rest."""
        if relayed_by_worker(request):
            remote = request.headers.get(FORWARDED_FOR, "")
            relayed = request.clone(remote=remote) if remote else request
            relayed[PEER_KEY] = _decode_peer(request.headers.get(FORWARDED_PEER, ""))
            return await handler(relayed)
        resource = request.match_info.route.resource
        route = (request.method, resource.canonical if resource is not None else "")
        if route in HOT_ROUTES or self.leading():
            return await handler(request)
        return await self.relay(request)

    async def relay(self, request: web.Request) -> web.StreamResponse:
        """Send ``request`` to the leader as it came and stream its answer back; 503 with
        ``Retry-After`` while no process leads (a takeover is under way)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.address),
                timeout=self.timeout,
                auto_decompress=False,
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers[FORWARDED_FOR] = request.remote or ""
        headers[FORWARDED_PEER] = _encode_peer(peer_of(request.transport))
        body: Any = request.content.iter_chunked(64 * 1024) if request.body_exists else None
        try:
            upstream = await self._session.request(
                request.method,
                f"http://leader{request.rel_url}",
                headers=headers,
                data=body,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        except (aiohttp.ClientConnectionError, FileNotFoundError, ConnectionError) as exc:
            log.warning("no leader to relay %s %s to: %s", request.method, request.path, exc)
            return _unavailable()
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    response.headers.add(name, value)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(64 * 1024):
                await response.write(chunk)
            await response.write_eof()
        self.relayed += 1
        return response


def _unavailable() -> web.Response:
    return web.json_response(
        {
            "error": {
                "code": "unavailable",
                "message": "the coordinator is changing its leading worker; retry shortly",
                "retry_after_s": 1,
            }
        },
        status=503,
        headers={"Retry-After": "1"},
    )
