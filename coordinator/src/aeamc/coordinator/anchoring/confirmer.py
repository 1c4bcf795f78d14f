"""Moving the anchor in flight along: re-fetching its receipts until it is final.

Each round looks at the chain once for the anchor (:func:`observe`), asks
:func:`aeamc.shared.anchoring.decide` for the one next step, and carries it out, storing
the outcome before acting on the chain again. A receipt whose block hash changed is a
reorg; a root found on chain through another transaction is adopted, never sent again.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from aeamc.shared.anchoring import (
    Action,
    Adopt,
    Broadcast,
    Finalize,
    Include,
    Receipt,
    Replace,
    Requeue,
    State,
    Wait,
    YieldTo,
    decide,
    receipt_hashes,
    wants_market,
)

from . import store
from .observe import observe
from .replacement import replace
from .session import Session
from .status import LOGGER

log = logging.getLogger(LOGGER)


async def advance(s: Session, row: dict[str, Any], now: int) -> Action:
    """One step for the live anchor ``row`` at ``now``: the action decided, already done."""
    anchor_id = row["id"]
    txs = await s.db.read(lambda db: store.anchor_txs(db, anchor_id))
    siblings = (
        await s.db.read(lambda db: store.sibling_txs(db, s.target, row["nonce"], anchor_id))
        if row["nonce"] is not None
        else []
    )
    t = store.tracked(row, txs)
    seen = await s.call(
        functools.partial(
            observe,
            s.chain,
            sender=s.wallet.address,
            root=bytes(row["root"]),
            nonce=row["nonce"],
            hashes=list(receipt_hashes(t, row["tx_hash"])),
            current=t.tx_hashes[-1] if t.tx_hashes else None,
            included_at=row["block_number"],
            siblings=[sib["tx_hash"] for sib in siblings],
            confirmations=s.cc.confirmations,
            market=(s.priority_wei(), s.policy.max_fee_per_gas) if wants_market(t) else None,
        )
    )
    action = decide(t, seen, now, s.policy)
    await _apply(s, row, txs, action, now)
    return action


async def _apply(
    s: Session, row: dict[str, Any], txs: list[dict[str, Any]], action: Action, now: int
) -> None:
    anchor_id = row["id"]
    s.status.last_action = f"anchor {anchor_id}: {type(action).__name__}: {action.reason}"
    if isinstance(action, Wait):
        log.debug("anchor %d: %s", anchor_id, action.reason)
    elif isinstance(action, Broadcast):
        await s.broadcast(anchor_id, bytes(txs[-1]["raw"]), action.reason)
    elif isinstance(action, Replace):
        await replace(s, row, txs, action, now)
    elif isinstance(action, Include):
        await s.include(anchor_id, action.receipt, action.reason, now)
    elif isinstance(action, Finalize):
        await s.db.write(lambda db: store.mark_final(db, anchor_id, now, action.reason))
        s.status.count("final")
        log.info(
            "anchor %d final: root %s over %d microblocks, tx %s in block %s, gas used %s",
            anchor_id,
            bytes(row["root"]).hex(),
            row["tree_size"],
            row["tx_hash"],
            row["block_number"],
            row["gas_used"],
        )
    elif isinstance(action, Adopt):
        await _adopt(s, row, action.block_number, now)
    elif isinstance(action, YieldTo):
        await _yield(s, anchor_id, action.receipt, now)
    elif isinstance(action, Requeue):
        n = await s.db.write(lambda db: store.requeue(db, anchor_id, action.state, action.reason))
        s.status.count(str(action.state))
        log.warning(
            "anchor %d %s: %s; %d microblocks go back to the queue",
            anchor_id,
            action.state,
            action.reason,
            n,
        )


async def _adopt(s: Session, row: dict[str, Any], block_number: int, now: int) -> None:
    receipt = await s.lookup(bytes(row["root"]), block_number)
    if receipt is None:
        log.warning(
            "anchor %d: root anchored in block %d but no event found", row["id"], block_number
        )
        return
    s.status.count("adopted")
    await s.include(row["id"], receipt, "root already anchored; adopted", now)


async def _yield(s: Session, anchor_id: int, receipt: Receipt, now: int) -> None:
    winner = await s.db.read(lambda db: store.anchor_of_tx(db, receipt.tx_hash))
    if winner is None:
        return

    def txn(db: Any) -> None:
        store.requeue(db, anchor_id, State.DROPPED, f"anchor {winner} was mined at this nonce")
        store.revive(db, winner, receipt, now, "mined after its reorg; revived")

    await s.db.write(txn)
    s.status.count("revived")
    log.warning("anchor %d was mined after all; anchor %d dropped", winner, anchor_id)
