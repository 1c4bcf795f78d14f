"""How far each device is with the tasks it holds, as its heartbeats say (SPEC §2.4).

Display data for a task's view (``chunks_done`` of an assignment), kept in memory only:
a restart forgets it, and the next heartbeats tell it again. Nothing is decided on it —
no task moves, no device earns or loses anything — so a device's word is taken as it
is, within what that device actually holds:

* an entry exists only for a live (offered or accepted) assignment of the reporting
  device, with ``0 ≤ chunks_done ≤`` the task's chunks; anything else a heartbeat names
  is ignored, so a device can neither touch another device's progress nor create
  entries for tasks it does not hold, and the board holds at most one entry per live
  assignment;
* each accepted heartbeat replaces everything its device reported before (a task no
  longer named is done, given up, or no longer held), and one without ``work`` clears it;
* entries of assignments that ended without their device's word (expired, taken back,
  the device erased) go at the next ``keep_live``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from aeamc.shared.messages import WorkReport


@dataclass(frozen=True, slots=True)
class Progress:
    """One device's latest word on one task: chunks done, from the heartbeat ``seq``."""

    chunks_done: int
    seq: int


class ProgressBoard:
    """The latest chunks done per (task, device), bounded by the live assignments."""

    def __init__(self) -> None:
        self._by_device: dict[str, dict[str, Progress]] = {}

    def __len__(self) -> int:
        return sum(len(tasks) for tasks in self._by_device.values())

    def report(
        self,
        device_id: str,
        seq: int,
        work: Sequence[WorkReport] | None,
        held: Mapping[str, int],
    ) -> int:
        """Take the heartbeat ``seq`` of ``device_id`` reporting ``work``, given ``held``:
        the device's live assignments named in it, task id → the task's chunks.

        The device's entries become exactly the reports of tasks in ``held`` with
        ``chunks_done`` within the task's chunks; a task named twice is ignored (the
        report contradicts itself). A heartbeat older than the device's entries (two
        sent at once, answered out of order) changes nothing. Returns how many reports
        were kept."""
        current = self._by_device.get(device_id)
        if current and any(p.seq >= seq for p in current.values()):
            return 0
        named: dict[str, int] = {}
        for w in work or ():
            named[w.task_id] = named.get(w.task_id, 0) + 1
        kept = {
            w.task_id: Progress(w.chunks_done, seq)
            for w in work or ()
            if named[w.task_id] == 1 and w.task_id in held and 0 <= w.chunks_done <= held[w.task_id]
        }
        if kept:
            self._by_device[device_id] = kept
        else:
            self._by_device.pop(device_id, None)
        return len(kept)

    def chunks_done(self, task_id: str, device_id: str) -> int | None:
        """What ``device_id`` last reported done of ``task_id``; None when unknown."""
        entry = self._by_device.get(device_id, {}).get(task_id)
        return None if entry is None else entry.chunks_done

    def forget(self, task_id: str, device_id: str) -> None:
        """Drop the entry of one assignment (it ended)."""
        tasks = self._by_device.get(device_id)
        if tasks is not None and tasks.pop(task_id, None) is not None and not tasks:
            del self._by_device[device_id]

    def held(self) -> set[tuple[str, str]]:
        """Every (task, device) with an entry."""
        return {(t, d) for d, tasks in self._by_device.items() for t in tasks}

    def keep_live(self, live: Collection[tuple[str, str]]) -> int:
        """Keep only the entries of ``live`` (task, device) assignments; how many went."""
        gone = [pair for pair in self.held() if pair not in live]
        for task_id, device_id in gone:
            self.forget(task_id, device_id)
        return len(gone)
