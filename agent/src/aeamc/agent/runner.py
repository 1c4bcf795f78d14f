"""Runs one assigned task at a time, chunk by chunk, under the energy policy.

Between chunks the runner checks the policy: when it forbids work the task is suspended
(the worker idles, nothing is lost) until the policy allows work again, and abandoned if
the assignment expires meanwhile. On shutdown the chunk in flight may finish within the
grace period; the task is then abandoned, because a partial trace proves nothing and the
coordinator reassigns work whose assignment expires.

When every chunk is done: the trace is stored (spot-checks may come after a restart),
then the PoT is signed with a fresh 16-byte nonce and queued durably in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aeamc.shared.identity import Signer
from aeamc.shared.messages import Assignment
from aeamc.shared.proofs import Trace, build_pot

from .monitor import EnergyMonitor
from .outbox import Outbox
from .traces import TraceStore
from .worker import ChunkPool, WorkerCrashed

log = logging.getLogger(__name__)

#: Size of a faked chunk output in the demo cheating mode.
FAKE_OUTPUT_BYTES = 32


@dataclass
class TaskProgress:
    assignment: Assignment
    started_ms: int
    chunks_done: int = 0
    suspended_reason: str | None = None
    cheated_chunks: int = 0

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
    result: str  # "queued" | "abandoned"
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
    clock_ms: Callable[[], int]
    cheat_fraction: float = 0.0
    on_change: Callable[[], None] = lambda: None
    random_fn: Callable[[], float] = random.random
    current: TaskProgress | None = None
    last: Outcome | None = None
    _task: asyncio.Task[None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False

    def __post_init__(self) -> None:
        self.monitor.add_listener(self._wake.set)

    @property
    def busy(self) -> bool:
        return self.current is not None

    def start(self, assignment: Assignment) -> None:
        if self.current is not None:
            raise RuntimeError("a task is already running")
        self.current = TaskProgress(assignment, self.clock_ms())
        self._task = asyncio.create_task(self._run(self.current), name=f"task {assignment.task_id}")
        self.on_change()

    async def wait_idle(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    async def stop(self, grace_s: float) -> None:
        """Stop after the chunk in flight (abandoning it after ``grace_s``)."""
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

    async def _run(self, progress: TaskProgress) -> None:
        a = progress.assignment
        outcome = Outcome(a.task_id, "abandoned", "interrupted")
        try:
            outcome = await self._execute(progress)
        except asyncio.CancelledError:
            outcome = Outcome(a.task_id, "abandoned", "shutting down")
            raise
        except WorkerCrashed as exc:
            outcome = Outcome(a.task_id, "abandoned", str(exc))
        except Exception as exc:
            log.exception("task %s failed", a.task_id)
            outcome = Outcome(a.task_id, "abandoned", f"internal error: {exc}")
        finally:
            self.current = None
            outcome.at_ms = self.clock_ms()
            outcome.cheated_chunks = progress.cheated_chunks
            self.last = outcome
            if outcome.result != "queued":
                log.warning("task %s abandoned: %s", a.task_id, outcome.detail)
            self.on_change()

    async def _execute(self, progress: TaskProgress) -> Outcome:
        a = progress.assignment
        log.info("task %s started: %s, %d chunks", a.task_id, a.kind, a.chunks)
        outputs: list[bytes] = []
        cpu_ns = 0
        active_ns = 0
        for index in range(a.chunks):
            stop_reason = await self._wait_until_allowed(progress)
            if stop_reason is not None:
                return Outcome(a.task_id, "abandoned", stop_reason)
            started = time.perf_counter_ns()
            if self.cheat_fraction > 0 and self.random_fn() < self.cheat_fraction:
                output = os.urandom(FAKE_OUTPUT_BYTES)  # DEMO CHEATER: not computed
                progress.cheated_chunks += 1
            else:
                output, chunk_cpu_ns = await self.pool.run(a.kind, a.params, index, a.chunks)
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
        if progress.cheated_chunks:
            log.warning(
                "DEMO CHEATER: task %s has %d of %d chunk outputs faked",
                a.task_id,
                progress.cheated_chunks,
                a.chunks,
            )
        log.info("task %s done; proof queued", a.task_id)
        return Outcome(a.task_id, "queued")

    async def _wait_until_allowed(self, progress: TaskProgress) -> str | None:
        """Block while the policy forbids work; the reason to give up, or ``None``."""
        a = progress.assignment
        while True:
            if self._stopping:
                return "shutting down"
            if self.clock_ms() >= a.expires_at:
                return "assignment expired"
            if self.monitor.allowed:
                if progress.suspended_reason is not None:
                    log.info("task %s resumed", a.task_id)
                    progress.suspended_reason = None
                    self.on_change()
                return None
            if progress.suspended_reason != self.monitor.reason:
                log.warning("task %s suspended: %s", a.task_id, self.monitor.reason)
                progress.suspended_reason = self.monitor.reason
                self.on_change()
            self._wake.clear()
            remaining_s = (a.expires_at - self.clock_ms()) / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, remaining_s))
