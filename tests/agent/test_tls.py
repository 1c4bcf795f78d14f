"""The agent's side of TLS 1.3 and mutual authentication: its endpoint, the pinned CA,
an impostor with the coordinator's key but another CA, and certificate renewal."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from aeamc.agent.link import UNTRUSTED
from aeamc.agent.status import daemon_status, render_text
from aeamc.shared.runtime import tls
from tests.support.tlsprobe import assert_tls13_only

from .conftest import eventually
from .fakecoord import FakeCoordinator, agent_session


async def _post(ctx: ssl.SSLContext, url: str, body: dict) -> tuple[int, dict]:
    connector = aiohttp.TCPConnector(ssl=ctx)
    async with aiohttp.ClientSession(connector=connector) as s, s.post(url, json=body) as r:
        return r.status, await r.json()


def _device_cert_context(fc: FakeCoordinator, tmp_path: Path) -> ssl.SSLContext:
    """A client certificate from the coordinator's CA, but a device's, not the coordinator's."""
    key = tls.generate_key()
    cert = fc.ca.issue_device(tls.make_csr(key, "ee" * 16), "ee" * 16, 3600)
    key_file, cert_file = tmp_path / "k.pem", tmp_path / "c.pem"
    tls.write_key(key_file, key)
    cert_file.write_text(cert.public_bytes(Encoding.PEM).decode())
    ctx = tls.client_context(ca_pem=fc.ca.cert_pem, cert_file=cert_file, key_file=key_file)
    ctx.check_hostname = False
    return ctx


async def test_agent_endpoint_is_tls13_and_takes_work_only_from_the_pinned_coordinator(
    fake_coordinator: FakeCoordinator, make_agent, tmp_path: Path
) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: fake_coordinator.heartbeats)
    # The probes block; the agent's server runs on this loop, so they run in a thread.
    probe = tls.client_context(ca_pem=None)
    await asyncio.to_thread(assert_tls13_only, agent.port, ("/v1/health",), probe)

    url = agent.endpoint() + "/v1/assignments"
    a = fake_coordinator.assignment(agent.device_id, task_id="t-tls").to_dict()
    # No client certificate, or a device's from the same CA: refused.
    for ctx in (probe, _device_cert_context(fake_coordinator, tmp_path)):
        status, body = await _post(ctx, url, a)
        assert (status, body["error"]["code"]) == (403, "certificate_required")
    # A coordinator certificate from another CA does not get past the handshake.
    stranger = FakeCoordinator(key=fake_coordinator.key)
    with pytest.raises(aiohttp.ClientError):
        await _post(stranger.client_ssl, url, a)
    assert agent.queue.count == 0
    status, body = await _post(fake_coordinator.client_ssl, url, a)
    assert status == 202, body
    # The challenge route is guarded the same way.
    ch = fake_coordinator.challenge(agent.device_id, "t-tls", [0]).to_dict()
    status, body = await _post(probe, agent.endpoint() + "/v1/challenges", ch)
    assert (status, body["error"]["code"]) == (403, "certificate_required")

    # Heartbeats carried the certificate the fake coordinator issued.
    assert (
        fake_coordinator.issued
        and fake_coordinator.client_serials[-1] == fake_coordinator.issued[-1]
    )
    shown = daemon_status(agent)
    assert shown["tls"]["ca_fingerprint"] == fake_coordinator.ca.fingerprint
    assert fake_coordinator.ca.fingerprint in render_text(shown)
    assert (agent.config.state_dir / "tls" / "key.pem").stat().st_mode & 0o077 == 0


async def test_agent_refuses_a_coordinator_with_the_same_key_but_another_ca(
    fake_coordinator: FakeCoordinator, make_agent
) -> None:
    """Whoever holds the coordinator's identity key but not its CA is still refused."""
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: fake_coordinator.heartbeats)
    await agent.stop()
    await fake_coordinator.stop()
    impostor = await FakeCoordinator(key=fake_coordinator.key).start(fake_coordinator.port)
    try:
        again = await make_agent(coordinator_url=impostor.url)
        await eventually(lambda: again.link.state == UNTRUSTED)
        assert "pinned CA" in again.link.last_error
        assert fake_coordinator.ca.fingerprint in again.link.last_error
        assert not impostor.heartbeats and not impostor.enrollments
        assert again.refusal_reason() == "quarantined"
    finally:
        await impostor.stop()


