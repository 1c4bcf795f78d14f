"""A database writer held busy by a test, so that what waits for it meanwhile is known:
the writes it then takes together are the ones the test queued, not whatever timing
gave."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aeamc.coordinator.coalesce import Coalescer
from aeamc.coordinator.dbtx import Tx
from aeamc.coordinator.groupcommit import GroupCommit
from tests.support.waiting import wait_for_async


@asynccontextmanager
async def writer_held(
    db: GroupCommit, then: Callable[[Tx], None] | None = None
) -> AsyncIterator[None]:
    """The database's writer busy with a job that ends when the block does, doing
    ``then`` last: a write committed with, and just before, what waited meanwhile."""
    entered, release = threading.Event(), threading.Event()

    def hold(tx: Tx) -> None:
        entered.set()
        release.wait(30)
        if then is not None:
            then(tx)

    job = asyncio.ensure_future(db.write(hold))
    await asyncio.to_thread(entered.wait, 30)
    try:
        yield
    finally:
        release.set()
        await job


async def queued(coalescer: Coalescer[Any, Any], n: int) -> None:
    """Until ``n`` items wait in ``coalescer`` for the writer."""
    await wait_for_async(lambda: coalescer.waiting == n, interval=0.01)
