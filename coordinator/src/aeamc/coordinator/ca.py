"""The coordinator's own certificate authority (SPEC §12: mutual TLS after enrollment).

One ECDSA P-256 CA per coordinator, created by ``init`` (or at the first start of a state
directory from before TLS, with a warning that shows its fingerprint). Its key is a file
(``state_dir/ca/ca.key``, 0600, refused when looser) or a key in an HSM (``ca_key =
"pkcs11:…"``); its certificate is ``state_dir/ca/ca.pem``. It issues:

- each device a certificate for the TLS key in its CSR, named by its device id, at every
  enrollment the device signs with its Ed25519 identity (so the identity vouches for the
  TLS key, which may live in a file even when the identity lives in an HSM);
- the coordinator its server (and, towards agents, client) certificate, at every start.

cryptography can only sign X.509 with a key object it holds. So every certificate is
built with a throwaway key of the same algorithm, and its TBSCertificate — whose issuer,
authority key id and signature algorithm are already the CA's — is signed by the CA key
(in the token, for an HSM) and assembled into ``SEQUENCE {tbs, algorithm, BIT STRING}``.
File and HSM keys take the same path, so the assembly is exercised by every issue.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aeamc.shared.runtime import tls
from aeamc.shared.runtime.pkcs11 import Pkcs11Error, ensure_p256, is_pkcs11_uri

log = logging.getLogger(__name__)

CA_DIR = "ca"
CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.pem"
CA_LIFETIME = dt.timedelta(days=20 * 365)
#: The CA's and the coordinator's certificates are valid from a little before they are
#: issued, so an agent whose clock is somewhat behind does not see them as "not yet
#: valid". Device certificates are checked by the coordinator's own clock only, so they
#: start when they are issued, and "two thirds of the lifetime" is two thirds of it.
BACKDATE = dt.timedelta(minutes=10)
#: DER AlgorithmIdentifier of ecdsa-with-SHA256 (RFC 5758: no parameters).
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")


class CaError(Exception):
    """The CA's key or certificate cannot be used; the message says which."""


class CaKey(Protocol):
    """A P-256 signing key: a file, or a key in a token (``P256HsmSigner``)."""

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """DER ECDSA signature over SHA-256(data)."""
        ...


@dataclass(frozen=True)
class FileCaKey:
    key: ec.EllipticCurvePrivateKey

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def assemble(tbs: bytes, signature: bytes) -> bytes:
    """Certificate DER from a TBSCertificate and the CA's ECDSA-with-SHA256 signature."""
    return _tlv(0x30, tbs + _ECDSA_SHA256 + _tlv(0x03, b"\x00" + signature))


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA certificate signs certificates and CRLs; any other one only signs (TLS)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _sign(builder: x509.CertificateBuilder, key: CaKey) -> x509.Certificate:
    throwaway = ec.generate_private_key(ec.SECP256R1())
    tbs = builder.sign(throwaway, hashes.SHA256()).tbs_certificate_bytes
    cert = x509.load_der_x509_certificate(assemble(tbs, key.sign(tbs)))
    # A token that signed with another key (or garbage) must not yield a certificate.
    try:
        key.public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise CaError("the CA key's signature does not verify under the CA's public key") from None
    return cert


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class CertificateAuthority:
    def __init__(self, key: CaKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        self.fingerprint = tls.fingerprint(cert)
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key)

    # -- files --------------------------------------------------------------------------

    @staticmethod
    def cert_path(state_dir: Path) -> Path:
        return state_dir / CA_DIR / CA_CERT_FILE

    @classmethod
    def ensure(
        cls, state_dir: Path, key_ref: str, coordinator_id: str
    ) -> tuple[CertificateAuthority, bool]:
        """The CA of ``state_dir``, created when it has none; flag: whether created."""
        cert_path = cls.cert_path(state_dir)
        key = _ensure_key(state_dir, key_ref)
        if cert_path.exists():
            ca = cls.load(state_dir, key_ref, key=key)
            return ca, False
        cert = _ca_certificate(key, coordinator_id)
        tls.write_text_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM).decode())
        return cls(key, cert), True

    @classmethod
    def load(
        cls, state_dir: Path, key_ref: str, *, key: CaKey | None = None
    ) -> CertificateAuthority:
        cert_path = cls.cert_path(state_dir)
        try:
            cert = tls.load_pem(cert_path.read_text())
        except FileNotFoundError:
            raise CaError(f"{cert_path}: no CA certificate (`aeamc-coordinator init`)") from None
        except tls.TlsError as exc:
            raise CaError(f"{cert_path}: {exc}") from None
        key = key or _load_key(state_dir, key_ref)
        if cert.public_key() != key.public_key:
            raise CaError(f"{cert_path}: the CA certificate does not belong to the CA key")
        return cls(key, cert)

    # -- issuing ---------------------------------------------------------------------------

    def _leaf(
        self,
        public_key: ec.EllipticCurvePublicKey,
        name: str,
        role: str,
        lifetime_s: int,
        backdate: dt.timedelta,
    ) -> x509.CertificateBuilder:
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(tls.subject(name, role))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - backdate)
            .not_valid_after(now + dt.timedelta(seconds=lifetime_s))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(ca=False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(self._aki, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    def issue_device(self, csr_der: bytes, device_id: str, lifetime_s: int) -> x509.Certificate:
        """A device certificate for the key in ``csr_der``; the CA sets every name."""
        public_key = device_csr_key(csr_der)
        leaf = self._leaf(public_key, device_id, tls.ROLE_DEVICE, lifetime_s, dt.timedelta(0))
        builder = leaf.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(tls.device_hostname(device_id))]),
            critical=False,
        )
        return _sign(builder, self.key)

    def issue_server(
        self,
        public_key: ec.EllipticCurvePublicKey,
        coordinator_id: str,
        names: list[str],
        lifetime_s: int,
    ) -> x509.Certificate:
        """The coordinator's certificate: its id's name for agents, ``names`` for browsers."""
        general: list[x509.GeneralName] = [
            x509.DNSName(tls.coordinator_hostname(coordinator_id)),
            x509.DNSName(tls.coordinator_hostname(None)),
        ]
        for name in dict.fromkeys(names):
            try:
                general.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                general.append(x509.DNSName(name))
        builder = self._leaf(
            public_key, coordinator_id, tls.ROLE_COORDINATOR, lifetime_s, BACKDATE
        ).add_extension(x509.SubjectAlternativeName(general), critical=False)
        return _sign(builder, self.key)


