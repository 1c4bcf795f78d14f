"""What mDNS browsing reports (``mdns.py``), without python-zeroconf.

Apart from ``mdns.py`` so that code that only handles these events — the agent's
coordinator locator — does not load zeroconf in a process that has mDNS turned off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

ADDED, UPDATED, REMOVED = "added", "updated", "removed"


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """A resolved service instance."""

    name: str
    service_type: str
    addresses: tuple[str, ...]
    port: int | None
    properties: Mapping[str, str | None]
    server: str | None

    @property
    def label(self) -> str:
        """The instance label (the part of ``name`` before the service type)."""
        return self.name[: -len(self.service_type) - 1]


@dataclass(frozen=True, slots=True)
class ServiceEvent:
    """An instance appeared, changed (TXT, port or address) or left."""

    change: str
    name: str
    service_type: str
    record: ServiceRecord | None = None


EventCallback = Callable[[ServiceEvent], None]
