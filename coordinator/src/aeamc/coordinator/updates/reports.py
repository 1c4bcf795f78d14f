"""The update_reports table: each device's latest signed word on each release.

The only writer of the table (rollouts.py decides what a report means; erasure deletes a
device's reports through here). Each function runs in the caller's transaction.
"""

from __future__ import annotations

from aeamc.shared.releases import UpdateReport

from ..dbtx import Tx


def upsert_report(db: Tx, msg: UpdateReport, now: int) -> bool:
    """Keep the device's latest report on the release; whether this one was newer."""
    cur = db.execute(
        "INSERT INTO update_reports (device_id, release, version, outcome, detail, timestamp, "
        "received_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT (device_id, release) DO UPDATE SET "
        "version=excluded.version, outcome=excluded.outcome, detail=excluded.detail, "
        "timestamp=excluded.timestamp, received_at=excluded.received_at "
        "WHERE excluded.timestamp > update_reports.timestamp",
        [msg.device_id, msg.release, msg.version, msg.outcome, msg.detail, msg.timestamp, now],
    )
    return bool(cur.rowcount == 1)


def delete_device_reports(db: Tx, device_id: str) -> int:
    """Delete every report of an erased device; how many."""
    return int(db.execute("DELETE FROM update_reports WHERE device_id=?", [device_id]).rowcount)
