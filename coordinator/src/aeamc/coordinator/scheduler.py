"""Assigning tasks to devices (SPEC §4): who may run what, and pushing the assignment.

Each round: expire overdue assignments, then for every task that still needs replicas,
rank the eligible devices (EPS × reputation) and offer the task to the best ones that have
never held it. The assignment row is committed *before* it is pushed, so a crash can never
leave a device working on a task the coordinator has forgotten, and the primary key
(task, device) makes running a task twice on one device impossible.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aeamc.shared.eps import rank
from aeamc.shared.messages import Assignment, parse_signed, sign
from aeamc.shared.placement import Needs

from .context import repeat
from .dbtx import Tx, chunked, marks
from .logs import REQUEST_ID, task_request_id
from .peers import DeviceLink
from .service import Coordinator
from .store import devices as device_rows
from .store import tasks as task_rows

log = logging.getLogger(__name__)

#: The refusal reason of a device whose owner's limits the task exceeds ([wasm] limits).
OUTSIDE_POLICY = "outside_policy"
#: A device that refused a task may be offered it again after this long (its battery or
#: temperature may have recovered); one that lost or let it expire never is.
REFUSAL_COOLDOWN_MS = 30_000


class Scheduler:
    """The scheduling loop (see the module docstring): the one writer of offers, through
    the task store, reaching devices through a ``DeviceLink``."""

    def __init__(self, coordinator: Coordinator, client: DeviceLink) -> None:
        self.c = coordinator
        self.client = client
        self._pushes: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Schedule until cancelled: a round at every wake-up or ``tick_s``. A failing round
        is logged and the next one runs, so one bad row never stops the fleet's work."""
        tick = self.c.config.scheduler.tick_s
        await repeat(self.round, self.c.wake_scheduler, tick, "scheduling round", log)

    async def drain(self) -> None:
        """Wait for the offers still being pushed to devices (at shutdown), so each ends
        accepted, refused or unreachable in the database rather than half-sent."""
        if self._pushes:
            await asyncio.gather(*self._pushes, return_exceptions=True)

    async def round(self) -> int:
        """One scheduling pass; returns the number of assignments offered."""
        await self.c.maintenance.expire_assignments()
        await self.c.fleet.mark_stale()
        tasks, assignments, inflight = await self.c.db.read(_open_work)
        # Whether a device that just became eligible could be given anything: if not,
        # its heartbeat need not start a round (see Coordinator.heartbeat).
        self.c.work_waiting = bool(tasks)
        held: dict[str, set[str]] = {}
        now = self.c.clock()
        for a in assignments:
            if a["state"] != "refused" or a["issued_at"] > now - REFUSAL_COOLDOWN_MS:
                held.setdefault(a["task_id"], set()).add(a["device_id"])
        limit = self.c.config.scheduler.max_inflight_per_device
        picks: list[Assignment] = []
        for task in tasks:
            needed = task["replicas"] - task["live"]
            if needed <= 0:
                continue
            excluded = held.get(task["task_id"], set())
            params = json.loads(task["params"])
            placement = json.loads(task["placement"]) if task["placement"] else {}
            needs = Needs.of_stored(task["kind"], params, placement, task["owner"])
            candidates = [
                d.candidate(busy=inflight.get(d.device_id, 0) >= limit)
                for d in self.c.devices.values()
                if d.device_id not in excluded and d.endpoint and d.misfit(needs) is None
            ]
            for device_id in rank(candidates, task["kind"], now, self.c.eps_config)[:needed]:
                picks.append(self._assignment(task, params, device_id, now))
                inflight[device_id] = inflight.get(device_id, 0) + 1
        offers = await self._offer(picks, now)
        for assignment in offers:
            push = asyncio.create_task(self._push(assignment))
            self._pushes.add(push)
            push.add_done_callback(self._pushes.discard)
        return len(offers)

    def _assignment(
        self, task: dict[str, Any], params: dict[str, Any], device_id: str, now: int
    ) -> Assignment:
        timeout_ms = self.c.config.scheduler.assignment_timeout_s * 1000
        expires = now + timeout_ms
        if task["deadline"] is not None:
            expires = min(expires, task["deadline"])
        return sign(
            Assignment,
            {
                "type": "assignment",
                "task_id": task["task_id"],
                "device_id": device_id,
                "coordinator_id": self.c.coordinator_id,
                "kind": task["kind"],
                "params": params,
                "chunks": task["chunks"],
                "issued_at": now,
                "expires_at": expires,
                **({"client": task["owner"]} if task["owner"] else {}),
            },
            self.c.signer,
        )

    async def _offer(self, picks: list[Assignment], now: int) -> list[Assignment]:
        """Commit a round's offers in one transaction and return those written: all of
        them, but for a device erased, quarantined or gone stale since the round read the
        registry (the database says, in the same transaction). Only what this returns is
        pushed, so no device is ever sent an offer the database does not hold."""
        if not picks:
            return []
        messages = [json.dumps(a.to_dict(), sort_keys=True) for a in picks]

        def txn(db: Tx) -> list[Assignment]:
            active: dict[str, bool] = {}
            written = []
            for assignment, message in zip(picks, messages, strict=True):
                device_id = assignment.device_id
                if device_id not in active:
                    active[device_id] = device_rows.takes_work(db, device_id)
                if not active[device_id]:
                    continue
                task_rows.assign(
                    db,
                    assignment.task_id,
                    device_id,
                    now,
                    expires_at=assignment.expires_at,
                    message=message,
                )
                written.append(assignment)
            return written

        return await self.c.db.write(txn)

    async def resume_offers(self) -> int:
        """Push again every offer whose answer was never recorded: a leader that ended
        mid-push (``kill -9``, a fail-over) left it ``offered``, and without this the task
        would wait for the assignment to expire. The stored, signed message is sent as it
        was; an agent that already took it answers with the work's state (a retry), so
        nothing is done twice. Called once by each new leader; returns how many."""
        messages = await self.c.db.read(task_rows.open_offers)
        for message in messages:
            assignment = parse_signed(json.loads(message), Assignment)
            push = asyncio.create_task(self._push(assignment))
            self._pushes.add(push)
            push.add_done_callback(self._pushes.discard)
        if messages:
            log.info("pushing again %d offers left unanswered by the last leader", len(messages))
        return len(messages)

    async def _push(self, assignment: Assignment) -> None:
        rid = task_request_id(assignment.task_id)
        token = REQUEST_ID.set(rid)  # on every line logged about the push
        try:
            await self._push_as(assignment, rid)
        finally:
            REQUEST_ID.reset(token)

    async def _push_as(self, assignment: Assignment, rid: str) -> None:
        device = self.c.devices.get(assignment.device_id)
        endpoint = device.endpoint if device else None
        if not endpoint:
            await self._refused(assignment, "no endpoint")
            return
        reply = await self.client.post(
            endpoint, "/v1/assignments", assignment.to_dict(), request_id=rid
        )
        if reply.status == 202:
            await self.c.db.write(
                lambda db: task_rows.accept_offer(db, assignment.task_id, assignment.device_id)
            )
            self.c.count("assignments_accepted")
            log.info("task %s accepted by %s", assignment.task_id, assignment.device_id)
        else:
            reason = "unreachable" if reply.status == 0 else reply.reason
            await self._refused(assignment, reason)

    async def _refused(self, assignment: Assignment, reason: str) -> None:
        # A task outside the limits its owner set is the task's doing, not the device's:
        # recorded (so it is not offered again at once), never held against it.
        held_against = reason != OUTSIDE_POLICY

        def txn(db: Tx) -> int | None:
            refused = task_rows.refuse_offer(db, assignment.task_id, assignment.device_id, reason)
            if refused and held_against:
                return device_rows.count(db, assignment.device_id, "refusals")
            return None

        total = await self.c.db.write(txn)
        self.c.devices.counted(assignment.device_id, "refusals", total)
        self.c.count("assignments_refused")
        log.info("task %s refused by %s: %s", assignment.task_id, assignment.device_id, reason)
        self.c.wake_scheduler.set()


