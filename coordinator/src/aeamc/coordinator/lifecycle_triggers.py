"""The database's copy of the lifecycle tables: SQLite triggers rendered from them.

``aeamc.shared.lifecycle`` holds the one statement of each lifecycle. Here each is tied to
the column that stores it, and rendered as two triggers: one refuses an ``UPDATE`` that
moves the column along no edge of the table, one refuses an ``INSERT`` in a state that is
not initial. Either aborts the statement (``sqlite3.IntegrityError``) and so the write
job it belongs to: no SQL anywhere in the coordinator, nor a hand-run ``sqlite3`` session,
can store a transition the tables do not hold.

The triggers are installed at every start, after the migrations, rather than by a
migration: a migration's text is frozen once released, while these follow the tables,
so a copy kept in a migration could drift from the code that enforces the same rules.
Rendering is deterministic; :func:`install` rewrites the triggers only when the stored
ones differ (a first start, a changed table, or a migration that rebuilt a table), all
in one transaction, so an open database never lacks them.

Conditions are chains of ``=`` comparisons, not ``IN`` lists: SQLite builds a temporary
table per row for an ``IN`` list (see schema v7), and a block inserts thousands of
spot-checks in one statement.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from enum import StrEnum

from aeamc.shared.lifecycle import (
    ASSIGNMENT_LIFECYCLE,
    CREDIT_LIFECYCLE,
    DEVICE_LIFECYCLE,
    SPOT_CHECK_LIFECYCLE,
    TASK_LIFECYCLE,
    Lifecycle,
)

#: Every trigger this module owns has a name starting with this, and no other does.
PREFIX = "lifecycle_"

#: Where each lifecycle is stored: (lifecycle, table, column).
STORED: tuple[tuple[Lifecycle[StrEnum], str, str], ...] = (
    (DEVICE_LIFECYCLE, "devices", "state"),
    (TASK_LIFECYCLE, "tasks", "state"),
    (ASSIGNMENT_LIFECYCLE, "assignments", "state"),
    (CREDIT_LIFECYCLE, "proofs", "credit"),
    (SPOT_CHECK_LIFECYCLE, "spot_checks", "state"),
)


def render() -> dict[str, str]:
    """Every lifecycle trigger, name → its ``CREATE TRIGGER`` statement, as SQLite keeps
    it in ``sqlite_master.sql`` (so stored and rendered triggers compare as strings)."""
    out: dict[str, str] = {}
    for lifecycle, table, column in STORED:
        out.update(triggers(lifecycle, table, column))
    return out


def triggers(lifecycle: Lifecycle[StrEnum], table: str, column: str) -> dict[str, str]:
    """The two triggers that hold ``table.column`` to ``lifecycle``, name → statement."""
    name = f"{PREFIX}{table}_{column}"
    return {
        f"{name}_insert": _insert_trigger(lifecycle, table, column, f"{name}_insert"),
        f"{name}_update": _update_trigger(lifecycle, table, column, f"{name}_update"),
    }


def stored(conn: sqlite3.Connection) -> dict[str, str]:
    """The lifecycle triggers a database holds, name → statement."""
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
        [len(PREFIX), PREFIX],
    ).fetchall()
    return {name: sql for name, sql in rows}


def install(conn: sqlite3.Connection) -> bool:
    """Make the database's lifecycle triggers exactly :func:`render`'s, in one transaction
    on ``conn`` (which must not be in one). Returns whether anything changed."""
    wanted = render()
    if stored(conn) == wanted:
        return False
    conn.execute("BEGIN IMMEDIATE")
    try:
        for name in stored(conn):
            conn.execute(f'DROP TRIGGER "{name}"')
        for sql in wanted.values():
            conn.execute(sql)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return True


def render_postgresql() -> list[str]:
    """The same rules as PostgreSQL statements: per lifecycle column, one PL/pgSQL
    function and one trigger on ``INSERT`` and on ``UPDATE OF`` the column, each created
    or replaced (so running them again is how they are kept equal to the tables)."""
    out: list[str] = []
    for lifecycle, table, column in STORED:
        name = f"{PREFIX}{table}_{column}"
        initial = _ordered(lifecycle, lifecycle.initial)
        allowed = " OR ".join(f"NEW.{column} = {_quote(s)}" for s in initial)
        edges = [
            f"(OLD.{column} = {_quote(old)} AND "
            f"{_any(f'NEW.{column} = {_quote(new)}' for new in _ordered(lifecycle, targets))})"
            for old, targets in _items(lifecycle)
            if targets
        ]
        legal = " OR ".join(edges) if edges else "FALSE"
        out.append(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            "BEGIN\n"
            f"    IF TG_OP = 'INSERT' AND NOT ({allowed}) THEN\n"
            f"        RAISE EXCEPTION {_quote(f'illegal initial {lifecycle.name} state')}\n"
            "            USING ERRCODE = 'integrity_constraint_violation';\n"
            f"    ELSIF TG_OP = 'UPDATE' AND NEW.{column} IS DISTINCT FROM OLD.{column}\n"
            f"        AND NOT ({legal}) THEN\n"
            f"        RAISE EXCEPTION {_quote(f'illegal {lifecycle.name} transition')}\n"
            "            USING ERRCODE = 'integrity_constraint_violation';\n"
            "    END IF;\n"
            "    RETURN NEW;\n"
            "END $$"
        )
        out.append(
            f"CREATE OR REPLACE TRIGGER {name} BEFORE INSERT OR UPDATE OF {column} ON {table}\n"
            f"    FOR EACH ROW EXECUTE FUNCTION {name}()"
        )
    return out


def _insert_trigger(lifecycle: Lifecycle[StrEnum], table: str, column: str, name: str) -> str:
    initial = _ordered(lifecycle, lifecycle.initial)
    allowed = " OR ".join(f"NEW.{column} = {_quote(s)}" for s in initial)
    return (
        f"CREATE TRIGGER {name} BEFORE INSERT ON {table}\n"
        f"WHEN NOT ({allowed})\n"
        f"BEGIN SELECT RAISE(ABORT, {_quote(f'illegal initial {lifecycle.name} state')}); END"
    )


def _update_trigger(lifecycle: Lifecycle[StrEnum], table: str, column: str, name: str) -> str:
    edges = [
        f"(OLD.{column} = {_quote(old)} AND "
        f"{_any(f'NEW.{column} = {_quote(new)}' for new in _ordered(lifecycle, targets))})"
        for old, targets in _items(lifecycle)
        if targets
    ]
    legal = " AND NOT (\n    " + "\n    OR ".join(edges) + ")" if edges else ""
    return (
        f"CREATE TRIGGER {name} BEFORE UPDATE OF {column} ON {table}\n"
        f"WHEN NEW.{column} IS NOT OLD.{column}{legal}\n"
        f"BEGIN SELECT RAISE(ABORT, {_quote(f'illegal {lifecycle.name} transition')}); END"
    )


def _items(lifecycle: Lifecycle[StrEnum]) -> Iterator[tuple[StrEnum, frozenset[StrEnum]]]:
    """The table's rows in the order the states are declared (a stable rendering)."""
    for state in lifecycle.states:
        yield state, lifecycle.transitions[state]


def _ordered(lifecycle: Lifecycle[StrEnum], states: frozenset[StrEnum]) -> list[StrEnum]:
    return [s for s in lifecycle.states if s in states]


def _any(terms: Iterator[str]) -> str:
    """One term as it is, several as a parenthesised ``OR`` chain."""
    parts = list(terms)
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
