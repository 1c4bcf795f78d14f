"""Periodic upkeep: overdue assignments and deadlines, the progress of ended assignments,
telemetry and candidate retention."""

from __future__ import annotations

from collections import Counter

from .context import Context
from .dbtx import Tx
from .store import devices as device_rows
from .store import tasks as task_rows


class Maintenance:
    """Periodic upkeep that keeps the tables within their promises."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._progress_swept_at = ctx.clock()

    async def expire_assignments(self) -> int:
        """Expire assignments past their time (counted against their devices) and fail
        tasks past their deadline; returns how many assignments expired. A round with
        nothing due costs a read, not a commit."""
        now = self.ctx.clock()
        # A read first: most rounds find nothing overdue, and a write would cost every
        # round a durable commit (and a fresh task its latency).
        due = await self.ctx.db.read(lambda db: task_rows.overdue_work(db, now))
        if not due:
            await self.forget_ended_progress(force=False)
            return 0

        def txn(db: Tx) -> tuple[int, dict[str, int]]:
            rows = task_rows.overdue_assignments(db, now)
            for r in rows:
                task_rows.expire(db, r["task_id"], r["device_id"], "no proof in time")
            task_rows.fail_past_deadline(db, now)
            totals = device_rows.count_many(db, "timeouts", Counter(r["device_id"] for r in rows))
            return len(rows), totals

        expired, totals = await self.ctx.db.write(txn)
        for device_id, total in totals.items():
            self.ctx.devices.counted(device_id, "timeouts", total)
        await self.forget_ended_progress(force=True)
        return expired

    async def forget_ended_progress(self, *, force: bool = True) -> int:
        """Drop the reported chunks done (progress.py) of assignments no longer live;
        returns how many went. An assignment whose device reports again is cleared by
        that heartbeat; this catches the ones that end without their device's word
        (expired, failed by a deadline, taken back from a quarantined device, erased).
        Without ``force`` it runs at most once a heartbeat window, and never while no
        progress is held, so an idle round still costs a single read."""
        now = self.ctx.clock()
        window_ms = self.ctx.config.protocol.heartbeat_window_s * 1000
        if not force and now - self._progress_swept_at < window_ms:
            return 0
        self._progress_swept_at = now
        if not await self.ctx.db.read(task_rows.any_progress):
            return 0
        return await self.ctx.db.write(task_rows.forget_ended_progress)

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
