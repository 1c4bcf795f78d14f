"""Many requests' writes of one kind, made by one job of the database's writer.

Group commit (groupcommit.py) already shares one transaction among every write queued
while the writer was busy, but each write still runs its own statements in its own
savepoint. Over a network each statement costs a round trip with the write lock held, so
thousands of heartbeats or proofs a second pay for thousands of round trips. A
:class:`Coalescer` hands the writer one job for everything of its kind that arrived
meanwhile (heartbeats; proofs, single or in batches), and that job writes them all with
a few set-based statements. Each caller is answered only after the commit, with its own
outcome, exactly as if it had written alone.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from .dbtx import Tx
from .groupcommit import GroupCommit, StoreUnavailable

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")


class Coalescer(Generic[I, R]):
    """Writes submitted items in groups through ``write_many``, which must return one
    outcome per item, in order, and write nothing for an item it refuses (its outcome
    says so). If ``write_many`` fails as a whole (not an outage), each item of the group
    is written again on its own, so one bad item never costs its neighbours their
    write — the isolation each job's savepoint gives in group commit. A write that
    fails before its job began (the database out of reach, leadership lost) answers
    every item waiting with that failure: none is ever left without a job to take it."""

    def __init__(self, db: GroupCommit, write_many: Callable[[Tx, Sequence[I]], list[R]]) -> None:
        self._db = db
        self._write_many = write_many
        self._lock = threading.Lock()
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._flushes: set[asyncio.Task[None]] = set()
        #: Groups written, and items in them: how much coalescing happens (tests, bench).
        self.groups = 0
        self.items = 0

    @property
    def waiting(self) -> int:
        """Items submitted that no job has taken yet."""
        with self._lock:
            return len(self._pending)

    async def submit(self, item: I) -> R:
        """``item``'s outcome, once it is durably committed. Raises what the write raised:
        the database's error, or :class:`StoreUnavailable` when it could not be reached."""
        [future] = self._enqueue([item])
        return await future

    async def submit_all(self, items: Sequence[I]) -> list[R | BaseException]:
        """Each item's outcome, or what its write raised, in order, once committed: the
        items are written by one job, with whatever else waits."""
        futures = self._enqueue(items)
        return await asyncio.gather(*futures, return_exceptions=True)

    def _enqueue(self, items: Sequence[I]) -> list[asyncio.Future[R]]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = [loop.create_future() for _ in items]
        if not futures:
            return futures
        with self._lock:
            first = not self._pending
            self._pending.extend(zip(items, futures, strict=True))
        if first:  # no job is yet queued that will take these items: queue one
            task = loop.create_task(self._flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        return futures

    async def _flush(self) -> None:
        taken: list[tuple[I, asyncio.Future[R]]] = []
        abandoned = False
        ran = False

        def job(tx: Tx) -> list[R]:
            nonlocal ran
            with self._lock:  # what arrives from now on waits for the next job
                if abandoned:
                    return []
                ran = True
                taken.extend(self._pending)
                self._pending.clear()
            return self._write_many(tx, [item for item, _ in taken])

        try:
            outcomes = await self._db.write(job)
        except asyncio.CancelledError:  # the loop is closing: nobody is left to answer
            with self._lock:
                abandoned = True
                waiting = taken or list(self._pending)
                self._pending.clear()
            for _, future in waiting:
                future.cancel()
            raise
        except Exception as exc:
            with self._lock:
                if not ran:
                    # The write failed before the job began (the database out of reach at
                    # BEGIN, leadership lost): what waits was to be in this job, and no
                    # other job is queued for it. It gets this job's answer, so the next
                    # item submitted queues a job of its own.
                    taken.extend(self._pending)
                    self._pending.clear()
            if isinstance(exc, StoreUnavailable) or len(taken) <= 1:
                _settle(taken, exc)
                return
            await asyncio.gather(*(self._alone(item, future) for item, future in taken))
            return
        self.groups += 1
        self.items += len(taken)
        for (_, future), outcome in zip(taken, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def _alone(self, item: I, future: asyncio.Future[R]) -> None:
        try:
            outcome = (await self._db.write(lambda tx: self._write_many(tx, [item])))[0]
        except Exception as exc:
            _settle([(item, future)], exc)
            return
        if not future.done():
            future.set_result(outcome)


def _settle(taken: Sequence[tuple[object, asyncio.Future[R]]], exc: BaseException) -> None:
    for _, future in taken:
        if not future.done():
            future.set_exception(exc)