def _open_work(
    db: Tx,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Tasks that still need devices (oldest first), their assignments, and per-device load."""
    tasks = list(
        db.query(
            "SELECT t.task_id, t.kind, t.params, t.chunks, t.replicas, t.deadline, "
            "t.owner, t.placement, "
            "(SELECT count(*) FROM assignments a WHERE a.task_id = t.task_id "
            " AND a.state IN ('offered','accepted','proved')) AS live "
            "FROM tasks t WHERE t.state IN ('queued','running') AND t.replicas > "
            "(SELECT count(*) FROM assignments a WHERE a.task_id = t.task_id "
            " AND a.state IN ('offered','accepted','proved')) "
            "ORDER BY t.created_at LIMIT 500"
        )
    )
    ids = [t["task_id"] for t in tasks]
    assignments: list[dict[str, Any]] = []
    for part in chunked(ids, 250):
        sql = f"SELECT task_id, device_id, state, issued_at FROM assignments WHERE task_id IN ({marks(len(part))})"  # noqa: S608, E501
        assignments += db.query(sql, part)
    inflight = {
        r["device_id"]: r["n"]
        for r in db.query(
            "SELECT device_id, count(*) AS n FROM assignments "
            "WHERE state IN ('offered','accepted') GROUP BY device_id"
        )
    }
    return tasks, assignments, inflight
