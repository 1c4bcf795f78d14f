"""The pure anchoring lifecycle: every decision from every state, fee bumps and nonces."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aeamc.shared.anchoring import (
    LIVE,
    Adopt,
    Broadcast,
    Fees,
    Finalize,
    Include,
    Inclusion,
    NoncePlan,
    Policy,
    Receipt,
    Replace,
    Requeue,
    Seen,
    State,
    Tracked,
    Wait,
    YieldTo,
    decide,
    fees_for_new_anchor,
    initial_fees,
    is_final,
    plan_nonce,
    replacement_fees,
)

GWEI = 10**9
POLICY = Policy(
    confirmations=3, stuck_after_ms=60_000, rebroadcast_after_ms=5_000, max_fee_per_gas=100 * GWEI
)
FEES = Fees(10 * GWEI, 1 * GWEI)
MARKET = Fees(8 * GWEI, 1 * GWEI)
H_A, H_B, H_OTHER = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32
NOW = 1_000_000


def receipt(
    status: int = 1, block: int = 100, block_hash: bytes = H_A, tx: str = "0x01"
) -> Receipt:
    return Receipt(tx, block, block_hash, status, 50_576)


PENDING = Tracked(State.PENDING, 7, FEES, ("0x01",))
SENT = Tracked(
    State.SENT, 7, FEES, ("0x01",), first_broadcast_ms=NOW - 1_000, last_broadcast_ms=NOW - 1_000
)
STUCK = replace(SENT, first_broadcast_ms=NOW - 61_000, last_broadcast_ms=NOW - 61_000)
INCLUDED = Tracked(
    State.INCLUDED,
    7,
    FEES,
    ("0x01",),
    first_broadcast_ms=NOW - 5_000,
    included=Inclusion("0x01", 100, H_A),
)
SEEN = Seen(head=100, market=MARKET)
AT_A = Seen(head=101, receipt=receipt(), included_hash_now=H_A)

CASES: list[tuple[str, Tracked, Seen, type, str]] = [
    # pending: the intent is stored; what the chain says decides whether to send it
    ("pending, nothing on chain", PENDING, SEEN, Broadcast, "not yet accepted"),
    (
        "pending, already mined (crash after send)",
        PENDING,
        replace(SEEN, receipt=receipt()),
        Include,
        "mined",
    ),
    (
        "pending, root landed elsewhere",
        PENDING,
        replace(SEEN, root_anchored_block=90),
        Adopt,
        "not tracked",
    ),
    ("pending, nonce used, not final", PENDING, replace(SEEN, nonce_used=True), Wait, "finality"),
    (
        "pending, nonce used by others, final",
        PENDING,
        replace(SEEN, nonce_used=True, nonce_used_final=True),
        Requeue,
        "used by another",
    ),
    (
        "pending, a sibling was mined",
        PENDING,
        replace(SEEN, sibling_receipt=receipt(tx="0x09")),
        YieldTo,
        "earlier",
    ),
    # sent
    ("sent, waiting", SENT, SEEN, Wait, "inclusion"),
    ("sent, mined", SENT, replace(SEEN, receipt=receipt()), Include, "mined in block 100"),
    ("sent, node forgot it, recently sent", SENT, replace(SEEN, known=False), Wait, "inclusion"),
    (
        "sent, node forgot it",
        replace(SENT, last_broadcast_ms=NOW - 6_000),
        replace(SEEN, known=False),
        Broadcast,
        "does not know",
    ),
    ("sent, stuck", STUCK, SEEN, Replace, "not included"),
    (
        "sent, stuck but root anchored",
        STUCK,
        replace(SEEN, root_anchored_block=99),
        Adopt,
        "not tracked",
    ),
    (
        "sent, reverted, root anchored (AlreadyAnchored)",
        SENT,
        replace(SEEN, receipt=receipt(status=0), root_anchored_block=99),
        Adopt,
        "reverted",
    ),
    (
        "sent, reverted (paused)",
        SENT,
        replace(SEEN, receipt=receipt(status=0)),
        Requeue,
        "reverted",
    ),
    (
        "sent, receipt in a non-canonical block",
        SENT,
        replace(SEEN, receipt=receipt(), receipt_canonical=False),
        Wait,
        "inclusion",
    ),
    (
        "replacement stored, not broadcast",
        replace(SENT, first_broadcast_ms=None),
        SEEN,
        Broadcast,
        "not yet",
    ),
    # included
    ("included, 1 deep", INCLUDED, AT_A, Wait, "1/3"),
    ("included, 3 deep", INCLUDED, replace(AT_A, head=103), Finalize, "3 blocks on top"),
    (
        "included, the receipt says reverted",
        INCLUDED,
        replace(AT_A, head=103, receipt=receipt(status=0)),
        Requeue,
        "vanished",
    ),
    (
        "included, moved by a reorg",
        INCLUDED,
        replace(AT_A, receipt=receipt(block=101, block_hash=H_B), included_hash_now=H_OTHER),
        Include,
        "re-included",
    ),
    (
        "included, block replaced",
        INCLUDED,
        replace(AT_A, receipt=None, included_hash_now=H_OTHER),
        Requeue,
        "left the canonical chain",
    ),
    ("included, receipt vanished", INCLUDED, replace(AT_A, receipt=None), Requeue, "vanished"),
    (
        "included, chain shorter than the block",
        INCLUDED,
        Seen(head=99, included_hash_now=None),
        Requeue,
        "left the canonical chain",
    ),
    (
        "included, stale receipt, hash changed",
        INCLUDED,
        replace(AT_A, included_hash_now=H_OTHER),
        Requeue,
        "left",
    ),
    (
        "included, gone but root anchored",
        INCLUDED,
        replace(AT_A, receipt=None, included_hash_now=H_OTHER, root_anchored_block=102),
        Adopt,
        "another transaction",
    ),
    (
        "included, gone, sibling mined",
        INCLUDED,
        replace(AT_A, receipt=None, sibling_receipt=receipt(tx="0x09", block_hash=H_B)),
        YieldTo,
        "earlier",
    ),
]


@pytest.mark.parametrize(
    ("name", "tracked", "seen", "kind", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_decision_table(name: str, tracked: Tracked, seen: Seen, kind: type, reason: str) -> None:
    action = decide(tracked, seen, NOW, POLICY)
    assert isinstance(action, kind), action
    assert reason in action.reason


def test_requeue_states() -> None:
    assert decide(INCLUDED, replace(AT_A, receipt=None), NOW, POLICY) == Requeue(
        State.REORGED, "the receipt of 0x01 vanished"
    )
    dropped = decide(PENDING, replace(SEEN, nonce_used=True, nonce_used_final=True), NOW, POLICY)
    assert isinstance(dropped, Requeue) and dropped.state is State.DROPPED
    failed = decide(SENT, replace(SEEN, receipt=receipt(status=0)), NOW, POLICY)
    assert isinstance(failed, Requeue) and failed.state is State.FAILED


@pytest.mark.parametrize("state", sorted(set(State) - LIVE))
def test_terminal_states_never_act(state: State) -> None:
    assert isinstance(decide(replace(SENT, state=state), SEEN, NOW, POLICY), Wait)


def test_included_needs_its_inclusion() -> None:
    with pytest.raises(ValueError, match="inclusion"):
        decide(replace(INCLUDED, included=None), AT_A, NOW, POLICY)


def test_stuck_at_the_fee_cap_keeps_the_transaction_alive() -> None:
    capped = replace(STUCK, fees=Fees(100 * GWEI, 2 * GWEI))
    assert isinstance(decide(capped, SEEN, NOW, POLICY), Wait)
    forgotten = replace(capped, last_broadcast_ms=NOW - 10_000)
    assert isinstance(decide(forgotten, replace(SEEN, known=False), NOW, POLICY), Broadcast)


def test_replacement_outbids_by_at_least_an_eighth() -> None:
    action = decide(STUCK, SEEN, NOW, POLICY)
    assert isinstance(action, Replace)
    assert action.fees == Fees(11_250_000_000, 1_125_000_000)


def test_replacement_follows_a_rising_market() -> None:
    market = Fees(40 * GWEI, 3 * GWEI)
    assert replacement_fees(FEES, market, 100 * GWEI) == market
    assert replacement_fees(FEES, Fees(400 * GWEI, 3 * GWEI), 100 * GWEI) == Fees(
        100 * GWEI, 3 * GWEI
    )
    assert replacement_fees(Fees(95 * GWEI, GWEI), None, 100 * GWEI) is None
    # A tip that cannot rise by an eighth under the cap is no replacement either.
    assert replacement_fees(Fees(90 * GWEI, 90 * GWEI), None, 100 * GWEI) is None
    assert replacement_fees(Fees(7, 7), None, 100) == Fees(8, 8)  # rounded up, never down


fee = st.integers(min_value=0, max_value=10**13)


@given(max_fee=fee, tip=fee, market_max=fee, market_tip=fee, cap=st.integers(1, 10**13))
def test_replacement_fee_properties(
    max_fee: int, tip: int, market_max: int, market_tip: int, cap: int
) -> None:
    current = Fees(max_fee, min(tip, max_fee))
    new = replacement_fees(current, Fees(market_max, min(market_tip, market_max)), cap)
    if new is None:
        return
    assert new.max_fee_per_gas <= cap
    assert new.max_priority_fee_per_gas <= new.max_fee_per_gas
    assert new.max_fee_per_gas * 8 >= current.max_fee_per_gas * 9
    assert new.max_priority_fee_per_gas * 8 >= current.max_priority_fee_per_gas * 9


@given(base=fee, tip=fee, cap=st.integers(1, 10**13))
def test_initial_fees_respect_the_cap(base: int, tip: int, cap: int) -> None:
    f = initial_fees(base, tip, cap)
    assert f.max_fee_per_gas <= cap
    assert f.max_priority_fee_per_gas <= f.max_fee_per_gas
    if 2 * base + tip <= cap:
        assert f == Fees(2 * base + tip, tip)


def test_new_anchor_outbids_the_reorged_one_at_its_nonce() -> None:
    assert fees_for_new_anchor(MARKET, 100 * GWEI, None) == MARKET
    assert fees_for_new_anchor(MARKET, 100 * GWEI, FEES) == Fees(11_250_000_000, 1_125_000_000)
    assert fees_for_new_anchor(MARKET, 10 * GWEI, FEES) == Fees(10 * GWEI, GWEI)


@st.composite
def observations(draw: Any) -> tuple[Tracked, Seen]:
    state = draw(st.sampled_from(sorted(LIVE)))
    block = draw(st.integers(0, 1000))
    head = draw(st.integers(0, 1100))
    hashes = st.sampled_from([H_A, H_B, H_OTHER])
    tracked = Tracked(
        state,
        draw(st.integers(0, 50)),
        FEES,
        ("0x01", "0x02"),
        first_broadcast_ms=None if state is State.PENDING else draw(st.integers(0, NOW)),
        last_broadcast_ms=None if state is State.PENDING else draw(st.integers(0, NOW)),
        included=Inclusion("0x01", block, H_A) if state is State.INCLUDED else None,
    )
    r = draw(st.none() | st.builds(receipt, st.sampled_from([0, 1]), st.integers(0, 1100), hashes))
    used = draw(st.booleans())
    seen = Seen(
        head=head,
        receipt=r,
        receipt_canonical=draw(st.booleans()),
        included_hash_now=draw(st.none() | hashes),
        root_anchored_block=draw(st.none() | st.integers(0, 1100)),
        nonce_used=used,
        nonce_used_final=used and draw(st.booleans()),
        known=draw(st.booleans()),
        sibling_receipt=draw(
            st.none() | st.builds(receipt, st.just(1), st.integers(0, 1100), hashes)
        ),
        market=MARKET,
    )
    return tracked, seen


@given(observations())
def test_lifecycle_invariants(obs: tuple[Tracked, Seen]) -> None:
    t, seen = obs
    action = decide(t, seen, NOW, POLICY)
    valid = (
        seen.receipt
        if seen.receipt is not None and seen.receipt_canonical and seen.receipt.status == 1
        else None
    )
    if isinstance(action, (Broadcast, Replace)):
        # Never (re)send while the root, a receipt of ours or a sibling is on chain, nor
        # while our nonce is taken: that would be a second root for the same blocks.
        assert valid is None and seen.root_anchored_block is None
        assert seen.sibling_receipt is None and not seen.nonce_used
    if isinstance(action, Finalize):
        assert t.included is not None and is_final(seen.head, t.included.block_number, 3)
        assert valid is not None and valid.block_hash == t.included.block_hash
    if isinstance(action, Include):
        assert action.receipt.status == 1 and seen.receipt_canonical
    if isinstance(action, Requeue) and action.state is State.DROPPED:
        assert seen.nonce_used_final
    if isinstance(action, Requeue):
        assert (seen.root_anchored_block is None and valid is None) or t.state is State.INCLUDED
    if isinstance(action, Replace):
        assert action.fees.max_fee_per_gas * 8 >= FEES.max_fee_per_gas * 9


def test_confirmations_count_blocks_on_top() -> None:
    assert not is_final(102, 100, 3)
    assert is_final(103, 100, 3)
    assert is_final(100, 100, 0)


@pytest.mark.parametrize(
    ("latest", "pending", "final", "reorged", "plan"),
    [
        (5, 5, 5, [], NoncePlan(5, (), "next nonce 5")),
        (5, 6, 5, [], NoncePlan(6, (), "next nonce 6")),
        # the reorged anchor's nonce is free: reuse it, even over a mempool copy of it
        (5, 6, 5, [5], NoncePlan(5, (), "reusing nonce 5 of a reorged anchor")),
        # used since, not yet final: do not start anything that could double it
        (6, 6, 5, [5], NoncePlan(None, (), "nonce 5 was used recently; waiting for finality")),
        # used in a final block: look for our receipt first, then go on
        (6, 6, 6, [5], NoncePlan(6, (5,), "next nonce 6")),
        (7, 7, 6, [5, 6], NoncePlan(None, (5,), "nonce 6 was used recently; waiting for finality")),
    ],
)
def test_nonce_plans(
    latest: int, pending: int, final: int, reorged: list[int], plan: NoncePlan
) -> None:
    assert plan_nonce(latest, pending, final, reorged) == plan
