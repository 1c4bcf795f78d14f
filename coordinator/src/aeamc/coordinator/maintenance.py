"""Periodic upkeep: overdue assignments and deadlines, telemetry retention."""

from __future__ import annotations

import dataclasses

import sqlite_utils

from .context import Context


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
        due = await self.ctx.db.read(
            lambda db: db.execute(
                "SELECT EXISTS (SELECT 1 FROM assignments WHERE state IN ('offered','accepted') "
                "AND expires_at < ?) OR EXISTS (SELECT 1 FROM tasks WHERE state IN "
                "('queued','running') AND deadline IS NOT NULL AND deadline < ?)",
                [now, now],
            ).fetchone()[0]
        )
        if not due:
            return 0

        def txn(db: sqlite_utils.Database) -> list[str]:
            rows = list(
                db.query(
                    "SELECT task_id, device_id FROM assignments "
                    "WHERE state IN ('offered','accepted') AND expires_at < ?",
                    [now],
                )
            )
            for r in rows:
                db.execute(
                    "UPDATE assignments SET state='expired', reason='no proof in time' "
                    "WHERE task_id=? AND device_id=?",
                    [r["task_id"], r["device_id"]],
                )
                db.execute(
                    "UPDATE devices SET timeouts=timeouts+1 WHERE device_id=?", [r["device_id"]]
                )
            # A task that fails takes its live assignments with it, so no late proof can
            # complete a failed task (the lifecycle tables allow no exit from 'failed').
            db.execute(
                "UPDATE assignments SET state='expired', reason='task deadline passed' "
                "WHERE state IN ('offered','accepted') AND task_id IN (SELECT task_id FROM "
                "tasks WHERE state IN ('queued','running') AND deadline IS NOT NULL "
                "AND deadline < ?)",
                [now],
            )
            db.execute(
                "UPDATE tasks SET state='failed', completed_at=?, detail='deadline passed' "
                "WHERE state IN ('queued','running') AND deadline IS NOT NULL AND deadline < ?",
                [now, now],
            )
            return [r["device_id"] for r in rows]

        timed_out = await self.ctx.db.write(txn)
        for device_id in timed_out:
            d = self.ctx.devices.get(device_id)
            if d is not None:
                d.record = dataclasses.replace(d.record, timeouts=d.record.timeouts + 1)
        return len(timed_out)

    async def purge_telemetry(self) -> int:
        """Delete heartbeats older than the telemetry retention; returns how many."""
        cutoff = self.ctx.clock() - self.ctx.config.protocol.telemetry_retention_days * 86_400_000
        return await self.ctx.db.write(
            lambda db: db.execute("DELETE FROM heartbeats WHERE received_at < ?", [cutoff]).rowcount
        )
