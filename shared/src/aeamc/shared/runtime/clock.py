"""The wall clock as the protocol counts it: integer milliseconds since the Unix epoch.

Every time on the wire is in these units (the conventions at the head of SPEC); both
daemons read the clock through ``now_ms`` so that a test can hand a component another
clock of the same shape.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch, from the system's real-time clock."""
    return time.time_ns() // 1_000_000
