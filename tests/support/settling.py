"""What a coordinator still owes once the load stops, read straight from its database:
for tests that wait for one node or a cluster to settle after faults (kill -9, a pulled
cable) and then check that nothing was lost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Each count that must reach 0: tasks not finished, proofs in no block yet, blocks not
#: under a final anchor.
OWED = {
    "tasks": "SELECT count(*) AS n FROM tasks "
    "WHERE state NOT IN ('completed', 'disputed', 'failed')",
    "proofs": "SELECT count(*) AS n FROM proofs "
    "WHERE seq > (SELECT coalesce(max(last_seq), 0) FROM blocks)",
    "anchors": "SELECT count(*) AS n FROM blocks b LEFT JOIN anchors x ON x.id = b.anchor_id "
    "WHERE x.state IS DISTINCT FROM 'final'",
}


def owed(rows: Callable[[str], list[dict[str, Any]]], *what: str) -> dict[str, int]:
    """The counts of ``what`` (every kind in ``OWED`` if none is named)."""
    return {k: int(rows(OWED[k])[0]["n"]) for k in what or OWED}
