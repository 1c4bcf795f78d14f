"""TLS 1.3 for every AEAMC connection: the one place SSL contexts are built (SPEC §12).

Every listener and every client is TLS 1.3 only (``minimum_version = TLSv1_3``): TLS 1.2
and plaintext are refused at the handshake. Certificates come from the coordinator's own
CA (``aeamc.coordinator.ca``); their names say what a peer is, so hostname checking is
what tells the coordinator from a device:

- a device's certificate: subject ``CN=<device_id>, OU=device``, SAN
  ``<device_id>.device.aeamc``; it is the device's client *and* server certificate;
- the coordinator's: ``CN=<coordinator_id>, OU=coordinator``, SAN
  ``<coordinator_id>.coordinator.aeamc`` and ``coordinator.aeamc`` (what an agent that
  knows the CA but not yet the coordinator's id verifies) plus the host's names and
  addresses (for browsers).

A client connects by IP address but verifies the peer under that name
(``server_hostname``), so a device certificate from the same CA can never pass for the
coordinator, nor one device for another. TLS keys are ECDSA P-256: Ed25519 certificates
would be smaller, but browsers do not accept them, and the dashboard is served on the same
listener. Python's ``ssl`` needs the TLS private key in a file (mode 0600); the
device's Ed25519 identity, which may be in an HSM, binds that key by signing the
enrollment request that carries its CSR.
"""

from __future__ import annotations

import asyncio.sslproto
import datetime as dt
import hashlib
import ssl
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .files import atomic_write
from .keyfile import KeyFileError, read_private

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography is imported by the functions that parse or make keys and certificates, not
# here: building contexts and reading peers needs only ``ssl``, and an enrolled agent that
# remembers what it checked (aeamc.agent.tls) starts without loading it at all.

ROLE_DEVICE = "device"
ROLE_COORDINATOR = "coordinator"
NAME_SUFFIX = "aeamc"


class TlsError(Exception):
    """A key, certificate or CA cannot be used; the message says which and why."""


def device_hostname(device_id: str) -> str:
    """The name a device's certificate carries and its peers verify."""
    return f"{device_id}.{ROLE_DEVICE}.{NAME_SUFFIX}"


def coordinator_hostname(coordinator_id: str | None) -> str:
    """The coordinator's name; without its id, the name every coordinator certificate has."""
    if coordinator_id is None:
        return f"{ROLE_COORDINATOR}.{NAME_SUFFIX}"
    return f"{coordinator_id}.{ROLE_COORDINATOR}.{NAME_SUFFIX}"


# --- contexts ------------------------------------------------------------------------------

#: asyncio reads each TLS connection through a buffer of its own, allocated and zeroed
#: when the connection opens and kept while it lives: 256 KiB in CPython 3.11
#: (``asyncio.sslproto.SSLProtocol.max_size``) — 2.5 GiB of resident memory for a
#: coordinator holding 10,000 devices' keep-alive connections, and as much again in
#: anything that holds as many. A TLS record carries at most 16 KiB, so 32 KiB still
#: takes whole records per read; larger bodies simply take a few more reads.
TLS_READ_BUFFER = 32 * 1024


def bound_read_buffers(size: int = TLS_READ_BUFFER) -> None:
    """Cap asyncio's per-connection TLS read buffer at ``size`` bytes (never raise it).

    Called for every context built here, so every process that speaks TLS through this
    module gets it before its first connection."""
    proto = asyncio.sslproto.SSLProtocol
    proto.max_size = min(proto.max_size, size)


