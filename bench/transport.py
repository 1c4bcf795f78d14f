"""The one place every benchmark client and server gets its transport from.

A benchmark measures the product as deployed: TLS 1.3 only, the coordinator's own CA,
and mutual TLS on the device routes. So every connection here is built with the
product's helpers (``aeamc.shared.runtime.tls``): a client trusts the CA in the
coordinator's state directory (as an operator's client does), and a simulated device
does what an agent does — sends a CSR for its own P-256 key inside its signed
enrollment, keeps the certificate it is issued, presents it on heartbeats and proofs
and serves its endpoint with it. Real agent processes need nothing from here but the
``https://`` URL: they pin the CA at their first enrollment.

Each device keeps **one** client context per certificate: a kept-alive connection is
reused only by requests with the same context, and a context per request would be a
handshake per request.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aeamc.coordinator.ca import CertificateAuthority
from aeamc.shared.runtime import tls


@dataclass(frozen=True)
class Transport:
    """How to reach a server, and what to add to the daemons' configuration."""

    name: str
    scheme: str
    #: Extra coordinator TOML (merged into ``[server]`` and other sections).
    coordinator_settings: dict[str, Any] = field(default_factory=dict)
    #: Extra agent TOML.
    agent_settings: dict[str, Any] = field(default_factory=dict)

    def url(self, port: int, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{port}"

    @staticmethod
    def ca_file(state_dir: Path) -> Path:
        """The coordinator's CA certificate in its state directory (written by ``init``)."""
        return CertificateAuthority.cert_path(state_dir)

    @staticmethod
    def client_ssl(ca_pem: str) -> ssl.SSLContext:
        """A client without a certificate (operator, client, a device enrolling) that
        verifies the coordinator against its CA; build it once and share it."""
        return tls.client_context(ca_pem=ca_pem)


def transport() -> Transport:
    """The transport every benchmark uses (the deployed one)."""
    return Transport(
        name="TLS 1.3 on loopback, mutual TLS on the device routes (each device's own "
        "CA-issued client certificate)",
        scheme="https",
    )


class DeviceTls:
    """A simulated device's TLS, kept as an agent keeps it (``aeamc.agent.tls``): its own
    key file (0600), a CSR in every enrollment, the certificate from the answer.

    Files are ``<directory>/<device_id>.key`` and ``.pem``; an existing key is reused, so
    a later load generator speaking for the same device ids skips key generation.
    """

    def __init__(self, directory: Path, device_id: str, ca_pem: str) -> None:
        self.device_id = device_id
        self.ca_pem = ca_pem
        self.key_file = directory / f"{device_id}.key"
        self.cert_file = directory / f"{device_id}.pem"
        self.key = tls.ensure_key(self.key_file)
        self._client: ssl.SSLContext | None = None
        self._server: ssl.SSLContext | None = None

    def csr_hex(self) -> str:
        return tls.make_csr(self.key, self.device_id).hex()

    def accept(self, answer: Any) -> None:
        """Keep the certificate of an enrollment answer; refuse one the device cannot use
        (no certificate, another CA, not for this key and id), as an agent would."""
        if not isinstance(answer, dict) or not isinstance(answer.get("certificate"), str):
            raise tls.TlsError(f"enrollment answer without a certificate: {answer!r:.200}")
        ca = tls.load_pem(self.ca_pem)
        if answer.get("ca_fingerprint") != tls.fingerprint(ca):
            raise tls.TlsError("enrollment answer from another CA")
        cert = tls.load_pem(answer["certificate"])
        if cert.public_key() != self.key.public_key() or not tls.issued_by(cert, ca):
            raise tls.TlsError("the certificate is not for this device's key from the CA")
        tls.write_text_atomic(self.cert_file, answer["certificate"])
        self._client = self._server = None

    def client_ssl(self) -> ssl.SSLContext:
        """This device's one client context: the CA verified, the certificate presented."""
        if self._client is None:
            self._client = tls.client_context(
                ca_pem=self.ca_pem, cert_file=self.cert_file, key_file=self.key_file
            )
        return self._client

    def server_ssl(self) -> ssl.SSLContext:
        """The context of the device's endpoint: its certificate, and (as an agent) the
        coordinator's client certificate asked for and verified against the CA."""
        if self._server is None:
            self._server = tls.server_context(self.cert_file, self.key_file, ca_pem=self.ca_pem)
        return self._server


def endpoints_by_name(devices: Mapping[str, DeviceTls]) -> ssl.SSLContext:
    """One listener serving many devices' endpoints: the coordinator names the device it
    calls in the TLS server name (``<device_id>.device.aeamc``), so each handshake gets
    that device's own certificate. Every device must have been issued one."""
    by_name = {tls.device_hostname(d): dev.server_ssl() for d, dev in devices.items()}
    if not by_name:
        raise ValueError("no device endpoints to serve")
    front = next(iter(by_name.values()))

    def pick(ssl_object: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        chosen = by_name.get(name or "")
        if chosen is not None:
            ssl_object.context = chosen

    front.sni_callback = pick
    return front
