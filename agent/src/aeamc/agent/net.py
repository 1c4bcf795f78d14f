"""Where the agent's HTTP client session and server are built.

The client keeps an idle connection to the coordinator open for longer than the longest
wait between two heartbeats (``keepalive_s``): aiohttp's default of 15 s is shorter than
the 30-s heartbeat interval, so every heartbeat paid a TCP and TLS handshake — about six
kilobytes on the wire, most of a heartbeat's bytes. The coordinator keeps idle
connections for ``server.keepalive_timeout_s`` (120 s by default), longer than the
default heartbeat gap.
A connection the server closes anyway (a restart, a proxy in between) is found out when
a request on it fails without an answer: ``client.py`` sends that request again, once,
on a new connection (``RequestAttempt``).

The TLS side (contexts, certificates, the pinned CA) is ``tls.py`` on top of
``aeamc.shared.runtime.tls``: the server is started with the agent's server context,
and each request to the coordinator carries the client context (``client.py``), so
that pinning the CA or renewing the certificate needs no new session.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web

from aeamc.shared.runtime.edge import EdgeLimits, GuardedSite

#: Largest request body the agent's server reads (an assignment's params are bounded).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: aiohttp's own idle-connection lifetime, for sessions that do not heartbeat.
DEFAULT_KEEPALIVE_S = 15.0
#: Kept beyond the longest heartbeat gap, so that the next heartbeat finds it open.
KEEPALIVE_MARGIN_S = 5.0


@dataclass
class RequestAttempt:
    """One try of a request (``trace_request_ctx``): whether it went on a pooled connection."""

    reused: bool = False


def client_session(
    *,
    timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
    keepalive_s: float = DEFAULT_KEEPALIVE_S,
) -> aiohttp.ClientSession:
    """Requests to the coordinator pass their ``ssl`` context per call (``client.py``);
    ``ssl_context`` is the default for the others (none: the system's trust store).
    Idle connections stay open ``keepalive_s`` (the daemon: past its heartbeat gap)."""
    connector = aiohttp.TCPConnector(
        ssl=ssl_context if ssl_context is not None else True,
        limit=4,
        keepalive_timeout=keepalive_s,
    )
    trace = aiohttp.TraceConfig()
    trace.on_connection_reuseconn.append(_mark_reused)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        raise_for_status=False,
        trace_configs=[trace],
    )


def heartbeat_keepalive_s(longest_gap_s: float) -> float:
    """How long the daemon keeps an idle connection to the coordinator open."""
    return longest_gap_s + KEEPALIVE_MARGIN_S


async def _mark_reused(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
    attempt = ctx.trace_request_ctx
    if isinstance(attempt, RequestAttempt):
        attempt.reused = True


async def start_server(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
    limits: EdgeLimits | None = None,
    keepalive_timeout_s: float = 75.0,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (port 0 picks a free one); return the bound port.

    Each connection is held to ``limits`` (``aeamc.shared.runtime.edge``: a cap per source
    address, a deadline for the handshake and first request head) and closed after
    ``keepalive_timeout_s`` idle."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=2.0,
        keepalive_timeout=keepalive_timeout_s,
    )
    await runner.setup()
    site = GuardedSite(runner, sock=sock, ssl_context=ssl_context, limits=limits or EdgeLimits())
    await site.start()
    return runner, sock.getsockname()[1]
