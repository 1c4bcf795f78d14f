"""The blocks table: microblocks as formed (their anchoring columns are written by
``anchoring/store.py``, which owns anchoring)."""

from __future__ import annotations

from ..dbtx import Tx


def insert_block(
    db: Tx,
    *,
    height: int,
    block_hash: bytes,
    previous_hash: bytes,
    timestamp: int,
    receipt_count: int,
    header: bytes,
    payload: bytes,
    first_seq: int,
    last_seq: int,
) -> None:
    """Append block ``height`` holding the receipts of proofs ``first_seq``..``last_seq``
    (its height and hash are unique, so it is never written twice)."""
    db.execute(
        "INSERT INTO blocks (height, hash, previous_hash, timestamp, receipt_count, "
        "header, payload, first_seq, last_seq) VALUES (?,?,?,?,?,?,?,?,?)",
        [
            height,
            block_hash,
            previous_hash,
            timestamp,
            receipt_count,
            header,
            payload,
            first_seq,
            last_seq,
        ],
    )
