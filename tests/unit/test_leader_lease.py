"""The leader lock's lease (leadership.DatabaseLeaderLock): waiting for the lock
session's answer never outlives the wait's own cancellation.

A node stops, or steps down, by cancelling the task that watches its lock (``lost``).
If that cancellation were dropped when the session's answer arrives in the same moment,
the watch would go on asking forever and the node would never finish stopping."""

from __future__ import annotations

import asyncio

import pytest

from aeamc.coordinator.leadership import DatabaseLeaderLock


async def test_a_wait_cancelled_as_the_answer_arrives_is_cancelled() -> None:
    lock = DatabaseLeaderLock("postgresql://unused.invalid/aeamc", lease_s=30)
    asked: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(lock._answer(asked))
    await asyncio.sleep(0)  # it waits for the answer
    asked.set_result(True)  # the session answers …
    waiting.cancel()  # … in the same moment as the node stops
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_an_answer_is_returned_and_silence_is_none() -> None:
    lock = DatabaseLeaderLock("postgresql://unused.invalid/aeamc", lease_s=0.05)
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bool] = loop.create_future()
    loop.call_soon(answered.set_result, False)
    assert await lock._answer(answered) is False
    silent: asyncio.Future[bool] = loop.create_future()
    assert await lock._answer(silent) is None
    assert not silent.cancelled()  # the question goes on; its connection is closed after
