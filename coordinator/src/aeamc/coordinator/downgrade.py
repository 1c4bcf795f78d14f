"""Taking a database back to the schema of an older release, keeping its accepted data.

A newer release stores the down statements of each migration it applies in the database
itself (``schema_downgrades``, see ``schema.py``), so this release can undo migrations it
does not know. One transaction applies them newest first, deletes their rows and sets
``user_version``: the database is at the newer version or at the older one, never between.
Tables and columns that both versions have keep every row; what only the newer version
has is dropped, and :func:`plan` says what that is before anything is done.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import lifecycle_triggers
from .schema import MIGRATIONS


class DowngradeRefused(RuntimeError):
    """The downgrade cannot be done; nothing was changed."""


@dataclass
class Plan:
    current: int
    target: int
    #: (version, its down statements), newest first.
    steps: list[tuple[int, list[str]]]
    #: What only the newer schema holds, as lines for the operator.
    drops: list[str] = field(default_factory=list)


def software_version() -> int:
    return len(MIGRATIONS)


def database_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def stored(conn: sqlite3.Connection) -> dict[int, list[str]]:
    """The down statements the database holds, by version (none before schema v10)."""
    if not _tables(conn).get("schema_downgrades"):
        return {}
    rows = conn.execute("SELECT version, statements FROM schema_downgrades").fetchall()
    return {int(v): json.loads(s) for v, s in rows}


def plan(conn: sqlite3.Connection, target: int | None = None) -> Plan:
    """What taking the database to ``target`` (default: this software's version) does;
    ``DowngradeRefused`` if it cannot be done. Changes nothing: the statements are tried
    in a transaction that is rolled back, to list what they drop."""
    wanted = software_version() if target is None else target
    steps = _steps(conn, wanted)
    current = database_version(conn)
    result = Plan(current, wanted if steps else current, steps)
    if steps:
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = _shape(conn)
            conn.execute("SAVEPOINT trial")
            _apply(conn, result)
            after = _shape(conn)
            conn.execute("ROLLBACK TO trial")
            result.drops = list(_drop_lines(conn, before, after))
        finally:
            conn.execute("ROLLBACK")
    return result


def backup(conn: sqlite3.Connection, db_path: Path, version: int) -> Path:
    """An online copy of the whole database next to it, readable by its owner only."""
    base = db_path.with_name(f"{db_path.name}.before-downgrade-v{version}")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}.{n}")
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    dest = sqlite3.connect(path)
    try:
        conn.backup(dest)
    finally:
        dest.close()
    os.chmod(path, 0o600)
    return path


def downgrade(conn: sqlite3.Connection, target: Plan) -> None:
    """Apply ``target`` (from :func:`plan`) in one transaction; checked again inside it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _steps(conn, target.target) != target.steps:
            raise DowngradeRefused("the database changed since the downgrade was planned")
        _apply(conn, target)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _steps(conn: sqlite3.Connection, target: int) -> list[tuple[int, list[str]]]:
    current = database_version(conn)
    if target < 1:
        raise DowngradeRefused(f"there is no schema v{target}: the oldest is v1")
    if current <= target:
        return []
    downs = stored(conn)
    missing = [v for v in range(target + 1, current + 1) if v not in downs]
    if missing:
        raise DowngradeRefused(
            f"the database (schema v{current}) holds no down statements for "
            f"{', '.join(f'v{v}' for v in missing)}: the release that applied "
            f"{'that migration' if len(missing) == 1 else 'those migrations'} did not record "
            f"how to undo {'it' if len(missing) == 1 else 'them'}. Nothing was changed; "
            "install the newer release again, or restore the backup taken before the upgrade "
            "(which loses what was accepted since)"
        )
    return [(v, downs[v]) for v in range(current, target, -1)]


def _apply(conn: sqlite3.Connection, p: Plan) -> None:
    """The downgrade's statements, inside the caller's transaction. The lifecycle triggers
    are dropped first (a newer release's may name what the down statements drop) and this
    release's are made again last, so the database is never without them once committed."""
    for name in lifecycle_triggers.stored(conn):
        conn.execute(f"DROP TRIGGER {_ident(name)}")
    for _, statements in p.steps:
        for sql in statements:
            conn.execute(sql)
    if _tables(conn).get("schema_downgrades"):
        conn.execute("DELETE FROM schema_downgrades WHERE version > ?", [p.target])
    conn.execute(f"PRAGMA user_version={int(p.target)}")
    for sql in lifecycle_triggers.render().values():
        conn.execute(sql)


def _tables(conn: sqlite3.Connection) -> dict[str, bool]:
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall()
    return {name: True for (name,) in rows}


#: Bookkeeping of the schema itself: not data the operator loses.
_NOT_DATA = frozenset({"schema_downgrades"})


def _shape(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """Every data table and its columns."""
    return {
        t: [row[1] for row in conn.execute(f"PRAGMA table_info({_ident(t)})")]
        for t in _tables(conn)
        if t not in _NOT_DATA
    }


def _drop_lines(
    conn: sqlite3.Connection, before: dict[str, list[str]], after: dict[str, list[str]]
) -> Iterator[str]:
    """What is in ``before`` but not in ``after``, with how much data it holds now."""
    for table, columns in sorted(before.items()):
        if table not in after:
            sql = f"SELECT count(*) FROM {_ident(table)}"  # noqa: S608 - a schema name
            rows = conn.execute(sql).fetchone()[0]
            yield f"table {table} ({_rows(rows)})"
            continue
        for column in columns:
            if column not in after[table]:
                sql = f"SELECT count({_ident(column)}) FROM {_ident(table)}"  # noqa: S608
                values = conn.execute(sql).fetchone()[0]
                yield f"column {table}.{column} ({values} non-null value{'s' * (values != 1)})"


def _rows(n: int) -> str:
    return f"{n} row{'s' * (n != 1)}"


def _ident(name: str) -> str:
    """``name`` (read from sqlite_master) as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'
