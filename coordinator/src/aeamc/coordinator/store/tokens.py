"""The tokens table: only token hashes, with their role, limits and owner."""

from __future__ import annotations

from typing import Any

from ..dbtx import Tx, insert


def token_row(db: Tx, token_hash: str) -> dict[str, Any] | None:
    """The token with hash ``token_hash``, or None."""
    return next(iter(db.query("SELECT * FROM tokens WHERE token_hash = ?", [token_hash])), None)


def enroll_token_row(db: Tx, token_hash: str) -> dict[str, Any] | None:
    """The enrollment token with hash ``token_hash``, or None."""
    return next(
        iter(
            db.query("SELECT * FROM tokens WHERE token_hash = ? AND role = 'enroll'", [token_hash])
        ),
        None,
    )


def owner_taken(db: Tx, owner: str) -> bool:
    """Whether any token ever made has the owner id ``owner``."""
    return next(iter(db.query("SELECT 1 FROM tokens WHERE owner=?", [owner])), None) is not None


def insert_token(db: Tx, row: dict[str, Any]) -> None:
    """Store a new token (its hash, never the token); tokens are never deleted."""
    insert(db, "tokens", row)


def spend_use(db: Tx, token_hash: str, now: int) -> int | None:
    """Take one use of a limited, unexpired token; the uses left afterwards, or None when
    it has none left (or expired meanwhile). One conditional statement, so concurrent
    requests never spend more uses than the token has."""
    cur = db.execute(
        "UPDATE tokens SET uses_left = uses_left - 1 WHERE token_hash = ? AND uses_left > 0 "
        "AND (expires_at IS NULL OR expires_at >= ?)",
        [token_hash, now],
    )
    if cur.rowcount != 1:
        return None
    row = next(iter(db.query("SELECT uses_left FROM tokens WHERE token_hash=?", [token_hash])))
    return int(row["uses_left"])


def spend_enroll_use(db: Tx, token_hash: str) -> None:
    """Take one use of an enrollment token the caller found valid, in its transaction."""
    db.execute("UPDATE tokens SET uses_left = uses_left - 1 WHERE token_hash = ?", [token_hash])
