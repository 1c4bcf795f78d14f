"""The flags tables: each flag's rollout percentage and the history of its changes."""

from __future__ import annotations

from ..dbtx import Tx


def set_flag(db: Tx, name: str, percent: int, now: int, by: str) -> int | None:
    """Set flag ``name`` to ``percent`` and record the change in its history, together;
    returns the percentage before (None: the flag was unset)."""
    row = db.execute("SELECT percent FROM flags WHERE name=?", [name]).fetchone()
    before = row[0] if row else None
    db.execute(
        "INSERT INTO flags (name, percent, updated_at, updated_by) VALUES (?,?,?,?) "
        "ON CONFLICT (name) DO UPDATE SET percent=excluded.percent, "
        "updated_at=excluded.updated_at, updated_by=excluded.updated_by",
        [name, percent, now, by],
    )
    db.execute(
        "INSERT INTO flag_history (name, from_percent, to_percent, at, by) VALUES (?,?,?,?,?)",
        [name, before, percent, now, by],
    )
    return None if before is None else int(before)
