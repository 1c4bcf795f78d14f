"""The agent's certificate work, in a helper process of its own: ``python -m
aeamc.agent.certtool`` reads one JSON request on stdin and writes one JSON answer.

Making a TLS key, a self-signed certificate or a certificate request, and checking a
certificate against the pinned CA, take ``cryptography`` — as much memory as the rest of
an idle daemon's libraries, and Python never unloads a module. The daemon needs it rarely:
at its first start, at each enrollment for a certificate (the first, then a renewal every
two thirds of a lifetime) and when its TLS files changed. So ``tls.py`` starts this helper
for those moments, and the daemon that runs for months never maps ``cryptography``.

Requests: ``{"op": "check" | "csr" | "answer", "dir": <tls dir>, "device_id": ...}``
(``answer`` also ``ca_pem`` and ``cert_pem``). Answers: ``{"ok": {...}}``, or
``{"error": message, "kind": "tls" | "trust"}`` for a file or an answer refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aeamc.shared.runtime import tls

from .tls import CA_FILE, CERT_FILE, KEY_FILE, SELF_SIGNED_FILE


class Refused(Exception):
    """An enrollment answer this device must not take (``kind`` "trust")."""


def facts(cert: x509.Certificate) -> dict[str, Any]:
    start, end = tls.validity_ms(cert)
    return {"not_before_ms": start, "not_after_ms": end, "serial": tls.serial_hex(cert)}


def _names(cert: x509.Certificate, device_id: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return tls.device_hostname(device_id) in san.get_values_for_type(x509.DNSName)


def _ours(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, device_id: str, ca: Any) -> bool:
    """For our key and id — and, given the CA, issued by it."""
    if cert.public_key() != key.public_key() or not _names(cert, device_id):
        return False
    return ca is None or tls.issued_by(cert, ca)


def _load_own(
    path: Path, key: ec.EllipticCurvePrivateKey, device_id: str, ca: Any
) -> x509.Certificate | None:
    try:
        cert = tls.load_pem(path.read_text())
    except (OSError, tls.TlsError):
        return None
    return cert if _ours(cert, key, device_id, ca) else None


def check(folder: Path, device_id: str) -> dict[str, Any]:
    """Make the key and the self-signed certificate if they are missing or not ours; what
    the CA and our certificate are (a damaged certificate is replaced by enrolling), and a
    certificate request for the key."""
    key = tls.ensure_key(folder / KEY_FILE)
    ca = fingerprint = None
    ca_file = folder / CA_FILE
    if ca_file.exists():
        # The pinned trust anchor: unreadable is an error to fix, never silently dropped.
        try:
            ca = tls.load_pem(ca_file.read_text())
        except tls.TlsError as exc:
            raise tls.TlsError(f"{ca_file}: {exc}") from None
        fingerprint = tls.fingerprint(ca)
    cert = _load_own(folder / CERT_FILE, key, device_id, ca) if ca is not None else None
    if _load_own(folder / SELF_SIGNED_FILE, key, device_id, None) is None:
        tls.write_text_atomic(folder / SELF_SIGNED_FILE, tls.self_signed(key, device_id))
    return {
        "ca_fingerprint": fingerprint,
        "cert": facts(cert) if cert is not None else None,
        # Made now, while cryptography is loaded: the first enrollment needs it next.
        "csr": tls.make_csr(key, device_id).hex(),
    }


def csr(folder: Path, device_id: str) -> dict[str, Any]:
    return {"csr": tls.make_csr(tls.load_key(folder / KEY_FILE), device_id).hex()}


def answer(folder: Path, device_id: str, ca_pem: str, cert_pem: str) -> dict[str, Any]:
    """The CA and the certificate of an enrollment answer, checked and in normal form."""
    try:
        ca = tls.load_pem(ca_pem)
        cert = tls.load_pem(cert_pem)
    except tls.TlsError as exc:
        raise Refused(f"enrollment answer: {exc}") from None
    key = tls.load_key(folder / KEY_FILE)
    pem = serialization.Encoding.PEM
    return {
        "ca_pem": ca.public_bytes(pem).decode(),
        "ca_fingerprint": tls.fingerprint(ca),
        "cert_pem": cert.public_bytes(pem).decode(),
        "cert": facts(cert),
        "ours": _ours(cert, key, device_id, ca),
    }


def handle(request: dict[str, Any]) -> dict[str, Any]:
    folder, device_id = Path(request["dir"]), str(request["device_id"])
    try:
        if request["op"] == "check":
            return {"ok": check(folder, device_id)}
        if request["op"] == "csr":
            return {"ok": csr(folder, device_id)}
        if request["op"] == "answer":
            return {"ok": answer(folder, device_id, request["ca_pem"], request["cert_pem"])}
    except tls.TlsError as exc:
        return {"error": str(exc), "kind": "tls"}
    except Refused as exc:
        return {"error": str(exc), "kind": "trust"}
    return {"error": f"unknown request {request['op']!r}", "kind": "tls"}


def main() -> int:
    json.dump(handle(json.loads(sys.stdin.read())), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
