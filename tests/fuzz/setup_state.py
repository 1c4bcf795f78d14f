"""Real coordinator state to fuzz around: devices in every state, a proved and spot-checked
task in a block, an open assignment, and the exact signed messages that built it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from aeamc.shared.messages import Assignment
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import SimDevice

SHA_TASK = {"kind": "sha256-chain", "params": {"seed": "ab" * 32, "iterations": 200}, "chunks": 8}
#: Freshness window for heartbeats and enrollments during the fuzz. Short on purpose: the
#: set-up messages are stale long before the fuzz starts, so replaying them byte for byte can
#: never be accepted (an enrollment replayed inside its window is, by design, idempotent
#: re-enrollment and would be a legitimate write).
HEARTBEAT_WINDOW_S = 5

#: Nothing legitimate may happen while the fuzz runs, so the snapshot comparison means
#: something: no anchoring (the embedded chain would write anchors rows on its own), no
#: device turns stale (``stale_after_s`` ~ a year), the open assignment never expires
#: (``assignment_timeout_s`` a day), and the set-up task's spot-check has finished before
#: the first snapshot (waited for below). Empty microblocks are never formed.
SETTINGS: dict[str, Any] = {
    "chain": {"enabled": False},
    "protocol": {"stale_after_s": 31_536_000, "heartbeat_window_s": HEARTBEAT_WINDOW_S},
    "scheduler": {"assignment_timeout_s": 86_400},
}


@dataclass
class State:
    operator: str
    client: str
    enroll_token: str
    device: SimDevice
    pending: SimDevice
    quarantined: SimDevice
    enroll_msg: dict[str, Any]
    poas: list[dict[str, Any]]
    done_task: str
    done_assignment: Assignment
    done_proof: dict[str, Any]
    open_task: str
    open_assignment: Assignment
    block_height: int
    extra: dict[str, Any] = field(default_factory=dict)


async def _wait(predicate: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError("set-up condition not met in time")


def _ok(reply: tuple[int, Any], status: int) -> Any:
    assert reply[0] == status, reply
    return reply[1]


async def build_state(coord: CoordinatorProcess) -> State:
    operator, client = coord.token("operator"), coord.token("client")
    enroll_token = _ok(
        coord.request("POST", "/v1/tokens", {"role": "enroll", "uses": 10}, token=operator), 201
    )["token"]
    device = await SimDevice(coord.url, auto_prove=False).start()
    pending = await SimDevice(coord.url).start()
    quarantined = await SimDevice(coord.url).start()
    enroll_msg = device.enroll_message(enroll_token)
    _ok(await device.post("/v1/enroll", enroll_msg), 202)
    poas = []
    for _ in range(3):
        poa = device.poa()
        _ok(await device.post("/v1/heartbeats", poa), 202)
        poas.append(poa)
    _ok(await pending.enroll(), 202)  # no token: stays pending
    _ok(await quarantined.enroll(enroll_token), 202)
    _ok(
        coord.request(
            "POST",
            f"/v1/devices/{quarantined.device_id}/quarantine",
            {"reason": "x"},
            token=operator,
        ),
        200,
    )
    # Only the devices with endpoints that are up receive work: stop the other two.
    await pending.stop()
    await quarantined.stop()

    done_task = _ok(coord.request("POST", "/v1/tasks", SHA_TASK, token=client), 202)["task_id"]
    await _wait(lambda: len(device.assignments) == 1)
    done_assignment = device.assignments[0]
    done_proof = device.proof_for(done_assignment)
    _ok(await device.post("/v1/proofs", done_proof), 202)

    def settled() -> Any:
        t = coord.request("GET", f"/v1/tasks/{done_task}", token=client)[1]
        p = t["proofs"][0] if t.get("proofs") else {}
        return (
            t["state"] == "completed"
            and p.get("spot_check") == "passed"
            and p.get("block_height") is not None
            and p
        )

    proof_view = await _wait(settled)
    open_task = _ok(
        coord.request("POST", "/v1/tasks", {**SHA_TASK, "task_id": "fuzz-open"}, token=client), 202
    )["task_id"]
    await _wait(lambda: len(device.assignments) == 2)
    open_assignment = device.assignments[1]
    # Let the scheduler record the accepted push before the device goes away.
    await asyncio.sleep(1.0)
    await device.stop()
    # Every set-up enrollment and heartbeat is now outside the freshness window.
    await asyncio.sleep(HEARTBEAT_WINDOW_S + 1.5)
    return State(
        operator=operator,
        client=client,
        enroll_token=enroll_token,
        device=device,
        pending=pending,
        quarantined=quarantined,
        enroll_msg=enroll_msg,
        poas=poas,
        done_task=done_task,
        done_assignment=done_assignment,
        done_proof=done_proof,
        open_task=open_task,
        open_assignment=open_assignment,
        block_height=int(proof_view["block_height"]),
    )
