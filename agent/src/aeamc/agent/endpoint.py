"""How the agent presents itself to the coordinator: its capabilities and the URL it is
reached at.

Both go out with enrollment and each heartbeat. The URL's host is, in order: the
configured ``advertise_address``, the listen address when it is a specific one, else the
agent's own address on the route towards the coordinator (so an agent listening on all
interfaces still names the one the coordinator can reach).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aeamc.shared.messages import Capabilities, WasmLimits

from . import __version__

if TYPE_CHECKING:
    from aeamc.shared.tasks.registry import KindRegistry

    from .config import AgentConfig

#: At most this many task kinds are listed (the enrollment message's limit).
MAX_KINDS = 32


def capabilities(
    registry: KindRegistry, config: AgentConfig, *, battery: bool, endpoint: str | None
) -> Capabilities:
    """What this device offers: its task kinds, CPUs, memory, battery and endpoint, and
    what its owner set: tags, the WebAssembly limits (when it runs such work) and the
    clients whose work it takes. Unset, each of the last three is left out."""
    kinds = tuple(registry.names()[:MAX_KINDS])
    wasm = None
    if "wasm" in kinds:
        wasm = WasmLimits(
            max_memory_mb=config.wasm_max_memory_mb,
            max_fuel=config.wasm_max_fuel,
            max_module_bytes=config.wasm_max_module_bytes,
        )
    return Capabilities(
        kinds=kinds,
        cpus=os.cpu_count() or 1,
        mem_mb=total_memory_mb(),
        battery=battery,
        version=__version__,
        endpoint=endpoint,
        tags=tuple(sorted(set(config.tags))) or None,
        wasm=wasm,
        clients=tuple(sorted(set(config.accept_clients))) or None,
    )


def endpoint_url(config: AgentConfig, port: int | None, coordinator_url: str | None) -> str | None:
    """The URL the coordinator reaches this agent at; None before the listener is up or
    when no address can be named."""
    if port is None:
        return None
    host = config.advertise_address
    if host is None and not ipaddress.ip_address(config.listen_host).is_unspecified:
        host = config.listen_host
    if host is None:
        host = source_address_towards(coordinator_url)
    if host is None:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


def total_memory_mb() -> int:
    import psutil

    return int(psutil.virtual_memory().total) // (1024 * 1024)


def source_address_towards(url: str | None) -> str | None:
    """Our address on the route to ``url`` (a UDP connect sends no packet)."""
    if url is None:
        return None
    parts = urlsplit(url)
    host = parts.hostname
    if host is None:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, parts.port or 80))
            return str(s.getsockname()[0])
    except OSError:
        return None
