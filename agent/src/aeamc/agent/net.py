"""Where the agent's HTTP client session and server are built.

The TLS side (contexts, certificates, the pinned CA) is ``tls.py`` on top of
``aeamc.shared.runtime.tls``: the server is started with the agent's server context,
and each request to the coordinator carries the client context (``client.py``), so
that pinning the CA or renewing the certificate needs no new session.
"""

from __future__ import annotations

import socket
import ssl

import aiohttp
from aiohttp import web

#: Largest request body the agent's server reads (an assignment's params are bounded).
MAX_REQUEST_BYTES = 4 * 1024 * 1024


def client_session(
    *, timeout_s: float, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """Requests to the coordinator pass their ``ssl`` context per call (``client.py``);
    ``ssl_context`` is the default for the others (none: the system's trust store)."""
    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True, limit=4)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        raise_for_status=False,
    )


async def start_server(
    app: web.Application,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (port 0 picks a free one); return the bound port."""
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
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    return runner, sock.getsockname()[1]
