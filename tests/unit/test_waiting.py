"""``runtime.waiting.wait_set``: the daemons' loops sleep with it until woken or timed
out, and each is stopped by cancelling it, so a cancellation must never be lost — not
even one arriving as the event is set (Python 3.11's ``wait_for`` loses that one)."""

from __future__ import annotations

import asyncio

import pytest

from aeamc.shared.runtime.waiting import wait_set


@pytest.mark.parametrize("timeout_s", [30.0, None])
async def test_a_wait_cancelled_as_the_event_is_set_is_cancelled(timeout_s: float | None) -> None:
    event = asyncio.Event()
    waiting = asyncio.ensure_future(wait_set(event, timeout_s))
    await asyncio.sleep(0)  # it waits
    event.set()  # woken …
    waiting.cancel()  # … in the same moment as the daemon stops
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_it_says_whether_the_event_was_set_in_time() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    assert await wait_set(event, 0) is False
    asyncio.get_running_loop().call_soon(event.set)
    assert await wait_set(event, 30) is True
    assert await wait_set(event, None) is True  # already set
