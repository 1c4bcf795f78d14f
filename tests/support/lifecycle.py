"""Seeding rows in a given lifecycle state the way the coordinator gets them there.

The database refuses a row created in a state that is not initial, or moved along no edge
of its lifecycle table; a test that needs, say, a completed task walks it there.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from enum import StrEnum

from aeamc.shared.lifecycle import Lifecycle


def path_to(lifecycle: Lifecycle[StrEnum], state: str) -> list[str]:
    """The shortest run of states from an initial one to ``state``, both included."""
    start = sorted(lifecycle.initial)
    came_from: dict[StrEnum, StrEnum | None] = dict.fromkeys(start)
    todo = deque(start)
    while todo:
        at = todo.popleft()
        if at == state:
            steps: list[str] = []
            step: StrEnum | None = at
            while step is not None:
                steps.append(str(step))
                step = came_from[step]
            return steps[::-1]
        for nxt in sorted(lifecycle.transitions[at]):
            if nxt not in came_from:
                came_from[nxt] = at
                todo.append(nxt)
    raise ValueError(f"no {lifecycle.name} state {state!r} is reachable")


def walk(
    conn: sqlite3.Connection,
    table: str,
    column: str,
    states: list[str],
    *,
    where: str,
    args: list[object],
) -> None:
    """Move the rows ``where`` selects through ``states[1:]``, one UPDATE each."""
    for state in states[1:]:
        conn.execute(f"UPDATE {table} SET {column}=? WHERE {where}", [state, *args])