def device_csr_key(csr_der: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 key of a well-formed, self-signed certificate request (CaError if not)."""
    try:
        csr = x509.load_der_x509_csr(csr_der)
    except ValueError:
        raise CaError("csr: not a DER certificate request") from None
    if not csr.is_signature_valid:
        raise CaError("csr: its signature does not verify")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != (
        "secp256r1"
    ):
        raise CaError("csr: the TLS key must be ECDSA P-256")
    return public_key


def _ca_certificate(key: CaKey, coordinator_id: str) -> x509.Certificate:
    now = _now()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AEAMC"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ca"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"AEAMC coordinator {coordinator_id} CA"),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(ca=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key), critical=False)
    )
    return _sign(builder, key)


def key_path(state_dir: Path, key_ref: str) -> Path:
    if key_ref and not is_pkcs11_uri(key_ref):
        path = Path(key_ref)
        return path if path.is_absolute() else state_dir / path
    return state_dir / CA_DIR / CA_KEY_FILE


def _load_key(state_dir: Path, key_ref: str) -> CaKey:
    if is_pkcs11_uri(key_ref):
        from aeamc.shared.runtime.pkcs11 import P256HsmSigner

        try:
            return P256HsmSigner(key_ref)
        except Pkcs11Error as exc:
            raise CaError(f"ca_key: {exc}") from None
    path = key_path(state_dir, key_ref)
    try:
        return FileCaKey(tls.load_key(path))
    except tls.TlsError as exc:
        raise CaError(f"ca_key: {exc}") from None


def _ensure_key(state_dir: Path, key_ref: str) -> CaKey:
    if is_pkcs11_uri(key_ref):
        try:
            return ensure_p256(key_ref)[0]
        except Pkcs11Error as exc:
            raise CaError(f"ca_key: {exc}") from None
    path = key_path(state_dir, key_ref)
    if path.exists():
        return _load_key(state_dir, key_ref)
    if CertificateAuthority.cert_path(state_dir).exists():
        raise CaError(f"{path}: the CA key is missing but its certificate exists; restore the key")
    key = tls.generate_key()
    tls.write_key(path, key)
    return FileCaKey(key)


def host_names(host: str, advertise: str, extra: str) -> list[str]:
    """Names and addresses a browser or CLI may reach the coordinator under."""
    names = ["localhost", "127.0.0.1", "::1"]
    hostname = socket.gethostname()
    if hostname:
        names += [hostname, f"{hostname}.local"]
    for value in (host, advertise):
        if value and value not in ("0.0.0.0", "::"):  # noqa: S104 - compared, not bound
            names.append(value)
    with contextlib.suppress(OSError):
        names += [a for a in socket.gethostbyname_ex(hostname)[2] if a]
    names += [n.strip() for n in extra.split(",") if n.strip()]
    return names


@dataclass(frozen=True)
class ServerFiles:
    """The coordinator's own TLS key and certificate, as Python's ``ssl`` wants them."""

    cert_file: Path
    key_file: Path
    cert: x509.Certificate


def issue_server_files(
    ca: CertificateAuthority,
    state_dir: Path,
    coordinator_id: str,
    *,
    names: list[str],
    lifetime_s: int,
) -> ServerFiles:
    """(Re-)issue the coordinator's certificate for its TLS key (``state_dir/tls/``)."""
    key_file = state_dir / "tls" / "server.key"
    cert_file = state_dir / "tls" / "server.pem"
    key = tls.ensure_key(key_file)
    cert = ca.issue_server(key.public_key(), coordinator_id, names, lifetime_s)
    tls.write_text_atomic(cert_file, cert.public_bytes(serialization.Encoding.PEM).decode())
    return ServerFiles(cert_file, key_file, cert)
