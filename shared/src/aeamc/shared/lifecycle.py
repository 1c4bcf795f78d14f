"""The coordinator's five lifecycles as plain transition tables: no storage or clock here.

Each lifecycle is the set of states one stored row may be in, the states a new row may
start in, and, per state, the states it may move to. The tables are the one statement of
what may happen; the coordinator's database refuses any other write (its triggers are
rendered from these tables), so a code path that breaks them fails where it writes.

Invariants, checked by :func:`check_transition` and by the database:

1. A row is created only in one of its lifecycle's initial states.
2. A row changes state only along an edge of its table. Writing the state a row already
   has is no transition and always allowed (a re-enrolled device stays ``stale``, a dispute
   re-arms a ``pending`` check).
3. A terminal state (one with no edges out) is never left. Deleting a row is not a
   transition: only erasure (SPEC §11) and the pending-identity sweep (SPEC §15.2) delete.
4. Every state is reachable from an initial one (so no state is dead code).

The lifecycles (SPEC §14 for credit and spot-checks)::

    device      pending ─▶ active ⇄ stale          (any of them) ─▶ quarantined
    task        queued ─▶ running ─▶ completed | disputed      queued | running ─▶ failed
                completed | running | disputed ─▶ queued      disputed ─▶ completed
    assignment  offered ─▶ accepted ─▶ proved ─▶ lost     offered | accepted ─▶ expired | lost
                offered ⇄ refused                        offered ─▶ proved
    credit      unverified ─▶ verified ─▶ void            unverified ─▶ void
    spot-check  pending ─▶ passed | failed | unanswered    passed ─▶ pending (a dispute)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from .errors import IllegalTransition


class DeviceState(StrEnum):
    #: Enrolled without a token: waits for the operator's approval (SPEC §15.2).
    PENDING = "pending"
    #: Approved (or enrolled with a token): heartbeats, gets work.
    ACTIVE = "active"
    #: Missed its heartbeats; its next heartbeat makes it active again.
    STALE = "stale"
    #: By a verdict or the operator (SPEC §14.4); never approved again.
    QUARANTINED = "quarantined"


class TaskState(StrEnum):
    QUEUED = "queued"
    #: At least one assignment was offered.
    RUNNING = "running"
    #: ``replicas`` live proofs agree (or a dispute was settled by re-execution).
    COMPLETED = "completed"
    #: Live proofs disagree; settled by the coordinator's re-execution (SPEC §14.6).
    DISPUTED = "disputed"
    #: Its deadline passed before it completed.
    FAILED = "failed"


class AssignmentState(StrEnum):
    OFFERED = "offered"
    #: The device's endpoint took the assignment (202).
    ACCEPTED = "accepted"
    #: The device's endpoint did not take it; it may be offered to that device again.
    REFUSED = "refused"
    #: No proof came before it expired.
    EXPIRED = "expired"
    #: Withdrawn: its device went stale, was quarantined or erased, or its proof was voided.
    LOST = "lost"
    #: Its proof was accepted.
    PROVED = "proved"


class Credit(StrEnum):
    UNVERIFIED = "unverified"
    #: Its spot-check passed.
    VERIFIED = "verified"
    #: Withdrawn (SPEC §14.5): its check failed or went unanswered, or its device was
    #: quarantined or erased while it was unchecked.
    VOID = "void"


class SpotCheckState(StrEnum):
    PENDING = "pending"
    PASSED = "passed"
    FAILED = "failed"
    UNANSWERED = "unanswered"


S = TypeVar("S", bound=StrEnum)
#: A lifecycle of device states is a lifecycle of states (read-only, so covariant).
S_co = TypeVar("S_co", bound=StrEnum, covariant=True)

#: From each state, the states a row may move to.
Transitions = Mapping[S, frozenset[S]]

_D = DeviceState
DEVICE: Transitions[DeviceState] = {
    _D.PENDING: frozenset({_D.ACTIVE, _D.QUARANTINED}),
    _D.ACTIVE: frozenset({_D.STALE, _D.QUARANTINED}),
    _D.STALE: frozenset({_D.ACTIVE, _D.QUARANTINED}),
    _D.QUARANTINED: frozenset(),
}

_T = TaskState
TASK: Transitions[TaskState] = {
    _T.QUEUED: frozenset({_T.RUNNING, _T.FAILED}),
    # Settled by its proofs, failed at its deadline, or re-queued when a proof is voided
    # or a device that ran it is erased.
    _T.RUNNING: frozenset({_T.COMPLETED, _T.DISPUTED, _T.FAILED, _T.QUEUED}),
    # A proof behind the result was voided (SPEC §14.5) or its device erased.
    _T.COMPLETED: frozenset({_T.QUEUED}),
    # Settled by re-execution (SPEC §14.6), or re-queued.
    _T.DISPUTED: frozenset({_T.COMPLETED, _T.QUEUED}),
    _T.FAILED: frozenset(),
}

_A = AssignmentState
ASSIGNMENT: Transitions[AssignmentState] = {
    _A.OFFERED: frozenset({_A.ACCEPTED, _A.REFUSED, _A.PROVED, _A.EXPIRED, _A.LOST}),
    _A.ACCEPTED: frozenset({_A.PROVED, _A.EXPIRED, _A.LOST}),
    # A refused offer may be made to the same device again.
    _A.REFUSED: frozenset({_A.OFFERED}),
    # Its proof was voided: the task is never offered to that device again.
    _A.PROVED: frozenset({_A.LOST}),
    _A.EXPIRED: frozenset(),
    _A.LOST: frozenset(),
}

_C = Credit
CREDIT: Transitions[Credit] = {
    _C.UNVERIFIED: frozenset({_C.VERIFIED, _C.VOID}),
    # Its device was quarantined as a cheater and the check only sampled (SPEC §14.4).
    _C.VERIFIED: frozenset({_C.VOID}),
    _C.VOID: frozenset(),
}

_K = SpotCheckState
SPOT_CHECK: Transitions[SpotCheckState] = {
    _K.PENDING: frozenset({_K.PASSED, _K.FAILED, _K.UNANSWERED}),
    # A dispute overrides a passed random check (SPEC §14.6).
    _K.PASSED: frozenset({_K.PENDING}),
    _K.FAILED: frozenset(),
    _K.UNANSWERED: frozenset(),
}


@dataclass(frozen=True)
class Lifecycle(Generic[S_co]):
    """One lifecycle: its name (in errors), its states, initial states and table."""

    name: str
    states: type[S_co]
    initial: frozenset[S_co]
    transitions: Transitions[S_co]

    def terminal(self) -> frozenset[S_co]:
        """The states with no way out."""
        return frozenset(s for s, to in self.transitions.items() if not to)


DEVICE_LIFECYCLE = Lifecycle(
    "device", DeviceState, frozenset({_D.PENDING, _D.ACTIVE}), DEVICE
)  # active when enrolled with a valid token
TASK_LIFECYCLE = Lifecycle("task", TaskState, frozenset({_T.QUEUED}), TASK)
ASSIGNMENT_LIFECYCLE = Lifecycle("assignment", AssignmentState, frozenset({_A.OFFERED}), ASSIGNMENT)
CREDIT_LIFECYCLE = Lifecycle("credit", Credit, frozenset({_C.UNVERIFIED}), CREDIT)
SPOT_CHECK_LIFECYCLE = Lifecycle("spot-check", SpotCheckState, frozenset({_K.PENDING}), SPOT_CHECK)

#: Every lifecycle, in a fixed order.
LIFECYCLES: tuple[Lifecycle[StrEnum], ...] = (
    DEVICE_LIFECYCLE,
    TASK_LIFECYCLE,
    ASSIGNMENT_LIFECYCLE,
    CREDIT_LIFECYCLE,
    SPOT_CHECK_LIFECYCLE,
)


def check_transition(lifecycle: Lifecycle[S], old: str | None, new: str) -> S:
    """Return ``new`` as a state of ``lifecycle`` if a row may go from ``old`` to it.

    ``old`` is ``None`` for a new row, which must start in an initial state. Writing the
    state a row already has is allowed (invariant 2). Raises :class:`IllegalTransition`
    naming the lifecycle, ``old`` and ``new`` otherwise, including for a name that is no
    state of the lifecycle: the caller's code is wrong, not its input.
    """
    states = {s.value: s for s in lifecycle.states}
    to = states.get(new)
    if to is None:
        raise IllegalTransition(lifecycle.name, old, new)
    if old is None:
        if to not in lifecycle.initial:
            raise IllegalTransition(lifecycle.name, old, new)
        return to
    frm = states.get(old)
    if frm is None or (to != frm and to not in lifecycle.transitions[frm]):
        raise IllegalTransition(lifecycle.name, old, new)
    return to
