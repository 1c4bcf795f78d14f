"""The anchoring lifecycle (SPEC §7) as pure decisions: no chain, clock or storage here.

An anchor is one transaction calling ``anchor(root)`` for the Merkle root of a run of
microblock hashes. Its life::

    pending ──▶ sent ──▶ included ──▶ final
       │          │          │
       └──────────┴──────────┴──▶ reorged | dropped | failed   (blocks back to the queue)

- ``pending``: the intent (root, leaves, nonce, fees, signed transaction) is stored but may
  never have reached a node. Crash-safety rests on storing it *before* broadcasting.
- ``sent``: a node accepted one of its signed transactions (all share one nonce).
- ``included``: a canonical block holds a successful receipt for one of them.
- ``final``: that block has ``confirmations`` blocks on top (``head - block >= confirmations``).
- ``reorged``: the block left the canonical chain and the receipt with it.
- ``dropped``: the nonce was consumed, in a final block, by a transaction that is not ours.
- ``failed``: a transaction reverted and the root is not on chain (e.g. the contract is paused).

The shell (the coordinator) gathers a :class:`Seen` snapshot of the chain, calls
:func:`decide`, and carries out the single :class:`Action` it gets back, storing the
outcome before acting on the chain again. Invariants it relies on:

1. At most one of the transactions signed at a nonce can ever be mined, so every
   replacement keeps the nonce, and the next anchor after a reorg reuses the reorged
   anchor's nonce while that nonce is unused (:func:`plan_nonce`). Whatever the network
   does, at most one root covering a given block can land.
2. A root already on chain is adopted, never sent again (the contract would revert
   ``AlreadyAnchored``): the root check comes before any broadcast decision.
3. Blocks go back to the queue only when the anchor's transactions can no longer land
   at their nonce, or its block left the canonical chain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

#: Replacement fee bump: at least +12.5 % on both EIP-1559 fee fields (9/8).
BUMP_NUMERATOR, BUMP_DENOMINATOR = 9, 8


class State(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    INCLUDED = "included"
    FINAL = "final"
    REORGED = "reorged"
    DROPPED = "dropped"
    FAILED = "failed"
    #: The chain it was sent to is gone (the embedded chain restarted, or another contract).
    ABANDONED = "abandoned"


#: States in which an anchor still owns its blocks and may change.
LIVE = frozenset({State.PENDING, State.SENT, State.INCLUDED})
#: States whose blocks went back to the queue.
REQUEUED = frozenset({State.REORGED, State.DROPPED, State.FAILED, State.ABANDONED})


@dataclass(frozen=True)
class Fees:
    """EIP-1559 fee caps of one signed transaction, in wei."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int


@dataclass(frozen=True)
class Policy:
    confirmations: int
    #: A sent transaction not included this long after its first broadcast is replaced.
    stuck_after_ms: int
    #: A transaction the node does not know is broadcast again at most this often.
    rebroadcast_after_ms: int
    #: No transaction is ever signed with a higher ``maxFeePerGas``.
    max_fee_per_gas: int


@dataclass(frozen=True)
class Receipt:
    tx_hash: str
    block_number: int
    block_hash: bytes
    status: int
    gas_used: int = 0
    effective_gas_price: int = 0


@dataclass(frozen=True)
class Inclusion:
    tx_hash: str
    block_number: int
    block_hash: bytes


@dataclass(frozen=True)
class Tracked:
    """An anchor as the lifecycle sees it (the shell's stored row, reduced)."""

    state: State
    #: ``None`` only for an anchor adopted from the chain without a transaction of ours.
    nonce: int | None
    fees: Fees | None
    #: Every transaction signed for this anchor, oldest first; the last is the current one.
    tx_hashes: tuple[str, ...] = ()
    #: When the current transaction was first and last handed to a node (ms).
    first_broadcast_ms: int | None = None
    last_broadcast_ms: int | None = None
    included: Inclusion | None = None


