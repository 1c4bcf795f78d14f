"""Requests a worker that does not lead passes to the one that does (SPEC §16).

Every worker process accepts connections on the coordinator's port (``SO_REUSEPORT``), so
any request can reach any worker. The hot device routes — heartbeats and proofs — are
served where they arrive: their checks need nothing but the database and views every
worker keeps in step (``follower.py``). Every other route (enrollment, the operator's and
clients' API, the dashboard, updates) is answered by the leader (``leadership.py``), the
one process whose in-memory state — sessions, rollouts, the scheduler's wake-ups — is
the coordinator's; the worker relays it over the leader's Unix socket, unchanged, with
the client's address and verified TLS identity in two headers.

That socket is in Linux's abstract namespace (no path-length limit, nothing left behind
by a crash), which has no permissions, so both ends check who is at the other one:

- the leader believes the two headers only on that socket, and only from a process of
  its own user (``SO_PEERCRED``); on the TLS port they are ignored, so no client can claim
  another's address or certificate by sending them;
- each leader binds a new random name and publishes it in ``leader.relay`` in the state
  directory; a worker relays only to a listener of its own user there. Another local user
  can neither take the name before a leader binds it (it is unknown until then), nor, by
  taking an old leader's name after that leader died, receive what clients send (their
  tokens): a worker finds the listener is not its user's and answers 503 instead.

On several nodes over PostgreSQL the leader may be on another host: there the relay is
the leader's relay port over TLS, found in the latest term of ``leaders``, and the rule
for who may use it is in ``cluster.py``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from aeamc.shared.runtime.files import atomic_write
from aeamc.shared.runtime.tls import Peer, peer_of

from .errors import retry_later
from .groupcommit import StoreUnavailable

if TYPE_CHECKING:
    from .cluster import RelayListener

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Routes every worker serves itself: (method, route).
HOT_ROUTES = frozenset(
    {
        ("POST", "/v1/heartbeats"),
        ("POST", "/v1/proofs"),
        ("POST", "/v1/proofs/batch"),
        # What this node itself is (a load balancer's or an operator's probe of one node).
        ("GET", "/v1/node"),
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
#: The file in the state directory naming the current leader's relay socket.
RELAY_FILE = "leader.relay"
_RELAY_PREFIX = "aeamc-coordinator-"


def new_relay_address() -> str:
    """A relay socket name no one can know before the leader binds it (abstract
    namespace: the leading NUL)."""
    return f"\0{_RELAY_PREFIX}{secrets.token_hex(16)}"


def publish_relay(state_dir: Path, address: str) -> None:
    """Name ``address`` (bound by this leader) as the relay, for the workers to read."""
    atomic_write(state_dir / RELAY_FILE, address.lstrip("\0").encode(), mode=0o600)


def published_relay(state_dir: Path) -> str | None:
    """The relay socket the last leader published; None before any did (or if what the
    file holds is not a relay name)."""
    try:
        name = (state_dir / RELAY_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeError):
        return None
    if not name.startswith(_RELAY_PREFIX) or not name.isascii() or not name.isprintable():
        return None
    return f"\0{name}"


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class ForeignListener(aiohttp.ClientConnectionError):
    """The relay socket is held by a process of another user: nothing is sent to it."""


class _OwnUserConnector(aiohttp.UnixConnector):
    """A Unix connector that hands over a connection only when the listener runs as this
    process's user; otherwise it closes it, unused, and raises ``ForeignListener``."""

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        proto = await super()._create_connection(req, traces, timeout)
        transport = proto.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        uid = None if sock is None else peer_uid(sock)
        if uid != os.getuid():
            if transport is not None:
                transport.abort()
            raise ForeignListener(f"the relay socket is held by user {uid}, not by this one")
        return proto


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
    if peer_uid(sock) != os.getuid():
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

    def __init__(
        self,
        state_dir: Path,
        leading: Callable[[], bool],
        answer_timeout_s: float,
        *,
        cluster: ClusterRelay | None = None,
    ) -> None:
        #: Where the leader publishes its relay socket (``RELAY_FILE``).
        self.state_dir = state_dir
        #: On several nodes: the leader's relay port instead of a Unix socket.
        self.cluster = cluster
        #: The relay socket ``_session`` connects to.
        self.address: str | None = None
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
        if relayed_by_worker(request) or (
            self.cluster is not None and self.cluster.listener.relayed(request)
        ):
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
        if self.cluster is not None:
            try:
                address = await self.cluster.locate()
            except StoreUnavailable as exc:  # the latest term is in the database
                log.warning("no leader found for %s %s: %s", request.method, request.path, exc)
                return _unavailable()
            base = address or ""
        else:
            address = published_relay(self.state_dir)
            base = "http://leader"
        if address is None:
            log.warning("no leader to relay %s %s to yet", request.method, request.path)
            return _unavailable()
        if self._session is None or address != self.address:
            await self.close()  # a new leader: a new socket
            self.address = address
            connector: aiohttp.BaseConnector = (
                aiohttp.TCPConnector(ssl=self.cluster.client_ssl)
                if self.cluster is not None
                else _OwnUserConnector(path=address)
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, auto_decompress=False
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers[FORWARDED_FOR] = request.remote or ""
        headers[FORWARDED_PEER] = _encode_peer(peer_of(request.transport))
        body: Any = request.content.iter_chunked(64 * 1024) if request.body_exists else None
        try:
            upstream = await self._session.request(
                request.method,
                f"{base}{request.rel_url}",
                headers=headers,
                data=body,
                allow_redirects=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        except ForeignListener as exc:
            log.error("not relaying %s %s: %s", request.method, request.path, exc)
            return _unavailable()
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


@dataclass
class ClusterRelay:
    """How a node of a cluster relays: to the URL ``locate`` finds (the latest leader's
    relay port), over TLS with ``client_ssl``; and ``listener``, its own relay port while
    it leads (``cluster.py``)."""

    locate: Callable[[], Awaitable[str | None]]
    client_ssl: ssl.SSLContext
    listener: RelayListener


def _unavailable() -> web.Response:
    return retry_later(
        "unavailable", "the coordinator is changing its leading worker; retry shortly"
    )
