"""Which database a coordinator uses: ``[database]``, and the one place that opens it.

Empty ``url`` (the default): the embedded SQLite file ``<state_dir>/coordinator.db``, for
one host. ``postgresql://…``: a PostgreSQL database shared by every node of a cluster
(docs/high-availability.md); the password belongs in ``PGPASSWORD``/``PGPASSFILE`` or a
client certificate, not in the URL, since the configuration file is readable by the
service's group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .groupcommit import GroupCommit


@dataclass(frozen=True)
class DatabaseConfig:
    """The coordinator's database (docs/coordinator.md#database)."""

    #: Empty: SQLite in the state directory. ``postgresql://user@host:port/dbname``: a
    #: PostgreSQL database, which several coordinator nodes may share.
    url: str = ""


def is_postgresql(c: DatabaseConfig) -> bool:
    return c.url != ""


def database_checks(c: DatabaseConfig) -> list[tuple[bool, str]]:
    """The configuration checks of ``[database]``, as (holds, what must hold)."""
    if not c.url:
        return []
    parts = urlsplit(c.url)
    return [
        (
            parts.scheme in ("postgresql", "postgres") and bool(parts.path.strip("/")),
            "database.url must be postgresql://[user@]host[:port]/dbname (or empty for SQLite)",
        ),
        (
            parts.password is None and not re.search(r"(^|[?&])password=", parts.query),
            "database.url must not hold a password: use PGPASSFILE, PGPASSWORD or a client "
            "certificate (docs/high-availability.md)",
        ),
    ]


def open_database(c: DatabaseConfig, sqlite_path: Path, *, shared: bool = False) -> GroupCommit:
    """The configured database, not yet opened (``open()`` connects and migrates).
    ``shared``: several processes of this host write the SQLite file."""
    if is_postgresql(c):
        from .pgdb import PostgresDatabase

        return PostgresDatabase(c.url)
    from .db import Database

    return Database(sqlite_path, shared=shared)
