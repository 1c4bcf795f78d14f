"""Which process of a coordinator leads: the one holding the leader lock.

On SQLite (one host) the lock is the state directory's (:class:`LeaderLock`); on
PostgreSQL (several hosts) it is an advisory lock on the database (:class:`DatabaseLeaderLock`),
which the server releases when the holder's session ends.

Several worker processes serve one coordinator's API (``workers.py``); exactly one of them
runs what must run once — the scheduler, block formation, spot-checks, anchoring, mDNS,
maintenance — and answers the requests the others forward to it (``forwarding.py``). That
one holds an exclusive ``flock`` on ``<state_dir>/leader.lock``. The kernel releases the
lock when its holder ends, however it ends (``kill -9`` included), so a waiting worker
takes over within one poll interval and no two processes ever lead at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

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

    async def lost(self) -> None:
        """Return when the lock is lost while held: a kernel lock never is."""
        await asyncio.Event().wait()

    @property
    def fence(self) -> int | None:
        """What the database checks before each write of the leader (nothing here)."""
        return None


#: Server-side settings of the lock's session: the server notices a holder that went
#: silent (its host died, its network went) within about 5 s, and then ends the session,
#: which releases the lock for another node.
_LOCK_SESSION = (
    "-c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3 "
    "-c tcp_user_timeout=5000"
)


class DatabaseLeaderLock:
    """The leader lock of a cluster on PostgreSQL: ``pg_try_advisory_lock`` held by a
    session of its own. PostgreSQL releases it when that session ends, however the
    holder ends (``kill -9``, a dead host, a cut network: within the keepalive time),
    and the holder learns it has lost it from :meth:`lost` — and, before that, from
    every write it tries, since ``pgdb`` fences the leader's writes on this session
    (:attr:`fence`): no write of a deposed leader commits once another may lead."""

    def __init__(self, url: str, *, check_s: float = 1.0) -> None:
        self.url = url
        self.check_s = check_s
        self._conn: Any = None
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    @property
    def fence(self) -> int | None:
        """The backend process id of the session holding the lock, while held."""
        return int(self._conn.info.backend_pid) if self._held else None

    def try_acquire(self) -> bool:
        """Take the lock if no session holds it; whether this process now holds it."""
        from . import pgdb, pgschema

        if self._held:
            return True
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = pgdb.connect(self.url, options=_LOCK_SESSION)
            row = self._conn.execute(
                "SELECT pg_try_advisory_lock(%s)", [pgschema.LEADER_LOCK]
            ).fetchone()
        except Exception as exc:
            log.warning("cannot reach the database for the leader lock: %s", exc)
            self._close()
            return False
        self._held = bool(row[0])
        return self._held

    async def acquire(self, poll_s: float = POLL_S) -> None:
        """Wait until this process holds the lock (cancellable)."""
        while not await asyncio.to_thread(self.try_acquire):
            await asyncio.sleep(poll_s)

    def release(self) -> None:
        """Give the lock up: ending the session releases it."""
        self._held = False
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _alive(self) -> bool:
        try:
            self._conn.execute("SELECT 1").fetchone()
            return True
        except Exception:
            return False

    async def lost(self) -> None:
        """Return once the lock, while held, is no longer: its session has ended."""
        while True:
            await asyncio.sleep(self.check_s)
            if self._held and not await asyncio.to_thread(self._alive):
                self._held = False
                self._close()
                return
