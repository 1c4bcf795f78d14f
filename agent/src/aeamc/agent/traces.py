"""Chunk outputs of finished tasks, kept on disk to answer spot-checks.

A challenge arrives only after the proof's receipt lands in a microblock, possibly after
an agent restart, so the trace is stored durably before the proof is queued. Each task is
two files: ``<task_id>.bin`` (the framed output, exactly the bytes of the PoT's output)
and ``<task_id>.json`` (assignment, chunk count, when it was kept). The JSON is written
last: a trace without it is incomplete and ignored. Traces older than the retention
window (default 24 h) are deleted.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aeamc.shared.messages import Assignment, parse
from aeamc.shared.proofs import Trace, split_output
from aeamc.shared.runtime.files import atomic_write

from .state import ensure_dir


@dataclass(frozen=True)
class StoredTrace:
    assignment: Assignment
    trace: Trace
    kept_at_ms: int


class TraceStore:
    def __init__(self, directory: Path, *, retention_ms: int) -> None:
        self.directory = ensure_dir(directory)
        self.retention_ms = retention_ms

    def save(self, assignment: Assignment, trace: Trace, now_ms: int) -> None:
        task_id = assignment.task_id
        atomic_write(self.directory / f"{task_id}.bin", trace.output, mode=0o600)
        meta = {
            "assignment": assignment.to_dict(),
            "chunks": len(trace.outputs),
            "kept_at_ms": now_ms,
        }
        atomic_write(self.directory / f"{task_id}.json", json.dumps(meta).encode(), mode=0o600)

    def load(self, task_id: str, now_ms: int) -> StoredTrace | None:
        """The kept trace of ``task_id``, or ``None`` (never kept, or expired)."""
        meta_path = self.directory / f"{task_id}.json"
        try:
            meta: dict[str, Any] = json.loads(meta_path.read_bytes())
            output = (self.directory / f"{task_id}.bin").read_bytes()
        except FileNotFoundError:
            return None
        if now_ms - meta["kept_at_ms"] > self.retention_ms:
            return None
        outputs = split_output(output, meta["chunks"])
        return StoredTrace(
            assignment=parse(Assignment, meta["assignment"]),
            trace=Trace(tuple(outputs)),
            kept_at_ms=meta["kept_at_ms"],
        )

    def assignment(self, task_id: str) -> Assignment | None:
        """The assignment a kept trace answers, without reading its output."""
        try:
            meta = json.loads((self.directory / f"{task_id}.json").read_bytes())
            return parse(Assignment, meta["assignment"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def has(self, task_id: str) -> bool:
        return (self.directory / f"{task_id}.json").exists()

    def prune(self, now_ms: int) -> list[str]:
        """Delete traces past retention (and leftovers of interrupted saves)."""
        removed = []
        for meta_path in self.directory.glob("*.json"):
            try:
                kept_at = json.loads(meta_path.read_bytes())["kept_at_ms"]
            except (OSError, ValueError, KeyError, TypeError):
                kept_at = 0
            if now_ms - kept_at > self.retention_ms:
                task_id = meta_path.stem
                meta_path.unlink(missing_ok=True)
                (self.directory / f"{task_id}.bin").unlink(missing_ok=True)
                removed.append(task_id)
        for bin_path in self.directory.glob("*.bin"):
            if not bin_path.with_suffix(".json").exists():
                with contextlib.suppress(OSError):
                    if now_ms / 1000 - bin_path.stat().st_mtime > 3600:
                        bin_path.unlink()
        return removed

    def count(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))
