"""The leaders table: each term of leadership of a cluster, in order (schema v14)."""

from __future__ import annotations

from typing import Any

from ..dbtx import Tx


def begin_term(db: Tx, node: str, relay_url: str, now: int) -> int:
    """Record that ``node`` leads from ``now`` on, relayed to at ``relay_url``; the new
    term's number (one past the last: terms are written by leaders only, one at a time)."""
    row = db.execute("SELECT coalesce(max(term), 0) FROM leaders").fetchone()
    term = int(row[0]) + 1
    db.execute(
        "INSERT INTO leaders (term, node, relay_url, started_at) VALUES (?,?,?,?)",
        [term, node, relay_url, now],
    )
    return term


def current(db: Tx) -> dict[str, Any] | None:
    """The latest term (its leader may have died since: the lock says who leads now)."""
    return next(
        iter(
            db.query(
                "SELECT term, node, relay_url, started_at FROM leaders ORDER BY term DESC LIMIT 1"
            )
        ),
        None,
    )


def history(db: Tx, limit: int = 20) -> list[dict[str, Any]]:
    """The last ``limit`` terms, newest first."""
    return list(
        db.query(
            "SELECT term, node, relay_url, started_at FROM leaders ORDER BY term DESC LIMIT ?",
            [limit],
        )
    )
