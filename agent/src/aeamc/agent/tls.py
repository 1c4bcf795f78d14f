"""The agent's side of mutual TLS: its TLS key and certificate, and the pinned CA.

Files (``state_dir/tls/``, the directory 0700)::

    key.pem          the device's TLS key (ECDSA P-256, 0600): Python's ssl needs a file,
                     so it is separate from the identity key, which may be in an HSM
    self-signed.pem  served before the coordinator has issued a certificate
    cert.pem         the certificate the coordinator's CA issued for key.pem
    ca.pem           the coordinator's CA, pinned at the first enrollment
    checked.json     what was found checking the files above (the CA's fingerprint, the
                     certificate's validity and serial), with a SHA-256 of each file

Whatever takes ``cryptography`` — making the key, the self-signed certificate or a
certificate request, checking a certificate against the CA — runs in a helper process
(certtool.py), so the daemon never loads it; what a check found is remembered, and a
start whose files are byte for byte those last checked needs no helper at all.

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

import hashlib
import json
import logging
import ssl
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aeamc.shared.runtime import tls

log = logging.getLogger(__name__)

TLS_DIR = "tls"
KEY_FILE, CERT_FILE, CA_FILE, SELF_SIGNED_FILE = (
    "key.pem",
    "cert.pem",
    "ca.pem",
    "self-signed.pem",
)
CHECKED_FILE = "checked.json"


@dataclass(frozen=True)
class CertFacts:
    """What the agent needs to know of its certificate once it has checked it."""

    not_before_ms: int
    not_after_ms: int
    serial: str


#: How long the certificate helper may take (it imports cryptography, may make a key).
HELPER_TIMEOUT_S = 60.0


class TrustError(Exception):
    """The coordinator's CA or certificate is not the one this device trusts."""


