"""Clients' tasks (SPEC §15.4): submission, and views with each result's verification state."""

from __future__ import annotations

import json
import secrets
from typing import Any

from aeamc.shared import verification
from aeamc.shared.messages import (
    TASK_ID_PATTERN,
)
from aeamc.shared.placement import REQUIRES, Needs
from aeamc.shared.refusals import Fault, Refusal, not_found
from aeamc.shared.schema import integer, json_object, optional, record, text

from .content import ContentService
from .context import Context
from .dbtx import Tx, marks
from .membership import height_of
from .store import tasks as task_rows
from .tokens import OWNER_BYTES

CLIENT_REF_MAX = 64 - 2 * OWNER_BYTES - 1


_TASK_REQUEST = record(
    {
        "kind": text(64),
        "params": json_object(),
        "chunks": integer(1, 65_536),
        "replicas": optional(integer(1, 16)),
        "deadline": optional(integer(0, 2**53 - 1)),
        "task_id": optional(text(CLIENT_REF_MAX, TASK_ID_PATTERN)),
        "requires": optional(REQUIRES),
    },
    dict,
)


def _proof_facts(p: dict[str, Any]) -> verification.ProofFacts:
    """The facts of one proof row of ``task_view`` that its verification depends on."""
    return verification.ProofFacts(
        output_digest=p["output_digest"],
        credit=p["credit"],
        check=p["spot_check"],
        in_block=p["block_height"] is not None,
        dispute=bool(p["dispute_check"]),
    )


