"""mDNS between processes' engines on loopback: adverts, TXT records, discovery, goodbyes.

Loopback needs no setup on Linux: naming 127.0.0.1 as the interface sets IP_MULTICAST_IF,
and the kernel delivers multicast on ``lo`` even without its MULTICAST flag. The
``loopback_multicast`` fixture checks that first, so a host where it does not hold fails
with a clear message instead of a confusing timeout.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from aeamc.agent.locator import CoordinatorLocator, url_for
from aeamc.shared.discovery import (
    AGENT_SERVICE_TYPE,
    COORDINATOR_SERVICE_TYPE,
    CoordinatorAdvert,
    parse_agent_txt,
)
from aeamc.shared.identity import SigningKey
from aeamc.shared.runtime.mdns import (
    ADDED,
    REMOVED,
    Mdns,
    ServiceEvent,
    ServiceRecord,
    ipv4_addresses,
)

from .conftest import eventually
from .fakecoord import FakeCoordinator

LOOPBACK = ("127.0.0.1",)


def _multicast_on_loopback_works() -> bool:
    group = "224.0.0.251"
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
    ):
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind(("", 0))
        port = rx.getsockname()[1]
        mreq = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        rx.settimeout(1.0)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, struct.pack("B", 1))
        tx.sendto(b"aeamc-probe", (group, port))
        try:
            return rx.recv(64) == b"aeamc-probe"
        except OSError:
            return False


@pytest.fixture(scope="session")
def loopback_multicast() -> None:
    if _multicast_on_loopback_works():
        return
    pytest.fail(
        "multicast on the loopback interface does not work on this host; as root, "
        "`ip link set lo multicast on` enables it (the agent itself never needs root)"
    )


@pytest.fixture
async def mdns(loopback_multicast: None) -> AsyncIterator[Mdns]:
    engine = Mdns(list(LOOPBACK))
    yield engine
    await engine.async_close()


def collector() -> tuple[list[ServiceEvent], callable]:
    events: list[ServiceEvent] = []
    return events, events.append


async def test_agent_advert_has_the_spec_txt_and_goodbye_on_stop(
    mdns, fake_coordinator, make_agent
):
    events, on_event = collector()
    mdns.browse(AGENT_SERVICE_TYPE, on_event)
    agent = await make_agent(
        coordinator_url=fake_coordinator.url, mdns_enabled=True, mdns_interfaces=LOOPBACK
    )
    name = f"{agent.device_id}.{AGENT_SERVICE_TYPE}"
    added = await eventually(
        lambda: next((e for e in events if e.name == name and e.record), None), timeout=8
    )
    record = added.record
    assert record.addresses == ("127.0.0.1",) and record.port == agent.port
    advert = parse_agent_txt(record.properties, name=name)  # checks pk ↔ id and the name
    assert advert.device_id == agent.device_id
    assert advert.public_key == agent.key.public_key.hex()
    assert advert.proto == 1 and advert.version == "0.1.0"
    assert "sha256-chain" in advert.kinds
    assert advert.cpus >= 1 and advert.mem_mb > 0
    assert advert.battery is True  # the simulated profile has a battery
    assert set(record.properties) == {
        "id",
        "pk",
        "proto",
        "v",
        "kinds",
        "cpus",
        "mem_mb",
        "bat",
        "wasm",
    }
    # The owner's WASM limits, as the capabilities carry them (tags and clients unset).
    assert advert.wasm == agent.capabilities().wasm and advert.wasm is not None
    assert advert.wasm.max_memory_mb == agent.config.wasm_max_memory_mb
    await agent.stop()
    await eventually(lambda: any(e.name == name and e.change == REMOVED for e in events), timeout=5)


async def test_agent_finds_and_follows_the_coordinator(mdns, fake_coordinator, make_agent):
    advert = CoordinatorAdvert(
        coordinator_id=fake_coordinator.coordinator_id,
        public_key=fake_coordinator.public_key,
        version="0.1.0",
        cluster_id=7,
        ca_fingerprint=fake_coordinator.ca.fingerprint,
    )
    # An impostor claiming the real coordinator's id with its own key is ignored.
    impostor = SigningKey.generate(b"\x01" * 32)
    await asyncio.gather(
        mdns.async_advertise(
            COORDINATOR_SERVICE_TYPE,
            impostor.device_id,
            port=9,
            properties=advert.txt() | {"id": impostor.device_id},
            addresses=["127.0.0.1"],
        ),
        mdns.async_advertise(
            COORDINATOR_SERVICE_TYPE,
            fake_coordinator.coordinator_id,
            port=fake_coordinator.port,
            properties=advert.txt(),
            addresses=["127.0.0.1"],
        ),
    )
    agent = await make_agent(mdns_enabled=True, mdns_interfaces=LOOPBACK)
    await eventually(lambda: fake_coordinator.heartbeats, timeout=30)
    assert agent.locator.url == fake_coordinator.url
    assert agent.link.pin.coordinator_id == fake_coordinator.coordinator_id

    # The coordinator moves to another port: the agent follows the updated advert.
    moved = await FakeCoordinator(key=fake_coordinator.key, ca_dir=fake_coordinator.dir).start()
    moved.device_keys.update(fake_coordinator.device_keys)
    moved.last_seq.update(fake_coordinator.last_seq)
    try:
        await mdns.async_advertise(
            COORDINATOR_SERVICE_TYPE,
            fake_coordinator.coordinator_id,
            port=moved.port,
            properties=advert.txt(),
            addresses=["127.0.0.1"],
        )
        await eventually(lambda: moved.heartbeats, timeout=30)
        assert agent.locator.url == moved.url
        # Goodbye: the agent stops sending until the coordinator is advertised again.
        await mdns.async_withdraw(f"{fake_coordinator.coordinator_id}.{COORDINATOR_SERVICE_TYPE}")
        await eventually(lambda: agent.locator.url is None, timeout=30)
    finally:
        await moved.stop()


def record(name: str, props: dict, port: int = 8480, addresses=("127.0.0.1",)) -> ServiceRecord:
    return ServiceRecord(name, COORDINATOR_SERVICE_TYPE, tuple(addresses), port, props, None)


def test_locator_choice_and_pinning() -> None:
    keys = sorted(
        (SigningKey.from_seed(bytes([i]) * 32) for i in (1, 2)), key=lambda k: k.device_id
    )
    adverts = [CoordinatorAdvert(k.device_id, k.public_key.hex(), "1", 1).txt() for k in keys]
    names = [f"{k.device_id}.{COORDINATOR_SERVICE_TYPE}" for k in keys]
    loc = CoordinatorLocator()
    assert loc.url is None
    loc.on_event(
        ServiceEvent(ADDED, names[1], COORDINATOR_SERVICE_TYPE, record(names[1], adverts[1], 2))
    )
    loc.on_event(
        ServiceEvent(ADDED, names[0], COORDINATOR_SERVICE_TYPE, record(names[0], adverts[0], 1))
    )
    assert loc.url == "https://127.0.0.1:1"  # lowest id when nothing is pinned yet
    loc.pin(keys[1].device_id)
    assert loc.url == "https://127.0.0.1:2" and loc.advert.coordinator_id == keys[1].device_id
    loc.on_event(ServiceEvent(REMOVED, names[1], COORDINATOR_SERVICE_TYPE))
    assert loc.url is None  # the pinned one left; the other does not count
    # A record under another instance name than its id is ignored.
    loc.on_event(
        ServiceEvent(ADDED, names[0], COORDINATOR_SERVICE_TYPE, record(names[0], adverts[1]))
    )
    assert loc.url is None
    assert CoordinatorLocator("https://10.0.0.1:8480/").url == "https://10.0.0.1:8480"


def test_locator_with_a_configured_ca_takes_only_that_coordinator() -> None:
    keys = sorted(
        (SigningKey.from_seed(bytes([i]) * 32) for i in (3, 4)), key=lambda k: k.device_id
    )
    cas = ["aa" * 32, "bb" * 32]
    adverts = [
        CoordinatorAdvert(k.device_id, k.public_key.hex(), "1", 1, ca_fingerprint=ca).txt()
        for k, ca in zip(keys, cas, strict=True)
    ]
    names = [f"{k.device_id}.{COORDINATOR_SERVICE_TYPE}" for k in keys]
    # The owner named the second coordinator's CA (in the colon form `openssl` prints).
    loc = CoordinatorLocator(expected_ca=":".join(["BB"] * 32))
    loc.on_event(
        ServiceEvent(ADDED, names[0], COORDINATOR_SERVICE_TYPE, record(names[0], adverts[0], 1))
    )
    assert loc.url is None  # the first sorts first, but it is not the one named
    loc.on_event(
        ServiceEvent(ADDED, names[1], COORDINATOR_SERVICE_TYPE, record(names[1], adverts[1], 2))
    )
    assert loc.url == "https://127.0.0.1:2"
    # Once pinned, the pin decides (the CA fingerprint was checked when it was pinned).
    loc.pin(keys[1].device_id)
    assert loc.advert.coordinator_id == keys[1].device_id


def test_url_prefers_lan_addresses() -> None:
    r = record("x", {}, 8480, ("127.0.0.1", "192.0.2.9"))
    assert url_for(r) == "https://192.0.2.9:8480"
    assert url_for(record("x", {}, 0)) is None


def test_mdns_rejects_ipv6_interfaces() -> None:
    with pytest.raises(ValueError, match="IPv4"):
        Mdns(["::1"])
    assert ipv4_addresses(["10.0.0.1"]) == ["10.0.0.1"]
    assert all("." in a for a in ipv4_addresses())


async def test_resolve_unknown_instance_times_out(mdns) -> None:
    assert await mdns.async_resolve(AGENT_SERVICE_TYPE, f"nobody.{AGENT_SERVICE_TYPE}", 300) is None
    await asyncio.sleep(0)
