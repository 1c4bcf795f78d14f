"""PostgreSQL storage: several coordinator nodes on one database (``[database] url``).

The same group commit as on SQLite (``groupcommit``), with the same guarantee: a write is
acknowledged only once its transaction is committed, and PostgreSQL's commit is durable
(``synchronous_commit`` left on, docs/high-availability.md). Write transactions are
serialised across every node by a transaction-level advisory lock taken at ``BEGIN``,
which is what SQLite's ``BEGIN IMMEDIATE`` gives one host: a transaction reads the state
the previous one committed, identity values (proof ``seq``, the device change log) are
handed out in commit order, so a follower that reads "everything after n" never skips a
row committed late, and a block's seq range never leaves out a proof committed after it.

Statements are written once for both engines (``dbtx``); :class:`PgTx` turns ``?`` into
psycopg's placeholders and binds values client side, so untyped parameters read as they
do in SQLite. Readers are autocommit connections, each statement its own snapshot, as
SQLite's reader connections are.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg

from . import pgschema
from .dbtx import POSTGRESQL, Cursor, Params, Tx
from .groupcommit import GroupCommit, StoreUnavailable

log = logging.getLogger(__name__)

#: Client-side settings of every session: a dead network is noticed within seconds, by
#: keepalives when the session is idle and by the TCP user timeout when data waits for an
#: acknowledgement, so a statement sent into a cut cable fails instead of hanging.
CONNECT_ARGS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 5000,
    "connect_timeout": 10,
    "application_name": "microblock-coordinator",
}

#: Server-side settings of every session: the server ends the session of a node that
#: went silent (its host died, its network was cut) after about 8 s, which rolls back
#: its open transaction (freeing the write lock) and, for the leader lock's session,
#: frees leadership. A leader steps down sooner, within ``leadership.LEASE_S`` of losing
#: sight of the database, so it has stopped before another node can start.
SERVER_OPTIONS = (
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3 "
    "-c tcp_user_timeout=8000"
)


@functools.lru_cache(maxsize=4096)
def placeholders(sql: str) -> str:
    """``sql`` with each ``?`` outside quotes as ``%s`` and each ``%`` doubled."""
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            out.append("%s")
            continue
        if ch == "%":
            out.append("%%")
            continue
        out.append(ch)
    return "".join(out)


class PgTx:
    """The :class:`dbtx.Tx` of one PostgreSQL connection."""

    dialect = POSTGRESQL

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Params = ()) -> Cursor:
        cur = self.conn.cursor()
        cur.execute(placeholders(sql), parameters or None)
        return cur

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        cur = self.conn.cursor()
        cur.executemany(placeholders(sql), list(rows))
        return cur

    def query(self, sql: str, params: Params = None) -> Iterator[dict[str, Any]]:
        cur = self.conn.cursor()
        cur.execute(placeholders(sql), params or None)
        if cur.description is None:
            return
        keys = [d.name for d in cur.description]
        for row in cur:
            yield dict(zip(keys, row, strict=True))


def connect(url: str, *, options: str = "", **settings: Any) -> psycopg.Connection[Any]:
    """An autocommit connection that binds parameters client side, with the keepalive
    settings above; ``options`` are server settings added to those of the URL, if any."""
    given = psycopg.conninfo.conninfo_to_dict(url).get("options") or ""
    return psycopg.connect(
        url,
        autocommit=True,
        cursor_factory=psycopg.ClientCursor,
        **{
            **CONNECT_ARGS,
            **settings,
            "options": " ".join(o for o in (SERVER_OPTIONS, str(given), options) if o),
        },
    )


class LeadershipLost(StoreUnavailable):
    """A write of a node that no longer holds the leader lock: refused, nothing written."""


def _holds_leader_lock(tx: Tx, pid: int) -> bool:
    """Whether the session ``pid`` still holds the leader lock (read under the write
    lock, so no other node can start leading between this check and the commit without
    this transaction's writes being ordered before everything it writes)."""
    key = pgschema.LEADER_LOCK
    row = tx.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND pid = ? AND classid = ? AND objid = ? AND objsubid = 1",
        [pid, key >> 32, key & 0xFFFFFFFF],
    ).fetchone()
    return bool(row[0])


class PostgresDatabase(GroupCommit):
    """The coordinator's database on a PostgreSQL server (see the module docstring)."""

    dialect = POSTGRESQL

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def _open_writer(self) -> Tx:
        conn = connect(self.url)
        pgschema.migrate(conn)
        return PgTx(conn)

    def _open_reader(self) -> tuple[Tx, Any]:
        conn = connect(self.url, options="-c default_transaction_read_only=on")
        return PgTx(conn), conn

    def _usable(self, tx: Tx) -> bool:
        conn = tx.conn  # type: ignore[attr-defined]
        return not (conn.closed or conn.broken)

    def _begin(self, tx: Tx) -> None:
        tx.execute("BEGIN")
        tx.execute("SELECT pg_advisory_xact_lock(?)", [pgschema.WRITE_LOCK])
        holder = self.fence() if self.fence is not None else None
        if holder is not None and not _holds_leader_lock(tx, holder):
            raise LeadershipLost(
                "this node's leader lock session has ended: another node may lead, so "
                "this node writes nothing until it has stepped down"
            )

    def _lost(self, exc: Exception) -> bool:
        # Errors of the connection itself (no SQLSTATE: libpq's own; class 08), or the
        # server ending the session (57P: shut down, restarted, the session terminated).
        code = getattr(exc, "sqlstate", None)
        return isinstance(exc, psycopg.OperationalError) and (
            code is None or code.startswith(("08", "57P"))
        )

    def _recover(self) -> None:
        """A broken connection (the server restarted, the network went) is replaced; the
        batch that failed on it was answered with its error and nothing of it is kept."""
        tx = self._tx()
        conn = tx.conn  # type: ignore[attr-defined]
        if conn.closed or conn.broken:
            try:
                self._wtx = PgTx(connect(self.url))
            except psycopg.Error:
                log.warning("cannot reconnect to the database yet; the next write tries again")

    def _checkpoint(self, tx: Tx) -> Any:
        """``VACUUM``: the space of erased rows is marked free and reused by later writes.
        PostgreSQL does not zero it; docs/high-availability.md says what that means for
        erasure (an encrypted volume, and the backups' retention)."""
        tx.execute("VACUUM")
        return None

    def size_bytes(self) -> int:
        """The database's size on the server, for the database size gauge."""
        return int(
            self.read_sync(
                lambda db: db.execute("SELECT pg_database_size(current_database())").fetchone()[0]
            )
        )
