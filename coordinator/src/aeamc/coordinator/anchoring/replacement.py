"""Replacing a stuck transaction: the same nonce, higher fees, stored before it is sent.

:func:`aeamc.shared.anchoring.decide` chooses when and at what fees
(:func:`~aeamc.shared.anchoring.replacement_fees`); this signs the replacement, stores it
as the anchor's current transaction, and broadcasts it. Every transaction signed for an
anchor shares its nonce, so at most one of them can ever be mined.
"""

from __future__ import annotations

import logging
from typing import Any

from aeamc.shared.anchoring import Replace

from . import store
from .session import Session
from .status import LOGGER

log = logging.getLogger(LOGGER)


async def replace(
    s: Session, row: dict[str, Any], txs: list[dict[str, Any]], action: Replace, now: int
) -> None:
    """Sign ``row``'s anchor again at its nonce with ``action.fees`` and the gas limit of
    its last transaction, store that as the current transaction, then broadcast it."""
    chain, wallet = s.chain, s.wallet
    anchor_id = row["id"]
    last = txs[-1]
    signed = await s.call(
        lambda: wallet.sign_transaction(
            chain.anchor_tx(bytes(row["root"]), row["nonce"], action.fees, last["gas_limit"])
        )
    )
    await s.db.write(
        lambda db: store.add_replacement(
            db, anchor_id, store.Attempt(row["nonce"], action.fees, last["gas_limit"], signed), now
        )
    )
    s.status.count("replacements")
    log.warning(
        "anchor %d: %s; replaced by %s at nonce %d with max fee %d, tip %d wei",
        anchor_id,
        action.reason,
        signed.tx_hash,
        row["nonce"],
        action.fees.max_fee_per_gas,
        action.fees.max_priority_fee_per_gas,
    )
    await s.broadcast(anchor_id, signed.raw, "replacement")
