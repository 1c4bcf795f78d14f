"""The blobs and blob_owners tables: which content the coordinator holds, and whose it is.

The bytes live in files (``content.py``); a row says a file is complete and of which kind.
"""

from __future__ import annotations

from typing import Any

from ..dbtx import Tx, json_text


def blob_row(db: Tx, digest: str) -> dict[str, Any] | None:
    """The blob named ``digest`` (kind, size, created_at), or None."""
    return next(iter(db.query("SELECT * FROM blobs WHERE digest = ?", [digest])), None)


def owns(db: Tx, digest: str, owner: str) -> bool:
    """Whether ``owner`` uploaded the blob ``digest``."""
    found = db.execute(
        "SELECT 1 FROM blob_owners WHERE digest = ? AND owner = ?", [digest, owner]
    ).fetchone()
    return found is not None


def add_blob(db: Tx, digest: str, kind: str, size: int, *, owner: str, now: int) -> bool:
    """Record the blob (if new) and ``owner`` as one who uploaded it; whether it was new."""
    new = blob_row(db, digest) is None
    if new:
        db.execute(
            "INSERT INTO blobs (digest, kind, size, created_at) VALUES (?, ?, ?, ?)",
            [digest, kind, size, now],
        )
    db.execute(
        "INSERT INTO blob_owners (digest, owner, added_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [digest, owner, now],
    )
    return new


def assigned_digest(db: Tx, device_id: str, digest: str) -> bool:
    """Whether ``device_id`` was given a WASM task naming ``digest`` (as its module or its
    input) that it has not let go of (offered, accepted or proved, for its spot-checks):
    the only content a device may fetch."""
    found = db.execute(
        "SELECT 1 FROM assignments a JOIN tasks t ON t.task_id = a.task_id "  # noqa: S608
        "WHERE a.device_id = ? AND a.state IN ('offered', 'accepted', 'proved') "
        "AND t.kind = 'wasm' "
        f"AND ({json_text(db, 't.params', 'module')} = ? "
        f"OR {json_text(db, 't.params', 'input')} = ?)",
        [device_id, digest, digest],
    ).fetchone()
    return found is not None