def _digest(path: Path) -> str | None:
    """A file's SHA-256 (None: no such file): how a check is tied to the files it read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


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
        self.key_file = self.dir / KEY_FILE
        self.cert_file = self.dir / CERT_FILE
        self.ca_file = self.dir / CA_FILE
        self.self_signed_file = self.dir / SELF_SIGNED_FILE
        if self.key_file.exists():
            tls.check_key_file(self.key_file)  # its contents: checked with the rest
        self._csr: tuple[str | None, str] | None = None
        self.ca_pem: str | None = None
        self.ca_fingerprint: str | None = None
        self.cert: CertFacts | None = None
        if not self._recall():
            self._check()
        served = self.cert_file if self.cert is not None else self.self_signed_file
        self.server_ssl = tls.server_context(served, self.key_file, ca_pem=self.ca_pem)
        self._client_ssl: ssl.SSLContext | None = None

    # -- state ----------------------------------------------------------------------------

    def _helper(self, op: str, **args: Any) -> dict[str, Any]:
        """Run one request in the certificate helper (certtool.py); its answer."""
        request = {"op": op, "dir": str(self.dir), "device_id": self.device_id, **args}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "aeamc.agent.certtool"],
                input=json.dumps(request),
                capture_output=True,
                text=True,
                timeout=HELPER_TIMEOUT_S,
                check=False,
            )
            reply = json.loads(done.stdout)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            raise tls.TlsError(f"the certificate helper failed: {exc}") from None
        if "error" in reply:
            error = TrustError if reply.get("kind") == "trust" else tls.TlsError
            raise error(reply["error"])
        return reply["ok"]  # type: ignore[no-any-return]

    def _check(self) -> None:
        """Have every file checked (and the key and self-signed certificate made if they
        are missing or not ours); remember what was found."""
        found = self._helper("check")
        self.ca_pem = self.ca_file.read_text() if found["ca_fingerprint"] else None
        self.ca_fingerprint = found["ca_fingerprint"]
        self.cert = CertFacts(**found["cert"]) if found["cert"] else None
        self._remember()
        self._csr = (_digest(self.key_file), found["csr"])

    def _digests(self) -> dict[str, str | None]:
        files = (self.key_file, self.ca_file, self.cert_file, self.self_signed_file)
        return {path.name: _digest(path) for path in files}

    def _remember(self) -> None:
        checked = {
            "files": self._digests(),
            "ca_fingerprint": self.ca_fingerprint,
            "cert": asdict(self.cert) if self.cert is not None else None,
        }
        tls.write_text_atomic(self.dir / CHECKED_FILE, json.dumps(checked, sort_keys=True))

    def _recall(self) -> bool:
        """Take what the last check found if every file is the one it checked."""
        try:
            checked = json.loads((self.dir / CHECKED_FILE).read_bytes())
            if checked["files"] != self._digests() or checked["files"][SELF_SIGNED_FILE] is None:
                return False
            ca_pem = self.ca_file.read_text() if checked["files"][self.ca_file.name] else None
            fingerprint = checked["ca_fingerprint"]
            cert = CertFacts(**checked["cert"]) if checked["cert"] is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if (ca_pem is None) != (fingerprint is None) or (cert is not None and ca_pem is None):
            return False
        self.ca_pem, self.ca_fingerprint, self.cert = ca_pem, fingerprint, cert
        return True

    def csr_hex(self) -> str:
        """A certificate request for our key (made once per key, by the helper)."""
        key_digest = _digest(self.key_file)
        if self._csr is None or self._csr[0] != key_digest:
            self._csr = (key_digest, self._helper("csr")["csr"])
        return self._csr[1]

    def renewal_due(self, now_ms: int) -> bool:
        """No certificate yet, or two thirds of its lifetime gone: enroll for a new one."""
        c = self.cert
        return c is None or tls.renewal_due_ms(c.not_before_ms, c.not_after_ms, now_ms)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ca_fingerprint": self.ca_fingerprint, "certificate": None}
        if self.cert is not None:
            out["certificate"] = {
                "serial": self.cert.serial,
                "not_before_ms": self.cert.not_before_ms,
                "not_after_ms": self.cert.not_after_ms,
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
        return now_ms >= self.cert.not_after_ms

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
            der = ssl.PEM_cert_to_DER_cert(pem.strip())
        except ValueError as exc:
            raise TrustError(f"CA certificate: not a PEM certificate: {exc}") from None
        fp = hashlib.sha256(der).hexdigest()
        if fp != _normal(expected):
            raise TrustError(f"the coordinator's CA {fp} is not the expected {_normal(expected)}")
        # Its fingerprint is the one expected: it is that certificate, whatever it says.
        self._pin_ca(der, fp)
        log.info("pinned the coordinator's CA %s (it matches the expected fingerprint)", fp)

    def expected_ca_for(self, advert_ca: str | None) -> str | None:
        """The fingerprint to check a not yet pinned CA against, if there is one."""
        return self.expected_ca or _normal(advert_ca)

    def check_answer(self, answer: Any) -> dict[str, Any] | None:
        """The helper's check of the certificate in an enrollment answer, for ``accept``
        (None: the answer has none). It only reads the key file, so the daemon runs it in
        a thread rather than wait for the helper on its event loop."""
        if not isinstance(answer, dict):
            return None
        ca_pem, cert_pem = answer.get("ca_certificate"), answer.get("certificate")
        if not isinstance(ca_pem, str) or not isinstance(cert_pem, str):
            return None
        try:
            return self._helper("answer", ca_pem=ca_pem, cert_pem=cert_pem)
        except TrustError as exc:
            return {"refused": str(exc)}

    def accept(
        self,
        answer: dict[str, Any],
        coordinator_id: str,
        advert_ca: str | None,
        *,
        asked_certificate: bool = True,
        checked: dict[str, Any] | None = None,
        pending: bool = False,
    ) -> None:
        """Pin the CA (first time) and keep the certificate of an enrollment answer
        (``checked``: what ``check_answer`` found, if it ran already).

        Without a request for a certificate (``asked_certificate``: the one held is still
        good) the answer carries only the CA, which must be the pinned one. A ``pending``
        answer carries no certificate either (the coordinator issues one only once the
        device is approved): its CA is pinned, or must be the pinned one."""
        ca_pem, cert_pem = answer.get("ca_certificate"), answer.get("certificate")
        if not isinstance(ca_pem, str):
            raise TrustError("enrollment answer without a CA certificate")
        if cert_pem is None and pending:
            self._accept_pending(ca_pem, coordinator_id, advert_ca)
            return
        if cert_pem is None and not asked_certificate and self.cert is not None:
            try:
                fp = tls.pem_fingerprint(ca_pem)
            except ValueError as exc:
                raise TrustError(f"enrollment answer: CA certificate: {exc}") from None
            if fp != self.ca_fingerprint:
                raise TrustError(
                    f"the coordinator presents CA {fp}, but this device pinned CA "
                    f"{self.ca_fingerprint}; refusing it"
                )
            self.coordinator_id = coordinator_id
            return
        if not isinstance(cert_pem, str):
            raise TrustError("enrollment answer without the certificate it asked for")
        if checked is None:
            checked = self.check_answer(answer)
        assert checked is not None  # the answer has both certificates
        if "refused" in checked:
            raise TrustError(checked["refused"])
        fp = checked["ca_fingerprint"]
        self._check_ca(fp, advert_ca)
        if not checked["ours"]:
            raise TrustError("the certificate is not for this device's key from that CA")
        ca_text = checked["ca_pem"]
        if not self.ca_file.exists():
            tls.write_text_atomic(self.ca_file, ca_text)
            log.info("pinned the coordinator's CA, fingerprint %s", fp)
        self.ca_pem, self.ca_fingerprint, self.coordinator_id = ca_text, fp, coordinator_id
        tls.write_text_atomic(self.cert_file, checked["cert_pem"])
        self.cert = CertFacts(**checked["cert"])
        self._remember()
        # New handshakes, served and made, use the new certificate and the pinned CA.
        self.server_ssl.load_cert_chain(self.cert_file, self.key_file)
        self.server_ssl.load_verify_locations(cadata=self.ca_pem)
        self.server_ssl.verify_mode = ssl.CERT_OPTIONAL
        self._client_ssl = None

    def _check_ca(self, fp: str, advert_ca: str | None) -> None:
        """Refuse a CA (by fingerprint) other than the pinned, configured or advertised one."""
        if self.ca_fingerprint is not None and fp != self.ca_fingerprint:
            raise TrustError(
                f"the coordinator presents CA {fp}, but this device pinned CA "
                f"{self.ca_fingerprint}; refusing it"
            )
        for what, expected in (("configured", self.expected_ca), ("advertised", advert_ca)):
            if expected is not None and fp != expected:
                raise TrustError(f"the coordinator's CA {fp} is not the {what} one {expected}")

    def _accept_pending(self, ca_pem: str, coordinator_id: str, advert_ca: str | None) -> None:
        """The CA of an answer without a certificate (pending approval): pinned if none
        is yet, as the first answer's CA is; otherwise it must be the pinned one."""
        try:
            der = ssl.PEM_cert_to_DER_cert(ca_pem.strip())
        except ValueError as exc:
            raise TrustError(f"enrollment answer: CA certificate: {exc}") from None
        fp = hashlib.sha256(der).hexdigest()
        self._check_ca(fp, advert_ca)
        self.coordinator_id = coordinator_id
        if self.ca_fingerprint is None:
            self._pin_ca(der, fp)
            log.info("pinned the coordinator's CA, fingerprint %s", fp)

    def _pin_ca(self, der: bytes, fp: str) -> None:
        """Keep ``der`` as the coordinator's CA (on disk first), and from now on ask callers
        of our endpoint for a certificate from it and verify the coordinator against it."""
        self.ca_pem = ssl.DER_cert_to_PEM_cert(der)
        self.ca_fingerprint = fp
        tls.write_text_atomic(self.ca_file, self.ca_pem)
        self._remember()
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
