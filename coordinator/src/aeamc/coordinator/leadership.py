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
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
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


#: A leader that has not seen its lock session answer for this long steps down, before
#: the database can free the lock for another node (``pgdb.SERVER_OPTIONS``: about 8 s
#: of silence): a host cut off from the database stops leading on its own.
LEASE_S = 3.0
#: A timer that fires this much later than asked means the process itself was stopped.
_LATE_S = 1.0


class DatabaseLeaderLock:
    """The leader lock of a cluster on PostgreSQL: ``pg_try_advisory_lock`` held by a
    session of its own. PostgreSQL releases it when that session ends, however the
    holder ends (``kill -9``, a dead host, a cut network: within the keepalive time),
    and the holder learns it has lost it from :meth:`lost` — and, before that, from
    every write it tries, since ``pgdb`` fences the leader's writes on this session
    (:attr:`fence`): no write of a deposed leader commits once another may lead.

    The session is asked every ``check_s``. An answer that does not come within
    ``lease_s`` (a cut cable leaves the question unanswered rather than failed) counts as
    the lock lost: the holder steps down while the server still keeps the lock from every
    other node, and the session is closed when the question ends, which frees the lock at
    once if the network came back first."""

    def __init__(self, url: str, *, check_s: float = 0.5, lease_s: float = LEASE_S) -> None:
        self.url = url
        self.check_s = check_s
        self.lease_s = lease_s
        self._conn: Any = None
        self._held = False
        # A thread of its own: the question must not wait behind other work handed to
        # threads (spot-checks re-executing chunks after an outage), or a busy leader
        # would count that wait against its lease.
        self._asker = ThreadPoolExecutor(1, thread_name_prefix="leader-lock")

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
                self._conn = pgdb.connect(self.url)
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
            _close_quietly(self._conn)
            self._conn = None

    @staticmethod
    def _alive(conn: Any) -> bool:
        try:
            conn.execute("SELECT 1").fetchone()
            return True
        except Exception:
            return False

    async def lost(self) -> None:
        """Return once the lock, while held, is no longer: its session has ended, or has
        not answered within ``lease_s``."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.check_s)
            if not self._held:
                continue
            conn = self._conn
            asked = loop.run_in_executor(self._asker, self._alive, conn)
            alive = await self._answer(asked)
            if alive is None:
                log.warning(
                    "the database has not answered the leader lock's session for %.1f s; "
                    "stepping down",
                    self.lease_s,
                )
                self._held = False
                self._conn = None
                # Closed once the question ends (an error, or the network back): never
                # from here, while another thread is using the connection.
                asked.add_done_callback(functools.partial(_close_quietly, conn))
                return
            if not alive:
                self._held = False
                self._close()
                return

    async def _answer(self, asked: asyncio.Future[bool]) -> bool | None:
        """The lock session's answer, or None if it gave none within ``lease_s`` of this
        process's own running time. A process that was itself stopped (``SIGSTOP``, a
        paused virtual machine) wakes with the timer expired and the answer not yet read,
        though the database may answer at once: the lease then counts again from the
        waking, rather than deposing a leader whose session never stopped holding the
        lock.

        Cancelling the caller always cancels it, even when the answer arrives in the same
        moment: ``asyncio.wait``, not ``wait_for``, whose Python 3.11 form returns the
        answer and drops the cancellation then (``lost`` would go on asking for good, and
        a node stopping would wait for it forever)."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        while True:
            done, _ = await asyncio.wait({asked}, timeout=self.lease_s)
            if done:
                return asked.result()
            woke = loop.time()
            if woke - since <= self.lease_s + _LATE_S:
                return None
            since = woke


def _close_quietly(conn: Any, _: object = None) -> None:
    with contextlib.suppress(Exception):
        conn.close()
