"""The agent's upkeep: the status file, and the periodic pruning of old state.

``status.json`` (status.py) is for people and ``aeamc-agent status``. It is rewritten on
every change, coalesced: the changes of one moment share one write, a few milliseconds
late. The housekeeping loop rewrites it every ``HOUSEKEEPING_S`` as well (telemetry
changes without an event), sweeps expired assignments out of the queue, and drops traces
and abandoned assignments past their retention every ``PRUNE_EVERY_S``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .state import write_status

if TYPE_CHECKING:
    from .runner import TaskRunner
    from .traces import TraceStore
    from .workqueue import WorkQueue

log = logging.getLogger(__name__)

#: How often the status file is refreshed and expired assignments swept.
HOUSEKEEPING_S = 5.0
#: Changes within this long share one write of the status file.
STATUS_COALESCE_S = 0.05
#: How often traces and abandoned assignments past retention are dropped.
PRUNE_EVERY_S = 600.0


class StatusFile:
    """``status.json`` in ``state_dir``, holding what ``document()`` returns."""

    def __init__(self, state_dir: Path, document: Callable[[], dict[str, Any]]) -> None:
        self.state_dir = state_dir
        self.document = document
        self._due: asyncio.TimerHandle | None = None

    def write(self) -> None:
        """Write it now (a pending coalesced write is then moot); a failure is logged."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
        try:
            write_status(self.state_dir, self.document())
        except OSError as exc:
            log.warning("cannot write the status file: %s", exc)

    def changed(self) -> None:
        """Write it soon, once for all the changes of that moment.

        A task changes state several times on its way from assignment to delivered proof;
        writing the file each time put several file replacements on that path. A few
        milliseconds late is fine for its readers.
        """
        if self._due is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not running (start-up or tests): write now
            self.write()
            return
        self._due = loop.call_later(STATUS_COALESCE_S, self.write)


async def housekeeping(
    *,
    traces: TraceStore,
    queue: WorkQueue,
    runner: Callable[[], TaskRunner | None],
    clock_ms: Callable[[], int],
    retention_s: float,
    status: StatusFile,
) -> None:
    """Run the upkeep until cancelled; a failing file operation is logged, not fatal."""
    last_prune = -PRUNE_EVERY_S
    while True:
        try:
            if time.monotonic() - last_prune >= PRUNE_EVERY_S:
                removed = traces.prune(clock_ms())
                if removed:
                    log.info("dropped %d traces past retention", len(removed))
                queue.prune_abandoned(clock_ms(), int(retention_s * 1000))
                last_prune = time.monotonic()
            current = runner()
            if current is not None:
                current.sweep()
        except OSError as exc:
            log.warning("housekeeping: %s", exc)
        status.write()
        await asyncio.sleep(HOUSEKEEPING_S)
