"""Waiting for an event with a time limit, in a way that can always be cancelled.

Python 3.11's ``asyncio.wait_for`` returns the inner result and drops a cancellation
that arrives in the same moment as the inner wait completes. A daemon's loop that sleeps
with it until woken or timed out can then miss the cancellation that stops it, and the
daemon never finishes stopping. ``asyncio.timeout`` counts cancellations and has no such
gap (CPython gh-86296, mended in 3.12 by building ``wait_for`` on it).
"""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Whether ``event`` was set within ``timeout_s`` seconds (None: no limit). Cancelling
    the caller always cancels the wait."""
    if timeout_s is None:
        await event.wait()
        return True
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
