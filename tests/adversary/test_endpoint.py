"""A hostile device names another LAN host as its endpoint, so that the coordinator would
connect there (assignments, challenges) on its behalf: refused at enrollment, nothing
stored, and the coordinator never connects to that host."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aeamc.coordinator.config import CoordinatorConfig, EnrollmentConfig
from aeamc.coordinator.db import Database
from aeamc.coordinator.errors import http_status
from aeamc.coordinator.service import Coordinator
from aeamc.shared.identity import SigningKey
from aeamc.shared.refusals import Refusal
from aeamc.shared.tasks.registry import discover
from tests.adversary.conftest import CoordinatorFactory
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import SimDevice

FOREIGN_HOST = "127.0.0.2"


class Listener:
    """A TCP listener on another loopback address, counting the connections it gets."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Listener:
        self.server = await asyncio.start_server(self._on_connect, FOREIGN_HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def enroll_message(d: SimDevice, endpoint: str, token: str | None = None) -> dict[str, Any]:
    caps = {
        "kinds": list(d.kinds),
        "cpus": 2,
        "mem_mb": 1024,
        "battery": True,
        "version": "0.1.0",
        "endpoint": endpoint,
    }
    return d.enroll_message(token, capabilities=caps)


async def post_from(c: CoordinatorProcess, source: str, path: str, body: Any) -> tuple[int, Any]:
    """POST from the given local address (another host on the LAN, as the coordinator sees it)."""
    connector = aiohttp.TCPConnector(ssl=c.ssl_context(), local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(c.url + path, json=body) as resp,
    ):
        return resp.status, await resp.json()


async def test_a_foreign_endpoint_is_refused_and_never_called(
    make_coordinator: CoordinatorFactory,
) -> None:
    c = make_coordinator()
    token = c.issue_token("enroll", uses=10)
    listener = await Listener().start()
    honest = await SimDevice(c.url).start()
    hostile = await SimDevice(c.url).start()  # its own server is not what it names
    try:
        foreign = f"https://{FOREIGN_HOST}:{listener.port}"
        status, body = await hostile.post("/v1/enroll", enroll_message(hostile, foreign, token))
        assert (status, body.get("error", {}).get("code")) == (400, "endpoint_not_allowed"), body
        assert "127.0.0.1" in body["error"]["message"]
        # A host name is not the device's to resolve for the coordinator either.
        named = f"https://localhost:{listener.port}"
        status, body = await hostile.post("/v1/enroll", enroll_message(hostile, named, token))
        assert (status, body.get("error", {}).get("code")) == (400, "endpoint_not_allowed"), body
        operator = c.token("operator")
        assert c.request("GET", f"/v1/devices/{hostile.device_id}", token=operator)[0] == 404
        # The honest device enrolls; the hostile one heartbeats as if it had.
        assert (await honest.enroll(token))[1]["state"] == "active"
        for _ in range(3):
            assert (await honest.heartbeat())[0] == 202
            await hostile.heartbeat()
        # Work for two devices: the coordinator calls every endpoint it holds.
        task = {"kind": "sha256-chain", "params": {"seed": "ab" * 32, "iterations": 10}}
        status, body = c.request(
            "POST", "/v1/tasks", {**task, "chunks": 2, "replicas": 2}, token=c.token("client")
        )
        assert status == 202, body
        for _ in range(300):
            if honest.assignments and honest.proof_replies:
                break
            await asyncio.sleep(0.05)
        assert honest.assignments, "the honest device got no assignment"
        await asyncio.sleep(1.0)  # a few more scheduling rounds for a second device
        assert listener.connections == 0
    finally:
        await honest.stop()
        await hostile.stop()
        await listener.stop()


async def test_the_endpoint_may_be_the_enrolling_address_or_a_configured_network(
    make_coordinator: CoordinatorFactory,
) -> None:
    c = make_coordinator({"enrollment": {"endpoint_networks": f"{FOREIGN_HOST}/32"}})
    token = c.issue_token("enroll", uses=10)
    operator = c.token("operator")
    d = await SimDevice(c.url).start()
    endpoint = f"https://{FOREIGN_HOST}:4443"
    try:
        status, body = await d.post("/v1/enroll", enroll_message(d, endpoint, token))
        assert status == 202 and body["state"] == "active", body
        status, body = c.request("GET", f"/v1/devices/{d.device_id}", token=operator)
        assert body["endpoint"] == endpoint
    finally:
        await d.stop()
    # Without the network configured: the address a device connects from is its own.
    plain = make_coordinator()
    token = plain.issue_token("enroll", uses=10)
    e = SimDevice(plain.url)
    try:
        status, body = await post_from(
            plain, FOREIGN_HOST, "/v1/enroll", enroll_message(e, endpoint, token)
        )
        assert status == 202 and body["state"] == "active", body
        status, body = await post_from(
            plain, FOREIGN_HOST, "/v1/enroll", enroll_message(e, "https://127.0.0.1:4443", token)
        )
        assert (status, body.get("error", {}).get("code")) == (400, "endpoint_not_allowed"), body
        assert FOREIGN_HOST in body["error"]["message"]
        status, body = plain.request(
            "GET", f"/v1/devices/{e.device_id}", token=plain.token("operator")
        )
        assert body["endpoint"] == endpoint  # the refused enrollment changed nothing
    finally:
        await e.stop()


@pytest.mark.parametrize(
    ("endpoint", "address", "allowed"),
    [
        ("https://127.0.0.1:1", "127.0.0.1", True),
        ("https://127.0.0.1:1", "::ffff:127.0.0.1", True),  # an IPv4-mapped peer
        ("https://[::ffff:127.0.0.1]:1", "127.0.0.1", True),
        ("https://[fe80::1]:1", "fe80::1%eth0", True),  # the peer's zone is not compared
        ("https://[::1]:1", "::1", True),
        ("https://10.1.2.3:1", "127.0.0.1", True),  # in enrollment.endpoint_networks
        ("https://[fd00::5]:1", "fd00::9", True),
        ("https://127.0.0.2:1", "127.0.0.1", False),
        ("https://192.168.1.1:1", "127.0.0.1", False),
        ("https://localhost:1", "127.0.0.1", False),  # a host name: never
        ("https://127.1:1", "127.0.0.1", False),  # not an address literal
        ("https://127.0.0.1:99999", "127.0.0.1", False),  # no valid URL
        ("https://127.0.0.1:1", None, False),  # the peer is unknown
        (None, "127.0.0.1", True),  # no endpoint: nothing will be called
    ],
)
def test_the_endpoint_rule(endpoint: str | None, address: str | None, allowed: bool) -> None:
    config = CoordinatorConfig(
        enrollment=EnrollmentConfig(endpoint_networks="10.0.0.0/8, fd00::/64")
    )
    c = Coordinator(config, SigningKey.from_seed(bytes(32)), Database(Path("unused")), discover())
    if allowed:
        c.enrollment.endpoint_allowed(endpoint, address)
    else:
        with pytest.raises(Refusal) as refused:
            c.enrollment.endpoint_allowed(endpoint, address)
        assert http_status(refused.value) == 400 and refused.value.code == "endpoint_not_allowed"
