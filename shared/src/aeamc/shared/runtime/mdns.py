"""Advertise one mDNS service and browse a service type, over python-zeroconf's asyncio API.

Choices that make it work between processes on one host, loopback included:

- IPv4 only. python-zeroconf cannot listen on IPv6 loopback (``::1``), and every AEAMC
  peer has an IPv4 address.
- Interfaces are either all IPv4 addresses of the host (``None``, the default) or an
  explicit list such as ``["127.0.0.1"]``. Never ``InterfaceChoice.Default`` (the
  wildcard): it joins the group through the default route, so it fails with ENODEV on a
  host or network namespace without one, whereas naming ``127.0.0.1`` sets
  ``IP_MULTICAST_IF`` and works even on a loopback without the MULTICAST flag (checked on
  Linux 6.x; no ``ip link set lo multicast on`` and no root needed).
- Browsers and resolvers ask QM (multicast-answer) questions. Several processes on one
  host share UDP port 5353 through ``SO_REUSEPORT``; a unicast (QU) answer would reach
  only one of them, so a second browser on the same host could miss the first answers.

Everything here runs on the event loop; coroutines carry the ``async_`` prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import ifaddr
from zeroconf import (
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

# Re-exported: what browsing reports is defined without zeroconf (services.py).
from .services import ADDED, REMOVED, UPDATED, EventCallback, ServiceEvent, ServiceRecord

log = logging.getLogger(__name__)

#: How long a resolution may take before the event is reported without a record.
RESOLVE_TIMEOUT_MS = 3000


def ipv4_addresses(interfaces: Sequence[str] | None = None) -> list[str]:
    """IPv4 addresses to put in an advert: the given ones, or every non-link-local one."""
    if interfaces is not None:
        return list(interfaces)
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            # An IPv4 entry's ip is a str (an IPv6 one's a tuple).
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_link_local:
                found.append(str(ip.ip))
    non_loopback = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    return sorted(set(non_loopback or found))


class Mdns:
    """One zeroconf engine: advertise services and browse types on the chosen interfaces."""

    def __init__(self, interfaces: Sequence[str] | None = None) -> None:
        for address in interfaces or ():
            if ipaddress.ip_address(address).version != 4:
                raise ValueError(f"mDNS interface {address!r}: only IPv4 addresses are supported")
        self.interfaces = list(interfaces) if interfaces is not None else None
        self._aiozc: AsyncZeroconf | None = None
        self._adverts: dict[str, ServiceInfo] = {}
        self._browsers: list[Browser] = []

    @property
    def zeroconf(self) -> Zeroconf:
        return self._engine().zeroconf

    async def async_advertise(
        self,
        service_type: str,
        instance: str,
        *,
        port: int,
        properties: Mapping[str, str],
        addresses: Sequence[str],
        server: str | None = None,
    ) -> str:
        """Register (or re-announce with new data) ``instance``; return its full name."""
        name = f"{instance}.{service_type}"
        info = ServiceInfo(
            service_type,
            name,
            port=port,
            properties=dict(properties),
            parsed_addresses=list(addresses),
            server=server or f"{instance}.local.",
        )
        aiozc = self._engine()
        if name in self._adverts:
            waiter = await aiozc.async_update_service(info)
        else:
            # The name is our id: a clash means another process holds our identity, and
            # silently renaming (allow_name_change) would advertise a name nobody can verify.
            waiter = await aiozc.async_register_service(info)
        self._adverts[name] = info
        await waiter
        log.debug("advertised %s on port %d at %s", name, port, ",".join(addresses))
        return name

    async def async_withdraw(self, name: str) -> None:
        """Unregister an advert, sending the goodbye packets before returning."""
        info = self._adverts.pop(name, None)
        if info is None or self._aiozc is None:
            return
        waiter = await self._aiozc.async_unregister_service(info)
        await waiter
        log.debug("withdrew %s", name)

    def browse(self, service_type: str, callback: EventCallback) -> Browser:
        """Start browsing ``service_type``; ``callback`` gets resolved events on the loop.

        Call it from the event loop (it is synchronous only because nothing needs awaiting).
        """
        browser = Browser(self, service_type, callback)
        self._browsers.append(browser)
        browser.start()
        return browser

    async def async_resolve(
        self, service_type: str, name: str, timeout_ms: int = RESOLVE_TIMEOUT_MS
    ) -> ServiceRecord | None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self.zeroconf, timeout_ms, DNSQuestionType.QM):
            return None
        return _record(info, service_type)

    async def async_close(self) -> None:
        """Stop browsers, withdraw adverts (goodbyes sent), close the sockets."""
        for browser in self._browsers:
            await browser.async_cancel()
        self._browsers.clear()
        for name in list(self._adverts):
            with contextlib.suppress(Exception):
                await self.async_withdraw(name)
        if self._aiozc is not None:
            await self._aiozc.async_close()
            self._aiozc = None

    def _engine(self) -> AsyncZeroconf:
        if self._aiozc is None:
            choice = InterfaceChoice.All if self.interfaces is None else list(self.interfaces)
            self._aiozc = AsyncZeroconf(interfaces=choice, ip_version=IPVersion.V4Only)
        return self._aiozc


@dataclass
class Browser:
    """Resolved view of one service type; reports every change through a callback."""

    mdns: Mdns
    service_type: str
    callback: EventCallback
    services: dict[str, ServiceRecord] = field(default_factory=dict)
    _browser: AsyncServiceBrowser | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> None:
        self._browser = AsyncServiceBrowser(
            self.mdns.zeroconf,
            self.service_type,
            handlers=[self._on_change],
            question_type=DNSQuestionType.QM,
        )

    async def async_cancel(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            self.services.pop(name, None)
            self._emit(ServiceEvent(REMOVED, name, service_type))
            return
        change = ADDED if state_change is ServiceStateChange.Added else UPDATED
        task = asyncio.ensure_future(self._resolve(change, service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, change: str, service_type: str, name: str) -> None:
        record = await self.mdns.async_resolve(service_type, name)
        if record is None:
            log.debug("could not resolve %s", name)
        elif self.services.get(name) == record and change == UPDATED:
            return  # a refresh of what we already know
        else:
            self.services[name] = record
        self._emit(ServiceEvent(change, name, service_type, record))

    def _emit(self, event: ServiceEvent) -> None:
        try:
            self.callback(event)
        except Exception:
            log.exception("mDNS event handler failed on %s", event.name)


def _record(info: AsyncServiceInfo, service_type: str) -> ServiceRecord:
    return ServiceRecord(
        name=info.name,
        service_type=service_type,
        addresses=tuple(info.parsed_addresses(IPVersion.V4Only)),
        port=info.port,
        properties=dict(info.decoded_properties),
        server=info.server,
    )
