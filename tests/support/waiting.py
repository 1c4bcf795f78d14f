"""Polling until a condition holds: the one way tests wait for a real process to catch up.

Both functions return the predicate's first truthy value, so a test can wait for *and*
take what it waited for, and fail with the last value seen, which says how far it got.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _Poll(Generic[T]):
    """One wait: each :meth:`done` asks ``predicate`` again and keeps its answer."""

    def __init__(self, predicate: Callable[[], T], timeout: float) -> None:
        self.predicate = predicate
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.last: Any = None

    def done(self) -> bool:
        """True once the predicate holds; raises once it still does not after the timeout."""
        self.last = self.predicate()
        if self.last:
            return True
        if time.monotonic() > self.deadline:
            raise AssertionError(f"condition not met in {self.timeout} s (last: {self.last!r})")
        return False


def wait_for(predicate: Callable[[], T], timeout: float = 30, interval: float = 0.1) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with its last value."""
    poll = _Poll(predicate, timeout)
    while not poll.done():
        time.sleep(interval)
    return poll.last  # type: ignore[no-any-return]


async def wait_for_async(
    predicate: Callable[[], T], timeout: float = 30, interval: float = 0.1
) -> T:
    """:func:`wait_for` from a coroutine: the event loop keeps running between polls, so
    a device served on the same loop keeps answering the coordinator meanwhile."""
    poll = _Poll(predicate, timeout)
    while not poll.done():
        await asyncio.sleep(interval)
    return poll.last  # type: ignore[no-any-return]
