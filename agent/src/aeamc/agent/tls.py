"""The agent's side of mutual TLS: its TLS key and certificate, and the pinned CA.

Files (``state_dir/tls/``, the directory 0700)::

    key.pem          the device's TLS key (ECDSA P-256, 0600): Python's ssl needs a file,
                     so it is separate from the identity key, which may be in an HSM
    self-signed.pem  served before the coordinator has issued a certificate
    cert.pem         the certificate the coordinator's CA issued for key.pem
    ca.pem           the coordinator's CA, pinned at the first enrollment

Trust on first use, as for the coordinator's key: without a fingerprint to check, the
first enrollment is encrypted but not yet authenticated; its answer carries the CA
certificate, which is pinned from then on. With a fingerprint — the configured
``coordinator_ca_fingerprint``, or the mDNS advert's ``ca`` — the agent first fetches the
CA (``GET /v1/ca``, public), pins it only if it matches, and enrolls over a verified
connection, so its enrollment token never reaches anyone else. Every later connection
to the coordinator verifies it under ``<coordinator_id>.coordinator.aeamc``, presents our
certificate, and every call from the coordinator must present the pinned coordinator's
certificate. A coordinator answering with another CA is refused, like one with another
key.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from aeamc.shared.runtime import tls

log = logging.getLogger(__name__)

TLS_DIR = "tls"


class TrustError(Exception):
    """The coordinator's CA or certificate is not the one this device trusts."""


def _normal(fp: str | None) -> str | None:
    return fp.replace(":", "").lower() if fp else None


