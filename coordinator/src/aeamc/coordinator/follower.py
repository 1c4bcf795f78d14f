"""Keeping one process's in-memory views in step with what the other processes of the
same coordinator commit (SPEC §16).

Each worker process keeps, for its hot paths, a view of the fleet (the device registry),
the revoked certificates and the feature flags. SQLite is the truth and every write goes
through it; a process updates its own views after its own commits, and takes in the other
processes' writes here, every ``interval`` seconds: the device changes recorded by the
database's triggers (``device_changes``), revocations and flag changes (both only ever
added to). A view may therefore lag another process's commit by one interval; no trust
decision rests on that lag alone — the store refuses what the view would have refused
(a replayed sequence number, a quarantined or erased device) in the write itself.
"""

from __future__ import annotations

import asyncio
import logging

from .context import Context, repeat

log = logging.getLogger(__name__)

#: Seconds between two rounds of following.
FOLLOW_INTERVAL_S = 0.25


class Follower:
    """Takes in the other processes' writes (see the module docstring)."""

    def __init__(self, ctx: Context, interval_s: float = FOLLOW_INTERVAL_S) -> None:
        self.ctx = ctx
        self.interval_s = interval_s
        self.rounds = 0
        self._wake = asyncio.Event()

    async def step(self) -> int:
        """One round: devices, revocations, flags. Returns how many devices changed."""
        c = self.ctx
        changed = await c.devices.follow(c.db, c.clock() - c.eps_config.poa_window_ms)
        if c.certs is not None:
            await c.certs.follow()
        flags = getattr(c, "flags", None)
        if flags is not None:
            await flags.follow()
        self.rounds += 1
        return changed

    async def run(self) -> None:
        await repeat(self.step, self._wake, self.interval_s, "following other workers", log)