@dataclass(frozen=True)
class Seen:
    """What the chain says now, gathered by the shell in one pass."""

    head: int
    #: A receipt of one of the anchor's transactions (or of its included one), if any.
    receipt: Receipt | None = None
    #: Whether the receipt's block is the canonical block at its height.
    receipt_canonical: bool = True
    #: Hash of the canonical block at the stored inclusion height (``None``: above the head).
    included_hash_now: bytes | None = None
    #: ``verifyAnchor(root)``: the anchoring block's number, or ``None`` if not anchored.
    root_anchored_block: int | None = None
    #: The sender's transaction count at the head is above the anchor's nonce.
    nonce_used: bool = False
    #: ... and already at the last final block (head - confirmations).
    nonce_used_final: bool = False
    #: The node knows the current transaction (mempool or chain).
    known: bool = True
    #: A canonical successful receipt of an *earlier* anchor's transaction at the same nonce.
    sibling_receipt: Receipt | None = None
    #: What a new transaction would pay now.
    market: Fees | None = None


# -- actions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wait:
    reason: str


@dataclass(frozen=True)
class Broadcast:
    """Hand the current signed transaction to the node (again); it is stored already."""

    reason: str


@dataclass(frozen=True)
class Replace:
    """Sign a new transaction at the same nonce with ``fees``, store it, then broadcast it."""

    fees: Fees
    reason: str


@dataclass(frozen=True)
class Include:
    receipt: Receipt
    reason: str


@dataclass(frozen=True)
class Finalize:
    reason: str


@dataclass(frozen=True)
class Adopt:
    """The root is on chain through a transaction we do not track: look it up, include it."""

    block_number: int
    reason: str


@dataclass(frozen=True)
class YieldTo:
    """An earlier anchor's transaction at this nonce was mined: revive it, drop this one."""

    receipt: Receipt
    reason: str


@dataclass(frozen=True)
class Requeue:
    state: State
    reason: str


Action = Wait | Broadcast | Replace | Include | Finalize | Adopt | YieldTo | Requeue


# -- decisions --------------------------------------------------------------------------------


def is_final(head: int, block_number: int, confirmations: int) -> bool:
    """SPEC §7: anchored once the transaction has ``confirmations`` blocks on top."""
    return head - block_number >= confirmations


def decide(t: Tracked, seen: Seen, now_ms: int, policy: Policy) -> Action:
    """The one next step for anchor ``t`` given the chain ``seen`` at ``now_ms``."""
    if t.state not in LIVE:
        return Wait(f"{t.state} is terminal")
    r = seen.receipt if seen.receipt is not None and seen.receipt_canonical else None

    if t.state is State.INCLUDED:
        inc = t.included
        if inc is None:  # a stored row that says included must say where
            raise ValueError("an included anchor needs its inclusion")
        if (
            r is not None
            and r.block_number == inc.block_number
            and r.block_hash != seen.included_hash_now
        ):
            r = None  # the receipt names a block that is no longer canonical at its height
        if (
            r is not None
            and r.status == 1
            and r.block_hash == inc.block_hash
            and seen.included_hash_now == inc.block_hash
        ):
            depth = seen.head - inc.block_number
            if is_final(seen.head, inc.block_number, policy.confirmations):
                return Finalize(f"{depth} blocks on top of block {inc.block_number}")
            return Wait(f"{depth}/{policy.confirmations} confirmations")
        if r is not None and r.status == 1:
            return Include(r, f"re-included in block {r.block_number} after a reorg")
        if seen.root_anchored_block is not None:
            return Adopt(seen.root_anchored_block, "root anchored by another transaction")
        if seen.sibling_receipt is not None:
            return YieldTo(seen.sibling_receipt, "an earlier anchor at this nonce was mined")
        if seen.included_hash_now != inc.block_hash:
            return Requeue(State.REORGED, f"block {inc.block_number} left the canonical chain")
        return Requeue(State.REORGED, f"the receipt of {inc.tx_hash} vanished")

    # pending or sent
    if r is not None:
        if r.status == 1:
            return Include(r, f"mined in block {r.block_number}")
        if seen.root_anchored_block is not None:
            # Typically AlreadyAnchored: the root landed through another transaction.
            return Adopt(seen.root_anchored_block, "reverted, but the root is anchored")
        return Requeue(State.FAILED, f"{r.tx_hash} reverted and the root is not anchored")
    if seen.root_anchored_block is not None:
        return Adopt(seen.root_anchored_block, "root anchored by a transaction not tracked")
    if seen.sibling_receipt is not None:
        return YieldTo(seen.sibling_receipt, "an earlier anchor at this nonce was mined")
    if seen.nonce_used:
        if seen.nonce_used_final:
            return Requeue(State.DROPPED, f"nonce {t.nonce} was used by another transaction")
        return Wait(f"nonce {t.nonce} used by a transaction not ours; waiting for finality")
    if t.state is State.PENDING or t.first_broadcast_ms is None:
        return Broadcast("stored but not yet accepted by a node")
    if now_ms - t.first_broadcast_ms >= policy.stuck_after_ms and t.fees is not None:
        fees = replacement_fees(t.fees, seen.market, policy.max_fee_per_gas)
        if fees is not None:
            return Replace(fees, f"not included {now_ms - t.first_broadcast_ms} ms after sending")
    last = t.last_broadcast_ms if t.last_broadcast_ms is not None else t.first_broadcast_ms
    if not seen.known and now_ms - last >= policy.rebroadcast_after_ms:
        return Broadcast("the node does not know the transaction")
    return Wait("waiting for inclusion")


