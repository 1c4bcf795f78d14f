"""Spot-check rates that depend on a device's passed checks, computed exactly.

The check-rate rule makes a device's chance of being checked a function of how many
checks it has passed, so its history is a Markov chain over that count. Following the
chain's distribution task by task gives exact figures (no sampling noise) for the
property tests to hold the closed forms of :mod:`aeamc.shared.reputation` against, and
for the benchmarks' expected values."""

from __future__ import annotations

from collections.abc import Callable


def over_passes(
    tasks: int, rate_of_passes: Callable[[int], float], catch_per_check: float = 0.0
) -> tuple[float, float]:
    """``tasks`` tasks of a device checked with probability ``rate_of_passes(passes)``,
    each check catching it with probability ``catch_per_check`` (0: an honest device).

    Returns the expected number of checks made and the probability of being caught
    within the ``tasks`` tasks."""
    alive = {0: 1.0}  # passes -> probability of being uncaught with that many passes
    checks = 0.0
    for _ in range(tasks):
        nxt: dict[int, float] = {}
        for passes, prob in alive.items():
            c = rate_of_passes(passes)
            checks += prob * c
            nxt[passes] = nxt.get(passes, 0.0) + prob * (1 - c)
            nxt[passes + 1] = nxt.get(passes + 1, 0.0) + prob * c * (1 - catch_per_check)
        alive = nxt
    return checks, 1 - sum(alive.values())
