"""Device reputation and the adaptive spot-check rate.

Reputation is a smoothed success ratio over a device's record: spot-checks passed count
for, failures count heavily against (a failure also quarantines), and unanswered
challenges, timeouts and refusals count against mildly. A new device starts at 1/2.

The check rate is set by an assurance target rather than by habit: a device that fakes a
fraction ``f`` of its chunks must be caught within its first ``N`` tasks with probability
at least ``P``. Each task of a new device is checked with the smallest probability ``p``
that achieves that, and checking every task would cost more for no more assurance. Once
the device has earned trust the rate decays as in BOINC's adaptive replication
(``trust_after / passes``, never above ``p``), never below ``floor`` — so a device that
turns bad after earning trust is still caught.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    passes: int = 0
    failures: int = 0
    unanswered: int = 0
    timeouts: int = 0
    refusals: int = 0
    completed: int = 0


@dataclass(frozen=True)
class Assurance:
    """Catch a device faking ``fraction`` of its chunks within its first ``within_tasks``
    tasks with probability at least ``probability``."""

    fraction: float = 0.10
    within_tasks: int = 20
    probability: float = 0.99

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError("the faked fraction to catch must be in (0, 1]")
        if self.within_tasks < 1:
            raise ValueError("the tasks to catch within must be at least 1")
        if not 0 < self.probability <= 1:
            raise ValueError("the catch probability must be in (0, 1]")


def reputation(r: Record) -> float:
    good = 1 + r.passes + 0.1 * r.completed
    bad = 1 + 10 * r.failures + 2 * r.unanswered + r.timeouts + 0.2 * r.refusals
    return good / (good + bad)


def catch_per_check(fraction: float, k: int, chunks: int) -> float:
    """P(a challenge opens at least one faked chunk) when each chunk is faked independently
    with probability ``fraction``: the ``min(k, chunks)`` indices are distinct (SPEC §2),
    so each is a separate chance.

    A device faking exactly ``m ≥ fraction · chunks`` chunks is caught at least as often
    (``C(chunks − m, k) / C(chunks, k) ≤ (1 − fraction)^k``), so a rate derived from this
    holds for it too.
    """
    return 1.0 - (1.0 - fraction) ** min(k, chunks)


def catch_within(rate: float, per_check: float, tasks: int) -> float:
    """P(caught within ``tasks`` tasks) when each is checked with probability ``rate``."""
    return 1.0 - (1.0 - rate * per_check) ** tasks


@functools.lru_cache(maxsize=256)
def assurance_rate(target: Assurance, *, k: int, chunks: int) -> float:
    """The smallest per-task check probability meeting ``target`` for tasks of ``chunks``
    chunks; 1.0 when even checking every task falls short (tiny tasks, tiny k)."""
    q = catch_per_check(target.fraction, k, chunks)
    tasks = target.within_tasks
    if catch_within(1.0, q, tasks) <= target.probability:
        return 1.0
    # (1 − p·q)^N ≤ 1 − P  ⇔  p ≥ (1 − (1 − P)^(1/N)) / q; then the smallest float that
    # truly meets it, whichever way the rounding went.
    p = min(1.0, -math.expm1(math.log1p(-target.probability) / tasks) / q)
    while p < 1.0 and catch_within(p, q, tasks) < target.probability:
        p = math.nextafter(p, 2.0)
    while p > 0.0 and catch_within(math.nextafter(p, -1.0), q, tasks) >= target.probability:
        p = math.nextafter(p, -1.0)
    return min(1.0, p)


def check_probability(
    passes: int, *, trust_after: int, floor: float, new_rate: float = 1.0, hold_until: int = 0
) -> float:
    """``new_rate`` while the device has fewer than ``trust_after`` (and ``hold_until``)
    passes, then ``trust_after / passes`` capped at ``new_rate``, never below ``floor``.

    ``hold_until`` set to the assurance's task count keeps the rate at ``new_rate`` for
    every one of a device's first tasks (it cannot have that many passes before), so the
    assurance holds exactly whatever ``trust_after`` is.
    """
    if passes < max(trust_after, hold_until):
        return max(floor, min(1.0, new_rate))
    return max(floor, min(1.0, new_rate, trust_after / max(passes, 1)))


def should_check(
    passes: int,
    draw: float,
    *,
    trust_after: int,
    floor: float,
    new_rate: float = 1.0,
    hold_until: int = 0,
) -> bool:
    """``draw`` is uniform in [0, 1) from the caller's RNG (the core reads none)."""
    p = check_probability(
        passes, trust_after=trust_after, floor=floor, new_rate=new_rate, hold_until=hold_until
    )
    return draw < p


@dataclass(frozen=True)
class CheckPolicy:
    """The spot-check rule as one value: ``k`` chunks opened per check, the ``assurance``
    a new device's rate is derived from, then BOINC-style decay after ``trust_after``
    passes, never below ``floor``. The coordinator's configuration and the benchmarks
    both ask this object, so there is one rate."""

    k: int
    trust_after: int
    floor: float
    assurance: Assurance

    def new_device_rate(self, chunks: int) -> float:
        """The check probability of a new device's task of ``chunks`` chunks (computed once
        per target, k and chunk count: ``assurance_rate`` keeps its answers)."""
        return assurance_rate(self.assurance, k=self.k, chunks=chunks)

    def check_probability(self, passes: int, chunks: int) -> float:
        """The probability of challenging a task of ``chunks`` chunks by a device with
        ``passes`` passed checks (``chunks`` 0, unknown, is always checked)."""
        return check_probability(
            passes,
            trust_after=self.trust_after,
            floor=self.floor,
            new_rate=self.new_device_rate(chunks),
            hold_until=self.assurance.within_tasks,
        )

    def should_check(self, passes: int, chunks: int, draw: float) -> bool:
        """Whether to challenge such a task; ``draw`` is uniform in [0, 1) from the
        caller's RNG."""
        return draw < self.check_probability(passes, chunks)
