"""The leader's relay port (several nodes on PostgreSQL): only another node of this
coordinator may use it, and only there are the forwarded client address and identity
believed.

A LAN host that finds the port (it is recorded in the database and open while the node
leads) tries it as a client without a certificate and as an enrolled device, each time
claiming in the forwarding headers to be someone else; both are refused with 403 and
nothing is served. The coordinator's own certificate, which only its nodes hold, is let
through.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aeamc.shared.runtime.tls import client_context
from tests.support import stores
from tests.support.coordinator import CoordinatorProcess, running_coordinator
from tests.support.device import SimDevice

FORWARDED = {
    "X-AEAMC-Forwarded-For": "10.9.9.9",
    "X-AEAMC-Forwarded-Peer": "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f;device;1",
}


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    settings = {
        "database": {"url": stores.server().new_database()},
        "cluster": {"relay_address": "127.0.0.1", "node": "n1"},
    }
    with running_coordinator(tmp_path / "c", settings) as coord:
        yield coord


def _relay_url(coord: CoordinatorProcess) -> str:
    rows = coord.rows("SELECT relay_url FROM leaders ORDER BY term DESC LIMIT 1")
    assert rows, "the leader records its relay address"
    return str(rows[0][0])


def _get(url: str, ctx: ssl.SSLContext, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers=dict(FORWARDED))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_only_a_node_of_this_coordinator_may_use_the_relay_port(
    coordinator: CoordinatorProcess,
) -> None:
    relay = _relay_url(coordinator)
    operator = coordinator.token("operator")
    anonymous = client_context(ca_pem=coordinator.ca_pem)
    assert _get(f"{relay}/v1/status", anonymous, operator)[0] == 403

    device = await SimDevice(coordinator.url).start()
    try:
        await device.join(coordinator.issue_token("enroll", uses=1))
        status, _ = _get(f"{relay}/v1/devices", device.client_context(), operator)
        assert status == 403
    finally:
        await device.stop()

    tls_dir = coordinator.state_dir / "tls"
    node = client_context(
        ca_pem=coordinator.ca_pem,
        cert_file=tls_dir / "server.pem",
        key_file=tls_dir / "server.key",
    )
    status, body = _get(f"{relay}/v1/status", node, operator)
    assert status == 200 and body["leadership"]["node"] == "n1"
