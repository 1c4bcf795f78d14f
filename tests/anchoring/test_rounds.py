"""The pure questions an anchoring round asks around decide(): when to start an anchor,
which receipts to look for, when to ask for fees or mine, which fees to outbid."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aeamc.shared.anchoring import (
    LIVE,
    Fees,
    Inclusion,
    State,
    Tracked,
    age_s,
    anchor_due,
    contested_fees,
    final_height,
    mine_for_confirmations,
    not_ready_retry_s,
    receipt_hashes,
    stored_nonce_stale,
    wants_market,
)

FEES = Fees(10, 1)
NOW = 1_000_000


def test_final_height_is_never_below_genesis() -> None:
    assert final_height(100, 3) == 97
    assert final_height(2, 3) == 0
    assert final_height(0, 0) == 0


def test_an_anchor_is_due_once_per_interval() -> None:
    assert anchor_due(NOW, None, 10_000, reorged_waiting=False)  # never anchored yet
    assert not anchor_due(NOW, NOW - 9_999, 10_000, reorged_waiting=False)
    assert anchor_due(NOW, NOW - 10_000, 10_000, reorged_waiting=False)


def test_blocks_a_reorg_gave_back_do_not_wait_for_the_interval() -> None:
    assert anchor_due(NOW, NOW, 10_000, reorged_waiting=True)


@given(st.integers(0, 10**12), st.none() | st.integers(0, 10**12), st.integers(0, 10**7))
def test_due_never_comes_earlier_than_the_interval(
    now: int, last: int | None, interval: int
) -> None:
    due = anchor_due(now, last, interval, reorged_waiting=False)
    assert due == (last is None or now - last >= interval)


def test_receipts_are_looked_for_every_transaction_signed() -> None:
    t = Tracked(State.SENT, 7, FEES, ("0x01", "0x02"))
    assert receipt_hashes(t, "0x02") == ("0x01", "0x02")


def test_an_adopted_anchor_is_found_by_its_foreign_transaction() -> None:
    adopted = Tracked(State.INCLUDED, None, None, (), included=Inclusion("0xff", 5, b"\x01"))
    assert receipt_hashes(adopted, "0xff") == ("0xff",)
    replaced = Tracked(State.INCLUDED, 7, FEES, ("0x01",), included=Inclusion("0xff", 5, b"\1"))
    assert receipt_hashes(replaced, "0xff") == ("0x01", "0xff")


@pytest.mark.parametrize("state", sorted(State))
def test_fees_are_asked_for_only_when_a_replacement_is_possible(state: State) -> None:
    assert wants_market(Tracked(state, 7, FEES)) == (state is State.SENT)


@pytest.mark.parametrize("state", [None, *sorted(LIVE)])
def test_the_embedded_chain_mines_only_for_confirmations(state: State | None) -> None:
    assert mine_for_confirmations(True, state) == (state is State.INCLUDED)
    assert not mine_for_confirmations(False, state)  # a real chain mines by itself


def test_a_new_anchor_outbids_the_reorged_one_at_its_nonce_only() -> None:
    other = Fees(20, 2)
    reorged = [(4, other), (5, FEES), (5, other), (None, None)]
    assert contested_fees(reorged, 5) == FEES  # the first one stored at that nonce
    assert contested_fees(reorged, 6) is None
    assert contested_fees([], 5) is None


def test_the_chain_wins_over_a_stored_nonce() -> None:
    assert not stored_nonce_stale(None, 3)  # nothing stored yet: nothing to reconcile
    assert not stored_nonce_stale(3, 3)
    assert stored_nonce_stale(2, 3)
    assert stored_nonce_stale(4, 3)


def test_configuration_problems_are_retried_less_and_less_often() -> None:
    delays = [1.0]
    for _ in range(8):
        delays.append(not_ready_retry_s(delays[-1], 1.0))
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert not_ready_retry_s(0.1, 0.5) == 0.5  # never faster than a poll


def test_age_is_whole_seconds_and_never_negative() -> None:
    assert age_s(NOW, None) is None
    assert age_s(NOW, NOW - 1_999) == 1
    assert age_s(NOW, NOW + 5_000) == 0  # a clock step backwards
