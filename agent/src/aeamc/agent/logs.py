"""The request id each task's log lines carry on the agent.

The log format itself, the request-id context variable and the ``X-Request-ID`` header
are the ones both daemons share (``aeamc.shared.runtime.logs``).

Request ids follow a task across daemons: the coordinator sends ``X-Request-ID`` with an
assignment or a challenge; the agent logs everything it does for that task with the same
id and sends it back with the task's proof.
"""

from __future__ import annotations

from collections import OrderedDict

from aeamc.shared.runtime.logs import derived_task_request_id, well_formed

_TASK_IDS: OrderedDict[str, str] = OrderedDict()
_TASK_IDS_MAX = 1024


def task_request_id(task_id: str) -> str:
    """The id a task's lines share: the one its assignment came with, else derived from it
    (the coordinator derives it the same way)."""
    rid = _TASK_IDS.get(task_id)
    if rid is None:
        rid = derived_task_request_id(task_id)
    return rid


def remember_task(task_id: str, request_id: str | None) -> None:
    """Keep the id an assignment or challenge for ``task_id`` arrived with."""
    if not well_formed(request_id):
        return
    _TASK_IDS[task_id] = request_id  # type: ignore[assignment]
    _TASK_IDS.move_to_end(task_id)
    while len(_TASK_IDS) > _TASK_IDS_MAX:
        _TASK_IDS.popitem(last=False)
