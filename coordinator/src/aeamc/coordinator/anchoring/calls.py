"""The one thread that does blocking chain work, and bounded calls onto it.

web3 is synchronous here on purpose: the embedded chain (eth-tester/py-evm) only exists
as a synchronous, not thread-safe provider, and the command line shares the same client.
All chain work runs on one dedicated thread — so it never blocks the event loop, and one
thread is also what makes "one sender, one nonce sequence" hold by construction.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class ChainThread:
    """The one thread that does blocking chain work, in submission order.

    A daemon thread: process exit never waits for a slow RPC call. Abandoning a call
    midway is no worse than a crash, which the lifecycle recovers from by design.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="chain", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn``; it runs after every job submitted before it, never concurrently."""
        future: Future[T] = Future()
        self._jobs.put((future, fn))
        return future

    def close(self) -> None:
        """Let the thread end once the jobs already queued are done."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the awaiting coroutine
                future.set_exception(exc)


class ChainCalls:
    """Blocking chain work awaited from the event loop, each call bounded in time.

    The thread starts with the first call and is closed by :meth:`close`; a later call
    starts a new one.
    """

    def __init__(self, rpc_timeout_s: float) -> None:
        #: Every HTTP request has this timeout; a whole call may make a few of them.
        self.default_timeout_s = rpc_timeout_s * 4
        self._thread: ChainThread | None = None

    async def call(self, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        """Run ``fn`` on the chain thread; raises ``TimeoutError`` after ``timeout`` seconds
        (default: four RPC timeouts) and whatever ``fn`` raised."""
        if self._thread is None:
            self._thread = ChainThread()
        limit = timeout if timeout is not None else self.default_timeout_s
        return await asyncio.wait_for(asyncio.wrap_future(self._thread.submit(fn)), timeout=limit)

    def close(self) -> None:
        """Stop the thread; a call in flight ends within its HTTP timeout."""
        if self._thread is not None:
            self._thread.close()
            self._thread = None
