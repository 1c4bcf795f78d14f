"""The tasks table group: tasks and assignments.

The only writer of these tables; each function runs in the caller's transaction. A
task moves along ``aeamc.shared.lifecycle.TASK`` and an assignment along ``ASSIGNMENT``:
each statement names the states it moves from, and those edges are checked against the
tables once, here, at import (the database's triggers check every row besides).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from aeamc.shared.lifecycle import (
    ASSIGNMENT_LIFECYCLE,
    TASK_LIFECYCLE,
    AssignmentState,
    TaskState,
    check_transition,
)

from ..dbtx import Tx, chunked, insert, marks, values


def _edges_task(old: tuple[str, ...], new: str) -> None:
    for state in old:
        check_transition(TASK_LIFECYCLE, state, new)


def _edges_assignment(old: tuple[str, ...], new: str) -> None:
    for state in old:
        check_transition(ASSIGNMENT_LIFECYCLE, state, new)


# The moves the statements below make, checked against the lifecycle tables.
_edges_task(("queued",), "running")
_edges_task(("running",), "completed")
_edges_task(("running", "disputed"), "completed")
_edges_task(("running",), "disputed")
_edges_task(("queued", "running"), "failed")
_edges_assignment(("refused",), "offered")
_edges_assignment(("offered",), "accepted")
_edges_assignment(("offered",), "refused")
_edges_assignment(("offered", "accepted"), "proved")
_edges_assignment(("offered", "accepted"), "expired")
_edges_assignment(("offered", "accepted", "proved"), "lost")


# -- reads -------------------------------------------------------------------------------


def task_row(db: Tx, task_id: str) -> dict[str, Any] | None:
    """The task ``task_id`` as stored, or None."""
    return next(iter(db.query("SELECT * FROM tasks WHERE task_id=?", [task_id])), None)


def task_exists(db: Tx, task_id: str) -> bool:
    """Whether a task ``task_id`` exists."""
    return next(iter(db.query("SELECT 1 FROM tasks WHERE task_id=?", [task_id])), None) is not None


def assignment_row(db: Tx, task_id: str, device_id: str) -> Any:
    """The state, reason and signed message of ``device_id``'s assignment of ``task_id``,
    or None."""
    return next(
        iter(
            db.query(
                "SELECT a.state, a.reason, a.message FROM assignments a "
                "WHERE a.task_id=? AND a.device_id=?",
                [task_id, device_id],
            )
        ),
        None,
    )


def overdue_work(db: Tx, now: int) -> bool:
    """Whether an assignment is past its time or a live task past its deadline."""
    return bool(
        db.execute(
            "SELECT EXISTS (SELECT 1 FROM assignments WHERE state IN ('offered','accepted') "
            "AND expires_at < ?) OR EXISTS (SELECT 1 FROM tasks WHERE state IN "
            "('queued','running') AND deadline IS NOT NULL AND deadline < ?)",
            [now, now],
        ).fetchone()[0]
    )


def overdue_assignments(db: Tx, now: int) -> list[dict[str, Any]]:
    """The live assignments (task, device) past their time."""
    return list(
        db.query(
            "SELECT task_id, device_id FROM assignments "
            "WHERE state IN ('offered','accepted') AND expires_at < ?",
            [now],
        )
    )


def held_chunks(db: Tx, device_id: str, task_ids: Collection[str]) -> dict[str, int]:
    """Of ``task_ids``, those ``device_id`` holds a live (offered or accepted) assignment
    of, each with its task's chunks. Looked up by primary key: one heartbeat's few ids."""
    ids = sorted(set(task_ids))
    if not ids:
        return {}
    rows = db.query(
        "SELECT a.task_id, t.chunks FROM assignments a JOIN tasks t ON t.task_id = a.task_id "  # noqa: S608
        "WHERE a.device_id=? AND a.state IN ('offered','accepted') "
        f"AND a.task_id IN ({marks(len(ids))})",
        [device_id, *ids],
    )
    return {r["task_id"]: r["chunks"] for r in rows}


def add_progress(db: Tx, reports: dict[str, dict[str, int]]) -> None:
    """Add what each device reported (device id → task id → chunks done) to progress its
    earlier word was cleared from (:func:`clear_progress`), in one statement per few
    hundred reports."""
    rows = [(d, t, n) for d, kept in reports.items() for t, n in kept.items()]
    for part in chunked(rows):
        sql, params = values(part)
        db.execute(f"INSERT INTO progress (device_id, task_id, chunks_done) {sql}", params)


def clear_progress(db: Tx, device_ids: Collection[str]) -> None:
    """Forget everything ``device_ids`` have reported, in one statement per 500 devices."""
    for part in chunked(sorted(set(device_ids)), 500):
        db.execute(f"DELETE FROM progress WHERE device_id IN ({marks(len(part))})", part)  # noqa: S608


def progress_of(db: Tx, task_id: str) -> dict[str, int]:
    """The chunks done each device reported of ``task_id``, by device."""
    rows = db.execute("SELECT device_id, chunks_done FROM progress WHERE task_id=?", [task_id])
    return {device_id: n for device_id, n in rows}


def progress_held(db: Tx) -> set[tuple[str, str]]:
    """Every (task, device) with reported progress."""
    rows = db.execute("SELECT task_id, device_id FROM progress")
    return {(task_id, device_id) for task_id, device_id in rows}


def any_progress(db: Tx) -> bool:
    """Whether any progress is held."""
    return db.execute("SELECT 1 FROM progress LIMIT 1").fetchone() is not None


def forget_ended_progress(db: Tx) -> int:
    """Delete the progress of assignments no longer live; how many rows went."""
    cur = db.execute(
        "DELETE FROM progress WHERE NOT EXISTS (SELECT 1 FROM assignments a "
        "WHERE a.task_id = progress.task_id AND a.device_id = progress.device_id "
        "AND a.state IN ('offered','accepted'))"
    )
    return int(cur.rowcount)


def live_assignments(db: Tx) -> set[tuple[str, str]]:
    """Every live (offered or accepted) assignment, as (task, device)."""
    rows = db.query(
        "SELECT task_id, device_id FROM assignments WHERE state IN ('offered','accepted')"
    )
    return {(r["task_id"], r["device_id"]) for r in rows}


# -- tasks -------------------------------------------------------------------------------


def insert_task(db: Tx, row: dict[str, Any]) -> None:
    """Queue a new task (the row's state must be an initial one)."""
    check_transition(TASK_LIFECYCLE, None, row["state"])
    insert(db, "tasks", row)


def complete_task(db: Tx, task_id: str, digest: str, now: int, detail: str | None = None) -> None:
    """Complete a task with the output ``digest`` (``detail``: why, replacing the last)."""
    if detail is None:
        complete_tasks(db, [(task_id, digest)], now)
        return
    db.execute(
        "UPDATE tasks SET state='completed', output_digest=?, completed_at=?, detail=? "
        "WHERE task_id=?",
        [digest, now, detail, task_id],
    )


def complete_tasks(db: Tx, done: list[tuple[str, str]], now: int) -> None:
    """``complete_task`` for each ``(task_id, digest)`` in ``done``, in one statement."""
    db.executemany(
        "UPDATE tasks SET state='completed', output_digest=?, completed_at=? WHERE task_id=?",
        [(digest, now, task_id) for task_id, digest in done],
    )


def dispute_task(db: Tx, task_id: str, now: int, detail: str) -> None:
    """Mark a task whose live proofs disagree as disputed."""
    db.execute(
        "UPDATE tasks SET state='disputed', completed_at=?, detail=? WHERE task_id=?",
        [now, detail, task_id],
    )


def requeue(db: Tx, task_id: str, detail: str, from_states: tuple[str, ...]) -> None:
    """Put a task in one of ``from_states`` back in the queue, its result withdrawn."""
    for state in from_states:
        check_transition(TASK_LIFECYCLE, state, TaskState.QUEUED)
    states = ",".join(f"'{TaskState(s).value}'" for s in from_states)
    db.execute(
        "UPDATE tasks SET state='queued', output_digest=NULL, completed_at=NULL, detail=? "  # noqa: S608
        f"WHERE task_id=? AND state IN ({states})",
        [detail, task_id],
    )


def fail_past_deadline(db: Tx, now: int) -> None:
    """Fail every queued or running task past its deadline, expiring its live assignments
    with it, so no late proof can complete a failed task (failed is never left)."""
    db.execute(
        "UPDATE assignments SET state='expired', reason='task deadline passed' "
        "WHERE state IN ('offered','accepted') AND task_id IN (SELECT task_id FROM "
        "tasks WHERE state IN ('queued','running') AND deadline IS NOT NULL "
        "AND deadline < ?)",
        [now],
    )
    db.execute(
        "UPDATE tasks SET state='failed', completed_at=?, detail='deadline passed' "
        "WHERE state IN ('queued','running') AND deadline IS NOT NULL AND deadline < ?",
        [now, now],
    )


def fail_task(db: Tx, task_id: str, now: int, detail: str) -> None:
    """Fail a queued or running task for good (``detail``: why)."""
    db.execute(
        "UPDATE tasks SET state='failed', completed_at=?, detail=? "
        "WHERE task_id=? AND state IN ('queued','running')",
        [now, detail, task_id],
    )


# -- assignments -------------------------------------------------------------------------


def assign(
    db: Tx,
    task_id: str,
    device_id: str,
    now: int,
    *,
    expires_at: int,
    message: str,
) -> None:
    """Offer ``task_id`` to ``device_id`` (again, only after a refusal; the key (task,
    device) never lets a device hold one task twice) and mark a queued task running."""
    db.execute(
        "INSERT INTO assignments (task_id, device_id, state, issued_at, expires_at, "
        "message) VALUES (?,?,'offered',?,?,?) ON CONFLICT (task_id, device_id) DO "
        "UPDATE SET state='offered', issued_at=excluded.issued_at, reason=NULL, "
        "expires_at=excluded.expires_at, message=excluded.message "
        "WHERE assignments.state='refused'",
        [task_id, device_id, now, expires_at, message],
    )
    db.execute("UPDATE tasks SET state='running' WHERE task_id=? AND state='queued'", [task_id])


def open_offers(db: Tx) -> list[str]:
    """The signed messages of every assignment still offered: pushed, answer unrecorded."""
    return [r[0] for r in db.execute("SELECT message FROM assignments WHERE state='offered'")]


def accept_offer(db: Tx, task_id: str, device_id: str) -> None:
    """The device's endpoint took an offered assignment."""
    db.execute(
        "UPDATE assignments SET state='accepted' WHERE task_id=? AND device_id=? "
        "AND state='offered'",
        [task_id, device_id],
    )


def refuse_offer(db: Tx, task_id: str, device_id: str, reason: str) -> bool:
    """The device did not take an offered assignment; whether it was still offered."""
    cur = db.execute(
        "UPDATE assignments SET state='refused', reason=? WHERE task_id=? AND "
        "device_id=? AND state='offered'",
        [reason, task_id, device_id],
    )
    return bool(cur.rowcount)


def mark_proved_many(db: Tx, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Mark the live assignments among ``keys`` (``(task_id, device_id)``) proved, in one
    statement per device (a batch comes from one); returns the keys that were live. Only
    a live assignment becomes proved: a proof for any other is refused by the caller."""
    by_device: dict[str, list[str]] = {}
    for task_id, device_id in keys:
        by_device.setdefault(device_id, []).append(task_id)
    live: set[tuple[str, str]] = set()
    for device_id, task_ids in by_device.items():
        marks = ",".join("?" * len(task_ids))
        # The device and the task list reach the primary key; a row-value IN over both
        # columns is planned as a scan of every live assignment instead.
        cur = db.execute(
            "UPDATE assignments SET state='proved' "  # noqa: S608
            f"WHERE device_id=? AND task_id IN ({marks}) AND state IN ('offered','accepted') "
            "RETURNING task_id",
            [device_id, *task_ids],
        )
        live.update((row[0], device_id) for row in cur.fetchall())
    return live


def expire(db: Tx, task_id: str, device_id: str, reason: str) -> None:
    """An assignment past its time expires."""
    db.execute(
        "UPDATE assignments SET state='expired', reason=? WHERE task_id=? AND device_id=?",
        [reason, task_id, device_id],
    )


def release_assignments(db: Tx, device_id: str, state: str, reason: str) -> list[str]:
    """Take a device's live assignments back (to ``state``, with ``reason``), so their
    tasks go to other devices; returns their task ids."""
    _edges_assignment(("offered", "accepted"), state)
    tasks = [
        r["task_id"]
        for r in db.query(
            "SELECT task_id FROM assignments WHERE device_id=? AND state IN ('offered','accepted')",
            [device_id],
        )
    ]
    db.execute(
        "UPDATE assignments SET state=?, reason=? WHERE device_id=? "
        "AND state IN ('offered','accepted')",
        [AssignmentState(state).value, reason, device_id],
    )
    return tasks


def end_assignment(db: Tx, task_id: str, device_id: str, state: str, reason: str) -> None:
    """End one live (offered or accepted) assignment, in ``state`` with ``reason``."""
    _edges_assignment(("offered", "accepted"), state)
    db.execute(
        "UPDATE assignments SET state=?, reason=? WHERE task_id=? AND device_id=? "
        "AND state IN ('offered','accepted')",
        [AssignmentState(state).value, reason, task_id, device_id],
    )


def end_live_assignments(db: Tx, task_id: str, state: str, reason: str) -> None:
    """End every live (offered or accepted) assignment of ``task_id``."""
    _edges_assignment(("offered", "accepted"), state)
    db.execute(
        "UPDATE assignments SET state=?, reason=? WHERE task_id=? "
        "AND state IN ('offered','accepted')",
        [AssignmentState(state).value, reason, task_id],
    )


def has_live_assignments(db: Tx, task_id: str) -> bool:
    """Whether some device still holds ``task_id`` (offered or accepted)."""
    found = db.execute(
        "SELECT 1 FROM assignments WHERE task_id=? AND state IN ('offered','accepted')",
        [task_id],
    ).fetchone()
    return found is not None


def lose_proved(db: Tx, task_id: str, device_id: str, reason: str) -> None:
    """A proved assignment whose proof was voided is lost: the task is never offered to
    that device again."""
    db.execute(
        "UPDATE assignments SET state='lost', reason=? "
        "WHERE task_id=? AND device_id=? AND state='proved'",
        [reason, task_id, device_id],
    )


def delete_device_assignments(db: Tx, device_id: str) -> int:
    """Delete every assignment of an erased device; how many."""
    return int(db.execute("DELETE FROM assignments WHERE device_id=?", [device_id]).rowcount)
