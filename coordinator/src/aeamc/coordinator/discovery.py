"""mDNS for the coordinator: advertise ``_aeamc-coord._tcp`` and watch for agents.

Agents seen on the LAN but not enrolled are recorded as *candidates* with their TXT
capabilities, so an operator can see what is out there before anything enrolls. A TXT
record proves nothing (anyone can advertise anything); it only has to be self-consistent
(``pk`` hashes to ``id``), and enrollment later proves possession of the key.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aeamc.shared.discovery import (
    AGENT_SERVICE_TYPE,
    COORDINATOR_SERVICE_TYPE,
    CoordinatorAdvert,
    parse_agent_txt,
)
from aeamc.shared.errors import ValidationError
from aeamc.shared.runtime.mdns import Mdns, ipv4_addresses
from aeamc.shared.runtime.services import REMOVED, ServiceEvent

from . import __version__
from .dbtx import Tx
from .service import Coordinator
from .store import devices as device_rows

log = logging.getLogger(__name__)


class Discovery:
    """Advertise this coordinator and record the agents around it as candidates."""

    def __init__(self, coordinator: Coordinator, port: int) -> None:
        self.c = coordinator
        self.port = port
        server = coordinator.config.server
        interfaces = [a.strip() for a in server.mdns_interfaces.split(",") if a.strip()]
        self.mdns = Mdns(interfaces or None)
        self.addresses = (
            [server.advertise_address]
            if server.advertise_address
            else ipv4_addresses(interfaces or None)
        )

    async def start(self) -> None:
        advert = CoordinatorAdvert(
            coordinator_id=self.c.coordinator_id,
            public_key=self.c.signer.public_key.hex(),
            version=__version__,
            cluster_id=self.c.config.protocol.cluster_id,
            ca_fingerprint=self.c.certs.ca.fingerprint if self.c.certs is not None else None,
        )
        await self.mdns.async_advertise(
            COORDINATOR_SERVICE_TYPE,
            self.c.coordinator_id,
            port=self.port,
            properties=advert.txt(),
            addresses=self.addresses,
        )
        self.mdns.browse(AGENT_SERVICE_TYPE, self._on_agent)
        log.info("advertising over mDNS at %s:%d", ",".join(self.addresses), self.port)

    async def stop(self) -> None:
        await self.mdns.async_close()

    def _on_agent(self, event: ServiceEvent) -> None:
        if event.change == REMOVED or event.record is None:
            return
        record = event.record
        try:
            advert = parse_agent_txt(record.properties, name=event.name)
        except ValidationError as exc:
            log.info("ignoring agent advert %s: %s", event.name, exc)
            return
        if advert.device_id in self.c.devices:
            return
        row = {
            "device_id": advert.device_id,
            "address": record.addresses[0] if record.addresses else None,
            "port": record.port,
            "txt": json.dumps(dict(record.properties), sort_keys=True),
            "last_seen": self.c.clock(),
        }
        self.c.spawn(self.record_candidate(row))

    async def record_candidate(self, row: dict[str, Any]) -> bool:
        """Keep an agent's latest mDNS advert as a candidate, unless its identity is
        enrolled or was erased (an erased device may go on advertising: it is never
        recorded again). Whether it was recorded."""
        device_id = row["device_id"]

        def txn(db: Tx) -> bool:
            if device_rows.is_erased(db, device_id) or device_rows.exists(db, device_id):
                return False
            device_rows.see_candidate(db, row)
            return True

        recorded = await self.c.db.write(txn)
        if recorded:
            log.info("agent %s seen over mDNS (not enrolled)", device_id)
        return recorded
