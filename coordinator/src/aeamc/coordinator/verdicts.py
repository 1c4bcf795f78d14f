"""Spot-check verdicts (SPEC §14.3): what passed, failed and unanswered checks do."""

from __future__ import annotations

import logging

from .context import Context
from .dbtx import Tx
from .settlement import Settlement
from .store import devices as device_rows
from .store import proofs as proof_rows

log = logging.getLogger(__name__)


class VerdictService:
    """Applies spot-check verdicts to proofs, tasks and devices."""

    def __init__(self, ctx: Context, settlement: Settlement) -> None:
        self.ctx = ctx
        self.settlement = settlement

    async def record_verdict(
        self,
        task_id: str,
        device_id: str,
        verdict: str,
        detail: str,
        reexecuted: int = 0,
        *,
        refused: bool = False,
    ) -> None:
        """Record a pending spot-check's verdict and apply what it means (docs/verification.md).

        ``passed``: the proof's credit is verified. ``failed``: the device is quarantined.
        ``unanswered`` (silence, errors or invalid answers after every attempt, or
        ``refused``: "unknown task" for a proof it signed): the proof's credit is void and
        its task runs again elsewhere; the device is quarantined at once for a refusal of
        a recent proof, else when its unanswered checks in the window reach the threshold.
        A disputed task is settled after each verdict on one of its replicas. A check that
        is no longer pending (its device was erased meanwhile) changes nothing.
        """
        now = self.ctx.clock()
        column = {"passed": "passes", "failed": "failures", "unanswered": "unanswered"}[verdict]

        def txn(db: Tx) -> tuple[bool, int | None, str | None, list[str]]:
            concluded = proof_rows.conclude_check(
                db,
                task_id=task_id,
                device_id=device_id,
                verdict=verdict,
                detail=detail,
                now=now,
                reexecuted=reexecuted,
            )
            if not concluded:
                return False, None, None, []
            total = device_rows.count(db, device_id, column)
            quarantine: str | None = None
            if verdict == "passed":
                proof_rows.verify_credit(db, task_id, device_id)
            elif verdict == "failed":
                quarantine = f"failed spot-check of {task_id}: {detail}"
            else:
                quarantine = self._unanswered_rule(db, task_id, device_id, refused, now)
                self.settlement.void_proof(db, task_id, device_id, "spot-check unanswered", now)
            revoked: list[str] = []
            if quarantine is not None:
                revoked = self.settlement.quarantine_in(
                    db, device_id, quarantine, now, cheated=verdict == "failed" or refused
                )
            self.settlement.settle_dispute(db, task_id, now)
            return True, total, quarantine, revoked

        recorded, total, quarantine, revoked = await self.ctx.db.write(txn)
        if not recorded:
            return
        if self.ctx.certs is not None:
            self.ctx.certs.revoked_now(revoked)
        self.ctx.count(f"spot_checks_{verdict}")
        if device_id in self.ctx.devices:
            self.ctx.devices.counted(device_id, column, total)
            if quarantine is not None:
                self.ctx.devices.set_state(device_id, "quarantined", quarantine)
                log.warning("device %s quarantined: %s", device_id, quarantine)
        self.ctx.wake_scheduler.set()

    def _unanswered_rule(
        self, db: Tx, task_id: str, device_id: str, refused: bool, now: int
    ) -> str | None:
        """Why an unanswered check quarantines its device, or ``None`` when it does not.

        A refusal ("unknown task") of a proof accepted within the agents' trace retention
        is a cheater's answer: an honest agent still holds that trace. Plain silence is
        what an honest phone that leaves the network also shows, so only repeated silence
        (``quarantine_after_unanswered`` checks within ``unanswered_window_s``) counts.
        """
        cfg = self.ctx.config.spot_checks
        if refused and cfg.quarantine_on_unknown_task:
            row = db.execute(
                "SELECT accepted_at FROM proofs WHERE task_id=? AND device_id=?",
                [task_id, device_id],
            ).fetchone()
            if row is not None and row[0] >= now - cfg.trace_retention_s * 1000:
                return f"answered 'unknown task' to the spot-check of {task_id}, a proof it signed"
        silent = db.execute(
            "SELECT count(*) FROM spot_checks WHERE device_id=? AND state='unanswered' "
            "AND completed_at >= ?",
            [device_id, now - cfg.unanswered_window_s * 1000],
        ).fetchone()[0]
        if silent >= cfg.quarantine_after_unanswered:
            return (
                f"{silent} spot-checks unanswered within {cfg.unanswered_window_s} s "
                f"(the last: {task_id})"
            )
        return None
