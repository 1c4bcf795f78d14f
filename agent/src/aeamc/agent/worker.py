"""Chunk execution in a separate worker process, so the event loop stays responsive.

One worker (a device runs one task at a time), spawned on first use, reused afterwards.
One ``submit`` per chunk: between chunks the runner can suspend (energy policy) or stop
(shutdown) without killing anything. CPU time is measured inside the worker around the
chunk function, so it counts the work only, not pickling or waiting.

The ``spawn`` start method: the agent's process has threads (zeroconf, the resolver), and
forking a threaded process can deadlock the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import cache
from pathlib import Path
from typing import Any

from aeamc.shared.tasks.registry import KindRegistry, discover

log = logging.getLogger(__name__)


class WorkerCrashed(Exception):
    """The worker process died mid-chunk (killed, out of memory)."""


#: In the worker: where the ``wasm`` kind reads modules and inputs (None: no WASM work).
_content_dir: Path | None = None


@cache
def _registry() -> KindRegistry:
    if _content_dir is None:
        return discover()
    from aeamc.shared.tasks.wasm_kernel import WasmKernel  # wasmtime only where WASM runs

    from .content import ContentCache

    return discover([("wasm", WasmKernel(ContentCache(_content_dir, 0)))])


def run_chunk(kind: str, params: Mapping[str, Any], index: int, chunks: int) -> tuple[bytes, int]:
    """Run one chunk; return its output and the CPU time it took, in nanoseconds."""
    task_kind = _registry().get(kind)
    start = time.process_time_ns()
    output = task_kind.run_chunk(params, index, chunks)
    return output, time.process_time_ns() - start


def _start_worker(daemon_pid: int, content_dir: Path | None) -> None:
    """The worker's initializer: tied to the daemon's life, and told where content is."""
    global _content_dir  # noqa: PLW0603 - set once, in the worker process only
    _content_dir = content_dir
    _die_with_daemon(daemon_pid)


def _die_with_daemon(daemon_pid: int) -> None:
    """In the worker: get SIGKILL when the daemon dies (Linux ``PR_SET_PDEATHSIG``), so a
    ``kill -9`` or a crash of the daemon never leaves a worker behind, computing for nobody;
    and leave at once if the daemon died before this ran."""
    import ctypes  # only in the worker: the daemon never needs it

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != daemon_pid:
        os._exit(0)


class ChunkPool:
    """A one-worker process pool, created lazily and recreated after a crash."""

    def __init__(self, content_dir: Path | None = None) -> None:
        """``content_dir``: the content cache the ``wasm`` kind reads (None: no WASM)."""
        self._content_dir = content_dir
        self._executor: ProcessPoolExecutor | None = None
        self._running: asyncio.Future[tuple[bytes, int]] | None = None

    @property
    def started(self) -> bool:
        return self._executor is not None

    async def run(
        self, kind: str, params: Mapping[str, Any], index: int, chunks: int
    ) -> tuple[bytes, int]:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(os.getpid(), self._content_dir),
            )
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, run_chunk, kind, dict(params), index, chunks)
        # Tracked until the worker is done with it, even if the caller stops waiting.
        self._running = future
        future.add_done_callback(self._clear_running)
        try:
            return await asyncio.shield(future)
        except BrokenProcessPool:
            self._discard()
            raise WorkerCrashed("the worker process died while running a chunk") from None

    async def close(self, grace_s: float) -> None:
        """Let a running chunk finish for up to ``grace_s``, then kill the worker."""
        executor = self._executor
        if executor is None:
            return
        if self._running is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._running), grace_s)
        if self._running is not None and not self._running.done():
            log.warning("abandoning the running chunk after %.1f s", grace_s)
            self._kill_workers(executor)
        executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None

    def _clear_running(self, future: asyncio.Future[tuple[bytes, int]]) -> None:
        if self._running is future:
            self._running = None
        if not future.cancelled():
            future.exception()  # retrieved: an abandoned chunk's failure is expected

    def _discard(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    @staticmethod
    def _kill_workers(executor: ProcessPoolExecutor) -> None:
        # Python 3.11 has no public way to stop a running worker (3.14 adds
        # terminate_workers()); the process table is the executor's own.
        processes = getattr(executor, "_processes", None) or {}
        for process in list(processes.values()):
            with contextlib.suppress(Exception):
                process.terminate()