async def test_a_configured_ca_fingerprint_is_the_only_one_pinned(
    fake_coordinator: FakeCoordinator, make_agent
) -> None:
    wrong = await make_agent(
        coordinator_url=fake_coordinator.url,
        coordinator_ca_fingerprint="0" * 64,
        enrollment_token="secret-token",
    )
    await eventually(lambda: wrong.link.state == UNTRUSTED)
    assert "expected" in wrong.link.last_error
    assert not (wrong.config.state_dir / "tls" / "ca.pem").exists()
    # Checked before anything was sent: the enrollment (and its token) never left.
    assert {path for path, _ in fake_coordinator.requests} == {"/v1/ca"}
    await wrong.stop()
    n = len(fake_coordinator.requests)
    right = await make_agent(
        subdir="right",
        coordinator_url=fake_coordinator.url,
        coordinator_ca_fingerprint=tls.pretty_fingerprint(fake_coordinator.ca.fingerprint),
    )
    await eventually(lambda: fake_coordinator.heartbeats)
    assert right.link.pin.ca_fingerprint == fake_coordinator.ca.fingerprint
    # The CA was checked and pinned first; the enrollment went over a verified connection.
    assert [p for p, _ in fake_coordinator.requests[n : n + 2]] == ["/v1/ca", "/v1/enroll"]


async def test_the_certificate_is_renewed_before_it_expires(make_agent) -> None:
    """A 9 s certificate is renewed after 6 s (two thirds of it: room for heartbeats with
    the first one even on a loaded machine); heartbeats go on with the new one."""
    fc = await FakeCoordinator(cert_lifetime_s=9).start()
    try:
        agent = await make_agent(coordinator_url=fc.url)
        await eventually(lambda: fc.heartbeats)
        first = fc.issued[0]
        await eventually(lambda: len(fc.issued) >= 2, timeout=30)
        renewed = fc.issued[1]
        await eventually(lambda: renewed in fc.client_serials, timeout=15)
        # The renewal went over the mutually authenticated channel, with the old certificate.
        assert first in fc.client_serials
        assert agent.tls.status()["certificate"]["serial"] in fc.issued[1:]
        assert agent.link.state == "active"
    finally:
        await fc.stop()


async def test_an_unenrolled_agent_refuses_work_and_agent_session_helper(
    fake_coordinator: FakeCoordinator, make_agent
) -> None:
    agent = await make_agent(coordinator_url="https://127.0.0.1:9")
    a = fake_coordinator.assignment(agent.device_id).to_dict()
    async with agent_session(agent) as s, s.post(agent.endpoint() + "/v1/assignments", json=a) as r:
        assert (r.status, (await r.json())["error"]["code"]) == (403, "not_enrolled")


async def test_tls_state_on_disk_is_checked(fake_coordinator: FakeCoordinator, make_agent) -> None:
    """A damaged certificate is replaced by enrolling again; a damaged pinned CA or a TLS key
    others may read stops the agent with a message naming the file."""
    from aeamc.agent.tls import AgentTls

    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: fake_coordinator.heartbeats)
    await agent.stop()
    tls_dir = agent.config.state_dir / "tls"
    (tls_dir / "cert.pem").write_text("garbage")
    again = AgentTls(agent.config.state_dir, agent.device_id)
    assert again.cert is None and again.renewal_due(0)
    assert again.ca_fingerprint == fake_coordinator.ca.fingerprint
    (tls_dir / "ca.pem").write_text("garbage")
    with pytest.raises(tls.TlsError, match=r"ca\.pem"):
        AgentTls(agent.config.state_dir, agent.device_id)
    (tls_dir / "key.pem").chmod(0o644)
    with pytest.raises(tls.TlsError, match="too open"):
        AgentTls(agent.config.state_dir, agent.device_id)
