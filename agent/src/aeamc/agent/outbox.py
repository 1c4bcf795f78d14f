"""Proofs waiting for delivery, kept durably until the coordinator has them.

Each PoT, with its output bytes, is written to ``outbox/`` (durably: temp file, fsync,
rename, fsync of the directory) *before* the first attempt to send it, and deleted only
once the coordinator answered 202 (stored) or 409 ``duplicate`` (stored earlier). A proof
the coordinator refuses for good (410 expired/unknown assignment, or another permanent
4xx) moves to ``rejected/`` with the reason, for the owner to see. Nothing is ever
dropped silently.

Bounded: when the outbox holds ``max_count`` proofs or ``max_bytes`` bytes the agent
refuses new assignments (reason ``outbox_full``) until deliveries make room. The task
already running still completes and is queued, so the bound may be exceeded by that one
proof; an accepted task's proof is never discarded to honour a limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aeamc.shared.messages import PoT, parse
from aeamc.shared.runtime.files import TEMP_GLOB, atomic_write, fsync_dir

from .state import ensure_dir

_ENTRY = re.compile(r"(\d{12})-([A-Za-z0-9._:-]{1,64})\.json")


@dataclass(frozen=True)
class Entry:
    """One queued proof, ordered by ``number`` (the order the tasks finished)."""

    number: int
    path: Path
    size: int

    @property
    def task_id(self) -> str:
        m = _ENTRY.fullmatch(self.path.name)
        assert m is not None
        return m.group(2)


@dataclass(frozen=True)
class QueuedProof:
    pot: PoT
    output: bytes
    queued_at_ms: int

    def body(self) -> dict[str, Any]:
        """The ``POST /v1/proofs`` request body."""
        return {"pot": self.pot.to_dict(), "output": self.output.hex()}


def _scan(directory: Path) -> list[Entry]:
    found = []
    with contextlib.suppress(FileNotFoundError):
        for path in directory.iterdir():
            m = _ENTRY.fullmatch(path.name)
            if m is not None:
                with contextlib.suppress(FileNotFoundError):
                    found.append(Entry(int(m.group(1)), path, path.stat().st_size))
    return sorted(found, key=lambda e: e.number)


def reason_path(rejected: Path) -> Path:
    """Where the coordinator's refusal of a rejected proof is kept, beside it."""
    return rejected.with_name(rejected.name + ".reason")


def summary(directory: Path, rejected_dir: Path) -> dict[str, int]:
    """Counts for ``status``, read-only (works while the daemon is down)."""
    entries = _scan(directory)
    return {
        "count": len(entries),
        "bytes": sum(e.size for e in entries),
        "rejected": len(_scan(rejected_dir)),
    }


class Outbox:
    def __init__(self, directory: Path, rejected: Path, *, max_count: int, max_bytes: int) -> None:
        self.directory = ensure_dir(directory)
        self.rejected_dir = ensure_dir(rejected)
        self.max_count = max_count
        self.max_bytes = max_bytes
        for stale in self.directory.glob(TEMP_GLOB):
            stale.unlink()  # a write interrupted by a crash; the proof was never queued

    def entries(self) -> list[Entry]:
        """Every queued proof, oldest first."""
        return _scan(self.directory)

    @property
    def count(self) -> int:
        return len(self.entries())

    @property
    def size_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def has_room(self) -> bool:
        entries = self.entries()
        return len(entries) < self.max_count and sum(e.size for e in entries) < self.max_bytes

    def add(self, pot: PoT, output: bytes, now_ms: int) -> Entry:
        """Queue a proof durably; when this returns, a crash cannot lose it."""
        entries = self.entries()
        number = entries[-1].number + 1 if entries else 1
        path = self.directory / f"{number:012d}-{pot.task_id}.json"
        self._write(path, QueuedProof(pot, output, now_ms))
        return Entry(number, path, path.stat().st_size)

    def load(self, entry: Entry) -> QueuedProof:
        data = json.loads(entry.path.read_bytes())
        return QueuedProof(
            pot=parse(PoT, data["pot"]),
            output=bytes.fromhex(data["output"]),
            queued_at_ms=data["queued_at_ms"],
        )

    def replace(self, entry: Entry, proof: QueuedProof) -> None:
        """Store a re-signed proof in place (same position in the queue)."""
        self._write(entry.path, proof)

    def remove(self, entry: Entry) -> None:
        with contextlib.suppress(FileNotFoundError):
            entry.path.unlink()
        fsync_dir(self.directory)

    def reject(self, entry: Entry, *, status: int, code: str, message: str) -> Path:
        """Move a refused proof to ``rejected/`` with why; it stays for the owner."""
        target = self.rejected_dir / entry.path.name
        os.replace(entry.path, target)
        reason = {"http_status": status, "code": code, "message": message}
        atomic_write(reason_path(target), json.dumps(reason, indent=2).encode(), mode=0o644)
        fsync_dir(self.directory)
        return target

    def rejected(self) -> list[Entry]:
        return _scan(self.rejected_dir)

    def _write(self, path: Path, proof: QueuedProof) -> None:
        data = {
            "pot": proof.pot.to_dict(),
            "output": proof.output.hex(),
            "queued_at_ms": proof.queued_at_ms,
        }
        atomic_write(path, json.dumps(data).encode(), mode=0o600)
