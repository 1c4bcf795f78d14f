"""How far each device is with the tasks it holds, as its heartbeats say (SPEC §2.4).

Display data for a task's view (``chunks_done`` of an assignment), stored with the
heartbeat that reports it (the ``progress`` table), so every worker process shows the
same. Nothing is decided on it — no task moves, no device earns or loses anything — so a
device's word is taken as it is, within what that device actually holds:

* a report is kept only for a live (offered or accepted) assignment of the reporting
  device, with ``0 ≤ chunks_done ≤`` the task's chunks; anything else a heartbeat names
  is ignored, so a device can neither touch another device's progress nor create
  entries for tasks it does not hold, and at most one entry per live assignment exists;
* each accepted heartbeat replaces everything its device reported before (a task no
  longer named is done, given up, or no longer held), and one without ``work`` clears it;
  an older heartbeat is never accepted after a newer one (its seq is refused), so the
  latest word stands;
* entries of assignments that ended without their device's word (expired, taken back,
  the device erased) go at the next sweep (maintenance.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aeamc.shared.messages import WorkReport


def kept_reports(work: Sequence[WorkReport] | None, held: Mapping[str, int]) -> dict[str, int]:
    """Of a heartbeat's ``work``, what is kept given ``held`` (the device's live
    assignments named in it, task id → the task's chunks): task id → chunks done, for the
    tasks in ``held`` reported once, within the task's chunks (a task named twice is
    ignored: the report contradicts itself)."""
    named: dict[str, int] = {}
    for w in work or ():
        named[w.task_id] = named.get(w.task_id, 0) + 1
    return {
        w.task_id: w.chunks_done
        for w in work or ()
        if named[w.task_id] == 1 and w.task_id in held and 0 <= w.chunks_done <= held[w.task_id]
    }
