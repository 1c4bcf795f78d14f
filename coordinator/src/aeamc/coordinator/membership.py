"""Which microblock holds a proof, as SQL (schema v7).

A block stores its receipts as the range of proof ``seq`` numbers ``[first_seq, last_seq]``
instead of each proof storing its block: forming a block then writes one row, not one per
(wide) proof. Ranges are disjoint and ordered like the heights, so the block of a proof is
the first block whose ``last_seq`` is not below the proof's seq — one probe of the
``blocks_last_seq`` index — provided that block's range starts at or before the seq. Every
query that needs a proof's block goes through these fragments, so the rule lives here once.
"""

from __future__ import annotations

#: The largest seq already in a block (0 before the first block): a proof whose seq is
#: greater waits for the next block.
LAST_BLOCKED_SEQ = "(SELECT coalesce(max(last_seq), 0) FROM blocks)"


def height_of(seq: str) -> str:
    """A scalar subquery: the height of the block holding proof ``seq``, NULL if none yet."""
    return (
        f"(SELECT bh.height FROM blocks bh WHERE bh.last_seq >= {seq} "  # noqa: S608
        f"AND bh.first_seq <= {seq} ORDER BY bh.last_seq LIMIT 1)"
    )


def block_of(proof: str = "p", block: str = "b") -> str:
    """A join target: ``blocks {block}``, the row of the block holding ``{proof}``."""
    return f"blocks {block} ON {block}.height = {height_of(proof + '.seq')}"


def not_in_block(proof: str = "p") -> str:
    """A condition: ``{proof}`` is not in a block yet."""
    return f"{proof}.seq > {LAST_BLOCKED_SEQ}"
