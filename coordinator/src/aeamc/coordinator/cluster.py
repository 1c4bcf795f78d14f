"""Several coordinator nodes on one PostgreSQL database: the leader's relay listener.

Any node serves the hot device routes itself (heartbeats, proofs: ``forwarding.py``) and
relays every other request to the node that leads. The leader listens for those on a
port of its own (``[cluster] relay_port``), open only while it leads, so a relayed
request can never land on a node that does not lead and be relayed again. It records
the listener's address in a new term of ``leaders`` as it takes the lead; the others
read the latest term to know where to relay.

Relaying crosses the network, so both ends authenticate with TLS 1.3 under the
coordinator's CA, which the nodes share: a node relays only to a listener whose
certificate the CA issued for the address recorded, presenting the coordinator's own
certificate; the leader believes the forwarded client address and TLS identity only on
its relay port, and only from a peer whose certificate names this coordinator (role
``coordinator``, this coordinator's id) — never a device's, never a client's.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from aeamc.shared.runtime.tls import ROLE_COORDINATOR, peer_of

from .groupcommit import GroupCommit
from .store import leaders as leader_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    """This node in a cluster (docs/high-availability.md); read only with a PostgreSQL
    ``[database]``."""

    #: This node's name in the leaders' history and the metrics; empty: the host name.
    node: str = ""
    #: The port the leader takes relayed requests on; 0: any free port (recorded).
    relay_port: int = 0
    #: The address other nodes reach this one at; empty: ``server.advertise_address``,
    #: else ``server.host``. Must be a name or address in this node's certificate.
    relay_address: str = ""
    #: Where clients' WebAssembly modules and inputs are kept; empty: ``state_dir/content``.
    #: With several nodes: a directory every node mounts, since the leader of the moment
    #: serves them to devices and re-executes them for spot-checks.
    content_dir: str = ""


def cluster_checks(
    c: ClusterConfig, clustered: bool, advertise_address: str
) -> list[tuple[bool, str]]:
    """The configuration checks of ``[cluster]``, as (holds, what must hold); a node on
    a PostgreSQL database (``clustered``) must say where the other nodes reach it."""
    return [
        (0 <= c.relay_port <= 65535, "cluster.relay_port must be 0..65535"),
        (
            not clustered or bool(c.relay_address or advertise_address),
            "with a PostgreSQL database, cluster.relay_address (or server.advertise_address) "
            "must say where the other nodes reach this one",
        ),
    ]


def node_name(c: ClusterConfig) -> str:
    return c.node or socket.gethostname()


class RelayListener:
    """The leader's relay port, and the rule for who may use it."""

    def __init__(
        self,
        coordinator_id: str,
        db: GroupCommit,
        server_ssl: ssl.SSLContext,
        *,
        host: str,
        address: str,
        port: int,
    ) -> None:
        self.coordinator_id = coordinator_id
        self.db = db
        self.server_ssl = server_ssl
        self.host = host
        self.address = address
        self.port = port
        self._site: web.TCPSite | None = None
        #: The port bound while this node leads; None otherwise.
        self.bound: int | None = None

    async def open(self, runner: web.AppRunner) -> str:
        """Listen on the relay port; the URL other nodes relay to."""
        site = web.TCPSite(runner, host=self.host, port=self.port, ssl_context=self.server_ssl)
        await site.start()
        self._site = site
        server: Any = site._server  # aiohttp keeps the bound sockets here
        sockets = getattr(server, "sockets", None) or []
        self.bound = int(sockets[0].getsockname()[1]) if sockets else self.port
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"https://{host}:{self.bound}"

    async def close(self) -> None:
        self.bound = None
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def relayed(self, request: web.Request) -> bool:
        """Whether ``request`` came in on the relay port (then from another node of this
        coordinator, or it is refused with 403)."""
        transport = request.transport
        local = transport.get_extra_info("sockname") if transport is not None else None
        if self.bound is None or not local or local[1] != self.bound:
            return False
        peer = peer_of(transport)
        if peer is None or peer.role != ROLE_COORDINATOR or peer.name != self.coordinator_id:
            raise web.HTTPForbidden(reason="relay port: not a node of this coordinator")
        return True


async def leader_url(db: GroupCommit) -> str | None:
    """Where the latest leader takes relayed requests (None before any node led)."""
    row = await db.read(leader_rows.current)
    return None if row is None else str(row["relay_url"])


class Leadership:
    """The ``leadership`` status section and the ``leader`` gauge: this node, whether it
    leads, and the terms of leadership recorded (the last one names the leader)."""

    status_name = "leadership"

    def __init__(self, db: GroupCommit, node: str, clustered: bool) -> None:
        self.db = db
        self.node = node
        self.clustered = clustered
        self.leading = False
        self.term: int | None = None

    def node_view(self) -> dict[str, Any]:
        return {"node": self.node, "leading": self.leading, "term": self.term}

    async def status(self) -> dict[str, Any]:
        out = self.node_view()
        if self.clustered:
            out["terms"] = await self.db.read(leader_rows.history)
        return out