class AgentTls:
    def __init__(
        self,
        state_dir: Path,
        device_id: str,
        *,
        coordinator_id: str | None = None,
        expected_ca: str | None = None,
    ) -> None:
        self.dir = state_dir / TLS_DIR
        self.device_id = device_id
        self.coordinator_id = coordinator_id
        self.expected_ca = _normal(expected_ca)
        self.key_file = self.dir / "key.pem"
        self.cert_file = self.dir / "cert.pem"
        self.ca_file = self.dir / "ca.pem"
        self.key = tls.ensure_key(self.key_file)
        self.ca_pem: str | None = None
        self.ca_fingerprint: str | None = None
        if self.ca_file.exists():
            # The pinned trust anchor: unreadable is an error to fix, never silently dropped.
            try:
                self.ca_pem = self.ca_file.read_text()
                self.ca_fingerprint = tls.fingerprint(self.ca_pem)
            except tls.TlsError as exc:
                raise tls.TlsError(f"{self.ca_file}: {exc}") from None
        self.cert = self._load_own(self.cert_file) if self.ca_pem else None
        self_signed = self.dir / "self-signed.pem"
        served_self = self._load_own(self_signed, ca_issued=False)
        if served_self is None:
            tls.write_text_atomic(self_signed, tls.self_signed(self.key, device_id))
        served = self.cert_file if self.cert is not None else self_signed
        self.server_ssl = tls.server_context(served, self.key_file, ca_pem=self.ca_pem)
        self._client_ssl: ssl.SSLContext | None = None

    # -- state ----------------------------------------------------------------------------

    def _matches_key(self, cert: x509.Certificate) -> bool:
        return cert.public_key() == self.key.public_key()

    def _names_me(self, cert: x509.Certificate) -> bool:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        return tls.device_hostname(self.device_id) in san.get_values_for_type(x509.DNSName)

    def _load_own(self, path: Path, *, ca_issued: bool = True) -> x509.Certificate | None:
        """A certificate file for our key and id (issued by the pinned CA), else None: a
        damaged or stale one is replaced by the next enrollment."""
        try:
            cert = tls.load_pem(path.read_text())
        except (OSError, tls.TlsError):
            return None
        if ca_issued:
            return cert if self._ours(cert) else None
        return cert if self._matches_key(cert) and self._names_me(cert) else None

    def _ours(self, cert: x509.Certificate) -> bool:
        assert self.ca_pem is not None
        return (
            self._matches_key(cert)
            and tls.issued_by(cert, tls.load_pem(self.ca_pem))
            and self._names_me(cert)
        )

    def csr_hex(self) -> str:
        return tls.make_csr(self.key, self.device_id).hex()

    def renewal_due(self, now_ms: int) -> bool:
        """No certificate yet, or two thirds of its lifetime gone: enroll for a new one."""
        return self.cert is None or tls.renewal_due(self.cert, now_ms)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ca_fingerprint": self.ca_fingerprint, "certificate": None}
        if self.cert is not None:
            start, end = tls.validity_ms(self.cert)
            out["certificate"] = {
                "serial": tls.serial_hex(self.cert),
                "not_before_ms": start,
                "not_after_ms": end,
            }
        return out

    # -- contexts -------------------------------------------------------------------------

    def request_options(self, now_ms: int) -> dict[str, Any]:
        """``ssl`` and ``server_hostname`` for a request to the coordinator."""
        if self._client_ssl is None or (self.cert is not None and self._expired(now_ms)):
            self._client_ssl = self._build_client_ssl(now_ms)
        # Before the coordinator's id is known: the name every coordinator certificate has.
        name = tls.coordinator_hostname(self.coordinator_id) if self.ca_pem is not None else None
        return {"ssl": self._client_ssl, "server_hostname": name}

    def _expired(self, now_ms: int) -> bool:
        assert self.cert is not None
        return now_ms >= tls.validity_ms(self.cert)[1]

    def _build_client_ssl(self, now_ms: int) -> ssl.SSLContext:
        # An expired certificate would fail the whole handshake, enrollment included; so
        # once it has expired the agent goes without one and enrolls for a new one.
        present = self.cert is not None and not self._expired(now_ms)
        return tls.client_context(
            ca_pem=self.ca_pem,
            cert_file=self.cert_file if present else None,
            key_file=self.key_file if present else None,
        )

    # -- enrollment -----------------------------------------------------------------------

    def pin_ca(self, answer: Any, expected: str) -> None:
        """Pin the CA of a ``GET /v1/ca`` answer if it is the one ``expected``."""
        pem = answer.get("ca_certificate") if isinstance(answer, dict) else None
        if not isinstance(pem, str):
            raise TrustError("the coordinator did not send its CA certificate")
        try:
            ca = tls.load_pem(pem)
        except tls.TlsError as exc:
            raise TrustError(f"CA certificate: {exc}") from None
        fp = tls.fingerprint(ca)
        if fp != _normal(expected):
            raise TrustError(f"the coordinator's CA {fp} is not the expected {_normal(expected)}")
        self.ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
        self.ca_fingerprint = fp
        tls.write_text_atomic(self.ca_file, self.ca_pem)
        self.server_ssl.load_verify_locations(cadata=self.ca_pem)
        self.server_ssl.verify_mode = ssl.CERT_OPTIONAL
        self._client_ssl = None
        log.info("pinned the coordinator's CA %s (it matches the expected fingerprint)", fp)

    def expected_ca_for(self, advert_ca: str | None) -> str | None:
        """The fingerprint to check a not yet pinned CA against, if there is one."""
        return self.expected_ca or _normal(advert_ca)

    def accept(self, answer: dict[str, Any], coordinator_id: str, advert_ca: str | None) -> None:
        """Pin the CA (first time) and keep the certificate of an enrollment answer."""
        ca_pem, cert_pem = answer.get("ca_certificate"), answer.get("certificate")
        if not isinstance(ca_pem, str) or not isinstance(cert_pem, str):
            raise TrustError("enrollment answer without a CA certificate and a certificate")
        try:
            ca = tls.load_pem(ca_pem)
            cert = tls.load_pem(cert_pem)
        except tls.TlsError as exc:
            raise TrustError(f"enrollment answer: {exc}") from None
        fp = tls.fingerprint(ca)
        if self.ca_fingerprint is not None and fp != self.ca_fingerprint:
            raise TrustError(
                f"the coordinator presents CA {fp}, but this device pinned CA "
                f"{self.ca_fingerprint}; refusing it"
            )
        for what, expected in (("configured", self.expected_ca), ("advertised", advert_ca)):
            if expected is not None and fp != expected:
                raise TrustError(f"the coordinator's CA {fp} is not the {what} one {expected}")
        if not tls.issued_by(cert, ca) or not self._matches_key(cert) or not self._names_me(cert):
            raise TrustError("the certificate is not for this device's key from that CA")
        ca_text = ca.public_bytes(serialization.Encoding.PEM).decode()
        if not self.ca_file.exists():
            tls.write_text_atomic(self.ca_file, ca_text)
            log.info("pinned the coordinator's CA, fingerprint %s", fp)
        self.ca_pem, self.ca_fingerprint, self.coordinator_id = ca_text, fp, coordinator_id
        cert_text = cert.public_bytes(serialization.Encoding.PEM).decode()
        tls.write_text_atomic(self.cert_file, cert_text)
        self.cert = cert
        # New handshakes, served and made, use the new certificate and the pinned CA.
        self.server_ssl.load_cert_chain(self.cert_file, self.key_file)
        self.server_ssl.load_verify_locations(cadata=self.ca_pem)
        self.server_ssl.verify_mode = ssl.CERT_OPTIONAL
        self._client_ssl = None

    def coordinator_peer_ok(self, transport: Any) -> bool:
        """Whether a call to our endpoint comes from the pinned coordinator."""
        peer = tls.peer_of(transport)
        return (
            peer is not None
            and self.coordinator_id is not None
            and peer.role == tls.ROLE_COORDINATOR
            and peer.name == self.coordinator_id
        )
