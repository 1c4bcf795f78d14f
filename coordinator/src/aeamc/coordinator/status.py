"""The coordinator's own status: alerts, request observations and the summary."""

from __future__ import annotations

from typing import Any

from .alerts import evaluate as evaluate_alerts
from .attached import ANCHORING
from .context import Context
from .dbtx import Tx
from .membership import not_in_block


def _oldest_unanchored_block(db: Tx) -> int | None:
    row = next(
        iter(
            db.query(
                "SELECT min(b.timestamp) AS t FROM blocks b LEFT JOIN anchors a "
                "ON a.id = b.anchor_id WHERE a.state IS NULL OR a.state != 'final'"
            )
        ),
        None,
    )
    return None if row is None else row["t"]


class StatusService:
    """The coordinator's own status: alerts, recent requests, the summary."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def anchoring(self) -> dict[str, Any] | None:
        """The anchoring section (``None`` without one) with ``oldest_unanchored_age_s``:
        seconds since the oldest microblock not covered by a final anchor formed."""
        section = self.ctx.status_sections.get(ANCHORING)
        anchoring = await section.status() if section is not None else None
        if anchoring is not None:
            oldest = await self.ctx.db.read(_oldest_unanchored_block)
            anchoring["oldest_unanchored_age_s"] = (
                None if oldest is None else max(0, (self.ctx.clock() - oldest) // 1000)
            )
        return anchoring

    async def alerts(self) -> list[dict[str, Any]]:
        """The runbook's alerts firing now, each with the time it started firing."""
        anchoring = await self.anchoring()
        now = self.ctx.clock()
        firing = evaluate_alerts(self.ctx.recent_requests, anchoring, now, self.ctx.config.alerts)
        return self.ctx.alert_tracker.update(firing, now)

    def observe_request(self, status: int, seconds: float) -> None:
        """Remember recent requests for the coordinator's own alert evaluation."""
        self.ctx.recent_requests.append((self.ctx.clock(), status, seconds))

    async def unblocked_receipts(self) -> int:
        """Accepted proofs not yet in a microblock, as committed (by any worker)."""
        return await self.ctx.db.read(_unblocked)

    async def summary(self) -> dict[str, Any]:
        """Counts of tasks, checks, credits, blocks and devices, with each attached status
        section (anchoring, updates)."""

        def q(db: Tx) -> dict[str, Any]:
            def counts(sql: str) -> dict[str, int]:
                return {r["k"]: r["n"] for r in db.query(sql)}

            return {
                "tasks": counts("SELECT state AS k, count(*) AS n FROM tasks GROUP BY state"),
                "spot_checks": counts(
                    "SELECT state AS k, count(*) AS n FROM spot_checks GROUP BY state"
                ),
                "proofs": counts("SELECT credit AS k, count(*) AS n FROM proofs GROUP BY credit"),
                "blocks": next(iter(db.query("SELECT count(*) AS n FROM blocks")))["n"],
                "unblocked_receipts": _unblocked(db),
            }

        out = await self.ctx.db.read(q)
        states: dict[str, int] = {}
        for d in self.ctx.devices.values():
            states[d.state] = states.get(d.state, 0) + 1
        out["devices"] = states
        out["coordinator_id"] = self.ctx.coordinator_id
        out["cluster_id"] = self.ctx.config.protocol.cluster_id
        out["uptime_s"] = (self.ctx.clock() - self.ctx.started_at) // 1000
        for name, section in self.ctx.status_sections.items():
            out[name] = await section.status()
        return out


def _unblocked(db: Tx) -> int:
    query = f"SELECT count(*) AS n FROM proofs p WHERE {not_in_block()}"  # noqa: S608
    return int(next(iter(db.query(query)))["n"])
