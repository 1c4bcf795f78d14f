"""Accepted assignments, kept durably until their proof is in the outbox.

An assignment the agent accepts is written to ``queue/`` (temporary file, fsync, rename,
fsync of the directory) *before* the coordinator hears 202, so a crash or a restart never
loses accepted work. The runner takes the entries oldest first, one at a time. An entry
leaves the queue only when

* its proof is in the outbox (the outbox then keeps it until the coordinator has it), or
* it is abandoned for a reason that cannot change: the assignment expired, its task kind
  is gone, its chunks fail, or the file is unreadable. The abandoned assignment is
  recorded in ``abandoned/`` (with the reason) *before* the entry is deleted.

Layout::

    queue/<number>-<task_id>.json            {"assignment": {...}, "accepted_at_ms": ...}
    abandoned/<task_id>-<issued_at>.json     the same, plus "reason", "detail", "at_ms"

``number`` (12 digits) orders the queue. The count includes the running task, so a
bound of 1 means "only the task that runs".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aeamc.shared.messages import Assignment, parse
from aeamc.shared.runtime.clock import now_ms
from aeamc.shared.runtime.files import TEMP_GLOB, atomic_write, fsync_dir

from .state import ensure_dir

log = logging.getLogger(__name__)

_ENTRY = re.compile(r"(\d{12})-([A-Za-z0-9._:-]{1,64})\.json")
#: Reasons an assignment is abandoned for good (``abandoned/<...>.json``, ``reason``).
EXPIRED, UNKNOWN_KIND, FAILED, UNREADABLE = "expired", "unknown_kind", "failed", "unreadable"
#: At most this much of an unreadable queue file is kept in its abandoned record.
_MAX_RAW = 64 * 1024


@dataclass(frozen=True)
class QueuedTask:
    """One accepted assignment; ``number`` is its place in the queue."""

    number: int
    path: Path
    assignment: Assignment
    accepted_at_ms: int

    @property
    def task_id(self) -> str:
        return self.assignment.task_id


def _scan(directory: Path) -> list[tuple[int, Path]]:
    found = []
    with contextlib.suppress(FileNotFoundError):
        for path in directory.iterdir():
            m = _ENTRY.fullmatch(path.name)
            if m is not None:
                found.append((int(m.group(1)), path))
    return sorted(found)


def summary(directory: Path, abandoned_dir: Path) -> dict[str, Any]:
    """Counts for ``status``, read from disk (works while the daemon is down)."""
    entries = _scan(directory)
    return {
        "count": len(entries),
        "task_ids": [_ENTRY.fullmatch(p.name).group(2) for _, p in entries],  # type: ignore[union-attr]
        "abandoned": _count_abandoned(abandoned_dir),
    }


def _count_abandoned(directory: Path) -> int:
    with contextlib.suppress(FileNotFoundError):
        return sum(1 for p in directory.iterdir() if p.suffix == ".json")
    return 0


class WorkQueue:
    def __init__(self, directory: Path, abandoned_dir: Path) -> None:
        self.directory = ensure_dir(directory)
        self.abandoned_dir = ensure_dir(abandoned_dir)
        for stale in self.directory.glob(TEMP_GLOB):
            stale.unlink()  # a write interrupted by a crash: that assignment was never accepted
        self._entries: list[QueuedTask] = []
        for number, path in _scan(self.directory):
            try:
                data = json.loads(path.read_bytes())
                entry = QueuedTask(
                    number, path, parse(Assignment, data["assignment"]), data["accepted_at_ms"]
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self._keep_unreadable(path, str(exc))
                continue
            self._entries.append(entry)

    # --- reading ------------------------------------------------------------------------

    def entries(self) -> list[QueuedTask]:
        """Every accepted assignment not yet done, oldest first."""
        return list(self._entries)

    @property
    def count(self) -> int:
        return len(self._entries)

    def head(self) -> QueuedTask | None:
        return self._entries[0] if self._entries else None

    def find(self, assignment: Assignment) -> QueuedTask | None:
        """The entry holding exactly this assignment (a coordinator's retry), if any."""
        return next((e for e in self._entries if e.assignment == assignment), None)

    def abandoned(self) -> list[dict[str, Any]]:
        """The abandoned-assignment records, oldest first."""
        records = []
        for path in self.abandoned_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                records.append(json.loads(path.read_bytes()))
        return sorted(records, key=lambda r: r.get("at_ms", 0))

    def abandoned_count(self) -> int:
        return _count_abandoned(self.abandoned_dir)

    # --- changes ------------------------------------------------------------------------

    def add(self, assignment: Assignment, now_ms: int) -> QueuedTask:
        """Queue ``assignment`` durably; when this returns, a crash cannot lose it."""
        number = self._entries[-1].number + 1 if self._entries else 1
        path = self.directory / f"{number:012d}-{assignment.task_id}.json"
        body = {"assignment": assignment.to_dict(), "accepted_at_ms": now_ms}
        atomic_write(path, json.dumps(body).encode(), mode=0o600)
        entry = QueuedTask(number, path, assignment, now_ms)
        self._entries.append(entry)
        return entry

    def remove(self, entry: QueuedTask) -> None:
        """The task is done: its proof is in the outbox."""
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        fsync_dir(self.directory)
        self._forget(entry)

    def abandon(self, entry: QueuedTask, *, reason: str, detail: str, now_ms: int) -> Path:
        """Drop ``entry`` for good, recording why first (the record survives a crash)."""
        a = entry.assignment
        record = {
            "assignment": a.to_dict(),
            "accepted_at_ms": entry.accepted_at_ms,
            "reason": reason,
            "detail": detail,
            "at_ms": now_ms,
        }
        target = self.abandoned_dir / f"{a.task_id}-{a.issued_at}.json"
        atomic_write(target, json.dumps(record, indent=2).encode(), mode=0o600)
        self.remove(entry)
        return target

    def prune_abandoned(self, now_ms: int, retention_ms: int) -> int:
        """Delete abandoned records older than ``retention_ms``; how many went."""
        removed = 0
        for path in self.abandoned_dir.glob("*.json"):
            try:
                at_ms = json.loads(path.read_bytes())["at_ms"]
            except (OSError, ValueError, KeyError, TypeError):
                at_ms = 0
            if not isinstance(at_ms, int) or now_ms - at_ms > retention_ms:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    # --- internals ----------------------------------------------------------------------

    def _forget(self, entry: QueuedTask) -> None:
        self._entries = [e for e in self._entries if e.path != entry.path]

    def _keep_unreadable(self, path: Path, error: str) -> None:
        try:
            raw = path.read_bytes()[:_MAX_RAW].decode("utf-8", "replace")
        except OSError:
            raw = ""
        record = {
            "reason": UNREADABLE,
            "detail": error,
            "file": path.name,
            "raw": raw,
            "at_ms": now_ms(),
        }
        target = self.abandoned_dir / f"unreadable-{path.name}"
        atomic_write(target, json.dumps(record, indent=2).encode(), mode=0o600)
        os.unlink(path)
        fsync_dir(self.directory)
        log.error("queued assignment %s is unreadable (%s); recorded in %s", path, error, target)
