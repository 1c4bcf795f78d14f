"""Device certificates: issuing them at enrollment, revoking them, and checking the client
certificate of every device request (SPEC §12: mutual TLS after enrollment).

The TLS layer already refused any certificate not from our CA; what is left is whose it
is and whether it still counts. A device request (heartbeat, proof, the device's own
privacy request) must come with the certificate of the device that signed the message,
and — for heartbeats and proofs — one not revoked. Quarantine and erasure revoke every
certificate the device holds (written by ``store/certificates.py``); the revoked serials
are kept in the database and mirrored in memory, so the check costs a set lookup per
request (the peer's identity is parsed once per connection, in
``aeamc.shared.runtime.tls.peer_of``).
"""

from __future__ import annotations

import logging
from typing import Any

from aeamc.shared.refusals import Fault, Refusal
from aeamc.shared.runtime import tls

from .ca import CaError, CertificateAuthority, device_csr_key
from .groupcommit import GroupCommit

log = logging.getLogger(__name__)


class DeviceCertificates:
    def __init__(self, ca: CertificateAuthority, db: GroupCommit, lifetime_s: int) -> None:
        self.ca = ca
        self.db = db
        self.lifetime_s = lifetime_s
        self.revoked: set[str] = set()
        #: The latest revocation (rowid) in ``revoked``, for ``follow``.
        self._cursor = 0

    async def load(self) -> None:
        rows = await self.db.read(
            lambda db: db.execute("SELECT rowid, serial FROM revoked_certificates").fetchall()
        )
        self.revoked = {serial for _, serial in rows}
        self._cursor = max((rowid for rowid, _ in rows), default=0)

    async def follow(self) -> int:
        """Take in revocations committed since ``load`` or the last ``follow`` (by any
        process on this database: rows are only ever added); how many."""
        rows = await self.db.read(
            lambda db: db.execute(
                "SELECT rowid, serial FROM revoked_certificates WHERE rowid > ? ORDER BY rowid",
                [self._cursor],
            ).fetchall()
        )
        if rows:
            self.revoked.update(serial for _, serial in rows)
            self._cursor = rows[-1][0]
        return len(rows)

    def issue(self, csr_der: bytes, device_id: str) -> tuple[Any, dict[str, Any]]:
        """A certificate for the CSR's key, and the row to store with the enrollment."""
        try:
            cert = self.ca.issue_device(csr_der, device_id, self.lifetime_s)
        except CaError as exc:
            raise Refusal(Fault.INVALID, "invalid_message", str(exc), field="csr") from None
        _, not_after = tls.validity_ms(cert)
        row = {
            "serial": tls.serial_hex(cert),
            "device_id": device_id,
            "fingerprint": tls.fingerprint(cert),
            "not_after": not_after,
        }
        return cert, row

    @staticmethod
    def check_request(csr_der: bytes) -> None:
        """Refuse a certificate request that could never be issued (400), without signing
        anything: an enrollment not yet entitled to a certificate gets the same answer to
        a bad request as one that is."""
        try:
            device_csr_key(csr_der)
        except CaError as exc:
            raise Refusal(Fault.INVALID, "invalid_message", str(exc), field="csr") from None

    def revoked_now(self, serials: list[str]) -> None:
        """Mirror a committed revocation in memory (after the transaction)."""
        self.revoked.update(serials)
        if serials:
            log.info("revoked %d certificate(s)", len(serials))

    def check(self, peer: tls.Peer | None, device_id: str, *, allow_revoked: bool = False) -> None:
        """Refuse a device request whose client certificate is missing, another's, or revoked.

        ``allow_revoked``: the owner's data rights (export, erasure) outlive a quarantine.
        """
        if peer is None:
            raise Refusal(
                Fault.UNAUTHENTICATED,
                "certificate_required",
                "device requests need the device's TLS client certificate (enroll to get one)",
            )
        if peer.role != tls.ROLE_DEVICE or peer.name != device_id:
            raise Refusal(
                Fault.FORBIDDEN,
                "certificate_mismatch",
                "the client certificate belongs to another identity",
            )
        if not allow_revoked and peer.serial in self.revoked:
            raise Refusal(
                Fault.FORBIDDEN, "certificate_revoked", "this client certificate was revoked"
            )
