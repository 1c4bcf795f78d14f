"""The devices table group: devices, heartbeats, erased_devices and candidates (mDNS).

The only writer of these tables; each function runs in the caller's transaction. A
device's state moves along ``aeamc.shared.lifecycle.DEVICE`` (checked here where the old
state is at hand, and by the database's triggers always).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aeamc.shared.lifecycle import DEVICE_LIFECYCLE, check_transition

from ..dbtx import Tx, chunked, insert, marks, upsert, values, values_table

#: The columns of a device's record (reputation inputs) that a count may increase.
RECORD_COLUMNS = frozenset(
    {"passes", "failures", "unanswered", "timeouts", "refusals", "completed"}
)


def _first(db: Tx, sql: str, args: list[Any]) -> dict[str, Any] | None:
    return next(iter(db.query(sql, args)), None)


# -- reads -------------------------------------------------------------------------------


def all_devices(db: Tx) -> list[dict[str, Any]]:
    """Every device row (the registry's load)."""
    return list(db.query("SELECT * FROM devices"))


def heartbeat_times(db: Tx, since: int) -> list[tuple[str, int]]:
    """(device, receive time) of every heartbeat received since ``since``, oldest first."""
    return [
        (r["device_id"], r["received_at"])
        for r in db.query(
            "SELECT device_id, received_at FROM heartbeats WHERE received_at >= ? "
            "ORDER BY received_at",
            [since],
        )
    ]


# -- following the writes of other processes (store/registry.py) -------------------------

#: ``device_changes`` rows the leader keeps; a process that fell further behind reloads.
CHANGES_KEPT = 200_000


def change_cursor(db: Tx) -> int:
    """The id of the latest device change committed (0 before any)."""
    row = db.execute("SELECT MAX(id) FROM device_changes").fetchone()
    return int(row[0] or 0)


def changes_after(
    db: Tx, cursor: int, limit: int
) -> tuple[int, dict[str, dict[str, Any] | None]] | None:
    """The devices written after change ``cursor`` (at most ``limit`` changes): the new
    cursor and each device's row now (None: deleted). None when changes after ``cursor``
    were pruned, so the caller must reload every device."""
    first = db.execute("SELECT MIN(id) FROM device_changes").fetchone()[0]
    if first is not None and first > cursor + 1:
        return None
    changed = db.execute(
        "SELECT id, device_id FROM device_changes WHERE id > ? ORDER BY id LIMIT ?",
        [cursor, limit],
    ).fetchall()
    if not changed:
        return cursor, {}
    ids = list(dict.fromkeys(device_id for _, device_id in changed))
    rows: dict[str, dict[str, Any] | None] = dict.fromkeys(ids)
    for row in db.query(
        f"SELECT * FROM devices WHERE device_id IN ({marks(len(ids))})",  # noqa: S608
        ids,
    ):
        rows[row["device_id"]] = row
    return int(changed[-1][0]), rows


def heartbeat_times_after(
    db: Tx, after: dict[str, int], since: int
) -> dict[str, list[tuple[int, int]]]:
    """For each device of ``after``, (seq, receive time) of its heartbeats with a seq
    above the one given, received at ``since`` or later, in their order (one range of the
    heartbeats' key per device). By seq, not by time: two heartbeats may share a
    millisecond, and each is one proof of availability."""
    out: dict[str, list[tuple[int, int]]] = {}
    for device_id, seq in after.items():
        rows = db.execute(
            "SELECT seq, received_at FROM heartbeats WHERE device_id=? AND seq > ? "
            "AND received_at >= ? ORDER BY seq",
            [device_id, seq, since],
        ).fetchall()
        if rows:
            out[device_id] = [(r[0], r[1]) for r in rows]
    return out


def prune_changes(db: Tx, keep: int = CHANGES_KEPT) -> int:
    """Delete all but the latest ``keep`` device changes; how many were deleted."""
    cur = db.execute(
        "DELETE FROM device_changes WHERE id <= (SELECT MAX(id) FROM device_changes) - ?",
        [keep],
    )
    return int(cur.rowcount)


def is_erased(db: Tx, device_id: str) -> bool:
    """Whether ``device_id`` was erased (its tombstone refuses the identity for good)."""
    return _first(db, "SELECT 1 FROM erased_devices WHERE device_id=?", [device_id]) is not None


def exists(db: Tx, device_id: str) -> bool:
    """Whether ``device_id`` is enrolled (its row exists) as the transaction sees it."""
    return db.execute("SELECT 1 FROM devices WHERE device_id=?", [device_id]).fetchone() is not None


def takes_work(db: Tx, device_id: str) -> bool:
    """Whether ``device_id`` is enrolled and active as the transaction sees it: the only
    state in which it may be offered work."""
    row = db.execute("SELECT state FROM devices WHERE device_id=?", [device_id]).fetchone()
    return row is not None and row[0] == "active"


def device_row(db: Tx, device_id: str) -> dict[str, Any] | None:
    """The row of ``device_id`` as committed, or None."""
    return _first(db, "SELECT * FROM devices WHERE device_id=?", [device_id])


def enrollment_row(db: Tx, device_id: str) -> dict[str, Any] | None:
    """The state, enrollment and approval times of ``device_id``, or None."""
    return _first(
        db, "SELECT state, enrolled_at, approved_at FROM devices WHERE device_id = ?", [device_id]
    )


def waiting_for_approval(db: Tx, address: str | None, since: int) -> tuple[int, int]:
    """How many identities wait for approval since ``since``: overall, and from ``address``."""
    row = _first(
        db,
        "SELECT COUNT(*) AS n, "
        "COALESCE(SUM(CASE WHEN address IS NOT DISTINCT FROM ? THEN 1 ELSE 0 END), 0) AS here "
        "FROM devices "
        "WHERE state='pending' AND approved_at IS NULL AND enrolled_at >= ?",
        [address, since],
    )
    assert row is not None  # an aggregate always has its row
    return int(row["n"]), int(row["here"])


def expired_pending(db: Tx, since: int) -> list[str]:
    """The identities that have waited for approval since before ``since``."""
    return [
        r["device_id"]
        for r in db.query(
            "SELECT device_id FROM devices WHERE state='pending' "
            "AND approved_at IS NULL AND enrolled_at < ?",
            [since],
        )
    ]


def passes(db: Tx, device_ids: list[str]) -> dict[str, int]:
    """The passed spot-checks of each of ``device_ids``, in one query."""
    if not device_ids:
        return {}
    return dict(
        db.execute(
            f"SELECT device_id, passes FROM devices WHERE device_id IN ({marks(len(device_ids))})",  # noqa: S608
            device_ids,
        ).fetchall()
    )


# -- writes ------------------------------------------------------------------------------


def insert_device(
    db: Tx,
    *,
    device_id: str,
    public_key: str,
    state: str,
    capabilities: str,
    endpoint: str | None,
    address: str | None,
    now: int,
) -> None:
    """Enroll a new device in an initial state (approved at once when it is active)."""
    check_transition(DEVICE_LIFECYCLE, None, state)
    insert(
        db,
        "devices",
        {
            "device_id": device_id,
            "public_key": public_key,
            "state": state,
            "capabilities": capabilities,
            "endpoint": endpoint,
            "address": address,
            "enrolled_at": now,
            "approved_at": now if state == "active" else None,
        },
    )


def reenroll_device(
    db: Tx,
    *,
    device_id: str,
    old_state: str,
    state: str,
    capabilities: str,
    endpoint: str | None,
    address: str | None,
    new_wait: bool,
    now: int,
) -> None:
    """Take an enrolled device's new capabilities, endpoint, address and state (``new_wait``:
    an expired pending identity starts waiting again at ``now``); the first approval time
    is kept once set."""
    check_transition(DEVICE_LIFECYCLE, old_state, state)
    db.execute(
        "UPDATE devices SET capabilities=?, endpoint=?, address=?, state=?, "
        "enrolled_at=CASE WHEN ? THEN ? ELSE enrolled_at END, "
        "approved_at=COALESCE(approved_at, CASE WHEN ?='active' THEN ? END) "
        "WHERE device_id=?",
        [capabilities, endpoint, address, state, new_wait, now, state, now, device_id],
    )


def set_tags(db: Tx, device_id: str, tags: list[str]) -> bool:
    """Give the device exactly the operator's ``tags`` (sorted, distinct); False when it
    is not enrolled."""
    cur = db.execute(
        "UPDATE devices SET tags=? WHERE device_id=?", [json.dumps(sorted(set(tags))), device_id]
    )
    return cur.rowcount == 1


@dataclass(frozen=True)
class Beat:
    """One heartbeat to store, as its row: received at ``now``, scored ``score``."""

    device_id: str
    seq: int
    timestamp: int
    now: int
    telemetry: str
    score: float


def record_heartbeats(db: Tx, beats: Sequence[Beat]) -> set[int]:
    """Store each heartbeat of an active or stale device whose ``seq`` is above every
    earlier one (a stale device becomes active), in a few statements whatever their
    number: the indexes into ``beats`` of those stored. A device named twice has its
    heartbeats taken in their order, each against the one before, exactly as one at a
    time; nothing is written for a replay or a device not active or stale.

    Why: over a network, a statement costs a round trip while the write lock is held, so
    a heartbeat a statement caps the whole cluster's heartbeat rate (docs/performance.md)."""
    stored: set[int] = set()
    rounds: list[list[int]] = []
    times_seen: dict[str, int] = {}
    for i, beat in enumerate(beats):
        n = times_seen.get(beat.device_id, 0)
        times_seen[beat.device_id] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(i)
    for indexes in rounds:  # a device at most once in each: one UPDATE row per device
        for part in chunked(indexes):
            stored |= _record_once_each(db, [(i, beats[i]) for i in part])
    return stored


def _record_once_each(db: Tx, part: list[tuple[int, Beat]]) -> set[int]:
    table, params = values_table(
        ("device_id", "seq", "seen", "telemetry", "score"),
        [(b.device_id, b.seq, b.now, b.telemetry, b.score) for _, b in part],
    )
    rows = db.execute(
        "UPDATE devices SET last_seq=b.seq, last_seen=b.seen, telemetry=b.telemetry, "  # noqa: S608
        "eps=b.score, state=CASE WHEN devices.state='stale' THEN 'active' ELSE devices.state "
        f"END FROM {table} AS b "
        "WHERE devices.device_id=b.device_id AND devices.last_seq < b.seq "
        "AND devices.state IN ('active','stale') RETURNING devices.device_id",
        params,
    ).fetchall()
    taken = {row[0] for row in rows}
    kept = [(i, beat) for i, beat in part if beat.device_id in taken]
    if kept:
        sql, params = values(
            [(b.device_id, b.seq, b.timestamp, b.now, b.telemetry) for _, b in kept]
        )
        db.execute(
            f"INSERT INTO heartbeats (device_id, seq, timestamp, received_at, telemetry) {sql}",
            params,
        )
    return {i for i, _ in kept}


def set_device_state(db: Tx, device_id: str, state: str, reason: str, now: int) -> None:
    """Move a device to ``state`` for ``reason`` along the device lifecycle; becoming
    active records its first approval time."""
    row = db.execute("SELECT state FROM devices WHERE device_id=?", [device_id]).fetchone()
    if row is not None:
        check_transition(DEVICE_LIFECYCLE, row[0], state)
    db.execute(
        "UPDATE devices SET state=?, state_reason=?, "
        "approved_at=CASE WHEN ?='active' THEN COALESCE(approved_at, ?) "
        "ELSE approved_at END WHERE device_id=?",
        [state, reason, state, now, device_id],
    )


def mark_stale(db: Tx, device_id: str) -> None:
    """An active device that missed its heartbeats becomes stale (any other stays)."""
    db.execute(
        "UPDATE devices SET state='stale', state_reason='missed heartbeats' "
        "WHERE device_id=? AND state='active'",
        [device_id],
    )


def quarantine(db: Tx, device_id: str, reason: str) -> None:
    """Quarantine a device (reachable from every state, never left)."""
    db.execute(
        "UPDATE devices SET state='quarantined', state_reason=? WHERE device_id=?",
        [reason, device_id],
    )


def count(db: Tx, device_id: str, column: str) -> int | None:
    """Add one to ``column`` of the device's record (one of ``RECORD_COLUMNS``): its new
    total, None when the device has no row (erased meanwhile)."""
    return count_many(db, column, {device_id: 1}).get(device_id)


def count_many(db: Tx, column: str, counts: dict[str, int]) -> dict[str, int]:
    """Add ``counts[device_id]`` to ``column`` of each device's record, in one statement
    per few hundred devices: each counted device's new total (a device without a row is
    left out).

    Totals, not increments, are what the registry mirrors: its view takes in the same
    committed row again when it follows the database (store/registry.py), and a total
    taken in twice is still counted once, where an increment would count twice."""
    if column not in RECORD_COLUMNS:
        raise ValueError(f"no record column {column!r}")
    totals: dict[str, int] = {}
    for part in chunked(list(counts.items())):
        table, params = values_table(("device_id", "n"), part)
        rows = db.execute(
            f"UPDATE devices SET {column}=devices.{column}+c.n FROM {table} AS c "  # noqa: S608
            f"WHERE devices.device_id=c.device_id RETURNING devices.device_id, devices.{column}",
            params,
        ).fetchall()
        totals.update((row[0], int(row[1])) for row in rows)
    return totals


def delete_device(db: Tx, device_id: str) -> None:
    """Delete a device row: only the pending sweep (SPEC §15.2) and erasure do."""
    db.execute("DELETE FROM devices WHERE device_id=?", [device_id])


def erase_device(db: Tx, device_id: str, now: int) -> None:
    """Delete an erased device's row and leave the tombstone that refuses its identity
    for good (SPEC §11)."""
    delete_device(db, device_id)
    db.execute(
        "INSERT INTO erased_devices (device_id, erased_at) VALUES (?,?) ON CONFLICT DO NOTHING",
        [device_id, now],
    )


def delete_heartbeats(db: Tx, device_id: str) -> int:
    """Delete a device's heartbeat history; how many rows."""
    return int(db.execute("DELETE FROM heartbeats WHERE device_id=?", [device_id]).rowcount)


def purge_heartbeats(db: Tx, cutoff: int) -> int:
    """Delete heartbeats received before ``cutoff`` (telemetry retention); how many."""
    return int(db.execute("DELETE FROM heartbeats WHERE received_at < ?", [cutoff]).rowcount)


def see_candidate(db: Tx, row: dict[str, Any]) -> None:
    """Keep the latest mDNS advert of a device not enrolled (one row per device)."""
    upsert(db, "candidates", row, key="device_id")


def candidate(db: Tx, device_id: str) -> dict[str, Any] | None:
    """The mDNS candidate row of ``device_id``, or None."""
    return _first(db, "SELECT * FROM candidates WHERE device_id=?", [device_id])


def purge_candidates(db: Tx, cutoff: int) -> int:
    """Delete candidates whose latest advert came before ``cutoff`` (their retention);
    how many."""
    return int(db.execute("DELETE FROM candidates WHERE last_seen < ?", [cutoff]).rowcount)


def forget_erased_candidates(db: Tx) -> int:
    """Delete every candidate row of an erased identity; how many."""
    return int(
        db.execute(
            "DELETE FROM candidates WHERE device_id IN (SELECT device_id FROM erased_devices)"
        ).rowcount
    )


def is_candidate(db: Tx, device_id: str) -> bool:
    """Whether ``device_id`` has an mDNS candidate row (seen advertising, not enrolled)."""
    found = db.execute("SELECT 1 FROM candidates WHERE device_id=?", [device_id]).fetchone()
    return found is not None


def forget_candidate(db: Tx, device_id: str) -> int:
    """Delete a device's mDNS candidate row (it enrolled, or is erased); how many rows."""
    return int(db.execute("DELETE FROM candidates WHERE device_id=?", [device_id]).rowcount)
