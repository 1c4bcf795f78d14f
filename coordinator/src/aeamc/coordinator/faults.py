"""A device's report that a chunk of its task has no output (SPEC §3.1, ``chunk_fault``).

A WebAssembly kernel that runs out of fuel, exceeds its memory or traps does so at the
same instruction on every machine. So the coordinator does not take the device's word for
it: it runs that chunk itself, with the task's own fuel and memory.

- The chunk faults here too: the task cannot be done by anyone. It fails, with the
  reason, and every live assignment of it ends (``lost``, "kernel fault") — no device is
  blamed, none is left to time out, and the client learns it at once.
- The chunk has an output here: the device claimed a fault that is not there, to shed
  work or by a bug. Its assignment is lost, the refusal counts against its reputation
  (SPEC §4), and the task goes back to the queue for another device.

Each report is for a live assignment of the reporting device, over its own certificate,
so one assignment buys at most one re-execution, bounded by the fuel the client chose.

The re-execution takes time, and the device's assignment may end meanwhile: it expires,
the device is quarantined, or it erases itself (SPEC §11). What the coordinator's own run
showed is settled against the database as it is *then*. A confirmed fault still fails the
task (it is the task's, whoever reported it). A claim that proved false is held against
the device only if its assignment is still live; otherwise whatever ended it already
settled the task and the device (an erased device has no record left to blame), and the
device is told how it stands: ``erased``, or the state its assignment ended in.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aeamc.shared.errors import ChunkFault
from aeamc.shared.messages import ChunkFaultReport, check_fresh, parse_signed
from aeamc.shared.refusals import Fault, Refusal, not_found
from aeamc.shared.runtime.tls import Peer
from aeamc.shared.tasks.wasm_kernel import MissingBlob

from .context import Context
from .dbtx import Tx
from .enrollment import ERASED_MESSAGE
from .store import devices as device_rows
from .store import tasks as task_rows

log = logging.getLogger(__name__)

#: The reason the assignments of a task that faulted end with.
KERNEL_FAULT = "kernel fault"


class ChunkFaults:
    """Checks devices' chunk-fault reports by re-execution and settles their tasks."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def report(self, data: Any, peer: Peer | None = None) -> dict[str, Any]:
        """Settle a signed ``chunk_fault`` report (module docstring); the task's state.

        Refused, changing nothing: a bad signature or a stale report, another device's
        certificate, no live assignment of the task to this device, a chunk out of range.
        """
        msg = parse_signed(data, ChunkFaultReport)
        device = self.ctx.devices.get(msg.device_id)
        if device is None:
            raise Refusal(Fault.FORBIDDEN, "not_enrolled", "unknown device")
        msg.verify(device.public_key, signer_id=msg.device_id)
        check_fresh(
            msg.timestamp, self.ctx.clock(), self.ctx.config.protocol.heartbeat_window_s * 1000
        )
        self.ctx.check_peer(peer, msg.device_id)

        def look(db: Tx) -> tuple[Any, Any]:
            return (
                task_rows.task_row(db, msg.task_id),
                task_rows.assignment_row(db, msg.task_id, msg.device_id),
            )

        task, assignment = await self.ctx.db.read(look)
        if task is None or assignment is None:
            raise not_found(f"assignment of {msg.task_id} to this device")
        if assignment["state"] == "lost" and assignment["reason"] == KERNEL_FAULT:
            return {"task_id": msg.task_id, "state": task["state"]}  # said before
        if assignment["state"] not in ("offered", "accepted"):
            raise Refusal(
                Fault.CONFLICT,
                "conflict",
                f"this device's assignment of the task is {assignment['state']}",
            )
        if msg.chunk >= task["chunks"]:
            raise Refusal(
                Fault.INVALID,
                "invalid_message",
                f"chunk: the task has {task['chunks']} chunks",
                field="chunk",
            )
        kind = self.ctx.kinds.get(task["kind"])
        params = json.loads(task["params"])
        try:
            await asyncio.to_thread(kind.run_chunk, params, msg.chunk, task["chunks"])
        except ChunkFault as fault:
            return await self._confirmed(msg, str(fault))
        except MissingBlob as exc:
            log.error("cannot re-execute %s chunk %d: %s", msg.task_id, msg.chunk, exc)
            raise Refusal(
                Fault.UNAVAILABLE, "unavailable", "the task's content is not available here"
            ) from None
        await self._false(msg)
        raise Refusal(
            Fault.CONFLICT,
            "not_a_fault",
            f"chunk {msg.chunk} has an output when the coordinator runs it; "
            "the assignment is withdrawn",
        )

    async def _confirmed(self, msg: ChunkFaultReport, fault: str) -> dict[str, Any]:
        now = self.ctx.clock()
        detail = f"chunk {msg.chunk} has no output: {fault}"

        def txn(db: Tx) -> None:
            task_rows.end_live_assignments(db, msg.task_id, "lost", KERNEL_FAULT)
            task_rows.fail_task(db, msg.task_id, now, detail)

        await self.ctx.db.write(txn)
        self.ctx.count("tasks_failed_kernel_fault")
        log.info("task %s failed: %s (reported by %s)", msg.task_id, detail, msg.device_id)
        return {"task_id": msg.task_id, "state": "failed", "detail": detail}

    async def _false(self, msg: ChunkFaultReport) -> None:
        """Hold a false claim against the device, if its assignment is still live; else
        refuse the report with how the device stands now (module docstring)."""
        reason = "claimed a chunk fault the coordinator's run does not have"

        def txn(db: Tx) -> tuple[str | None, int | None]:
            """(why the claim cannot be held against the device, or None; its refusals)."""
            if device_rows.is_erased(db, msg.device_id):
                return "erased", None
            assignment = task_rows.assignment_row(db, msg.task_id, msg.device_id)
            if assignment is None or assignment["state"] not in ("offered", "accepted"):
                return (str(assignment["state"]) if assignment else "gone"), None
            task_rows.end_assignment(db, msg.task_id, msg.device_id, "lost", reason)
            total = device_rows.count(db, msg.device_id, "refusals")
            if not task_rows.has_live_assignments(db, msg.task_id):
                task_rows.requeue(db, msg.task_id, "re-queued: " + reason, ("running",))
            return None, total

        ended, total = await self.ctx.db.write(txn)
        if ended == "erased":
            raise Refusal(Fault.FORBIDDEN, "erased", ERASED_MESSAGE)
        if ended is not None:
            raise Refusal(
                Fault.CONFLICT,
                "conflict",
                f"this device's assignment of the task is {ended} (it ended while the "
                "coordinator ran the chunk)",
            )
        self.ctx.devices.counted(msg.device_id, "refusals", total)
        self.ctx.wake_scheduler.set()
        log.warning("task %s: device %s %s", msg.task_id, msg.device_id, reason)
