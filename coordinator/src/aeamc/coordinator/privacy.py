"""The device owner's rights (SPEC §11): export and erasure."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from aeamc.shared.messages import (
    Privacy,
    check_fresh,
    parse_signed,
)
from aeamc.shared.refusals import Fault, Refusal, not_found
from aeamc.shared.runtime.tls import Peer

from .blocks import BlockService
from .context import Context
from .dbtx import Tx, hex_text
from .membership import block_of, height_of, not_in_block
from .settlement import Settlement
from .store import certificates
from .store import devices as device_rows
from .store import proofs as proof_rows
from .store import tasks as task_rows
from .updates import reports

log = logging.getLogger(__name__)

#: The erasure journal's file name, in the database's directory.
ERASURE_JOURNAL = "erasures.log"
_JOURNAL_LINE = re.compile(r"[0-9a-f]{32} [0-9]+")


class PrivacyService:
    """The device owner's rights: export of everything held, and erasure."""

    def __init__(self, ctx: Context, settlement: Settlement, blocks: BlockService) -> None:
        self.ctx = ctx
        self.settlement = settlement
        self.blocks = blocks

    @staticmethod
    def check_privacy_shape(data: Any, action: str) -> Privacy:
        """``data`` as a well-formed ``privacy`` request for ``action`` (nothing verified)."""
        msg = parse_signed(data, Privacy)
        if msg.action != action:
            raise Refusal(
                Fault.INVALID, "invalid_message", f"action must be {action!r} here", field="action"
            )
        return msg

    def check_privacy_request(
        self, data: Any, device_id: str, action: str, peer: Peer | None = None
    ) -> None:
        """Accept only a fresh ``privacy`` request for ``action`` signed by ``device_id``'s key."""
        msg = parse_signed(data, Privacy)
        if msg.device_id != device_id:
            raise Refusal(
                Fault.INVALID,
                "invalid_message",
                "device_id differs from the path",
                field="device_id",
            )
        if msg.action != action:
            raise Refusal(
                Fault.INVALID, "invalid_message", f"action must be {action!r} here", field="action"
            )
        device = self.ctx.devices.get(device_id)
        if device is None:
            raise Refusal(
                Fault.FORBIDDEN, "not_enrolled", "unknown device (never enrolled, or erased)"
            )
        msg.verify(device.public_key, signer_id=device_id)
        check_fresh(
            msg.timestamp, self.ctx.clock(), self.ctx.config.protocol.heartbeat_window_s * 1000
        )
        # A quarantine revokes the certificates, not the owner's rights over the data.
        self.ctx.check_peer(peer, device_id, allow_revoked=True)

    async def export_device(self, device_id: str) -> dict[str, Any]:
        """Everything the coordinator holds about a device, as JSON: an enrolled device,
        or one only seen over mDNS (then ``device`` is null and only ``mdns_candidate``
        holds anything). Not found when the id is neither."""

        def q(db: Tx) -> dict[str, Any] | None:
            def rows(sql: str) -> list[dict[str, Any]]:
                return list(db.query(sql, [device_id]))

            device = next(iter(rows("SELECT * FROM devices WHERE device_id=?")), None)
            candidate = device_rows.candidate(db, device_id)
            if device is None and candidate is None:
                return None
            return {
                "device": device,
                "heartbeats": rows(
                    "SELECT seq, timestamp, received_at, telemetry FROM heartbeats "
                    "WHERE device_id=? ORDER BY seq"
                ),
                "mdns_candidate": candidate,
                "assignments": rows(
                    "SELECT task_id, state, issued_at, expires_at, reason, message "
                    "FROM assignments WHERE device_id=? ORDER BY issued_at"
                ),
                "proofs": rows(
                    f"SELECT task_id, pot, {hex_text(db, 'signature')} AS signature, "  # noqa: S608
                    f"{hex_text(db, 'output')} AS output, output_digest, accepted_at, "
                    f"{height_of('p.seq')} AS block_height, credit FROM proofs p "
                    "WHERE device_id=? ORDER BY seq"
                ),
                "spot_checks": rows(
                    "SELECT s.task_id, s.block_height, s.indices, s.state, s.attempts, "
                    "s.detail, s.reexecuted_chunks, s.created_at, s.completed_at, "
                    "b.hash AS block_hash, t.chunks FROM spot_checks s "
                    "JOIN blocks b ON b.height = s.block_height "
                    "JOIN tasks t ON t.task_id = s.task_id "
                    "WHERE s.device_id=? ORDER BY s.created_at"
                ),
                "receipts": rows(
                    f"SELECT p.task_id, b.height AS height, {hex_text(db, 'b.hash')} AS block_hash "  # noqa: S608
                    f"FROM proofs p JOIN {block_of()} "
                    "WHERE p.device_id=? ORDER BY p.seq"
                ),
                "certificates": rows(
                    "SELECT c.serial, c.fingerprint, c.issued_at, c.not_after, "
                    "r.revoked_at, r.reason AS revoked_reason FROM certificates c "
                    "LEFT JOIN revoked_certificates r ON r.serial = c.serial "
                    "WHERE c.device_id=? ORDER BY c.issued_at"
                ),
                "update_reports": rows(
                    "SELECT release, version, outcome, detail, timestamp, received_at "
                    "FROM update_reports WHERE device_id=? ORDER BY release"
                ),
            }

        out = await self.ctx.db.read(q)
        if out is None:
            raise not_found(f"device {device_id}")
        d = out["device"]
        for key in ("capabilities", "telemetry", "tags") if d is not None else ():
            d[key] = json.loads(d[key]) if d[key] else None
        for h in out["heartbeats"]:
            h["telemetry"] = json.loads(h["telemetry"])
        if out["mdns_candidate"]:
            out["mdns_candidate"]["txt"] = json.loads(out["mdns_candidate"]["txt"])
        for a in out["assignments"]:
            a["message"] = json.loads(a["message"])
        for p in out["proofs"]:
            p["pot"] = json.loads(p["pot"])
        for c in out["spot_checks"]:
            c["indices"] = self.blocks.challenge_indices(
                c["indices"], bytes(c.pop("block_hash")), c["task_id"], c.pop("chunks")
            )
        out["device_id"] = device_id
        out["exported_at"] = self.ctx.clock()
        out["coordinator_id"] = self.ctx.coordinator_id
        out["note"] = (
            "Receipts already in microblocks (task id, device id, signature) stay after an "
            "erasure; everything else here is deleted."
        )
        return out

    async def erase_device(self, device_id: str, *, journal: bool = True) -> dict[str, Any]:
        """Erase a device (SPEC §11): keep only its receipts in microblocks.

        First, every result of it whose spot-check is still pending is voided and its task
        re-queued (docs/verification.md): erasing itself never lets a device keep a result
        it would not defend. Results verified (a passed check, or not drawn for one) stay.

        Deleted: the device row (public key, capabilities, endpoint, address, telemetry,
        record), its heartbeat history, its mDNS candidate row, its assignments (in-flight
        ones go back to the queue first), its spot-checks, its update reports, and its proofs
        not yet in a block
        (their tasks are re-queued). Proofs already in a block keep only what the receipt and
        the client's task need: task id, device id, signature, output and its digest,
        credit, and the seq that places it in its block's range (so the range still holds
        exactly the block's receipts; an erased unblocked proof only leaves a gap in a
        later range); the signed PoT itself is deleted, and the acceptance time becomes
        the block's. A tombstone with the pseudonymous id refuses the identity for
        good. Then the WAL is checkpointed, so no older page copy stays in its file.

        A device only seen over mDNS has its candidate row deleted and the same tombstone
        left, so discovery never records it again; an id nobody knows is not found.

        The erasure is written to the journal (fsync'd) *before* the database changes: a
        crash between the two leaves a journaled erasure the database does not know, and
        :meth:`reapply_erasures` carries it out at the next start. An acknowledged erasure
        is therefore never lost, whatever the moment of a crash.
        """
        if device_id not in self.ctx.devices:
            return await self._erase_candidate(device_id)
        now = self.ctx.clock()
        if journal:  # not when carrying out again an erasure the journal already holds
            await self._journal(device_id, now)
        revoked: list[str] = []

        def txn(db: Tx) -> dict[str, int]:
            released = self.settlement.release_assignments(db, device_id, "lost", "device erased")
            # Erasure is no escape from a check: a result still waiting for one is voided
            # and its task runs again elsewhere, before the check itself is deleted.
            voided = [
                task_id
                for (task_id,) in db.execute(
                    "SELECT p.task_id FROM proofs p JOIN spot_checks s "
                    "ON s.task_id = p.task_id AND s.device_id = p.device_id "
                    "WHERE p.device_id=? AND p.credit='unverified' AND s.state='pending'",
                    [device_id],
                ).fetchall()
                if self.settlement.void_proof(
                    db, task_id, device_id, "its device was erased unchecked", now
                )
            ]
            unblocked = [
                r["task_id"]
                for r in db.query(
                    f"SELECT task_id FROM proofs p WHERE device_id=? AND {not_in_block()}",  # noqa: S608
                    [device_id],
                )
            ]
            counts = {
                "heartbeats": device_rows.delete_heartbeats(db, device_id),
                "assignments": task_rows.delete_device_assignments(db, device_id),
                "spot_checks": proof_rows.delete_device_checks(db, device_id),
                "unblocked_proofs": proof_rows.delete_unblocked_proofs(db, device_id),
                "receipts_kept": proof_rows.strip_receipts(db, device_id),
                "candidates": device_rows.forget_candidate(db, device_id),
                "update_reports": reports.delete_device_reports(db, device_id),
            }
            revoked[:] = certificates.revoke_device(db, device_id, now, "erased")
            counts["certificates"] = certificates.delete_device_certificates(db, device_id)
            for task_id in unblocked:
                task_rows.requeue(
                    db,
                    task_id,
                    "re-queued: a device that ran it was erased",
                    ("completed", "disputed", "running"),
                )
            device_rows.erase_device(db, device_id, now)
            counts["tasks_released"] = len(released) + len(unblocked) + len(voided)
            return counts

        counts = await self.ctx.db.write(txn)
        if self.ctx.certs is not None:
            self.ctx.certs.revoked_now(revoked)
        self.ctx.devices.remove(device_id)
        if self.ctx.rollouts is not None:
            await self.ctx.rollouts.load()  # its update reports went with it
        await self.ctx.db.checkpoint()
        self.ctx.count("devices_erased")
        log.info("device %s erased at its owner's or the operator's request", device_id)
        self.ctx.wake_scheduler.set()
        return {"device_id": device_id, "state": "erased", "erased_at": now, "deleted": counts}

    async def _erase_candidate(self, device_id: str) -> dict[str, Any]:
        now = self.ctx.clock()
        if not await self.ctx.db.read(lambda db: device_rows.is_candidate(db, device_id)):
            raise not_found(f"device {device_id}")
        await self._journal(device_id, now)  # first, as for a device

        def txn(db: Tx) -> int:
            if device_rows.exists(db, device_id):
                return -1  # it enrolled meanwhile: erase it as a device
            deleted = device_rows.forget_candidate(db, device_id)
            if deleted:
                device_rows.erase_device(db, device_id, now)
            return deleted

        deleted = await self.ctx.db.write(txn)
        if deleted < 0:
            raise Refusal(
                Fault.CONFLICT, "conflict", "the device is enrolling right now; ask again"
            )
        if not deleted:
            raise not_found(f"device {device_id}")
        await self.ctx.db.checkpoint()
        self.ctx.count("devices_erased")
        log.info("mDNS candidate %s erased at the operator's request", device_id)
        return {
            "device_id": device_id,
            "state": "erased",
            "erased_at": now,
            "deleted": {"candidates": deleted},
        }

    @property
    def journal_path(self) -> Path:
        """The erasure journal, next to the database: one line per erased id and time.

        It outlives a restore of ``coordinator.db`` from a backup taken before some
        erasures, so that :meth:`reapply_erasures` can carry them out again."""
        return self.ctx.config.state_dir / ERASURE_JOURNAL

    async def _journal(self, device_id: str, erased_at: int) -> None:
        def append() -> None:
            with self.journal_path.open("a", encoding="ascii") as f:
                f.write(f"{device_id} {erased_at}\n")
                f.flush()
                os.fsync(f.fileno())

        await asyncio.to_thread(append)

    def _journaled(self) -> list[str]:
        try:
            lines = self.journal_path.read_text(encoding="ascii").splitlines()
        except FileNotFoundError:
            return []
        return [line.split()[0] for line in lines if _JOURNAL_LINE.fullmatch(line)]

    async def reapply_erasures(self) -> list[str]:
        """Carry out again every erasure in the journal the database does not know (it was
        restored from an older backup), and delete the mDNS candidates of erased ids; at
        start, before anything is served. Returns the ids erased again."""
        journaled = await asyncio.to_thread(self._journaled)
        missing = await self.ctx.db.read(
            lambda db: sorted({d for d in journaled if not device_rows.is_erased(db, d)})
        )
        now = self.ctx.clock()
        for device_id in missing:
            if device_id in self.ctx.devices:
                await self.erase_device(device_id, journal=False)
            else:

                def tombstone(db: Tx, d: str = device_id) -> None:
                    device_rows.forget_candidate(db, d)
                    device_rows.erase_device(db, d, now)

                await self.ctx.db.write(tombstone)
        leftovers = await self.ctx.db.write(device_rows.forget_erased_candidates)
        if missing:
            await self.ctx.db.checkpoint()
            log.warning(
                "re-applied %d erasures missing from the database (restored from a backup?)",
                len(missing),
            )
        if leftovers:
            log.info("deleted %d mDNS candidates of erased ids", leftovers)
        return missing
