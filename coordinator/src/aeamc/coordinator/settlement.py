"""What a proof's fate does to its task and device (SPEC §14.4–§14.6): settling,
voiding, re-queueing, disputes and the one quarantine cascade."""

from __future__ import annotations

from aeamc.shared import proofs

from .context import Context
from .dbtx import Tx
from .membership import block_of
from .store import certificates
from .store import devices as device_rows
from .store import proofs as proof_rows
from .store import tasks as task_rows

MAX_CHALLENGE_INDICES = 256


def _differing_chunks(
    db: Tx, task_id: str, chunks: int, *, cap: int | None = MAX_CHALLENGE_INDICES
) -> list[int]:
    """Chunk indices on which the replicas of a task disagree (at most ``cap`` of them;
    with a cap, never empty: replicas whose digests differ are checked on chunk 0 at least)."""
    outputs = [
        proofs.split_output(bytes(r["output"]), chunks)
        for r in db.query("SELECT output FROM proofs WHERE task_id=?", [task_id])
    ]
    differing = [i for i in range(chunks) if len({o[i] for o in outputs}) > 1]
    if cap is None:
        return differing
    return differing[:cap] or [0]


class Settlement:
    """Task settling, voiding and the quarantine cascade, inside callers' transactions."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def settle_task(self, db: Tx, task_id: str, now: int) -> str:
        """After a proof is stored: complete the task when enough replicas agree, or mark it
        disputed (scheduling the re-execution of the differing chunks); returns its state."""
        return self.settle_tasks(db, [task_id], now)[task_id]

    def settle_tasks(self, db: Tx, task_ids: list[str], now: int) -> dict[str, str]:
        """``settle_task`` for each of ``task_ids`` (each task once), set-based: one query
        reads every task's live outputs and one statement completes the tasks whose
        replicas all agree; a dispute, rare, is settled task by task. Returns each task's
        state."""
        states: dict[str, str] = {}
        agreed: list[tuple[str, str]] = []
        for row in proof_rows.live_outputs(db, task_ids):
            task_id = row["task_id"]
            if row["live"] < row["replicas"]:
                states[task_id] = str(row["state"])
            elif row["outputs"] == 1:
                agreed.append((task_id, row["digest"]))
                states[task_id] = "completed"
            else:
                self._dispute(
                    db,
                    task_id,
                    f"{row['outputs']} different outputs from {row['live']} devices",
                    now,
                )
                states[task_id] = "disputed"
        task_rows.complete_tasks(db, agreed, now)
        missing = set(task_ids) - states.keys()
        assert not missing, f"proofs stored for unknown tasks {missing}"
        return states

    def _dispute(self, db: Tx, task_id: str, detail: str, now: int) -> None:
        task_rows.dispute_task(db, task_id, now, detail)
        # Every replica of a disputed task is spot-checked, whatever its device's record.
        for p in db.query(
            f"SELECT p.device_id, b.height AS block_height FROM proofs p "  # noqa: S608
            f"JOIN {block_of()} WHERE p.task_id=?",
            [task_id],
        ):
            self.schedule_dispute_check(
                db, task_id=task_id, device_id=p["device_id"], height=p["block_height"], now=now
            )

    def release_assignments(self, db: Tx, device_id: str, state: str, reason: str) -> list[str]:
        """Give a device's in-flight assignments back to the queue (state ``state``, with
        ``reason``); returns their task ids."""
        return task_rows.release_assignments(db, device_id, state, reason)

    def quarantine_in(
        self,
        db: Tx,
        device_id: str,
        reason: str,
        now: int,
        *,
        cheated: bool = True,
    ) -> list[str]:
        """The one quarantine cascade, in the caller's transaction: the device gets no more
        work, its in-flight assignments go back to the queue, its results are voided and
        their tasks re-queued, and its certificates are revoked (their serials are
        returned, to be dropped from the live TLS check after commit).

        Voided are its unverified results and, when it ``cheated`` (a failed check, a
        refusal, or the operator's decision), also those verified only by sampling (a
        random spot-check opens a few chunks): a device caught faking one result is not
        trusted for the chunks nobody opened. Results whose chunks the coordinator
        re-executed itself stay verified. A device quarantined for repeated silence keeps
        its sampled results, as silence is no evidence against work already checked.
        """
        device_rows.quarantine(db, device_id, reason)
        self.release_assignments(db, device_id, "lost", "device quarantined")
        sampled = (
            " OR (credit='verified' AND NOT EXISTS (SELECT 1 FROM spot_checks s WHERE "
            "s.task_id = proofs.task_id AND s.device_id = proofs.device_id "
            "AND s.indices IS NOT NULL))"
            if cheated
            else ""
        )
        tasks = [
            r[0]
            for r in db.execute(
                f"SELECT task_id FROM proofs WHERE device_id=? AND (credit='unverified'{sampled})",  # noqa: S608
                [device_id],
            ).fetchall()
        ]
        for task_id in tasks:
            self.void_proof(
                db, task_id, device_id, "proof voided: quarantined device", now, verified=True
            )
        return certificates.revoke_device(db, device_id, now, "quarantined")

    def void_proof(
        self,
        db: Tx,
        task_id: str,
        device_id: str,
        why: str,
        now: int,
        *,
        verified: bool = False,
    ) -> bool:
        """Void one proof not yet verified (with ``verified``, also a verified one): its
        credit is void, its assignment lost (so the task is offered to other devices, never
        this one again) and its task's result withdrawn. Returns whether it was voided."""
        if not proof_rows.void_credit(db, task_id, device_id, verified=verified):
            return False
        task_rows.lose_proved(db, task_id, device_id, why)
        self.reopen_task(db, task_id, f"re-queued: {why}", now)
        return True

    def reopen_task(self, db: Tx, task_id: str, detail: str, now: int) -> None:
        """After a proof of ``task_id`` lost its credit: a disputed task is settled by its
        re-executed checks; a completed or running one goes back to the queue, its result
        withdrawn. A failed task (deadline passed) stays failed."""
        task = task_rows.task_row(db, task_id)
        if task is None:
            return
        if task["state"] == "disputed":
            self.settle_dispute(db, task_id, now)
            return
        task_rows.requeue(db, task_id, detail, ("completed", "running"))

    def settle_dispute(self, db: Tx, task_id: str, now: int) -> None:
        """End a dispute once every live replica's differing chunks were re-executed by the
        coordinator: the task completes with the output that survived, or, when none did
        (or more chunks differed than one check re-executes), goes back to the queue.

        Needs nothing from the devices, so a replica that declines or goes silent cannot
        keep the task disputed: the wait is bounded by the next block and check round.
        """
        task = task_rows.task_row(db, task_id)
        if task is None or task["state"] != "disputed":
            return
        rows = db.execute(
            "SELECT p.output_digest, p.credit, s.state, s.indices IS NOT NULL "
            "FROM proofs p LEFT JOIN spot_checks s "
            "ON s.task_id = p.task_id AND s.device_id = p.device_id WHERE p.task_id=?",
            [task_id],
        ).fetchall()
        live = [r for r in rows if r[1] != "void"]
        if any(r[2] != "passed" or not r[3] for r in live):
            return  # a replica's re-execution is still to come
        digests = {r[0] for r in live}
        chunks = task["chunks"]
        covered = len(_differing_chunks(db, task_id, chunks, cap=None)) <= MAX_CHALLENGE_INDICES
        if len(digests) == 1 and covered:
            task_rows.complete_task(
                db,
                task_id,
                digests.pop(),
                now,
                "dispute resolved: the coordinator re-executed the differing chunks",
            )
            return
        task_rows.requeue(
            db,
            task_id,
            "re-queued: no replica's output survived re-execution of the differing chunks",
            ("disputed",),
        )

    def schedule_dispute_check(
        self, db: Tx, *, task_id: str, device_id: str, height: int, now: int
    ) -> None:
        """Queue the challenge of a disputed task's replica on the chunks that differ: the
        evidence is specific, so these indices are stored, not derived."""
        task = task_rows.task_row(db, task_id)
        assert task is not None  # its replica's proof references it
        indices = _differing_chunks(db, task_id, task["chunks"])
        # A dispute overrides an earlier, random check.
        proof_rows.schedule_dispute_check(
            db, task_id=task_id, device_id=device_id, height=height, indices=indices, now=now
        )
