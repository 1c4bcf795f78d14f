"""Where the coordinator is: a configured URL, or what mDNS currently says.

With ``coordinator_url`` set the answer is that URL; with several (the nodes of one
coordinator, docs/high-availability.md), the first until it is unreachable, then the next
in turn (:meth:`CoordinatorLocator.unreachable`) — every node serves devices, so any that
answers will do. Otherwise the agent browses
``_aeamc-coord._tcp.local.`` and follows the advert: a new address or port (an
``updated`` event) moves the agent there; a goodbye makes it wait for the next advert.
Adverts whose TXT record is inconsistent (``pk`` not hashing to ``id``) are ignored, and
once the agent has pinned a coordinator only that coordinator's adverts count, so another
host on the LAN cannot lure the agent away by advertising. Before that, an owner who
configured ``coordinator_ca_fingerprint`` gets only the coordinator advertising that CA
(TXT ``ca``): with two coordinators on one LAN, the device goes to the one its owner named,
not to whichever sorts first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from aeamc.shared.discovery import CoordinatorAdvert, parse_coordinator_txt
from aeamc.shared.errors import ProtocolError
from aeamc.shared.runtime.services import REMOVED, ServiceEvent, ServiceRecord
from aeamc.shared.runtime.waiting import wait_set

log = logging.getLogger(__name__)


def url_for(record: ServiceRecord) -> str | None:
    """Base URL of an advertised coordinator; LAN addresses before loopback ones."""
    if not record.addresses or not record.port:
        return None
    addresses = sorted(record.addresses, key=lambda a: ipaddress.ip_address(a).is_loopback)
    return f"https://{addresses[0]}:{record.port}"


class CoordinatorLocator:
    def __init__(
        self,
        fixed_url: str | None = None,
        pinned_id: str | None = None,
        expected_ca: str | None = None,
    ) -> None:
        self.fixed_urls = [u.strip().rstrip("/") for u in (fixed_url or "").split(",") if u.strip()]
        self._turn = 0
        self.pinned_id = pinned_id
        self.expected_ca = expected_ca.replace(":", "").lower() if expected_ca else None
        self._candidates: dict[str, tuple[CoordinatorAdvert, str]] = {}
        self._changed = asyncio.Event()

    @property
    def fixed_url(self) -> str | None:
        """The configured URL in use (None: found over mDNS)."""
        return self.fixed_urls[self._turn % len(self.fixed_urls)] if self.fixed_urls else None

    def unreachable(self, url: str) -> bool:
        """``url`` did not answer, or answered that it cannot serve (5xx): move to the
        next configured URL, if there is another; whether the agent now uses another one
        (then it should try it without waiting)."""
        if len(self.fixed_urls) < 2 or url != self.fixed_url:
            return False
        self._turn += 1
        log.warning("coordinator at %s unreachable; trying %s", url, self.fixed_url)
        self._changed.set()
        return True

    @property
    def url(self) -> str | None:
        if self.fixed_url is not None:
            return self.fixed_url
        chosen = self._choose()
        return chosen[1] if chosen else None

    @property
    def advert(self) -> CoordinatorAdvert | None:
        chosen = self._choose()
        return chosen[0] if chosen else None

    async def wait_url(self) -> str:
        while True:
            url = self.url
            if url is not None:
                return url
            self._changed.clear()
            await self._changed.wait()

    async def wait_changed(self, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``; return early (True) if the coordinator moved."""
        self._changed.clear()
        return await wait_set(self._changed, timeout_s)

    def pin(self, coordinator_id: str) -> None:
        """From now on, only this coordinator's adverts count."""
        before = self.url
        self.pinned_id = coordinator_id
        if self.url != before:
            self._changed.set()

    def on_event(self, event: ServiceEvent) -> None:
        """mDNS browser callback."""
        before = self.url
        if event.change == REMOVED:
            self._candidates.pop(event.name, None)
        elif event.record is not None:
            self._consider(event.name, event.record)
        after = self.url
        if after != before:
            log.info("coordinator %s", f"at {after}" if after else "gone from mDNS")
            self._changed.set()

    def _consider(self, name: str, record: ServiceRecord) -> None:
        try:
            advert = parse_coordinator_txt(record.properties, name=name)
        except ProtocolError as exc:
            log.warning("ignoring coordinator advert %s: %s", name, exc)
            self._candidates.pop(name, None)
            return
        url = url_for(record)
        if url is None:
            self._candidates.pop(name, None)
            return
        self._candidates[name] = (advert, url)

    def _choose(self) -> tuple[CoordinatorAdvert, str] | None:
        found = sorted(self._candidates.values(), key=lambda c: c[0].coordinator_id)
        if self.pinned_id is not None:
            found = [c for c in found if c[0].coordinator_id == self.pinned_id]
        elif self.expected_ca is not None:
            found = [c for c in found if c[0].ca_fingerprint == self.expected_ca]
        return found[0] if found else None
