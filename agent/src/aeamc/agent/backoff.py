"""Exponential backoff with a cap and full jitter (pure: randomness is injected).

Full jitter (a uniform wait in ``[0, min(cap, base × 2^n)]``, as AWS's architecture blog
recommends) spreads a fleet of devices that lost the coordinator at the same moment, so
they do not all come back in the same second.
"""

from __future__ import annotations

import random
from collections.abc import Callable

#: How much later than a server's ``Retry-After`` a retry may come, as a share of it.
RETRY_AFTER_SPREAD = 0.5


class Backoff:
    def __init__(
        self,
        initial_s: float,
        max_s: float,
        *,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0
        self._uniform = uniform

    def next_delay(self) -> float:
        """Record a failure and return how long to wait before the next attempt."""
        ceiling = min(self.max_s, self.initial_s * (2.0 ** min(self.failures, 60)))
        self.failures += 1
        # Never less than a tenth of the initial delay: a zero wait would busy-loop.
        return max(self.initial_s / 10, self._uniform(0.0, ceiling))

    def after(self, wait_s: float) -> float:
        """Record a failure the server answered with ``Retry-After: wait_s``: never sooner
        than that, and up to ``RETRY_AFTER_SPREAD`` of it later, so a fleet told the same
        wait at the same moment does not come back in step."""
        least = wait_s * (1.0 + self._uniform(0.0, RETRY_AFTER_SPREAD))
        return max(self.next_delay(), least)

    def reset(self) -> None:
        self.failures = 0


def jittered(interval_s: float, jitter: float, uniform: Callable[[float, float], float]) -> float:
    """``interval × (1 ± jitter)``: periodic work that does not march in lockstep."""
    return interval_s * (1.0 + uniform(-jitter, jitter))
