"""Feature flags (SPEC §10): rollout percentages, each device in or out of a flag's cohort."""

from __future__ import annotations

import logging
import re
from typing import Any

from aeamc.shared.flags import in_rollout
from aeamc.shared.refusals import Fault, Refusal

from .context import Context
from .dbtx import Tx
from .store import flags as flag_rows

log = logging.getLogger(__name__)

FLAG_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class FlagService:
    """Feature flags; the only writer of the flags and flag_history tables."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        #: Feature flags (SPEC §10): name → rollout percent.
        self.flags: dict[str, int] = {}
        self._history_seen = 0

    def flag_on(self, name: str, device_id: str) -> bool:
        """Whether flag ``name`` is on for ``device_id`` (its SPEC §10 cohort bucket)."""
        return in_rollout(name, device_id, self.flags.get(name, 0))

    def flags_for(self, device_id: str) -> dict[str, bool]:
        """Every flag, on or off for this device: what its heartbeat replies carry."""
        return {name: in_rollout(name, device_id, p) for name, p in sorted(self.flags.items())}

    async def list_flags(self) -> list[dict[str, Any]]:
        """Every flag with its percentage and who changed it last."""
        return await self.ctx.db.read(
            lambda db: list(
                db.query("SELECT name, percent, updated_at, updated_by FROM flags ORDER BY name")
            )
        )

    async def set_flag(self, name: str, percent: Any, by: str) -> dict[str, Any]:
        """Set a flag's rollout percentage; the change and its history row are committed
        together before the new value is served."""
        if not isinstance(name, str) or not FLAG_NAME.fullmatch(name):
            raise Refusal(
                Fault.INVALID,
                "invalid_message",
                "flag name: 1-64 of a-z, 0-9, '-', '_', '.'",
                field="name",
            )
        if not isinstance(percent, int) or isinstance(percent, bool) or not 0 <= percent <= 100:
            raise Refusal(
                Fault.INVALID, "invalid_message", "percent: an integer 0..100", field="percent"
            )
        now = self.ctx.clock()

        before = await self.ctx.db.write(lambda db: flag_rows.set_flag(db, name, percent, now, by))
        self.flags[name] = percent
        log.info(
            "flag %s set from %s to %d %% by %s",
            name,
            "unset" if before is None else f"{before} %",
            percent,
            by,
            extra={"flag": name, "from_percent": before, "to_percent": percent, "by": by},
        )
        return {
            "name": name,
            "percent": percent,
            "updated_at": now,
            "updated_by": by,
            "from_percent": before,
        }

    async def flag_history(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every change of one flag (or all), oldest first."""
        sql = "SELECT name, from_percent, to_percent, at, by FROM flag_history"
        args: list[Any] = []
        if name is not None:
            sql += " WHERE name=?"
            args.append(name)
        return await self.ctx.db.read(lambda db: list(db.query(sql + " ORDER BY id", args)))

    async def load(self) -> None:
        """Read every flag's percentage (at start)."""

        def read(db: Tx) -> tuple[int, dict[str, int]]:
            last = db.execute("SELECT COALESCE(MAX(id), 0) FROM flag_history").fetchone()[0]
            rows = db.query("SELECT name, percent FROM flags")
            return last, {r["name"]: r["percent"] for r in rows}

        self._history_seen, self.flags = await self.ctx.db.read(read)

    async def follow(self) -> bool:
        """Read the flags again when any changed since ``load`` (a change made by another
        process on this database: every change adds to the flags' history)."""
        last = await self.ctx.db.read(
            lambda db: db.execute("SELECT COALESCE(MAX(id), 0) FROM flag_history").fetchone()[0]
        )
        if last == self._history_seen:
            return False
        await self.load()
        return True
