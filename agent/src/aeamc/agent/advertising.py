"""The agent on mDNS: it advertises ``_aeamc-agent._tcp`` and, when no coordinator URL is
configured, browses ``_aeamc-coord._tcp`` to find one.

Discovery is a convenience: a failed advertisement is logged and the agent carries on (a
configured coordinator still works). zeroconf is imported only here, inside the
functions, so an agent with mDNS off never loads it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aeamc.shared.discovery import (
    AGENT_SERVICE_TYPE,
    COORDINATOR_SERVICE_TYPE,
    AgentAdvert,
    kinds_that_fit,
)

from . import __version__

if TYPE_CHECKING:
    from aeamc.shared.messages import Capabilities
    from aeamc.shared.runtime.mdns import Mdns
    from aeamc.shared.runtime.services import ServiceEvent

    from .config import AgentConfig

log = logging.getLogger(__name__)


def open_mdns(config: AgentConfig, on_coordinator: Callable[[ServiceEvent], None]) -> Mdns:
    """An mDNS responder on the configured interfaces, browsing for coordinators when
    none is configured (each sighting goes to ``on_coordinator``)."""
    from aeamc.shared.runtime.mdns import Mdns

    mdns = Mdns(list(config.mdns_interfaces) or None)
    if config.coordinator_url is None:
        mdns.browse(COORDINATOR_SERVICE_TYPE, on_coordinator)
    return mdns


async def advertise(
    mdns: Mdns,
    config: AgentConfig,
    *,
    device_id: str,
    public_key: str,
    caps: Capabilities,
    port: int,
) -> str | None:
    """Announce this agent; the advertised service name, or None when it failed."""
    kinds = kinds_that_fit(caps.kinds)
    if len(kinds) < len(caps.kinds):
        log.warning("mDNS TXT lists %d of %d kinds (255-byte limit)", len(kinds), len(caps.kinds))
    advert = AgentAdvert(
        device_id=device_id,
        public_key=public_key,
        version=__version__,
        kinds=tuple(kinds),
        cpus=caps.cpus,
        mem_mb=caps.mem_mb,
        battery=caps.battery,
        tags=caps.tags or (),
        wasm=caps.wasm,
        clients=caps.clients,
    )
    addresses = advertised_addresses(config)
    try:
        name = await mdns.async_advertise(
            AGENT_SERVICE_TYPE,
            device_id,
            port=port,
            properties=advert.txt(),
            addresses=addresses,
            server=f"aeamc-{device_id}.local.",
        )
    except Exception as exc:
        # Discovery is a convenience: a configured coordinator still works without it.
        log.error("mDNS advertisement failed: %s", exc)
        return None
    log.info("advertised %s at %s", name, ",".join(addresses))
    return name


def advertised_addresses(config: AgentConfig) -> list[str]:
    """The addresses the advert names: the configured one, the specific listen address,
    else every IPv4 address of the mDNS interfaces."""
    if config.advertise_address is not None:
        return [config.advertise_address]
    if not ipaddress.ip_address(config.listen_host).is_unspecified:
        return [config.listen_host]
    from aeamc.shared.runtime.mdns import ipv4_addresses

    return ipv4_addresses(list(config.mdns_interfaces) or None)
