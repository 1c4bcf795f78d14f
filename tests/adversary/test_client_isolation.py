"""One client cannot see, fetch or even detect another client's tasks.

Two client tokens, A and B, made by the operator with the same label (a label is not an
identity). A submits a task under an id it chose; a real device runs it to completion.
B's list never holds it, B's fetch of its id answers exactly as an id nobody holds, B may
use the same chosen id for a task of its own, and A's output never reaches B. The
operator sees both clients' tasks.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.coordinator import CoordinatorProcess
from tests.support.device import SimDevice

pytestmark = pytest.mark.timeout(120)

TASK = {"kind": "sha256-chain", "params": {"seed": "cd" * 32, "iterations": 100}, "chunks": 2}
#: B's own work (other params, so its own output differs from A's).
B_TASK = {**TASK, "params": {"seed": "ef" * 32, "iterations": 100}}


async def wait(predicate: Any, timeout: float = 60) -> Any:
    """Until ``predicate()`` is true, yielding to the device's own server meanwhile."""
    for _ in range(int(timeout / 0.1)):
        if result := predicate():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


def listed(coordinator: CoordinatorProcess, tok: str) -> set[str]:
    status, body = coordinator.request("GET", "/v1/tasks", token=tok)
    assert status == 200, body
    return {t["task_id"] for t in body["tasks"]}


def not_found_shape(coordinator: CoordinatorProcess, tok: str, task_id: str) -> tuple[int, Any]:
    """The answer to fetching ``task_id``, with the id itself taken out of the message."""
    status, body = coordinator.request("GET", f"/v1/tasks/{task_id}", token=tok)
    error = body.get("error") or {}
    return status, {**error, "message": str(error.get("message")).replace(task_id, "<id>")}


async def test_another_clients_task_is_invisible(coordinator: CoordinatorProcess) -> None:
    a = coordinator.issue_token("client", label="lab")
    b = coordinator.issue_token("client", label="lab")
    operator = coordinator.token("operator")

    status, mine = coordinator.request("POST", "/v1/tasks", {**TASK, "task_id": "job-1"}, token=a)
    assert status == 202, mine
    a_task = mine["task_id"]
    assert mine["client_ref"] == "job-1"
    # Its own id again: a duplicate of its own task, and the reply names it.
    status, again = coordinator.request("POST", "/v1/tasks", {**TASK, "task_id": "job-1"}, token=a)
    assert (status, again["error"]["code"], again["error"]["task_id"]) == (409, "duplicate", a_task)

    # B: the task is not listed, and fetching it answers as for an id nobody holds.
    assert a_task not in listed(coordinator, b)
    nobody = not_found_shape(coordinator, b, "t-00000000deadbeef")
    assert nobody[0] == 404 and nobody[1]["code"] == "not_found", nobody
    assert not_found_shape(coordinator, b, a_task) == nobody
    # Choosing the same id is B's own business: accepted, a task of B's own.
    status, theirs = coordinator.request(
        "POST", "/v1/tasks", {**B_TASK, "task_id": "job-1"}, token=b
    )
    assert status == 202, theirs
    b_task = theirs["task_id"]
    assert b_task != a_task and theirs["client_ref"] == "job-1"
    assert listed(coordinator, b) == {b_task}
    assert listed(coordinator, a) == {a_task}
    assert coordinator.request("GET", f"/v1/tasks/{a_task}", token=a)[0] == 200
    assert not_found_shape(coordinator, a, b_task) == nobody

    # A device runs both; A sees its output, B never does.
    enroll = coordinator.issue_token("enroll", label="")
    device = await SimDevice(coordinator.url).start()
    try:
        await device.join(enroll)

        def done(tok: str, task_id: str) -> Any:
            view = coordinator.request("GET", f"/v1/tasks/{task_id}", token=tok)[1]
            return view if view.get("state") == "completed" and view.get("output") else None

        a_view = await wait(lambda: done(a, a_task))
        output = device.traces[a_task].output.hex()
        assert a_view["output"] == output
        assert not_found_shape(coordinator, b, a_task) == nobody
        status, b_list = coordinator.request("GET", "/v1/tasks?state=completed", token=b)
        assert status == 200 and a_task not in {t["task_id"] for t in b_list["tasks"]}
        await wait(lambda: done(b, b_task))
        b_view = coordinator.request("GET", f"/v1/tasks/{b_task}", token=b)[1]
        assert output not in repr(b_view) and a_task not in repr(b_view)
    finally:
        await device.stop()

    # The operator sees every client's tasks, with their outputs.
    assert {a_task, b_task} <= listed(coordinator, operator)
    status, view = coordinator.request("GET", f"/v1/tasks/{a_task}", token=operator)
    assert status == 200 and view["output"] == output
