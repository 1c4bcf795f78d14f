"""The transaction handle every store function takes, the same for SQLite and PostgreSQL.

A store function receives a :class:`Tx` from ``Database.write`` (the writer's open
transaction) or ``Database.read`` (a reader's connection) and runs SQL through it. The SQL
is written once, in the subset both engines read alike: ``?`` placeholders, ``ON CONFLICT``
rather than ``INSERT OR …``, ``RETURNING`` rather than ``lastrowid``, ``CASE`` rather than
a boolean summed, ``IS NOT DISTINCT FROM`` rather than ``IS`` between values. What cannot be
said alike (a JSON field, the row id of a table without a key column) asks
:attr:`Tx.dialect`. The PostgreSQL handle turns placeholders into its own
(``pgdb.PgTx``); nothing else differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import sqlite_utils

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

Params = Sequence[Any] | dict[str, Any] | None
T = TypeVar("T")

#: Rows per statement for a statement that carries its rows' values (``values``): a few
#: parameters each keeps it far below both engines' limits on parameters.
ROWS_PER_STATEMENT = 400


class Cursor(Protocol):
    """What a statement returns: DB-API rows as tuples."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Tx(Protocol):
    """One connection's statements: inside the writer's transaction, or a reader's."""

    #: ``"sqlite"`` or ``"postgresql"``, for the few statements the two spell differently.
    dialect: str

    def execute(self, sql: str, parameters: Params = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any: ...

    def query(self, sql: str, params: Params = None) -> Iterator[dict[str, Any]]: ...


class SqliteTx(sqlite_utils.Database):
    """The SQLite handle: ``sqlite_utils.Database`` with ``executemany`` and a dialect."""

    dialect = SQLITE

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        return self.conn.executemany(sql, rows)


def marks(n: int) -> str:
    """``?, ?, …`` for an ``IN`` list of ``n`` values (at least one: ``IN ()`` is no SQL)."""
    return ", ".join("?" * max(1, n))


def chunked(items: Sequence[T], size: int = ROWS_PER_STATEMENT) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``, in order: one statement per
    slice keeps each within the engines' limits (``itertools.batched`` is Python 3.12's)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def values(rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """``VALUES (?,…), (?,…), …`` for ``rows`` (at least one, all of one length), and
    their values in order: many rows written or joined by one statement."""
    row = "(" + ",".join("?" * len(rows[0])) + ")"
    return "VALUES " + ",".join([row] * len(rows)), [x for r in rows for x in r]


def values_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """``rows`` as a derived table whose columns are named ``columns``, for ``UPDATE …
    FROM`` and joins, and its values. Both engines name a ``VALUES`` list's columns
    ``column1``, ``column2``, …; this gives them their names."""
    sql, params = values(rows)
    named = ", ".join(f"column{i} AS {c}" for i, c in enumerate(columns, start=1))
    return f"(SELECT {named} FROM ({sql}) AS v)", params  # noqa: S608 (names are the caller's)


def insert(db: Tx, table: str, row: Mapping[str, Any]) -> None:
    """Insert one row, its columns named by the mapping's keys (trusted names only)."""
    cols = ", ".join(row)
    db.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks(len(row))})", list(row.values()))  # noqa: S608


def upsert(db: Tx, table: str, row: Mapping[str, Any], key: str) -> None:
    """Insert one row, or replace the non-key columns of the row with the same ``key``."""
    cols = ", ".join(row)
    sets = ", ".join(f"{c} = excluded.{c}" for c in row if c != key)
    db.execute(
        f"INSERT INTO {table} ({cols}) VALUES ({marks(len(row))}) "  # noqa: S608
        f"ON CONFLICT ({key}) DO UPDATE SET {sets}",
        list(row.values()),
    )


def hex_text(db: Tx, column: str) -> str:
    """The SQL for the lowercase hex text of the bytes in ``column``."""
    if db.dialect == POSTGRESQL:
        return f"encode({column}, 'hex')"
    return f"lower(hex({column}))"


def json_text(db: Tx, column: str, field: str) -> str:
    """The SQL for the text of the top-level ``field`` of the JSON held in ``column``."""
    if db.dialect == POSTGRESQL:
        return f"({column}::json ->> '{field}')"
    return f"json_extract({column}, '$.{field}')"
