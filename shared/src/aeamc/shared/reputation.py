"""Device reputation and the adaptive spot-check rate.

Reputation is a smoothed success ratio over a device's record: spot-checks passed count
for, failures count heavily against (a failure also quarantines), and unanswered
challenges, timeouts and refusals count against mildly. A new device starts at 1/2.

The check rate follows BOINC's adaptive replication: a device is checked on every task
until it has ``trust_after`` passes, then with probability ``trust_after / passes``,
never below ``floor`` — so a device that turns bad after earning trust is still caught.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    passes: int = 0
    failures: int = 0
    unanswered: int = 0
    timeouts: int = 0
    refusals: int = 0
    completed: int = 0


def reputation(r: Record) -> float:
    good = 1 + r.passes + 0.1 * r.completed
    bad = 1 + 10 * r.failures + 2 * r.unanswered + r.timeouts + 0.2 * r.refusals
    return good / (good + bad)


def check_probability(passes: int, *, trust_after: int, floor: float) -> float:
    if passes < trust_after:
        return 1.0
    return max(floor, min(1.0, trust_after / max(passes, 1)))


def should_check(passes: int, draw: float, *, trust_after: int, floor: float) -> bool:
    """``draw`` is uniform in [0, 1) from the caller's RNG (the core reads none)."""
    return draw < check_probability(passes, trust_after=trust_after, floor=floor)
