"""The proofs table group: proofs (with their credit) and spot_checks.

The only writer of these tables; each function runs in the caller's transaction. A
proof's credit moves along ``aeamc.shared.lifecycle.CREDIT`` and a check along
``SPOT_CHECK``; the edges each statement makes are checked here at import, every row by
the database's triggers.
"""

from __future__ import annotations

import json
from typing import Any

from aeamc.shared.lifecycle import (
    CREDIT_LIFECYCLE,
    SPOT_CHECK_LIFECYCLE,
    check_transition,
)

from ..dbtx import Tx, marks
from ..membership import height_of, not_in_block

for _old, _new in (("unverified", "verified"), ("unverified", "void"), ("verified", "void")):
    check_transition(CREDIT_LIFECYCLE, _old, _new)
for _old, _new in (("pending", "passed"), ("pending", "failed"), ("pending", "unanswered")):
    check_transition(SPOT_CHECK_LIFECYCLE, _old, _new)
check_transition(SPOT_CHECK_LIFECYCLE, "passed", "pending")

#: A random spot-check (SPEC §14.2): never replaces a check already scheduled.
#: Its indices stay NULL: they are derived from the block hash when the challenge is sent.
RANDOM_CHECK_SQL = (
    "INSERT INTO spot_checks (task_id, device_id, block_height, indices, state, "
    "next_attempt_at, created_at) VALUES (?,?,?, NULL, 'pending', ?, ?) ON CONFLICT DO NOTHING"
)


#: The random checks of every receipt of a block from devices checked on every task, in
#: one statement (binding 10,000 rows one by one cost three times as much).
def check_all_sql(devices: int) -> str:
    """The statement scheduling a random check of every receipt in a seq range from
    ``devices`` devices (bound as height, now, now, first, last, then each device id)."""
    return (
        "INSERT INTO spot_checks (task_id, device_id, block_height, indices, state, "  # noqa: S608
        "next_attempt_at, created_at) SELECT p.task_id, p.device_id, ?, NULL, 'pending', ?, ? "
        "FROM proofs p WHERE p.seq BETWEEN ? AND ? "
        f"AND p.device_id IN ({marks(devices)}) ON CONFLICT DO NOTHING"
    )


# -- proofs ------------------------------------------------------------------------------


def insert_proofs(db: Tx, rows: list[tuple[Any, ...]], now: int) -> None:
    """Store accepted proofs in order, unverified, in one statement: each row is
    ``(task_id, device_id, pot, signature, output, output_digest, chunks)``."""
    db.executemany(
        "INSERT INTO proofs (task_id, device_id, pot, signature, output, output_digest, "
        "chunks, accepted_at) VALUES (?,?,?,?,?,?,?,?)",
        [(*row, now) for row in rows],
    )


def live_outputs(db: Tx, task_ids: list[str]) -> list[dict[str, Any]]:
    """Per task of ``task_ids``: its state, its replicas, how many proofs are not void
    (``live``), how many distinct outputs they have (``outputs``) and one of them
    (``digest``), in one query."""
    if not task_ids:
        return []
    return list(
        db.query(
            "SELECT t.task_id, t.state, t.replicas, COUNT(p.task_id) AS live, "  # noqa: S608
            "COUNT(DISTINCT p.output_digest) AS outputs, MIN(p.output_digest) AS digest "
            "FROM tasks t LEFT JOIN proofs p ON p.task_id = t.task_id AND p.credit != 'void' "
            f"WHERE t.task_id IN ({marks(len(task_ids))}) GROUP BY t.task_id",
            task_ids,
        )
    )


def verify_credit(db: Tx, task_id: str, device_id: str) -> None:
    """An unverified proof whose check passed becomes verified."""
    db.execute(
        "UPDATE proofs SET credit='verified' WHERE task_id=? AND device_id=? "
        "AND credit='unverified'",
        [task_id, device_id],
    )


def void_credit(db: Tx, task_id: str, device_id: str, *, verified: bool = False) -> bool:
    """Void a proof's credit if unverified (with ``verified``, also if verified); whether
    it was voided."""
    credits = "('unverified','verified')" if verified else "('unverified')"
    cur = db.execute(
        "UPDATE proofs SET credit='void' WHERE task_id=? AND device_id=? "  # noqa: S608
        f"AND credit IN {credits}",
        [task_id, device_id],
    )
    return bool(cur.rowcount == 1)