def _tls13(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    bound_read_buffers()
    return ctx


def server_context(cert_file: Path, key_file: Path, *, ca_pem: str | None) -> ssl.SSLContext:
    """A TLS 1.3 server context; with ``ca_pem`` it asks for a client certificate from
    that CA (CERT_OPTIONAL: public routes work without one, the application decides)."""
    ctx = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.load_cert_chain(cert_file, key_file)
    if ca_pem is not None:
        ctx.load_verify_locations(cadata=ca_pem)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(
    *, ca_pem: str | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A TLS 1.3 client context that verifies the peer against ``ca_pem`` (and its name).

    ``ca_pem=None`` is trust on first use: the handshake is encrypted but the peer is not
    yet verified — only for the first enrollment, whose answer carries the CA to pin.
    """
    ctx = _tls13(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if ca_pem is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pem)
    if cert_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def system_client_context() -> ssl.SSLContext:
    """TLS 1.3 trusting the system's authorities: for a peer that is not one of ours."""
    return _tls13(ssl.create_default_context())


# --- peers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a verified TLS connection."""

    name: str  # the subject CN: a device id or a coordinator id
    role: str  # the subject OU: ``device`` or ``coordinator``
    serial: str  # lowercase hex, no leading zeros


_peers: weakref.WeakKeyDictionary[Any, Peer | None] = weakref.WeakKeyDictionary()


def peer_of(transport: Any) -> Peer | None:
    """The verified client certificate on ``transport`` (None without one), parsed once
    per connection: every request on a kept-alive connection reuses it."""
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    try:
        return _peers[ssl_object]
    except KeyError:
        pass
    peer = _parse_peer(ssl_object.getpeercert())
    _peers[ssl_object] = peer
    return peer


def _parse_peer(cert: dict[str, Any] | None) -> Peer | None:
    # getpeercert() returns a dict only for a certificate that was verified.
    if not cert:
        return None
    subject = {k: v for rdn in cert.get("subject", ()) for k, v in rdn}
    name, role = subject.get("commonName"), subject.get("organizationalUnitName")
    serial = cert.get("serialNumber")
    if not (isinstance(name, str) and isinstance(role, str) and isinstance(serial, str)):
        return None
    return Peer(name, role, format(int(serial, 16), "x"))


# --- keys and certificates -----------------------------------------------------------------


def generate_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key (PEM, mode 0600) atomically; an existing file is replaced."""
    from cryptography.hazmat.primitives import serialization

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(path, pem, mode=0o600)


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """A P-256 key file; refused if group or others may read it (like every key file)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise TlsError(f"{path}: not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise TlsError(f"{path}: not a P-256 key")
    return key


def check_key_file(path: Path) -> None:
    """A key file exists and only its owner may read it (what ``load_key`` checks first)."""
    _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    try:
        return read_private(path, what="TLS key")
    except KeyFileError as exc:
        raise TlsError(str(exc)) from None


def ensure_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if path.exists():
        return load_key(path)
    key = generate_key()
    write_key(path, key)
    return key


def write_text_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` whole (a certificate, a CA), with ``mode`` less the umask."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, text.encode(), mode=mode)


def subject(name: str, role: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AEAMC"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )


def make_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    """DER of a certificate request for ``key``; the CA decides every name and extension."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject(device_id, ROLE_DEVICE))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def self_signed(key: ec.EllipticCurvePrivateKey, device_id: str, days: int = 3650) -> str:
    """PEM of a self-signed certificate: what a device serves before it has the CA's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.UTC)
    name = subject(device_id, ROLE_DEVICE)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(device_hostname(device_id))]), False
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def load_pem(pem: str) -> x509.Certificate:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise TlsError(f"not a PEM certificate: {exc}") from None


def fingerprint(cert: x509.Certificate | str) -> str:
    """SHA-256 of the certificate's DER, lowercase hex: what owners compare by eye."""
    from cryptography.hazmat.primitives import serialization

    c = load_pem(cert) if isinstance(cert, str) else cert
    return hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()


def pem_fingerprint(pem: str) -> str:
    """``fingerprint`` of a PEM certificate, by ``ssl`` alone: no parse of its contents
    (ValueError if it is not one PEM certificate), for comparing with a pinned one."""
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.strip())).hexdigest()


def pretty_fingerprint(fp: str) -> str:
    """``AB:CD:…`` as browsers and ``openssl x509 -fingerprint -sha256`` show it."""
    return ":".join(fp[i : i + 2] for i in range(0, len(fp), 2)).upper()


def validity_ms(cert: x509.Certificate) -> tuple[int, int]:
    return (
        int(cert.not_valid_before_utc.timestamp() * 1000),
        int(cert.not_valid_after_utc.timestamp() * 1000),
    )


def renewal_due(cert: x509.Certificate, now_ms: int, fraction: float = 2 / 3) -> bool:
    """Whether ``fraction`` of the certificate's lifetime has passed (renew before expiry)."""
    return renewal_due_ms(*validity_ms(cert), now_ms, fraction)


def renewal_due_ms(start_ms: int, end_ms: int, now_ms: int, fraction: float = 2 / 3) -> bool:
    """``renewal_due`` from a validity period remembered as numbers."""
    return now_ms >= start_ms + (end_ms - start_ms) * fraction


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")
