"""Polling until a condition holds: the one way tests wait for a real process to catch up.

Both functions return the predicate's first truthy value, so a test can wait for *and*
take what it waited for, and fail with the last value seen, which says how far it got;
``explain`` adds what the processes involved said (their logs), read only on a timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _Poll(Generic[T]):
    """One wait: each :meth:`done` asks ``predicate`` again and keeps its answer."""

    def __init__(
        self, predicate: Callable[[], T], timeout: float, explain: Callable[[], str] | None
    ) -> None:
        self.predicate = predicate
        self.timeout = timeout
        self.explain = explain
        self.deadline = time.monotonic() + timeout
        self.last: Any = None

    def done(self) -> bool:
        """True once the predicate holds; raises once it still does not after the timeout."""
        self.last = self.predicate()
        if self.last:
            return True
        if time.monotonic() > self.deadline:
            why = f"\n{self.explain()}" if self.explain is not None else ""
            raise AssertionError(
                f"condition not met in {self.timeout} s (last: {self.last!r}){why}"
            )
        return False


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30,
    interval: float = 0.1,
    *,
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail with its last value
    and, when given, ``explain()``."""
    poll = _Poll(predicate, timeout, explain)
    while not poll.done():
        time.sleep(interval)
    return poll.last  # type: ignore[no-any-return]


async def wait_for_async(
    predicate: Callable[[], T],
    timeout: float = 30,
    interval: float = 0.1,
    *,
    explain: Callable[[], str] | None = None,
) -> T:
    """:func:`wait_for` from a coroutine: the event loop keeps running between polls, so
    a device served on the same loop keeps answering the coordinator meanwhile."""
    poll = _Poll(predicate, timeout, explain)
    while not poll.done():
        await asyncio.sleep(interval)
    return poll.last  # type: ignore[no-any-return]
