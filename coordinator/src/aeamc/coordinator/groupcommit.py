"""One writer thread with group commit, readers on their own connections: for any engine.

A heartbeat or proof is answered 202 only after its transaction is committed durably, so
an acknowledged message survives ``kill -9`` and power loss. To keep that affordable, the
writer drains every queued operation into one transaction and one flush to disk (group
commit); each operation runs in its own savepoint, so one failing write never takes its
neighbours down. The database is never touched on the event loop. The engines
(``db.Database`` for SQLite, ``pgdb.PostgresDatabase``) say how to connect, how a write
transaction begins, and what a checkpoint is; everything else is here, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from .dbtx import Tx

log = logging.getLogger(__name__)
T = TypeVar("T")
WriteFn = Callable[[Tx], T]

_MAX_BATCH = 512


class StoreUnavailable(RuntimeError):
    """The database cannot be reached now (its server restarting, the network out):
    the request was not carried out, or not known to be; the caller may retry shortly."""


@dataclass
class _Job:
    fn: Callable[[Tx], Any]
    loop: asyncio.AbstractEventLoop | None
    future: Any


class GroupCommit:
    """The writer thread, the reader pool, and the coroutine and blocking entry points."""

    dialect: str

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wtx: Tx | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="db-read")
        self._local = threading.local()
        self._reader_handles: list[Any] = []
        self._lock = threading.Lock()
        self.commits = 0
        #: While this process leads a cluster: the leader lock's session, which every
        #: write transaction checks first (``pgdb``); None otherwise, and on SQLite.
        self.fence: Callable[[], int | None] | None = None

    # -- what an engine provides ------------------------------------------------------

    def _open_writer(self) -> Tx:
        """Connect the writer, migrate, and return its handle."""
        raise NotImplementedError

    def _open_reader(self) -> tuple[Tx, Any]:
        """A new read-only handle, and what ``_close`` must close."""
        raise NotImplementedError

    def _close(self, conn: Any) -> None:
        conn.close()

    def _begin(self, tx: Tx) -> None:
        """Open the write transaction: it must exclude every other writer until commit."""
        raise NotImplementedError

    def _checkpoint(self, tx: Tx) -> Any:
        """Outside any transaction: make deleted rows unrecoverable from the files."""
        raise NotImplementedError

    def size_bytes(self) -> int:
        """How many bytes the database takes, for the database size gauge."""
        raise NotImplementedError

    def _recover(self) -> None:
        """After a failed commit: make the writer's connection usable again."""

    def _lost(self, exc: Exception) -> bool:
        """Whether ``exc`` says the database is out of reach (not that a statement was
        wrong): the engine's to tell."""
        return False

    def _unavailable(self, exc: Exception) -> Exception:
        """``exc``, or a :class:`StoreUnavailable` saying why, if it is an outage."""
        if isinstance(exc, StoreUnavailable) or not self._lost(exc):
            return exc
        unavailable = StoreUnavailable(f"the database is out of reach: {exc}")
        unavailable.__cause__ = exc
        return unavailable

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Held around each write transaction (an engine may queue on a lock here)."""
        yield

    # -- life ---------------------------------------------------------------------------

    def open(self) -> None:
        self._wtx = self._open_writer()
        self._writer = threading.Thread(target=self._run_writer, name="db-writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_handles:
                with contextlib.suppress(Exception):
                    self._close(conn)
            self._reader_handles.clear()
        if self._wtx is not None:
            self._close(self._writer_conn())
            self._wtx = None

    def _writer_conn(self) -> Any:
        return self._wtx.conn  # type: ignore[union-attr]

    # -- writing ---------------------------------------------------------------------

    async def write(self, fn: WriteFn[T]) -> T:
        """Run ``fn`` in the writer's transaction; return once it is durably committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, loop, future))
        return await future

    def write_sync(self, fn: WriteFn[T]) -> T:
        """Blocking variant for command-line tools and start-up (not on the event loop)."""
        future: Future[T] = Future()
        self._queue.put(_Job(fn, None, future))
        return future.result()

    def checkpoint_sync(self) -> None:
        """Make what erasure deleted unrecoverable from the database's files (see the
        engine's ``_checkpoint``); runs between the writer's transactions."""
        self.write_sync(_CHECKPOINT)

    async def checkpoint(self) -> None:
        await self.write(_CHECKPOINT)

    def _run_writer(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit_batch(batch)
            if stop:
                return

    def _commit_batch(self, batch: list[_Job]) -> None:
        checkpoints = [job for job in batch if job.fn is _CHECKPOINT]
        batch = [job for job in batch if job.fn is not _CHECKPOINT]
        if batch:
            with self._writing():
                self._commit_jobs(batch)
        for job in checkpoints:
            try:
                with self._writing():
                    value = self._checkpoint(self._tx())
                _resolve(job, True, value)
            except Exception as exc:
                _resolve(job, False, exc)

    def _tx(self) -> Tx:
        assert self._wtx is not None
        return self._wtx

    def _commit_jobs(self, batch: list[_Job]) -> None:
        tx = self._tx()
        results: list[tuple[bool, Any]] = []
        try:
            tx = self._started()
            for job in batch:
                tx.execute("SAVEPOINT job")
                try:
                    results.append((True, job.fn(tx)))
                    tx.execute("RELEASE SAVEPOINT job")
                except Exception as exc:
                    tx.execute("ROLLBACK TO SAVEPOINT job")
                    tx.execute("RELEASE SAVEPOINT job")
                    results.append((False, exc))
            tx.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # the commit itself failed: nobody's write is durable
            log.exception("database commit failed")
            with contextlib.suppress(Exception):
                tx.execute("ROLLBACK")
            self._recover()
            results = [(False, self._unavailable(exc))] * len(batch)
        for job, (ok, value) in zip(batch, results, strict=True):
            _resolve(job, ok, value)

    def _started(self) -> Tx:
        """A transaction begun on the writer's connection. A connection found dead at
        ``BEGIN`` (the server restarted, the network was out for a while) is replaced and
        the ``BEGIN`` tried once more: nothing of the batch has run on it yet."""
        tx = self._tx()
        try:
            self._begin(tx)
        except Exception:
            if self._usable(tx):
                raise
            self._recover()
            tx = self._tx()
            self._begin(tx)
        return tx

    # -- reading ---------------------------------------------------------------------

    def _reader(self) -> Tx:
        tx = getattr(self._local, "tx", None)
        if tx is None or not self._usable(tx):
            tx, conn = self._open_reader()
            with self._lock:
                self._reader_handles.append(conn)
            self._local.tx = tx
        return tx

    def _usable(self, tx: Tx) -> bool:
        return True

    def _read(self, fn: Callable[[Tx], T]) -> T:
        """``fn`` on this thread's reader. A read that failed because its connection died
        under it (the server restarted, the network was out for a while) is run once more
        on a new one: reading changes nothing, so the caller gets an answer, not an
        error, from the first request after an outage."""
        try:
            tx = self._reader()
            try:
                return fn(tx)
            except Exception:
                if self._usable(tx):
                    raise
                return fn(self._reader())
        except Exception as exc:
            outage = self._unavailable(exc)
            if outage is exc:
                raise
            raise outage from exc

    async def read(self, fn: Callable[[Tx], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read, fn)

    def read_sync(self, fn: Callable[[Tx], T]) -> T:
        return self._readers.submit(self._read, fn).result()


def _CHECKPOINT(db: Tx) -> None:
    """Marker job: the writer runs a checkpoint outside any transaction."""


def _resolve(job: _Job, ok: bool, value: Any) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)

    if job.loop is None:
        settle()
    else:
        with contextlib.suppress(RuntimeError):  # loop already closed during shutdown
            job.loop.call_soon_threadsafe(settle)