class TaskService:
    """Clients' tasks: submission and the views that carry verification states."""

    def __init__(self, ctx: Context, content: ContentService) -> None:
        self.ctx = ctx
        self.content = content

    async def submit_task(self, data: Any, client: str, owner: str) -> dict[str, Any]:
        """Queue a task owned by ``owner`` (its token's owner id; ``client`` is its label).

        A task id the client chose (``task_id``, its ``client_ref``) is scoped to the
        owner: the task's id is ``<owner>.<client_ref>``, so two clients may choose the same
        one, and whether another client holds an id can never be learnt from a conflict.
        The same owner choosing it again gets 409 ``duplicate`` naming its own task. Without
        a chosen id the task gets a random ``t-…`` one.
        """
        req = _TASK_REQUEST(data, "")
        kind = req["kind"]
        if kind not in self.ctx.kinds:
            raise Refusal(
                Fault.INVALID, "unknown_kind", f"unknown task kind {kind!r}", field="kind"
            )
        self.ctx.kinds.validate(kind, req["params"], req["chunks"])
        placement: dict[str, Any] = dict(req.get("requires") or {})
        if kind == "wasm":  # its module and input must be content this owner uploaded
            placement["module_bytes"] = await self.content.check_task(req["params"], owner)
        replicas = req.get("replicas", 1)
        if replicas > self.ctx.config.scheduler.max_replicas:
            raise Refusal(
                Fault.INVALID,
                "invalid_message",
                f"replicas: at most {self.ctx.config.scheduler.max_replicas}",
                field="replicas",
            )
        ref = req.get("task_id")
        task_id = f"{owner}.{ref}" if ref else f"t-{secrets.token_hex(8)}"
        now = self.ctx.clock()
        row = {
            "task_id": task_id,
            "kind": kind,
            "params": json.dumps(req["params"], sort_keys=True),
            "chunks": req["chunks"],
            "replicas": replicas,
            "deadline": req.get("deadline"),
            "created_at": now,
            "client": client,
            "owner": owner,
            "state": "queued",
            "placement": json.dumps(placement, sort_keys=True) if placement else None,
        }

        def txn(db: Tx) -> str:
            while task_rows.task_exists(db, row["task_id"]):
                if ref:
                    raise Refusal(
                        Fault.CONFLICT,
                        "duplicate",
                        f"you already have a task {ref}",
                        field="task_id",
                        task_id=row["task_id"],
                    )
                row["task_id"] = f"t-{secrets.token_hex(8)}"  # never another's random id
            task_rows.insert_task(db, row)
            return str(row["task_id"])

        task_id = await self.ctx.db.write(txn)
        self.ctx.count("tasks_submitted")
        self.ctx.wake_scheduler.set()
        return {"task_id": task_id, "state": "queued", **({"client_ref": ref} if ref else {})}

    async def task_view(
        self,
        task_id: str,
        *,
        with_output: bool = True,
        verified_only: bool = False,
        owner: str | None = None,
    ) -> dict[str, Any]:
        """A task with its assignments, proofs and result, each with its verification state
        (docs/verification.md). With ``verified_only`` no output bytes are included unless
        the result is verified, so a client can never take an unchecked output by mistake.
        ``owner``: only if it is that owner's (None: any task, the operator's view); another
        owner's task answers exactly as one that does not exist, so its existence does not
        leak.

        Each assignment carries ``chunks_done``: for a live one what its device's latest
        heartbeat reported (null before any), for a proved one all the task's chunks (its
        proof covers them), else null. It is display data (progress.py), never a result."""

        def q(db: Tx) -> dict[str, Any] | None:
            task = next(iter(db.query("SELECT * FROM tasks WHERE task_id=?", [task_id])), None)
            if task is None or (owner is not None and task["owner"] != owner):
                return None
            task["assignments"] = list(
                db.query(
                    "SELECT device_id, state, issued_at, expires_at, reason FROM assignments "
                    "WHERE task_id=? ORDER BY issued_at",
                    [task_id],
                )
            )
            task["progress"] = task_rows.progress_of(db, task_id)
            task["proofs"] = list(
                db.query(
                    f"SELECT p.device_id, p.accepted_at, {height_of('p.seq')} AS block_height, "  # noqa: S608
                    "p.credit, "
                    "p.output_digest, p.output, s.state AS spot_check, "
                    "CASE WHEN s.indices IS NULL THEN 0 ELSE 1 END AS dispute_check "
                    "FROM proofs p LEFT JOIN spot_checks s "
                    "ON s.task_id = p.task_id AND s.device_id = p.device_id "
                    "WHERE p.task_id=? ORDER BY p.seq",
                    [task_id],
                )
            )
            return task

        task = await self.ctx.db.read(q)
        if task is None:
            raise not_found(f"task {task_id}")
        task["params"] = json.loads(task["params"])
        placement = json.loads(task.pop("placement") or "{}")
        needs = Needs.of_stored(task["kind"], task["params"], placement, task["owner"])
        task["requires"] = {k: v for k, v in placement.items() if k != "module_bytes"}
        task["unplaced"] = self._unplaced(task, needs)
        progress = task.pop("progress")
        for a in task["assignments"]:
            a["chunks_done"] = _chunks_done(task, a, progress)
        output = None
        facts = []
        for p in task["proofs"]:
            fact = _proof_facts(p)
            del p["dispute_check"]
            facts.append(fact)
            p["verification"] = verification.proof_verification(fact).to_dict()
            p["output"] = bytes(p["output"]).hex() if with_output else None
            if (
                output is None
                and p["output_digest"] == task["output_digest"]
                and p["credit"] != "void"
            ):
                output = p["output"]
        result = verification.task_verification(task["state"], task["output_digest"], facts)
        task["verification"] = result.to_dict()
        task["output"] = output if task["state"] == "completed" else None
        if verified_only and result.state != verification.VERIFIED:
            task["output"] = None
            for p in task["proofs"]:
                p["output"] = None
        return task

    def _unplaced(self, task: dict[str, Any], needs: Needs) -> str | None:
        """Why a queued task that no device holds has none: no enrolled device fits it
        (SPEC §4.1), with the reasons and how many devices each rules out. None when it
        is placed, or when some device fits and it merely waits its turn."""
        live = ("offered", "accepted", "proved")
        if task["state"] != "queued" or any(a["state"] in live for a in task["assignments"]):
            return None
        reasons: dict[str, int] = {}
        for d in self.ctx.devices.values():
            if d.state not in ("active", "stale"):
                continue
            why = d.misfit(needs)
            if why is None:
                return None
            reasons[why] = reasons.get(why, 0) + 1
        if not reasons:
            return "no device is enrolled and approved"
        return "no enrolled device fits: " + "; ".join(
            f"{why} ({n} device{'s' * (n > 1)})"
            for why, n in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
        )

    async def list_tasks(
        self,
        limit: int = 100,
        state: str | None = None,
        owner: str | None = None,
        *,
        verified_only: bool = False,
    ) -> list[dict[str, Any]]:
        """The newest tasks, each with its result's verification state; ``owner``: only
        that owner's (None: all, the operator's view); with ``verified_only`` only those
        whose result is verified (docs/verification.md)."""
        sql = (
            "SELECT task_id, kind, chunks, replicas, state, created_at, completed_at, "
            "output_digest FROM tasks"
        )
        where: list[str] = []
        args: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if state:
            where.append("state = ?")
            args.append(state)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)

        def q(db: Tx) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            tasks = list(db.query(sql, args))
            ids = [t["task_id"] for t in tasks]
            if not ids:
                return tasks, []
            rows = list(
                db.query(
                    f"SELECT p.task_id, p.output_digest, p.credit, {height_of('p.seq')} "  # noqa: S608
                    "AS block_height, s.state AS spot_check, "
                    "CASE WHEN s.indices IS NULL THEN 0 ELSE 1 END AS dispute_check "
                    "FROM proofs p LEFT JOIN spot_checks s ON "
                    "s.task_id = p.task_id AND s.device_id = p.device_id "
                    f"WHERE p.task_id IN ({marks(len(ids))})",
                    ids,
                )
            )
            return tasks, rows

        tasks, rows = await self.ctx.db.read(q)
        facts: dict[str, list[verification.ProofFacts]] = {}
        for r in rows:
            facts.setdefault(r["task_id"], []).append(_proof_facts(r))
        out = []
        for t in tasks:
            result = verification.task_verification(
                t["state"], t.pop("output_digest"), facts.get(t["task_id"], [])
            )
            if verified_only and result.state != verification.VERIFIED:
                continue
            t["verification"] = result.to_dict()
            out.append(t)
        return out


def _chunks_done(
    task: dict[str, Any], assignment: dict[str, Any], progress: dict[str, int]
) -> int | None:
    """The chunks done of one assignment row of ``task_view``, as its docstring says
    (``progress``: what each device last reported of the task)."""
    if assignment["state"] == "proved":
        return int(task["chunks"])
    if assignment["state"] in ("offered", "accepted"):
        return progress.get(assignment["device_id"])
    return None
