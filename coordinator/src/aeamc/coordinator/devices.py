"""Devices: the operator's state changes, views and staleness."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from aeamc.shared.eps import eps, ineligibility
from aeamc.shared.labels import MAX_TAGS
from aeamc.shared.refusals import Fault, Refusal, not_found

from .context import Context
from .dbtx import Tx
from .registry import Device
from .settlement import Settlement
from .store import devices as device_rows

log = logging.getLogger(__name__)


class DeviceService:
    """The operator's view of devices and their state changes."""

    def __init__(self, ctx: Context, settlement: Settlement) -> None:
        self.ctx = ctx
        self.settlement = settlement

    async def approve(self, device_id: str, reason: str) -> Device:
        """Approve a pending device for ``reason``. A device already approved (active or
        stale) is returned as it is; a quarantined one, or one whose enrollment expired,
        is refused (``conflict``): quarantine is never left, and an expired enrollment
        is enrolled again."""
        device = self._get(device_id)
        if device.quarantined:
            raise Refusal(Fault.CONFLICT, "quarantined", "a quarantined device cannot be approved")
        if device.state != "pending":
            return device
        now = self.ctx.clock()
        ttl_ms = self.ctx.config.enrollment.pending_ttl_s * 1000
        if device.enrolled_at < now - ttl_ms:
            # Not yet swept, but as good as gone: its owner enrolls again to be approved.
            raise Refusal(
                Fault.CONFLICT, "pending_expired", "this enrollment expired; enroll again"
            )
        await self.ctx.db.write(
            lambda db: device_rows.set_device_state(db, device_id, "active", reason, now)
        )
        return self._changed(device_id, "active", reason, device)

    async def quarantine(self, device_id: str, reason: str) -> Device:
        """Quarantine a device for ``reason``, with the one cascade (settlement.py) in the
        same transaction: its open work is re-queued, its unchecked proofs voided and its
        certificates revoked. Quarantining it again changes nothing more."""
        device = self._get(device_id)
        now = self.ctx.clock()

        def txn(db: Tx) -> list[str]:
            device_rows.set_device_state(db, device_id, "quarantined", reason, now)
            return self.settlement.quarantine_in(db, device_id, reason, now)

        revoked = await self.ctx.db.write(txn)
        if self.ctx.certs is not None:
            self.ctx.certs.revoked_now(revoked)
        return self._changed(device_id, "quarantined", reason, device)

    async def set_tags(self, device_id: str, add: list[str], remove: list[str]) -> Device:
        """Give the device the operator's tags ``add`` and take away ``remove`` (a tag in
        both is removed). The device's own tags, from its capabilities, are its owner's
        and stay. A device erased meanwhile is not found, and nothing is written."""
        device = self._get(device_id)
        tags = sorted((set(device.operator_tags) | set(add)) - set(remove))
        if len(tags) > MAX_TAGS:
            raise Refusal(
                Fault.INVALID,
                "invalid_message",
                f"a device carries at most {MAX_TAGS} operator tags",
                field="add",
            )
        if not await self.ctx.db.write(lambda db: device_rows.set_tags(db, device_id, tags)):
            raise not_found(f"device {device_id}")
        changed = self.ctx.devices.tags_set(device_id, tags)
        if changed is None:
            raise not_found(f"device {device_id}")
        log.info("device %s tags now %s", device_id, ",".join(tags) or "(none)")
        self.ctx.wake_scheduler.set()  # it may fit waiting tasks now
        return changed

    def _get(self, device_id: str) -> Device:
        device = self.ctx.devices.get(device_id)
        if device is None:
            raise not_found(f"device {device_id}")
        return device

    def _changed(self, device_id: str, state: str, reason: str, device: Device) -> Device:
        device = self.ctx.devices.set_state(device_id, state, reason) or device
        log.info("device %s is now %s (%s)", device_id, state, reason)
        self.ctx.wake_scheduler.set()
        return device

    def device_view(self, d: Device) -> dict[str, Any]:
        """A device as the operator sees it: state, capabilities, telemetry, EPS, record,
        and why the scheduler would or would not give it work now."""
        t = d.telemetry
        return {
            "device_id": d.device_id,
            "public_key": d.public_key.hex(),
            "state": d.state,
            "state_reason": d.state_reason,
            "capabilities": d.capabilities.to_dict(),
            "tags": {
                "device": list(d.capabilities.tags or ()),
                "operator": list(d.operator_tags),
            },
            "endpoint": d.endpoint,
            "address": d.address,
            "enrolled_at": d.enrolled_at,
            "last_seen": d.last_seen,
            "last_seq": d.last_seq,
            "telemetry": t.to_dict() if t else None,
            "eps": round(eps(t, self.ctx.eps_config), 4) if t else None,
            "reputation": round(d.reputation, 4),
            "record": dataclasses.asdict(d.record),
            "eligibility": self._eligibility(d),
        }

    def _eligibility(self, d: Device) -> str:
        """Why the scheduler would (not) give this device work now, in words."""
        if not d.capabilities.kinds:
            return "supports no task kind"
        if not d.endpoint:
            return "no endpoint to push assignments to"
        reason = ineligibility(
            d.candidate(busy=False), d.capabilities.kinds[0], self.ctx.clock(), self.ctx.eps_config
        )
        return "eligible" if reason is None else reason

    def device(self, device_id: str) -> Device:
        """The enrolled device ``device_id``, or a not-found refusal."""
        d = self.ctx.devices.get(device_id)
        if d is None:
            raise not_found(f"device {device_id}")
        return d

    async def mark_stale(self) -> list[str]:
        """Devices silent for ``stale_after_s`` become stale and lose their assignments."""
        now = self.ctx.clock()
        limit = now - self.ctx.config.protocol.stale_after_s * 1000
        silent = [
            d.device_id
            for d in self.ctx.devices.values()
            if d.state == "active" and (d.last_seen or d.enrolled_at) < limit
        ]
        if not silent:
            return []

        def txn(db: Tx) -> None:
            for device_id in silent:
                device_rows.mark_stale(db, device_id)
                self.settlement.release_assignments(db, device_id, "lost", "device went stale")

        await self.ctx.db.write(txn)
        for device_id in silent:
            self.ctx.devices.set_state(device_id, "stale", "missed heartbeats")
        self.ctx.wake_scheduler.set()
        return silent
