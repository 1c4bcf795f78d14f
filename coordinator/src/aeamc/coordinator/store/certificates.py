"""The certificate tables: the client certificates issued to devices, and revocations."""

from __future__ import annotations

from typing import Any

from ..dbtx import Tx, insert


def insert_certificate(db: Tx, row: dict[str, Any], now: int) -> None:
    """Record a certificate issued to a device at ``now`` (its serial is unique)."""
    insert(db, "certificates", {**row, "issued_at": now})


def revoke_device(db: Tx, device_id: str, now: int, reason: str) -> list[str]:
    """Revoke every certificate of ``device_id`` (an earlier revocation stays as it was);
    their serials, to be dropped from the live TLS check after commit."""
    serials = [
        r["serial"]
        for r in db.query("SELECT serial FROM certificates WHERE device_id=?", [device_id])
    ]
    for serial in serials:
        db.execute(
            "INSERT INTO revoked_certificates (serial, revoked_at, reason) "
            "VALUES (?,?,?) ON CONFLICT DO NOTHING",
            [serial, now, reason],
        )
    return serials


def delete_device_certificates(db: Tx, device_id: str) -> int:
    """Delete an erased device's certificate rows (their revocations stay); how many."""
    return int(db.execute("DELETE FROM certificates WHERE device_id=?", [device_id]).rowcount)
