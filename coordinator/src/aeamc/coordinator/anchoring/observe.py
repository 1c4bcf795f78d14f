"""What the chain says about one anchor, gathered in one pass for :func:`decide`.

Runs on the chain thread (every call blocks). It only reads; what to make of the
answers is :func:`aeamc.shared.anchoring.decide`'s business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aeamc.shared.anchoring import Seen, final_height

if TYPE_CHECKING:
    from .chain import Chain


def observe(
    chain: Chain,
    *,
    sender: str,
    root: bytes,
    nonce: int | None,
    hashes: list[str],
    current: str | None,
    included_at: int | None,
    siblings: list[str],
    confirmations: int,
    market: tuple[int, int] | None,
) -> Seen:
    """Everything :func:`decide` needs about one anchor, in one pass over the chain.

    The order does not matter for safety: a nonce counts as taken by someone else only
    once that is final, and a receipt only counts when its block is canonical.
    """
    head = chain.head()
    nonce_used = nonce_used_final = False
    if nonce is not None:
        nonce_used = chain.tx_count(sender) > nonce
        if nonce_used:
            nonce_used_final = chain.tx_count(sender, final_height(head, confirmations)) > nonce
    receipt = None
    for tx_hash in reversed(hashes):
        receipt = chain.receipt(tx_hash)
        if receipt is not None:
            break
    canonical = receipt is None or chain.block_hash(receipt.block_number) == receipt.block_hash
    included_hash_now = chain.block_hash(included_at) if included_at is not None else None
    anchored, _, block_number = chain.verify_anchor(root)
    sibling = None
    for tx_hash in siblings:
        r = chain.receipt(tx_hash)
        if r is not None and r.status == 1 and chain.block_hash(r.block_number) == r.block_hash:
            sibling = r
            break
    return Seen(
        head=head,
        receipt=receipt,
        receipt_canonical=canonical,
        included_hash_now=included_hash_now,
        root_anchored_block=block_number if anchored else None,
        nonce_used=nonce_used,
        nonce_used_final=nonce_used_final,
        known=chain.knows(current) if current is not None and receipt is None else True,
        sibling_receipt=sibling,
        market=None if market is None else chain.market_fees(*market),
    )
