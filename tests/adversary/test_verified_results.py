"""A client asks for verified results only, over the API and with the CLI, and waits for
them: nothing is handed out while the result's check is pending."""

from __future__ import annotations

import asyncio
import json

from tests.adversary.hostile import HostileDevice
from tests.adversary.test_cheaters import TASK, MakeCoordinator, submit, wait


async def test_verified_only_results_wait_for_the_check(make_coordinator: MakeCoordinator) -> None:
    coordinator = make_coordinator({"spot_checks": {"timeout_s": 60.0}})
    token = coordinator.issue_token("enroll", uses=20)
    device = await HostileDevice(coordinator.url, hold=asyncio.Event()).start()
    assert device.hold is not None
    client = coordinator.token("client")
    try:
        await device.join(token)
        task_id = submit(coordinator)
        await wait(lambda: device.challenges)  # completed, and its check is under way

        status, view = coordinator.request("GET", f"/v1/tasks/{task_id}", token=client)
        assert status == 200 and view["state"] == "completed"
        assert view["verification"] == {"state": "unverified", "by": None}
        assert view["output"] == device.traces[task_id].output.hex()  # shown, marked
        status, only = coordinator.request(
            "GET", f"/v1/tasks/{task_id}?verified=true", token=client
        )
        assert only["output"] is None and {p["output"] for p in only["proofs"]} == {None}
        listed = coordinator.request("GET", "/v1/tasks?verified=true", token=client)[1]
        assert listed["tasks"] == []
        assert (
            coordinator.request("GET", f"/v1/tasks/{task_id}?verified=maybe", token=client)[0]
            == 400
        )

        cli = await asyncio.to_thread(
            coordinator.cli, "tasks", "show", task_id, "--verified", check=False
        )
        assert cli.returncode == 75, cli.stderr
        assert json.loads(cli.stdout)["output"] is None

        # The client waits; the check passes meanwhile; the wait returns the output.
        waiting = asyncio.create_task(
            asyncio.to_thread(
                coordinator.cli, "tasks", "show", task_id, "--verified", "--wait", "30"
            )
        )
        await asyncio.sleep(0.5)
        device.hold.set()
        done = await waiting
        shown = json.loads(done.stdout)
        assert shown["verification"] == {"state": "verified", "by": "spot-check"}
        assert shown["output"] == device.traces[task_id].output.hex()
        status, view = coordinator.request(
            "GET", f"/v1/tasks/{task_id}?verified=true&wait_s=5", token=client
        )
        assert view["output"] == shown["output"]
        listed = coordinator.request("GET", "/v1/tasks?verified=true", token=client)[1]
        assert [t["task_id"] for t in listed["tasks"]] == [task_id]
        assert TASK["chunks"] == 4
    finally:
        await device.stop()
