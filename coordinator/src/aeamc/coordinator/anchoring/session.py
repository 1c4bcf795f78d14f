"""A connected anchoring session, and the chain steps every part of the lifecycle takes.

The sender, the confirmer and fee replacement all act through one :class:`Session`: the
same chain client, wallet, target, storage, chain thread and status. Each step here
stores its outcome before the next chain call, as ``store`` requires.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from aeamc.shared.anchoring import Policy, Receipt

from . import store
from .calls import ChainCalls
from .status import LOGGER, ChainStatus
from .store import Target
from .wallet import TxSigner

if TYPE_CHECKING:
    from ..config import ChainConfig
    from ..groupcommit import GroupCommit
    from .chain import Chain

log = logging.getLogger(LOGGER)
T = TypeVar("T")
GWEI = 10**9


def policy_for(cc: ChainConfig) -> Policy:
    """The lifecycle's limits from the ``[chain]`` settings. A transaction the node lost is
    sent again at most every five polls (and never more than twice a second)."""
    return Policy(
        confirmations=cc.confirmations,
        stuck_after_ms=int(cc.stuck_after_s * 1000),
        rebroadcast_after_ms=int(max(cc.poll_s * 5, 0.5) * 1000),
        max_fee_per_gas=int(cc.max_fee_gwei * GWEI),
    )


@dataclass(frozen=True)
class Session:
    """One chain, contract and wallet the coordinator is connected to, with what acts on it."""

    chain: Chain
    wallet: TxSigner
    target: Target
    db: GroupCommit
    clock: Callable[[], int]
    calls: ChainCalls
    status: ChainStatus
    policy: Policy
    cc: ChainConfig

    async def call(self, fn: Callable[[], T]) -> T:
        """Run blocking chain work on the chain thread, bounded in time."""
        return await self.calls.call(fn)

    def priority_wei(self) -> int:
        """The configured tip per gas in wei; 0 asks the node for its suggestion."""
        return int(self.cc.priority_fee_gwei * GWEI)

    async def broadcast(self, anchor_id: int, raw: bytes, reason: str) -> None:
        """Hand stored signed bytes to the node; an acceptance is stored (``sent``), a
        refusal only counted and shown: the next look at the chain tells what it means."""
        ok, message = await self.call(lambda: self.chain.send_raw(raw))
        if ok:
            now = self.clock()
            await self.db.write(lambda db: store.mark_broadcast(db, anchor_id, now))
            self.status.count("broadcasts")
            log.info("anchor %d: transaction sent (%s)", anchor_id, reason)
        else:
            # Not an error of ours: the next look at the chain tells what it means.
            self.status.count("refused_broadcasts")
            self.status.last_error = f"node refused anchor {anchor_id}: {message}"
            log.warning("anchor %d: the node refused the transaction: %s", anchor_id, message)

    async def include(self, anchor_id: int, receipt: Receipt, reason: str, now: int) -> None:
        """Store the anchor as included where ``receipt`` says; confirmations start there."""
        await self.db.write(lambda db: store.mark_included(db, anchor_id, receipt, now, reason))
        log.info(
            "anchor %d included: %s in block %d, gas used %d (%s)",
            anchor_id,
            receipt.tx_hash,
            receipt.block_number,
            receipt.gas_used,
            reason,
        )

    async def lookup(self, root: bytes, block_number: int) -> Receipt | None:
        """The receipt of whichever transaction anchored ``root`` in ``block_number``."""
        chain = self.chain

        def find() -> Receipt | None:
            event = chain.anchored_event(root, block_number)
            return None if event is None else chain.receipt(event.tx_hash)

        return await self.call(find)
