"""Proof ingestion (SPEC §2.6): each PoT judged against its assignment, and stored durably
before it is answered."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aeamc.shared.errors import ProtocolError
from aeamc.shared.messages import (
    Assignment,
    PoT,
    parse,
    parse_signed,
)
from aeamc.shared.proofs import verify_pot
from aeamc.shared.refusals import Fault, Refusal
from aeamc.shared.runtime.tls import Peer
from aeamc.shared.schema import hex_bytes, record

from .coalesce import Coalescer
from .context import Context
from .dbtx import Tx
from .registry import Device
from .settlement import Settlement
from .store import devices as device_rows
from .store import proofs as proof_rows
from .store import tasks as task_rows

log = logging.getLogger(__name__)

#: Largest output one proof may carry, in bytes.
MAX_PROOF_OUTPUT = 64 << 20
#: Most proofs one batch may carry (a device's outbox sends what it holds, in order).
MAX_PROOF_BATCH = 256
_PROOF_REQUEST = record(
    {"pot": lambda v, p: v, "output": hex_bytes(max_bytes=MAX_PROOF_OUTPUT)}, dict
)


@dataclass(frozen=True)
class _CheckedProof:
    """A proof that passed every check and waits for its commit."""

    pot: PoT
    device: Device
    output: bytes
    pot_json: str
    chunks: int


@dataclass(frozen=True)
class _Stored:
    """A proof as its commit left things: its task's state, its device's count of
    completed tasks (None: the device is gone)."""

    task_state: str
    completed: int | None


#: One batch item's outcome: the answer a single request would get, or its refusal.
Outcome = dict[str, Any] | Refusal | ProtocolError


class ProofIngestion:
    """Accepts proofs of task: each checked against its assignment, then stored."""

    def __init__(self, ctx: Context, settlement: Settlement) -> None:
        self.ctx = ctx
        self.settlement = settlement
        #: Proofs that wait for the writer, alone or in batches, are stored together.
        self.writes: Coalescer[_CheckedProof, _Stored | Refusal] = Coalescer(
            ctx.db, self._store_proofs
        )

    async def accept_proof(self, data: Any, peer: Peer | None = None) -> dict[str, Any]:
        """Accept one proof: signed by its device, over its certificate, for a live
        assignment, with output and trace matching its commitments; stored (and its task
        settled) in one commit before the answer. A refused proof changes nothing."""
        pot, device = await self._sender(data, peer)
        row = await self.ctx.db.read(
            lambda db: task_rows.assignment_row(db, pot.task_id, pot.device_id)
        )
        checked = self._check_proof(data, pot, device, row)
        stored = await self.writes.submit(checked)
        if isinstance(stored, Refusal):
            raise stored
        return self._proof_accepted(checked, stored)

    async def accept_proofs(self, items: list[Any], peer: Peer | None = None) -> list[Outcome]:
        """Accept a batch of proofs: one read, one durable commit, one outcome per item.

        Each item is judged exactly as ``accept_proof`` would judge it alone and gets its
        own outcome (the answer, or the refusal); one bad item never takes its neighbours
        down. The CPU-bound checks (signatures, output digests, trace
        roots) run in a worker thread, off the event loop.
        """
        results: list[Outcome | None] = [None] * len(items)
        senders: list[tuple[int, PoT, Device]] = []
        # All at once: the signatures reach the verifier's thread as one batch.
        found = await asyncio.gather(
            *(self._sender(data, peer) for data in items), return_exceptions=True
        )
        for i, got in enumerate(found):
            if isinstance(got, Refusal | ProtocolError):
                results[i] = got
            elif isinstance(got, BaseException):
                raise got
            else:
                senders.append((i, *got))
        keys = [(pot.task_id, pot.device_id) for _, pot, _ in senders]
        rows = await self.ctx.db.read(
            lambda db: [task_rows.assignment_row(db, t, d) for t, d in keys]
        )

        def check_all() -> list[tuple[int, _CheckedProof]]:
            ok = []
            for (i, pot, device), row in zip(senders, rows, strict=True):
                try:
                    ok.append((i, self._check_proof(items[i], pot, device, row)))
                except (Refusal, ProtocolError) as exc:
                    results[i] = exc
            return ok

        checked = await asyncio.to_thread(check_all)

        stored = await self.writes.submit_all([proof for _, proof in checked])
        for (i, proof), value in zip(checked, stored, strict=True):
            if isinstance(value, BaseException) and not isinstance(value, Refusal):
                raise value
            results[i] = value if isinstance(value, Refusal) else self._proof_accepted(proof, value)
        out = [r for r in results if r is not None]
        refused = sum(1 for r in out if not isinstance(r, dict))
        if refused:
            self.ctx.count("proofs_rejected", refused)  # as /v1/proofs refusals are counted
        return out

    @staticmethod
    def parse_submission(data: Any) -> PoT:
        """``data`` as a well-formed submission ``{"pot", "output"}``: its PoT (nothing
        verified). Raises ``ValidationError``. A submission the API's compiled decoder
        already parsed (``wire.ParsedSubmission``) carries its PoT."""
        parsed = getattr(data, "pot", None)
        if isinstance(parsed, PoT):
            return parsed
        req = _PROOF_REQUEST(data, "")
        return parse_signed(req["pot"], PoT)

    async def _sender(self, data: Any, peer: Peer | None) -> tuple[PoT, Device]:
        """Parse the submission and check who sent it, before anything else is looked up
        (``_proof_sender``); asked again of the database when the process's view alone
        refuses the device (another worker may have enrolled or released it since)."""
        pot = self.parse_submission(data)
        try:
            return pot, await self._proof_sender(pot, peer)
        except Refusal as exc:
            if exc.code not in ("not_enrolled", "quarantined"):
                raise
            if await self.ctx.current_device(pot.device_id) is None:
                raise
            return pot, await self._proof_sender(pot, peer)

    async def _proof_sender(self, pot: PoT, peer: Peer | None) -> Device:
        """The enrolled, not quarantined device that signed ``pot`` over its own
        certificate, as this process's view has it."""
        device = self.ctx.devices.get(pot.device_id)
        if device is None:
            raise Refusal(Fault.FORBIDDEN, "not_enrolled", "unknown device")
        if device.quarantined:
            raise Refusal(Fault.FORBIDDEN, "quarantined", "this device is quarantined")
        # Identity and signature first: a forged message learns nothing about assignments.
        # The Ed25519 check runs on the verifier's thread, off the event loop.
        await self.ctx.verifier.verify(pot, device.public_key, signer_id=pot.device_id)
        # Then the connection: the proof must come over this device's own certificate.
        self.ctx.check_peer(peer, pot.device_id)
        return device

    def _check_proof(
        self, data: Any, pot: PoT, device: Device, row: dict[str, Any] | None
    ) -> _CheckedProof:
        refusal = _not_live(row)
        if refusal is not None:
            raise refusal
        assert row is not None
        assignment = parse(Assignment, json.loads(row["message"]))
        output = bytes.fromhex(data["output"])
        verify_pot(
            pot,
            output,
            public_key=device.public_key,
            assignment=assignment,
            now_ms=self.ctx.clock(),
            window_ms=self.ctx.config.protocol.pot_window_s * 1000,
            signature_checked=True,
        )
        pot_json = json.dumps(pot.to_dict(), sort_keys=True)
        return _CheckedProof(pot, device, output, pot_json, assignment.chunks)

    def _store_proofs(self, db: Tx, proofs: Sequence[_CheckedProof]) -> list[_Stored | Refusal]:
        """Store checked proofs in the caller's transaction, set-based (one statement per
        table for the whole batch, one settling query): per proof its task's state and its
        device's count of completed tasks, or its refusal (a duplicate, an assignment no
        longer live), which stores nothing of it.

        Only a live assignment becomes proved: quarantine and erasure (by any worker) end
        the device's assignments in their own commit, so a proof checked on an older view
        of the device is refused here, as is a second copy of a proof in the same batch."""
        now = self.ctx.clock()
        live = task_rows.mark_proved_many(db, [(p.pot.task_id, p.pot.device_id) for p in proofs])
        marked: list[bool] = []  # per proof: its assignment was marked proved (once per key)
        for proof in proofs:
            key = (proof.pot.task_id, proof.pot.device_id)
            marked.append(key in live)
            live.discard(key)
        kept = [p for p, ok in zip(proofs, marked, strict=True) if ok]
        proof_rows.insert_proofs(
            db,
            [
                (
                    p.pot.task_id,
                    p.pot.device_id,
                    p.pot_json,
                    bytes.fromhex(p.pot.signature),
                    p.output,
                    p.pot.output_digest,
                    p.chunks,
                )
                for p in kept
            ],
            now,
        )
        totals = device_rows.count_many(db, "completed", Counter(p.pot.device_id for p in kept))
        states = self.settlement.settle_tasks(
            db, list(dict.fromkeys(p.pot.task_id for p in kept)), now
        )
        return [
            _Stored(states[p.pot.task_id], totals.get(p.pot.device_id))
            if ok
            else _refusal_now(db, p.pot)
            for p, ok in zip(proofs, marked, strict=True)
        ]

    def _proof_accepted(self, proof: _CheckedProof, stored: _Stored) -> dict[str, Any]:
        """After the commit: update the in-memory view, wake the loops, and answer."""
        pot = proof.pot
        self.ctx.devices.counted(pot.device_id, "completed", stored.completed)
        self.ctx.count("proofs_accepted")
        log.info(
            "proof for task %s from %s accepted; task %s",
            pot.task_id,
            pot.device_id,
            stored.task_state,
            extra={"task_id": pot.task_id, "device_id": pot.device_id},
        )
        if self.ctx.work_waiting:
            # The device's slot is free for waiting work. With none waiting, a round for
            # each of thousands of proofs a second would read the open tasks for nothing.
            self.ctx.wake_scheduler.set()
        self.ctx.unblocked += 1
        if self.ctx.unblocked >= self.ctx.config.blocks.max_receipts:
            self.ctx.wake_blocks.set()
        return {
            "task_id": pot.task_id,
            "device_id": pot.device_id,
            "status": "accepted",
            "task_state": stored.task_state,
        }


def _not_live(row: dict[str, Any] | None) -> Refusal | None:
    """Why a proof for the assignment ``row`` (None: there is none) cannot be taken, or
    None when the assignment is live: the one judgement of the assignment, whether read
    before the checks or again when storing found it no longer live."""
    if row is None:
        return Refusal(Fault.GONE, "unknown_assignment", "no such assignment for this device")
    if row["state"] == "proved":
        return Refusal(Fault.CONFLICT, "duplicate", "a proof for this task was already accepted")
    if row["state"] not in ("offered", "accepted"):
        return Refusal(Fault.GONE, "assignment_expired", f"the assignment is {row['state']}")
    return None


def _refusal_now(db: Tx, pot: PoT) -> Refusal:
    """The refusal of a proof whose assignment was not live when it was stored: proved
    (by this batch or an earlier one), or what it became since it was read (lost to a
    quarantine, expired) or gone."""
    refusal = _not_live(task_rows.assignment_row(db, pot.task_id, pot.device_id))
    assert refusal is not None  # it was not live in this same transaction
    return refusal
