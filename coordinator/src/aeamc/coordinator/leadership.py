"""Which process of a coordinator leads: the one holding the state directory's leader lock.

Several worker processes serve one coordinator's API (``workers.py``); exactly one of them
runs what must run once — the scheduler, block formation, spot-checks, anchoring, mDNS,
maintenance — and answers the requests the others forward to it (``forwarding.py``). That
one holds an exclusive ``flock`` on ``<state_dir>/leader.lock``. The kernel releases the
lock when its holder ends, however it ends (``kill -9`` included), so a waiting worker
takes over within one poll interval and no two processes ever lead at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

#: How often a worker that does not lead tries the lock.
POLL_S = 0.25


class LeaderLock:
    """The leader lock of one state directory (see the module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "leader.lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if no process holds it; whether this process now holds it."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def acquire(self, poll_s: float = POLL_S) -> None:
        """Wait until this process holds the lock (cancellable)."""
        while not self.try_acquire():
            await asyncio.sleep(poll_s)

    def release(self) -> None:
        """Give the lock up (closing the descriptor releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
