"""Heartbeats (SPEC §2.4): signed, fresh, strictly increasing proofs of availability, and
the work in hand they report (progress.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aeamc.shared.eps import eps
from aeamc.shared.messages import (
    READS_WORK,
    PoA,
    check_fresh,
    parse_signed,
)
from aeamc.shared.refusals import Fault, Refusal
from aeamc.shared.runtime.tls import Peer

from .coalesce import Coalescer
from .context import Context
from .dbtx import Tx
from .flags import FlagService
from .progress import kept_reports
from .store import devices as device_rows
from .store import tasks as task_rows

#: Feature flag: devices in its cohort get half the heartbeat freshness window (a PoA
#: must be at most ``heartbeat_window_s / 2`` old), narrowing the window a captured
#: heartbeat could be replayed in — rolled out gradually, as devices with poor clocks fail it.
STRICT_FRESHNESS = "strict-freshness"


class HeartbeatService:
    """Accepts heartbeats and keeps each device's liveness and EPS inputs."""

    def __init__(self, ctx: Context, flags: FlagService) -> None:
        self.ctx = ctx
        self.flags = flags
        #: Heartbeats that arrive while the writer is busy are stored together.
        self.writes: Coalescer[_Heartbeat, Refusal | None] = Coalescer(ctx.db, _store)

    async def heartbeat(self, data: Any, peer: Peer | None = None) -> dict[str, Any]:
        """Accept a signed, fresh heartbeat whose ``seq`` is above every earlier one, over
        the device's own certificate; its telemetry is stored before the answer, which
        carries the device's flags. A replayed or stale heartbeat changes nothing.

        Its ``work`` replaces what the device reported before, for the live assignments
        it holds only (progress.py), with the heartbeat; the answer's ``reads_work`` tells the
        device this coordinator reads it."""
        # Parsed already by the API's compiled decoder (wire.py), or else parsed here.
        poa = data if isinstance(data, PoA) else parse_signed(data, PoA)
        device = self.ctx.devices.get(poa.device_id)
        if device is None or device.state == "pending" or device.quarantined:
            device = await self.ctx.current_device(poa.device_id)
        if device is None:
            raise Refusal(Fault.FORBIDDEN, "not_enrolled", "unknown device: enroll first")
        await self.ctx.verifier.verify(poa, device.public_key)
        now = self.ctx.clock()
        window_ms = self.ctx.config.protocol.heartbeat_window_s * 1000
        if self.flags.flag_on(STRICT_FRESHNESS, poa.device_id):
            window_ms //= 2
        check_fresh(poa.timestamp, now, window_ms)
        if device.state == "pending":
            raise Refusal(Fault.FORBIDDEN, "pending", "enrollment awaits the operator's approval")
        if device.quarantined:
            raise Refusal(Fault.FORBIDDEN, "quarantined", "this device is quarantined")
        self.ctx.check_peer(peer, poa.device_id)
        if poa.seq <= device.last_seq:
            raise Refusal(
                Fault.CONFLICT,
                "replay",
                f"seq {poa.seq} is not above {device.last_seq}",
                last_seq=device.last_seq,
            )
        score = eps(poa.telemetry, self.ctx.eps_config)
        refusal = await self.writes.submit(
            _Heartbeat(
                poa,
                device_rows.Beat(
                    device_id=poa.device_id,
                    seq=poa.seq,
                    timestamp=poa.timestamp,
                    now=now,
                    telemetry=json.dumps(poa.telemetry.to_dict(), sort_keys=True),
                    score=score,
                ),
            )
        )
        if refusal is not None:
            raise refusal
        state = "active"
        was = (self.ctx.devices.get(poa.device_id) or device).state
        device = (
            self.ctx.devices.heartbeat_accepted(poa.device_id, poa.seq, now, poa.telemetry, state)
            or device
        )
        self.ctx.count("heartbeats")
        if self.ctx.work_waiting and (
            was != state or len(device.poa_times) <= self.ctx.eps_config.min_poas
        ):
            # The device may just have become schedulable for waiting work: schedule now.
            # Any other change a heartbeat brings (its EPS) waits for the next tick: a full
            # round for each of thousands of heartbeats a second would starve the loop.
            self.ctx.wake_scheduler.set()
        return {
            "state": state,
            "flags": self.flags.flags_for(poa.device_id),
            "server_time_ms": now,
            "eps": round(score, 4),
            READS_WORK: True,
        }


@dataclass(frozen=True)
class _Heartbeat:
    poa: PoA
    beat: device_rows.Beat


def _store(db: Tx, heartbeats: Sequence[_Heartbeat]) -> list[Refusal | None]:
    """Store each heartbeat that may still be taken (its device active or stale, its seq
    above the device's last), with the work it reports; for each, None if stored, else
    why not. A device's progress is what its last stored heartbeat here reports, read
    against what the device holds in this transaction (progress.py)."""
    stored = device_rows.record_heartbeats(db, [h.beat for h in heartbeats])
    last: dict[str, PoA] = {}
    for i in sorted(stored):
        last[heartbeats[i].poa.device_id] = heartbeats[i].poa
    task_rows.clear_progress(db, last)
    kept: dict[str, dict[str, int]] = {}
    for device_id, poa in last.items():
        if reported := {w.task_id for w in poa.work or ()}:
            held = task_rows.held_chunks(db, device_id, reported)
            kept[device_id] = kept_reports(poa.work, held)
    task_rows.add_progress(db, kept)
    return [None if i in stored else _not_stored(db, h.poa) for i, h in enumerate(heartbeats)]


def _not_stored(db: Tx, poa: PoA) -> Refusal:
    """Why the store did not take a heartbeat that passed every check on the process's
    view: the device changed meanwhile (another worker's commit) or the seq was used."""
    row = db.execute(
        "SELECT state, last_seq FROM devices WHERE device_id=?", [poa.device_id]
    ).fetchone()
    if row is None:
        return Refusal(Fault.FORBIDDEN, "not_enrolled", "unknown device: enroll first")
    state, last_seq = row
    if state == "quarantined":
        return Refusal(Fault.FORBIDDEN, "quarantined", "this device is quarantined")
    if state == "pending":
        return Refusal(Fault.FORBIDDEN, "pending", "enrollment awaits the operator's approval")
    return Refusal(
        Fault.CONFLICT,
        "replay",
        f"seq {poa.seq} is not above {last_seq}",
        last_seq=last_seq,
    )
