"""TLS 1.3 only, mutual authentication of devices, revocation and rate limits, against a
real coordinator process (SPEC §12)."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import json
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from aeamc.coordinator.ca import CertificateAuthority
from aeamc.coordinator.certs import DeviceCertificates
from aeamc.coordinator.errors import ApiError, http_status
from aeamc.shared.refusals import Refusal
from aeamc.shared.runtime import tls
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import SimDevice
from tests.support.tlsprobe import assert_tls13_only

from .test_api import error_code, post

#: The routes of the one listener: API, dashboard (page and login), metrics.
LISTENER_PATHS = ("/v1/health", "/dashboard/", "/metrics", "/privacy")


def test_the_coordinator_listener_is_tls13_only(coordinator: CoordinatorProcess) -> None:
    assert_tls13_only(coordinator.port, LISTENER_PATHS, coordinator.ssl_context())
    status, health = coordinator.request("GET", "/v1/health")
    ca = (coordinator.state_dir / "ca" / "ca.pem").read_text()
    assert status == 200 and health["ca_fingerprint"] == tls.fingerprint(ca)
    shown = coordinator.cli("status").stdout
    assert tls.fingerprint(ca) in shown
    # A state directory from before TLS (no CA) gets one at the next start, loudly.
    coordinator.stop()
    shutil.rmtree(coordinator.state_dir / "ca")
    coordinator.start()
    renewed = (coordinator.state_dir / "ca" / "ca.pem").read_text()
    assert renewed != ca
    assert coordinator.request("GET", "/v1/health")[1]["ca_fingerprint"] == tls.fingerprint(renewed)
    assert coordinator.log is not None
    assert f"created one, fingerprint {tls.fingerprint(renewed)}" in coordinator.log.read_text()


async def test_device_routes_need_the_devices_own_certificate(
    coordinator: CoordinatorProcess, enroll_token: str
) -> None:
    d = await SimDevice(coordinator.url, auto_prove=False).start()
    other = SimDevice(coordinator.url, port=1)
    try:
        status, body = await d.enroll(enroll_token)
        assert status == 202 and body["ca_fingerprint"] == tls.fingerprint(body["ca_certificate"])
        cert = tls.load_pem(body["certificate"])
        assert tls.issued_by(cert, tls.load_pem(body["ca_certificate"]))
        assert cert.public_key() == d.tls_key.public_key()
        assert post(coordinator, "/v1/enroll", other.enroll_message(enroll_token))[0] == 202
        # Without a certificate, or with another device's: refused, nothing stored.
        assert error_code(post(coordinator, "/v1/heartbeats", d.poa(), device=None)) == (
            401,
            "certificate_required",
        )
        assert error_code(post(coordinator, "/v1/heartbeats", d.poa(), device=other)) == (
            403,
            "certificate_mismatch",
        )
        operator = coordinator.token("operator")
        shown = coordinator.request("GET", f"/v1/devices/{d.device_id}", token=operator)[1]
        assert shown["last_seq"] == -1
        for _ in range(2):
            assert (await d.heartbeat())[0] == 202
        # A proof without the certificate is refused and the task still waits for it.
        task = {"kind": "sha256-chain", "params": {"seed": "ab" * 32, "iterations": 10}}
        status, body = coordinator.request(
            "POST", "/v1/tasks", {**task, "chunks": 2}, token=coordinator.token("client")
        )
        assert status == 202
        for _ in range(300):
            if d.assignments:
                break
            await asyncio.sleep(0.1)
        assert d.assignments
        proof = d.proof_for(d.assignments[0])
        assert error_code(post(coordinator, "/v1/proofs", proof, device=None)) == (
            401,
            "certificate_required",
        )
        assert error_code(post(coordinator, "/v1/proofs", proof, device=other)) == (
            403,
            "certificate_mismatch",
        )
        view = coordinator.request("GET", f"/v1/tasks/{body['task_id']}", token=operator)[1]
        assert view["state"] == "running" and not view["proofs"]
        assert (await d.prove(d.assignments[0]))[0] == 202

        # Quarantine revokes every certificate the device was issued, durably.
        assert (await d.enroll(enroll_token))[0] == 202  # a second certificate (a renewal)
        coordinator.cli("devices", "quarantine", d.device_id, "--reason", "test")
        serials = {tls.serial_hex(tls.load_pem(pem)) for pem in d.certificates}
        assert len(serials) == 2
        revoked = {r[0] for r in coordinator.rows("SELECT serial FROM revoked_certificates")}
        assert revoked == serials
        assert error_code(await d.heartbeat()) == (403, "quarantined")
        # The export shows the revocation.
        exported = coordinator.request("GET", f"/v1/devices/{d.device_id}/export", token=operator)[
            1
        ]
        assert {c["serial"] for c in exported["certificates"]} == serials
        assert all(c["revoked_reason"] == "quarantined" for c in exported["certificates"])
        # A restart keeps the revocations.
        coordinator.stop()
        coordinator.start()
        d.coordinator_url = coordinator.url
        assert error_code(await d.heartbeat()) == (403, "quarantined")
        assert error_code(await d.enroll(enroll_token)) == (403, "quarantined")
    finally:
        await d.stop()


def test_revoked_serials_are_refused_and_rights_requests_may_use_them(tmp_path: Path) -> None:
    ca, _ = CertificateAuthority.ensure(tmp_path, "", "ab" * 16)
    certs = DeviceCertificates(ca, db=None, lifetime_s=60)  # type: ignore[arg-type]
    peer = tls.Peer("cd" * 16, tls.ROLE_DEVICE, "1f")
    certs.check(peer, "cd" * 16)
    certs.revoked_now(["1f"])
    with pytest.raises(Refusal) as refused:
        certs.check(peer, "cd" * 16)
    assert (http_status(refused.value), refused.value.code) == (403, "certificate_revoked")
    certs.check(peer, "cd" * 16, allow_revoked=True)
    coordinator_peer = tls.Peer("cd" * 16, tls.ROLE_COORDINATOR, "2")
    with pytest.raises(Refusal, match="another identity"):
        certs.check(coordinator_peer, "cd" * 16)
    with pytest.raises(Refusal) as bad_csr:
        certs.issue(b"\x30\x00", "cd" * 16)
    assert http_status(bad_csr.value) == 400


def _get(url: str, ctx: ssl.SSLContext) -> tuple[int, dict[str, str], Any]:
    try:
        with urllib.request.urlopen(url, timeout=10, context=ctx) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


async def test_rate_limits_answer_429_with_retry_after(tmp_path: Path) -> None:
    coord = CoordinatorProcess(
        tmp_path / "coord",
        settings={
            "limits": {
                "exempt": "",
                # Slow enough that nothing refills while the test runs.
                "per_address_rate": 0.001,
                "per_address_burst": 12,
                "per_device_rate": 0.001,
                "per_device_burst": 4,
            }
        },
    )
    coord.init()
    coord.start()
    try:
        d = SimDevice(coord.url, port=1)
        token = coord.token("operator")
        status, body = post(coord, "/v1/tokens", {"role": "enroll"}, token=token)
        assert post(coord, "/v1/enroll", d.enroll_message(body["token"]))[0] == 202
        # The device's own budget: 4 requests with its certificate (the enrollment went
        # before it had one), then 429 for the device, while the address has budget left.
        answers = [post(coord, "/v1/heartbeats", d.poa())[0] for _ in range(5)]
        assert answers == [202, 202, 202, 202, 429]
        ctx = coord.ssl_context()
        status, headers, body = _get(coord.url + "/v1/health", ctx)
        assert status == 200
        # The address's budget (12): the rest of it, then 429 with Retry-After.
        statuses = [_get(coord.url + "/v1/health", ctx)[0] for _ in range(6)]
        assert statuses == [200] * (12 - 2 - 5 - 1) + [429] * 2
        status, headers, body = _get(coord.url + "/v1/health", ctx)
        assert status == 429 and body["error"]["code"] == "rate_limited"
        assert int(headers["Retry-After"]) >= 1 and body["error"]["retry_after_s"] >= 1
    finally:
        coord.stop()


def test_ca_files_refuse_what_they_cannot_trust(tmp_path: Path) -> None:
    from aeamc.coordinator.ca import CaError, key_path

    with pytest.raises(CaError, match="no CA certificate"):
        CertificateAuthority.load(tmp_path, "")
    _, created = CertificateAuthority.ensure(tmp_path, "", "ab" * 16)
    assert created and key_path(tmp_path, "").stat().st_mode & 0o777 == 0o600
    key_path(tmp_path, "").chmod(0o644)
    with pytest.raises(CaError, match="too open"):
        CertificateAuthority.ensure(tmp_path, "", "ab" * 16)
    key_path(tmp_path, "").unlink()
    with pytest.raises(CaError, match="restore the key"):
        CertificateAuthority.ensure(tmp_path, "", "ab" * 16)
    # Another key beside this certificate is refused rather than used.
    tls.write_key(key_path(tmp_path, ""), tls.generate_key())
    with pytest.raises(CaError, match="does not belong"):
        CertificateAuthority.ensure(tmp_path, "", "ab" * 16)
    assert key_path(tmp_path, "keys/ca.pem") == tmp_path / "keys" / "ca.pem"


def test_token_buckets_refill_and_forget_idle_clients() -> None:
    from aeamc.coordinator import ratelimit
    from aeamc.coordinator.config import LimitsConfig

    now = [0.0]
    buckets = ratelimit.TokenBuckets(rate=2.0, burst=2, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert buckets.take("a") == 0.0
    old_max, ratelimit.MAX_BUCKETS = ratelimit.MAX_BUCKETS, 4
    try:
        for key in "bcd":
            buckets.take(key)
        now[0] += 10  # every bucket is full again: forgotten to make room
        buckets.take("e")
        assert set(buckets._buckets) == {"e"}
        for key in "fgh":
            buckets.take(key)
        buckets.take("i")  # none full: the idlest half goes
        assert len(buckets._buckets) <= 4 and "i" in buckets._buckets
    finally:
        ratelimit.MAX_BUCKETS = old_max
    limiter = ratelimit.RateLimiter(LimitsConfig(exempt="10.0.0.1", per_address_burst=1))
    for _ in range(3):
        limiter.check("10.0.0.1", None)  # exempt
    limiter.check("10.0.0.2", "dev")
    with pytest.raises(ApiError) as limited:
        limiter.check("10.0.0.2", "dev")
    assert limited.value.status == 429 and limited.value.extra["retry_after_s"] >= 1


def test_the_coordinators_certificate_is_renewed_in_place(tmp_path: Path) -> None:
    import os

    from aeamc.coordinator.app import CoordinatorService
    from aeamc.coordinator.config import parse_config
    from aeamc.shared.identity import SigningKey

    config = parse_config(
        {"state_dir": str(tmp_path), "server": {"mdns": False}, "chain": {"enabled": False}}
    )
    service = CoordinatorService(config, SigningKey.from_seed(os.urandom(32)))
    first = service.server_files.cert
    names = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    coordinator_id = service.coordinator.coordinator_id
    assert tls.coordinator_hostname(coordinator_id) in names.get_values_for_type(x509.DNSName)
    assert "coordinator.aeamc" in names.get_values_for_type(x509.DNSName)
    start, end = tls.validity_ms(first)
    assert not service.renew_server_certificate(start + (end - start) // 2)
    assert service.renew_server_certificate(end - 1000)
    renewed = tls.load_pem(service.server_files.cert_file.read_text())
    assert renewed.serial_number != first.serial_number
    assert renewed.public_key() == first.public_key()  # same TLS key, new certificate
    assert tls.issued_by(renewed, service.ca.cert)


async def test_tls_connections_read_through_a_bounded_buffer_and_lose_nothing(
    tmp_path: Path,
) -> None:
    """asyncio's default TLS read buffer (256 KiB per connection, kept while it lives)
    would make 10,000 kept-alive devices cost gigabytes; contexts from our helpers bound
    it, and a body many times the buffer still arrives byte for byte."""
    key = tls.generate_key()
    key_file, cert_file = tmp_path / "k.pem", tmp_path / "c.pem"
    tls.write_key(key_file, key)
    cert_file.write_text(tls.self_signed(key, "ab" * 16))
    server_ssl = tls.server_context(cert_file, key_file, ca_pem=None)
    client_ssl = tls.client_context(ca_pem=None)
    assert asyncio.sslproto.SSLProtocol.max_size == tls.TLS_READ_BUFFER
    buffers: list[int] = []

    async def echo(request: Any) -> Any:
        # The transport's TLS protocol and its read buffer (asyncio internals: what is bounded).
        buffers.append(len(request.transport._ssl_protocol._ssl_buffer))
        return web.Response(body=await request.read())

    app = web.Application(client_max_size=8 * 2**20)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    body = bytes(range(256)) * (4 * 2**20 // 256)  # 4 MiB: 128 buffers' worth
    try:
        connector = aiohttp.TCPConnector(ssl=client_ssl)
        async with aiohttp.ClientSession(connector=connector) as s:
            for _ in range(2):  # the second on the kept-alive connection
                async with s.post(f"https://127.0.0.1:{port}/echo", data=body) as r:
                    assert r.status == 200 and await r.read() == body
    finally:
        await runner.cleanup()
    assert buffers == [tls.TLS_READ_BUFFER] * 2
    tls.bound_read_buffers(10 * tls.TLS_READ_BUFFER)  # never raised again
    assert asyncio.sslproto.SSLProtocol.max_size == tls.TLS_READ_BUFFER
