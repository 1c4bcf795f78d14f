"""Runs the accepted assignments of the durable queue, one at a time, chunk by chunk.

The runner takes the oldest entry of the queue (workqueue.py) and runs its chunks in the
worker process. Before every chunk it checks the energy policy (and whether the
coordinator still wants work from this device): while work is not allowed the task is
suspended (the worker idles, nothing is lost, the tasks behind it wait too) until it is
allowed again; if the assignment expires meanwhile, the task is abandoned.

When every chunk is done: the trace is stored (spot-checks may come after a restart),
the PoT is signed with a fresh 16-byte nonce and queued durably in the outbox, and only
then is the entry removed from the queue. On shutdown the chunk in flight may finish
within the grace period; the task then stays in the queue and restarts from chunk 0 at
the next start (a partial trace is not kept: restarting is simple and always correct).

An entry leaves the queue without a proof only for a reason that cannot change, and is
recorded in ``abandoned/`` first: the assignment expired (before or while it ran), the
task kind is gone, the coordinator refuses its content (a ``wasm`` task's module or
input), a chunk failed, or the worker crashed on it ``MAX_WORKER_CRASHES`` times in a row.
Content the coordinator cannot give right now (unreachable) is asked for again later.

Content found missing or damaged when a chunk reads it (the worker checks its digest, so
nothing is computed from other bytes) is discarded and the task stays queued: it is
prepared again, which fetches the content anew, and runs from chunk 0. A device whose
disk damages it ``MAX_CONTENT_REFETCHES`` times in a row gives the task up instead of
holding the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aeamc.shared.errors import ChunkFault
from aeamc.shared.identity import Signer
from aeamc.shared.messages import MAX_WORK_REPORTS, Assignment, WorkReport
from aeamc.shared.proofs import Trace, build_pot
from aeamc.shared.runtime.logs import REQUEST_ID
from aeamc.shared.runtime.waiting import wait_set
from aeamc.shared.tasks.wasm_kernel import MissingBlob

from . import logs
from .content import ContentUnavailable
from .monitor import EnergyMonitor
from .outbox import Outbox
from .traces import TraceStore
from .worker import ChunkPool, WorkerCrashed
from .workqueue import EXPIRED, FAILED, UNKNOWN_KIND, QueuedTask, WorkQueue

log = logging.getLogger(__name__)

#: Size of a faked chunk output in the demo cheating mode.
FAKE_OUTPUT_BYTES = 32
#: A task on which the worker process died this many times in a row is abandoned.
MAX_WORKER_CRASHES = 3
#: A task whose content is found damaged this many times in a row is abandoned.
MAX_CONTENT_REFETCHES = 3
#: After a storage error (disk full?) the task is retried this much later.
STORAGE_RETRY_S = 5.0

QUEUED, ABANDONED, INTERRUPTED = "queued", "abandoned", "interrupted"


async def _nothing_to_prepare(a: Assignment) -> None:
    return None


class ChunkFailed(Exception):
    """A chunk raised an error: running it again would fail the same way."""


class ContentDamaged(Exception):
    """A chunk could not read its content as named: missing, or bytes of another digest
    (``digest``: which, when known). Nothing was computed; fetched again, it can run."""

    def __init__(self, digest: str | None, message: str) -> None:
        super().__init__(message)
        self.digest = digest


class ChunkFaulted(ChunkFailed):
    """A chunk has no output, the same on every machine (SPEC §3.1): a WASM kernel ran out
    of fuel or memory, trapped, or refused its input. The coordinator is told, checks it
    by running the chunk itself, and fails the task without blaming this device."""

    def __init__(self, index: int, code: str, message: str) -> None:
        super().__init__(f"chunk {index}: {message}")
        self.index = index
        self.code = code


@dataclass
class TaskProgress:
    entry: QueuedTask
    started_ms: int
    chunks_done: int = 0
    suspended_reason: str | None = None
    cheated_chunks: int = 0

    @property
    def assignment(self) -> Assignment:
        return self.entry.assignment

    def to_json(self) -> dict[str, object]:
        a = self.assignment
        return {
            "task_id": a.task_id,
            "kind": a.kind,
            "chunks": a.chunks,
            "chunks_done": self.chunks_done,
            "state": "suspended" if self.suspended_reason else "running",
            "suspended_reason": self.suspended_reason,
            "started_ms": self.started_ms,
            "expires_at": a.expires_at,
        }


@dataclass
class Outcome:
    task_id: str
    #: "queued" (the proof is in the outbox), "abandoned" (dropped for good, recorded in
    #: ``abandoned/``) or "interrupted" (still in the queue; it runs again from chunk 0).
    result: str
    detail: str = ""
    at_ms: int = 0
    cheated_chunks: int = 0


@dataclass
class TaskRunner:
    signer: Signer
    device_id: str
    pool: ChunkPool
    monitor: EnergyMonitor
    traces: TraceStore
    outbox: Outbox
    queue: WorkQueue
    clock_ms: Callable[[], int]
    #: Kinds this agent can run (an entry of a kind that disappeared is abandoned).
    known_kind: Callable[[str], bool] = lambda kind: True
    #: Why no work may be done right now apart from energy (e.g. "quarantined"), or None.
    hold: Callable[[], str | None] = lambda: None
    #: Gets what a task needs before its chunks run (a ``wasm`` task's module and input);
    #: raises ContentUnavailable when it cannot.
    prepare: Callable[[Assignment], Awaitable[None]] = _nothing_to_prepare
    #: Tells the coordinator that a chunk of the task has no output (it checks it).
    report_fault: Callable[[Assignment, int, str], None] = lambda a, index, code: None
    #: Deletes the content named by a digest that a chunk found damaged, so that
    #: ``prepare`` fetches it again.
    discard_content: Callable[[str], object] = lambda digest: None
    cheat_fraction: float = 0.0
    on_change: Callable[[], None] = lambda: None
    on_outcome: Callable[[Outcome], None] = lambda outcome: None
    random_fn: Callable[[], float] = random.random
    current: TaskProgress | None = None
    last: Outcome | None = None
    _task: asyncio.Task[None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False
    #: Setbacks in a row per (task, cause): a worker crash, damaged content.
    _setbacks: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.monitor.add_listener(self._wake.set)

    def start(self) -> None:
        """Start working through the queue (including what a previous run left)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="runner")
            self._task.add_done_callback(_log_crash)

    def wake(self) -> None:
        """Something was queued, or may now be allowed to run."""
        self._wake.set()

    def work_in_hand(self, limit: int = MAX_WORK_REPORTS) -> list[WorkReport]:
        """What the next heartbeat reports (SPEC §2.4): the running task first, with the
        chunks it has done in this run, then the queued ones oldest first with 0; each task
        once, at most ``limit``. It reads only what is in memory, so a heartbeat costs no
        I/O. A task that restarts (after an interruption) counts from 0 again, as it runs."""
        reports: list[WorkReport] = []
        seen: set[str] = set()
        current = self.current
        if current is not None:
            reports.append(WorkReport(current.assignment.task_id, current.chunks_done))
            seen.add(current.assignment.task_id)
        for entry in self.queue.entries():
            if len(reports) >= limit:
                break
            if entry.task_id not in seen:
                seen.add(entry.task_id)
                reports.append(WorkReport(entry.task_id, 0))
        return reports[:limit]

    def sweep(self) -> int:
        """Abandon waiting entries whose assignment has expired; how many."""
        now = self.clock_ms()
        running = self.current.entry.path if self.current else None
        dropped = 0
        for entry in self.queue.entries():
            if entry.path != running and entry.assignment.expires_at <= now:
                self._abandon(entry, EXPIRED, "the assignment expired while it waited")
                dropped += 1
        if dropped:
            self.on_change()
        return dropped

    async def stop(self, grace_s: float) -> None:
        """Stop after the chunk in flight (abandoning the chunk after ``grace_s``)."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=grace_s)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # The grace period is spent: a chunk still in the worker now is abandoned.
        await self.pool.close(0)

    # --- internals ----------------------------------------------------------------------

    async def _loop(self) -> None:
        retry_s: float | None = None
        while not self._stopping:
            self._wake.clear()
            try:
                self.sweep()
                entry = self.queue.head()
                if entry is None or retry_s is not None:
                    timeout, retry_s = retry_s, None
                    await wait_set(self._wake, timeout)
                    continue
                outcome = await self._run(entry)
            except Exception as exc:  # the queue cannot be written (disk full?), or a bug
                log.error(
                    "work queue: %s; trying again in %.0f s",
                    exc,
                    STORAGE_RETRY_S,
                    exc_info=not isinstance(exc, OSError),
                )
                retry_s = STORAGE_RETRY_S
                continue
            if outcome.result == INTERRUPTED and not self._stopping:
                retry_s = STORAGE_RETRY_S

    async def _run(self, entry: QueuedTask) -> Outcome:
        token = REQUEST_ID.set(logs.task_request_id(entry.assignment.task_id))
        try:
            return await self._run_logged(entry)
        finally:
            REQUEST_ID.reset(token)

    async def _run_logged(self, entry: QueuedTask) -> Outcome:
        a = entry.assignment
        progress = TaskProgress(entry, self.clock_ms())
        self.current = progress
        self.on_change()
        outcome = Outcome(a.task_id, INTERRUPTED, "interrupted")
        try:
            outcome = await self._execute(progress)
        except asyncio.CancelledError:
            outcome = Outcome(a.task_id, INTERRUPTED, "shutting down")
            raise
        except WorkerCrashed as exc:
            outcome = self._crashed(entry, str(exc))
        except ContentDamaged as exc:
            outcome = self._content_damaged(entry, exc)
        except ChunkFaulted as exc:
            outcome = self._abandon(entry, FAILED, f"a chunk has no output: {exc}")
            self.report_fault(a, exc.index, exc.code)
        except ChunkFailed as exc:
            outcome = self._abandon(entry, FAILED, f"a chunk failed: {exc}")
        except OSError as exc:
            log.error("task %s: cannot store its result (%s); retrying", a.task_id, exc)
            outcome = Outcome(a.task_id, INTERRUPTED, f"storage error: {exc}")
        except Exception as exc:
            log.exception("task %s failed", a.task_id)
            outcome = self._abandon(entry, FAILED, f"internal error: {exc}")
        finally:
            self.current = None
            outcome.at_ms = self.clock_ms()
            outcome.cheated_chunks = progress.cheated_chunks
            self.last = outcome
            self.on_outcome(outcome)
            if outcome.result == INTERRUPTED:
                log.warning(
                    "task %s interrupted (%s); it stays queued and restarts from chunk 0",
                    a.task_id,
                    outcome.detail,
                )
            self.on_change()
        return outcome

    async def _execute(self, progress: TaskProgress) -> Outcome:
        entry = progress.entry
        a = entry.assignment
        if self._already_in_outbox(entry):
            # Done before a crash that came between queueing the proof and this removal.
            self.queue.remove(entry)
            return Outcome(a.task_id, QUEUED, "the proof was already in the outbox")
        if not self.known_kind(a.kind):
            return self._abandon(entry, UNKNOWN_KIND, f"this agent cannot run {a.kind!r}")
        try:
            await self.prepare(a)
        except ContentUnavailable as exc:
            if exc.lasting:
                return self._abandon(entry, FAILED, f"its content: {exc}")
            return Outcome(a.task_id, INTERRUPTED, f"its content: {exc}")
        log.info("task %s started: %s, %d chunks", a.task_id, a.kind, a.chunks)
        outputs: list[bytes] = []
        cpu_ns = 0
        active_ns = 0
        for index in range(a.chunks):
            stop = await self._wait_until_allowed(progress)
            if stop is not None:
                return stop
            started = time.perf_counter_ns()
            if self.cheat_fraction > 0 and self.random_fn() < self.cheat_fraction:
                output = os.urandom(FAKE_OUTPUT_BYTES)  # DEMO CHEATER: not computed
                progress.cheated_chunks += 1
            else:
                output, chunk_cpu_ns = await self._chunk(a.kind, a.params, index, a.chunks)
                cpu_ns += chunk_cpu_ns
            active_ns += time.perf_counter_ns() - started
            outputs.append(output)
            progress.chunks_done = index + 1
        trace = Trace(tuple(outputs))
        now = self.clock_ms()
        self.traces.save(a, trace, now)
        pot = build_pot(
            self.signer,
            task_id=a.task_id,
            device_id=self.device_id,
            trace=trace,
            nonce=os.urandom(16),
            timestamp=now,
            execution_time_ms=active_ns // 1_000_000,
            cpu_time_ms=cpu_ns // 1_000_000,
        )
        self.outbox.add(pot, trace.output, now)
        # Only now may the assignment leave the queue: the outbox keeps the proof.
        self.queue.remove(entry)
        self._forget_setbacks(a.task_id)
        if progress.cheated_chunks:
            log.warning(
                "DEMO CHEATER: task %s has %d of %d chunk outputs faked",
                a.task_id,
                progress.cheated_chunks,
                a.chunks,
            )
        log.info("task %s done; proof queued", a.task_id)
        return Outcome(a.task_id, QUEUED)

    async def _chunk(
        self, kind: str, params: Mapping[str, Any], index: int, chunks: int
    ) -> tuple[bytes, int]:
        try:
            return await self.pool.run(kind, params, index, chunks)
        except (WorkerCrashed, asyncio.CancelledError):
            raise
        except MissingBlob as exc:
            raise ContentDamaged(exc.digest, f"chunk {index}: {exc.message}") from exc
        except ChunkFault as exc:
            raise ChunkFaulted(index, exc.code, exc.message) from exc
        except Exception as exc:
            raise ChunkFailed(f"chunk {index}: {type(exc).__name__}: {exc}") from exc

    async def _wait_until_allowed(self, progress: TaskProgress) -> Outcome | None:
        """Block while no work is allowed; the outcome that ends the task, or ``None``."""
        entry = progress.entry
        a = entry.assignment
        while True:
            if self._stopping:
                return Outcome(a.task_id, INTERRUPTED, "shutting down")
            if self.clock_ms() >= a.expires_at:
                return self._abandon(entry, EXPIRED, "the assignment expired")
            reason = self.monitor.reason or self.hold()
            if reason is None:
                if progress.suspended_reason is not None:
                    log.info("task %s resumed", a.task_id)
                    progress.suspended_reason = None
                    self.on_change()
                return None
            if progress.suspended_reason != reason:
                log.warning("task %s suspended: %s", a.task_id, reason)
                progress.suspended_reason = reason
                self.on_change()
            self._wake.clear()
            remaining_s = (a.expires_at - self.clock_ms()) / 1000
            await wait_set(self._wake, max(0.0, remaining_s))

    def _already_in_outbox(self, entry: QueuedTask) -> bool:
        a = entry.assignment
        return self.traces.assignment(a.task_id) == a and any(
            e.task_id == a.task_id for e in self.outbox.entries()
        )

    def _crashed(self, entry: QueuedTask, detail: str) -> Outcome:
        if self._stopping:
            return Outcome(entry.task_id, INTERRUPTED, detail)
        return self._setback(
            entry, "crash", MAX_WORKER_CRASHES, detail, "running it again from chunk 0"
        )

    def _content_damaged(self, entry: QueuedTask, exc: ContentDamaged) -> Outcome:
        """Discard the damaged content; keep the task queued, to fetch it again and run
        from chunk 0, unless this keeps happening (the disk cannot hold it)."""
        if exc.digest is not None:
            self.discard_content(exc.digest)
        return self._setback(
            entry,
            "content",
            MAX_CONTENT_REFETCHES,
            f"its content was damaged: {exc}",
            "fetching the content again",
        )

    def _setback(
        self, entry: QueuedTask, cause: str, limit: int, detail: str, then: str
    ) -> Outcome:
        """One more ``cause`` setback of ``entry``'s task in a row: the task stays queued
        to run again (``then``), or is given up at the ``limit``-th."""
        key = (entry.task_id, cause)
        times = self._setbacks.get(key, 0) + 1
        self._setbacks[key] = times
        if times >= limit:
            return self._abandon(entry, FAILED, f"{detail} ({times} times)")
        log.warning("task %s: %s; %s", entry.task_id, detail, then)
        return Outcome(entry.task_id, INTERRUPTED, detail)

    def _forget_setbacks(self, task_id: str) -> None:
        for key in [k for k in self._setbacks if k[0] == task_id]:
            del self._setbacks[key]

    def _abandon(self, entry: QueuedTask, reason: str, detail: str) -> Outcome:
        now = self.clock_ms()
        self._forget_setbacks(entry.task_id)
        record = self.queue.abandon(entry, reason=reason, detail=detail, now_ms=now)
        log.warning(
            "task %s abandoned (%s): %s; recorded in %s", entry.task_id, reason, detail, record
        )
        return Outcome(entry.task_id, ABANDONED, detail, at_ms=now)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task runner crashed", exc_info=task.exception())