def delete_unblocked_proofs(db: Tx, device_id: str) -> int:
    """Delete an erased device's proofs not yet in a block; how many."""
    return int(
        db.execute(
            f"DELETE FROM proofs WHERE device_id=? AND {not_in_block('proofs')}",  # noqa: S608
            [device_id],
        ).rowcount
    )


def strip_receipts(db: Tx, device_id: str) -> int:
    """Keep of an erased device's blocked proofs only what receipts need: the signed PoT
    goes and the acceptance time becomes the block's; how many."""
    return int(
        db.execute(
            "UPDATE proofs SET pot='', accepted_at=(SELECT b.timestamp FROM blocks b "  # noqa: S608
            f"WHERE b.height = {height_of('proofs.seq')}) WHERE device_id=?",
            [device_id],
        ).rowcount
    )


# -- spot-checks -------------------------------------------------------------------------


def schedule_dispute_check(
    db: Tx,
    *,
    task_id: str,
    device_id: str,
    height: int,
    indices: list[int],
    now: int,
) -> None:
    """Queue a check of a disputed replica on ``indices``: it overrides a pending or
    passed random check, never a concluded failure or silence."""
    db.execute(
        "INSERT INTO spot_checks (task_id, device_id, block_height, indices, state, "
        "next_attempt_at, created_at) VALUES (?,?,?,?, 'pending', ?, ?) "
        "ON CONFLICT (task_id, device_id) DO UPDATE SET indices=excluded.indices, "
        "state='pending', attempts=0, next_attempt_at=excluded.next_attempt_at "
        "WHERE spot_checks.state IN ('pending','passed')",
        [task_id, device_id, height, json.dumps(indices), now, now],
    )


def check_every_receipt(
    db: Tx,
    *,
    height: int,
    now: int,
    first: int,
    last: int,
    device_ids: list[str],
) -> None:
    """Schedule a random check of every receipt in seqs ``first``..``last`` from
    ``device_ids`` (one statement; a check already scheduled stays)."""
    if device_ids:
        db.execute(check_all_sql(len(device_ids)), [height, now, now, first, last, *device_ids])


def check_drawn(db: Tx, drawn: list[tuple[Any, ...]]) -> None:
    """Schedule the random checks drawn, each (task, device, height, now, now); a check
    already scheduled stays."""
    db.executemany(RANDOM_CHECK_SQL, drawn)


def conclude_check(
    db: Tx,
    *,
    task_id: str,
    device_id: str,
    verdict: str,
    detail: str,
    now: int,
    reexecuted: int,
) -> bool:
    """Record a pending check's verdict; False when it was no longer pending."""
    check_transition(SPOT_CHECK_LIFECYCLE, "pending", verdict)
    cur = db.execute(
        "UPDATE spot_checks SET state=?, detail=?, completed_at=?, reexecuted_chunks=? "
        "WHERE task_id=? AND device_id=? AND state='pending'",
        [verdict, detail, now, reexecuted, task_id, device_id],
    )
    return bool(cur.rowcount == 1)


def retry_check(
    db: Tx,
    *,
    task_id: str,
    device_id: str,
    attempts: int,
    next_at: int,
    why: str,
) -> None:
    """A pending check that failed to conclude is tried again at ``next_at``."""
    db.execute(
        "UPDATE spot_checks SET attempts=?, next_attempt_at=?, detail=? "
        "WHERE task_id=? AND device_id=? AND state='pending'",
        [attempts, next_at, why, task_id, device_id],
    )


def defer_check(db: Tx, *, task_id: str, device_id: str, next_at: int, why: str) -> None:
    """A pending check that cannot conclude for a reason that is not the device's is
    tried again at ``next_at``, its attempts unchanged (none is used up)."""
    db.execute(
        "UPDATE spot_checks SET next_attempt_at=?, detail=? "
        "WHERE task_id=? AND device_id=? AND state='pending'",
        [next_at, why, task_id, device_id],
    )


def delete_device_checks(db: Tx, device_id: str) -> int:
    """Delete every spot-check of an erased device; how many."""
    return int(db.execute("DELETE FROM spot_checks WHERE device_id=?", [device_id]).rowcount)