# -- fees and nonces --------------------------------------------------------------------------


def _bumped(value: int) -> int:
    return -(-value * BUMP_NUMERATOR // BUMP_DENOMINATOR)  # ceil(value * 1.125)


def initial_fees(base_fee: int, priority_fee: int, cap: int) -> Fees:
    """Fees of a first transaction: ``2 × base fee + tip`` survives six full blocks of base
    fee growth (+12.5 % each) before the transaction stops being includable."""
    max_fee = min(2 * base_fee + priority_fee, cap)
    return Fees(max_fee, min(priority_fee, max_fee))


def replacement_fees(current: Fees, market: Fees | None, cap: int) -> Fees | None:
    """Fees for a replacement at the same nonce: at least +12.5 % on both fields (nodes
    refuse smaller bumps), at least the market's, never above ``cap``; ``None`` when the
    cap leaves no valid bump."""
    floor = Fees(_bumped(current.max_fee_per_gas), _bumped(current.max_priority_fee_per_gas))
    want_max = max(floor.max_fee_per_gas, market.max_fee_per_gas if market else 0)
    want_tip = max(floor.max_priority_fee_per_gas, market.max_priority_fee_per_gas if market else 0)
    max_fee = min(want_max, cap)
    tip = min(want_tip, max_fee)
    if max_fee < floor.max_fee_per_gas or tip < floor.max_priority_fee_per_gas:
        return None
    return Fees(max_fee, tip)


def fees_for_new_anchor(market: Fees, cap: int, contested: Fees | None) -> Fees:
    """A new anchor reusing a reorged anchor's nonce must outbid it, in case the network
    put the old transaction back into its mempool."""
    if contested is None:
        return Fees(min(market.max_fee_per_gas, cap), min(market.max_priority_fee_per_gas, cap))
    bumped = replacement_fees(contested, market, cap)
    if bumped is None:  # cannot outbid within the cap: the cap is the best we can do
        return Fees(cap, min(max(market.max_priority_fee_per_gas, 0), cap))
    return bumped


@dataclass(frozen=True)
class NoncePlan:
    """How to start the next anchor."""

    #: The nonce to sign with, or ``None``: start no anchor now.
    nonce: int | None
    #: Nonces of reorged anchors now used in a final block: the shell looks for their
    #: receipts first, and revives an anchor whose transaction was mined after all.
    check: tuple[int, ...]
    reason: str


def plan_nonce(
    latest_count: int, pending_count: int, final_count: int, reorged: Iterable[int]
) -> NoncePlan:
    """Nonce of a new anchor, given the sender's transaction counts at the head
    (``latest_count``), including the node's mempool (``pending_count``) and at the last
    final block (``final_count``), and the nonces of reorged anchors not yet settled.

    A reorged anchor's nonce that is still unused is reused, so the old and the new root
    exclude each other: the network may put the old transaction back into a block. A
    reorged nonce used since must first be final, and then be checked for our receipt;
    only then are its blocks free for good.
    """
    nonces = sorted(set(reorged))
    check = tuple(n for n in nonces if n < final_count)
    recent = [n for n in nonces if final_count <= n < latest_count]
    if recent:
        return NoncePlan(None, check, f"nonce {recent[0]} was used recently; waiting for finality")
    if latest_count in nonces:
        return NoncePlan(latest_count, check, f"reusing nonce {latest_count} of a reorged anchor")
    nonce = max(latest_count, pending_count)
    return NoncePlan(nonce, check, f"next nonce {nonce}")


# -- rounds: what the shell asks around decide() -----------------------------------------------


def final_height(head: int, confirmations: int) -> int:
    """The highest block no reorg within ``confirmations`` can remove (never below 0):
    transaction counts read there are final."""
    return max(head - confirmations, 0)


def anchor_due(
    now_ms: int, last_created_ms: int | None, interval_ms: int, *, reorged_waiting: bool
) -> bool:
    """Whether to start a new anchor now that none is in flight: once per interval, and at
    once while a reorg's blocks wait — they were anchored once already, and a reorged
    transaction mined after all must be found without delay."""
    if reorged_waiting or last_created_ms is None:
        return True
    return now_ms - last_created_ms >= interval_ms


def receipt_hashes(t: Tracked, current_tx_hash: str) -> tuple[str, ...]:
    """The transactions whose receipts tell where anchor ``t`` is, oldest first: every one
    signed for it, and the anchor's current transaction when it is not one of ours (an
    anchor adopted from the chain)."""
    if current_tx_hash in t.tx_hashes:
        return t.tx_hashes
    return (*t.tx_hashes, current_tx_hash)


def wants_market(t: Tracked) -> bool:
    """Whether :func:`decide` may need today's fees for ``t``: only a sent transaction can
    be stuck and replaced, so no fee query is made for any other state."""
    return t.state is State.SENT


def mine_for_confirmations(embedded: bool, live: State | None) -> bool:
    """Whether to mine one empty block this round: the in-process chain only mines on
    transactions, so an included anchor would never gain confirmations otherwise, and
    nothing grows while nothing waits."""
    return embedded and live is State.INCLUDED


def contested_fees(reorged: Iterable[tuple[int | None, Fees | None]], nonce: int) -> Fees | None:
    """Fees of the first reorged anchor at ``nonce`` (pairs of nonce and last fees): a new
    anchor reusing that nonce must outbid them; ``None`` when none is there."""
    return next((fees for n, fees in reorged if n == nonce), None)


def stored_nonce_stale(stored: int | None, pending_count: int) -> bool:
    """Whether the stored next nonce disagrees with the chain's pending count at start.
    The chain is the truth (stored anchors carry their own nonces): the shell only says so."""
    return stored is not None and stored != pending_count


def not_ready_retry_s(previous_s: float, poll_s: float, cap_s: float = 60.0) -> float:
    """Seconds before the next attempt when anchoring cannot run as configured: doubling
    from ``poll_s`` up to ``cap_s``, so a misconfiguration is neither hammered nor forgotten."""
    return min(max(previous_s * 2, poll_s), cap_s)


def age_s(now_ms: int, then_ms: int | None) -> int | None:
    """Whole seconds from ``then_ms`` to ``now_ms`` (never negative); ``None`` if never."""
    return None if then_ms is None else max(0, (now_ms - then_ms) // 1000)
