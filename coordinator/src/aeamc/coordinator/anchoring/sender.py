"""Starting an anchor: the root of the blocks waiting, at a nonce planned from the chain.

Only the sender creates anchors, and only when none is in flight, so one nonce sequence
has one writer. The nonce comes from the chain's transaction counts
(:func:`~aeamc.shared.anchoring.plan_nonce`): a reorged anchor's unused nonce is reused,
outbidding its fees, so the old and the new root exclude each other. The intent — root,
leaves, nonce, fees and the signed transaction — is stored, and the next nonce with it,
before the transaction reaches a node.
"""

from __future__ import annotations

import logging
from typing import Any

from aeamc.shared import merkle
from aeamc.shared.anchoring import (
    Receipt,
    anchor_due,
    contested_fees,
    fees_for_new_anchor,
    final_height,
    plan_nonce,
)

from . import store
from .session import Session
from .status import LOGGER

log = logging.getLogger(LOGGER)


class Sender:
    """Starts at most one anchor per ``chain.anchor_interval_s`` (at once after a reorg)."""

    def __init__(self, anchor_interval_s: float) -> None:
        self.interval_ms = int(anchor_interval_s * 1000)
        #: When the last root was computed (ms); ``None``: the next round may start one.
        self.last_created_ms: int | None = None

    async def round(self, s: Session, now: int) -> None:
        """With no anchor in flight: start one if it is due and blocks are waiting, or
        revive a reorged anchor whose transaction was mined after all."""
        reorged = await s.db.read(lambda db: store.unresolved_reorged(db, s.target))
        if anchor_due(now, self.last_created_ms, self.interval_ms, reorged_waiting=bool(reorged)):
            await self._start(s, now, reorged)

    async def _start(self, s: Session, now: int, reorged: list[dict[str, Any]]) -> None:
        chain, wallet, target = s.chain, s.wallet, s.target
        blocks = await s.db.read(store.unanchored_blocks)
        if not blocks:
            return
        confirmations = s.cc.confirmations

        def counts() -> tuple[int, int, int]:
            head = chain.head()
            return (
                chain.tx_count(wallet.address),
                chain.tx_count(wallet.address, "pending"),
                chain.tx_count(wallet.address, final_height(head, confirmations)),
            )

        latest, pending, final = await s.call(counts)
        plan = plan_nonce(latest, pending, final, [r["nonce"] for r in reorged])
        for r in reorged:
            if r["nonce"] in plan.check and await _revive_if_mined(s, r, now):
                return
        if plan.nonce is None:
            log.info("not anchoring yet: %s", plan.reason)
            return
        heights = [h for h, _ in blocks]
        root = merkle.root([block_hash for _, block_hash in blocks])
        self.last_created_ms = now
        anchored, _, block_number = await s.call(lambda: chain.verify_anchor(root))
        if anchored:
            # Never send a root twice: the contract would revert AlreadyAnchored.
            receipt = await s.lookup(root, block_number)
            if receipt is not None:
                anchor_id = await s.db.write(
                    lambda db: store.create_adopted(
                        db, target, root=root, heights=heights, receipt=receipt, now=now
                    )
                )
                s.status.count("adopted")
                log.warning(
                    "root %s is already on chain: adopted as anchor %d", root.hex(), anchor_id
                )
            return
        from .chain import AnchorRefused

        try:
            gas = await s.call(lambda: chain.preflight(root, wallet.address))
        except AnchorRefused as exc:
            s.status.fail(str(exc), rpc=False, connected=True)
            s.status.state = "refused"
            return
        nonce = plan.nonce
        contested = contested_fees(((r["nonce"], r["fees"]) for r in reorged), nonce)
        market = await s.call(lambda: chain.market_fees(s.priority_wei(), s.policy.max_fee_per_gas))
        fees = fees_for_new_anchor(market, s.policy.max_fee_per_gas, contested)
        signed = await s.call(
            lambda: wallet.sign_transaction(chain.anchor_tx(root, nonce, fees, gas))
        )
        anchor_id = await s.db.write(
            lambda db: store.create_intent(
                db,
                target,
                root=root,
                heights=heights,
                attempt=store.Attempt(nonce, fees, gas, signed),
                now=now,
            )
        )
        s.status.count("anchors")
        log.info(
            "anchor %d: root %s over microblocks %d..%d (%d), nonce %d, %s",
            anchor_id,
            root.hex(),
            heights[0],
            heights[-1],
            len(heights),
            nonce,
            plan.reason,
        )
        await s.broadcast(anchor_id, signed.raw, "new anchor")


async def _revive_if_mined(s: Session, reorged: dict[str, Any], now: int) -> bool:
    """Whether a transaction of the reorged anchor is in a canonical block after all; if
    so the anchor is stored as included again and owns its blocks once more."""
    chain = s.chain

    def find() -> Receipt | None:
        for tx_hash in reorged["tx_hashes"]:
            r = chain.receipt(tx_hash)
            if r is not None and r.status == 1 and chain.block_hash(r.block_number) == r.block_hash:
                return r
        return None

    receipt = await s.call(find)
    if receipt is None:
        return False
    await s.db.write(
        lambda db: store.revive(db, reorged["id"], receipt, now, "mined after its reorg; revived")
    )
    s.status.count("revived")
    log.warning("reorged anchor %d was mined after all: revived", reorged["id"])
    return True
