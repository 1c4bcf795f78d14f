"""The lifecycle tables: what they allow, what they refuse, and their shape."""

from __future__ import annotations

from enum import StrEnum

import pytest

from aeamc.shared.errors import IllegalTransition
from aeamc.shared.lifecycle import (
    ASSIGNMENT_LIFECYCLE,
    CREDIT_LIFECYCLE,
    DEVICE_LIFECYCLE,
    LIFECYCLES,
    SPOT_CHECK_LIFECYCLE,
    TASK_LIFECYCLE,
    AssignmentState,
    Credit,
    DeviceState,
    Lifecycle,
    SpotCheckState,
    TaskState,
    check_transition,
)

IDS = [lc.name for lc in LIFECYCLES]


def _pairs(lc: Lifecycle[StrEnum]) -> list[tuple[StrEnum, StrEnum]]:
    return [(a, b) for a in lc.states for b in lc.states]


@pytest.mark.parametrize("lc", LIFECYCLES, ids=IDS)
def test_every_listed_transition_is_allowed(lc: Lifecycle[StrEnum]) -> None:
    for old, targets in lc.transitions.items():
        for new in targets:
            assert check_transition(lc, old, new) is new


@pytest.mark.parametrize("lc", LIFECYCLES, ids=IDS)
def test_every_other_change_is_refused(lc: Lifecycle[StrEnum]) -> None:
    refused = 0
    for old, new in _pairs(lc):
        if old == new or new in lc.transitions[old]:
            continue
        with pytest.raises(IllegalTransition) as err:
            check_transition(lc, old, new)
        assert (err.value.lifecycle, err.value.old, err.value.new) == (lc.name, old, new)
        assert str(err.value) == f"illegal {lc.name} transition: {old} → {new}"
        refused += 1
    assert refused > 0


@pytest.mark.parametrize("lc", LIFECYCLES, ids=IDS)
def test_keeping_a_state_is_no_transition(lc: Lifecycle[StrEnum]) -> None:
    for state in lc.states:
        assert check_transition(lc, state, state) is state


@pytest.mark.parametrize("lc", LIFECYCLES, ids=IDS)
def test_new_rows_start_only_in_an_initial_state(lc: Lifecycle[StrEnum]) -> None:
    for state in lc.states:
        if state in lc.initial:
            assert check_transition(lc, None, state) is state
        else:
            with pytest.raises(IllegalTransition, match=f"cannot start as {state}$"):
                check_transition(lc, None, state)


@pytest.mark.parametrize("lc", LIFECYCLES, ids=IDS)
def test_names_outside_the_lifecycle_are_refused(lc: Lifecycle[StrEnum]) -> None:
    first = next(iter(lc.states))
    for old, new in [(first, "erased"), ("erased", first), (None, "")]:
        with pytest.raises(IllegalTransition):
            check_transition(lc, old, new)


@pytest.mark.parametrize("lc", LIFECYCLES, ids=IDS)
def test_the_table_covers_exactly_the_states(lc: Lifecycle[StrEnum]) -> None:
    assert set(lc.transitions) == set(lc.states)
    for targets in lc.transitions.values():
        assert targets <= set(lc.states)
    assert lc.initial and lc.initial <= set(lc.states)
    for state, targets in lc.transitions.items():
        assert state not in targets  # a self-write is no transition, never listed


@pytest.mark.parametrize("lc", LIFECYCLES, ids=IDS)
def test_every_state_is_reachable_from_an_initial_one(lc: Lifecycle[StrEnum]) -> None:
    seen = set(lc.initial)
    frontier = list(lc.initial)
    while frontier:
        for nxt in lc.transitions[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(lc.states)


@pytest.mark.parametrize("lc", LIFECYCLES, ids=IDS)
def test_terminal_states_have_no_exits(lc: Lifecycle[StrEnum]) -> None:
    for state in lc.terminal():
        for new in lc.states:
            if new != state:
                with pytest.raises(IllegalTransition):
                    check_transition(lc, state, new)


def test_the_terminal_states() -> None:
    assert DEVICE_LIFECYCLE.terminal() == {DeviceState.QUARANTINED}
    assert TASK_LIFECYCLE.terminal() == {TaskState.FAILED}
    assert ASSIGNMENT_LIFECYCLE.terminal() == {AssignmentState.EXPIRED, AssignmentState.LOST}
    assert CREDIT_LIFECYCLE.terminal() == {Credit.VOID}
    assert SPOT_CHECK_LIFECYCLE.terminal() == {SpotCheckState.FAILED, SpotCheckState.UNANSWERED}


def test_the_named_rules_of_the_spec() -> None:
    # SPEC §14.4: a quarantined device cannot be approved.
    with pytest.raises(IllegalTransition, match="device transition: quarantined → active"):
        check_transition(DEVICE_LIFECYCLE, "quarantined", "active")
    # SPEC §14.5: a failed task stays failed when a proof of it is voided.
    with pytest.raises(IllegalTransition):
        check_transition(TASK_LIFECYCLE, "failed", "queued")
    # SPEC §14.6: a dispute overrides a passed random check, never a failed one.
    assert check_transition(SPOT_CHECK_LIFECYCLE, "passed", "pending") is SpotCheckState.PENDING
    with pytest.raises(IllegalTransition):
        check_transition(SPOT_CHECK_LIFECYCLE, "failed", "pending")
    # A void credit is never restored.
    with pytest.raises(IllegalTransition):
        check_transition(CREDIT_LIFECYCLE, "void", "verified")
    # A lost assignment (a voided proof) is never offered to that device again.
    with pytest.raises(IllegalTransition):
        check_transition(ASSIGNMENT_LIFECYCLE, "lost", "offered")
    assert check_transition(ASSIGNMENT_LIFECYCLE, "refused", "offered") is AssignmentState.OFFERED


def test_the_states_match_the_stored_names() -> None:
    assert [s.value for s in DeviceState] == ["pending", "active", "stale", "quarantined"]
    assert {s.value for s in TaskState} == {"queued", "running", "completed", "disputed", "failed"}
    assert {s.value for s in AssignmentState} == {
        "offered",
        "accepted",
        "refused",
        "expired",
        "lost",
        "proved",
    }
    assert {s.value for s in Credit} == {"unverified", "verified", "void"}
    assert {s.value for s in SpotCheckState} == {"pending", "passed", "failed", "unanswered"}
