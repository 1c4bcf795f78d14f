"""How the daemon's running parts start and end: its background loops, its HTTPS listener
and client session, and the signals that stop it.

The loops (link, sender, monitor, housekeeping, mDNS, updater) and short background jobs
(a chunk-fault report) run as asyncio tasks; one that crashes is logged with its
traceback, not silently lost. A task is held only while it runs, so a daemon that runs
for months does not accumulate the jobs it finished. Stopping cancels the live ones and
waits for each, then closes the listener and the session, in that order, so no task uses
a closed session. SIGTERM and SIGINT, or a restart the updater requests, end
``run_until_signalled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Lifecycle:
    """The daemon's loops, listener and session, and whether it was asked to stop."""

    def __init__(self) -> None:
        self.http: web.AppRunner | None = None
        self.session: Any = None
        self.stopped = asyncio.Event()
        self.stop_requested = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        """Listening and not stopped."""
        return self.http is not None and not self.stopped.is_set()

    @property
    def live(self) -> int:
        """How many spawned tasks are still running (finished ones are not kept)."""
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` as the task ``name`` until it ends or ``cancel_loops``; a crash is
        logged. The task is held (so it is neither collected nor forgotten at shutdown)
        only until it ends."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(_crashed)
        task.add_done_callback(self._tasks.discard)
        self._tasks.add(task)

    async def cancel_loops(self) -> None:
        """Cancel every live task and wait until each has ended."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def close(self) -> None:
        """Close the listener, then the client session; marks the daemon stopped."""
        if self.http is not None:
            await self.http.cleanup()
            self.http = None
        if self.session is not None:
            await self.session.close()
        self.stopped.set()

    async def run_until_signalled(
        self, start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
    ) -> None:
        """``start``, wait for SIGTERM, SIGINT or ``stop_requested``, then ``stop`` (also
        when ``start`` fails)."""
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, self.stop_requested.set)
        try:
            await start()
            await self.stop_requested.wait()
        finally:
            for sig in _SIGNALS:
                loop.remove_signal_handler(sig)
            await stop()


def _crashed(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s loop crashed", task.get_name(), exc_info=task.exception())
