"""Periodic upkeep: overdue assignments and deadlines, telemetry and candidate retention."""

from __future__ import annotations

import sqlite_utils

from .context import Context
from .store import devices as device_rows
from .store import tasks as task_rows


class Maintenance:
    """Periodic upkeep that keeps the tables within their promises."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def expire_assignments(self) -> int:
        """Expire assignments past their time (counted against their devices) and fail
        tasks past their deadline; returns how many assignments expired. A round with
        nothing due costs a read, not a commit."""
        now = self.ctx.clock()
        # A read first: most rounds find nothing overdue, and a write would cost every
        # round a durable commit (and a fresh task its latency).
        due = await self.ctx.db.read(lambda db: task_rows.overdue_work(db, now))
        if not due:
            return 0

        def txn(db: sqlite_utils.Database) -> list[str]:
            rows = task_rows.overdue_assignments(db, now)
            for r in rows:
                task_rows.expire(db, r["task_id"], r["device_id"], "no proof in time")
                device_rows.count(db, r["device_id"], "timeouts")
            task_rows.fail_past_deadline(db, now)
            return [r["device_id"] for r in rows]

        timed_out = await self.ctx.db.write(txn)
        for device_id in timed_out:
            self.ctx.devices.count(device_id, "timeouts")
        return len(timed_out)

    async def purge_telemetry(self) -> int:
        """Delete heartbeats older than the telemetry retention; returns how many."""
        cutoff = self.ctx.clock() - self.ctx.config.protocol.telemetry_retention_days * 86_400_000
        return await self.ctx.db.write(lambda db: device_rows.purge_heartbeats(db, cutoff))

    async def purge_candidates(self) -> int:
        """Delete mDNS candidates not announced for ``privacy.candidate_retention_days``;
        returns how many."""
        days = self.ctx.config.privacy.candidate_retention_days
        cutoff = self.ctx.clock() - days * 86_400_000
        return await self.ctx.db.write(lambda db: device_rows.purge_candidates(db, cutoff))
