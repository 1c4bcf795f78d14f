"""The coordinator end to end with real processes and HTTP: enrollment, heartbeats, task
assignment, proofs, microblocks, spot-checks, quarantine and redundancy."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

from aeamc.shared import microblock, spotcheck
from aeamc.shared.identity import SigningKey, sign_message
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import SimDevice

SHA_TASK = {"kind": "sha256-chain", "params": {"seed": "ab" * 32, "iterations": 200}, "chunks": 8}


async def wait(predicate: Any, timeout: float = 30) -> Any:
    for _ in range(int(timeout / 0.1)):
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_happy_path(coordinator: CoordinatorProcess, enroll_token: str) -> None:
    device = await SimDevice(coordinator.url).start()
    try:
        await device.join(enroll_token)
        client = coordinator.token("client")
        status, body = coordinator.request("POST", "/v1/tasks", SHA_TASK, token=client)
        assert status == 202, body
        task_id = body["task_id"]

        def task() -> dict[str, Any]:
            return coordinator.request("GET", f"/v1/tasks/{task_id}", token=client)[1]

        done = await wait(
            lambda: (
                (t := task())["state"] == "completed"
                and t["proofs"][0]["spot_check"] == "passed"
                and t
            )
        )
        assert done["assignments"][0]["device_id"] == device.device_id
        proof = done["proofs"][0]
        assert proof["credit"] == "verified"
        assert done["output"] == device.traces[task_id].output.hex()
        height = proof["block_height"]
        status, raw = coordinator.request("GET", f"/v1/microblocks/{height}/raw")
        assert status == 200
        # The exact bytes decode with the auditor's tool.
        out = subprocess.run(
            [sys.executable, "-m", "aeamc.shared.cli", "inspect", "microblock", "-"],
            input=raw,
            capture_output=True,
            check=True,
        )
        view = json.loads(out.stdout)
        assert {"task_id": task_id, "device_id": device.device_id} in [
            {"task_id": r["task_id"], "device_id": r["device_id"]} for r in view["receipts"]
        ]
        assert device.challenges and device.challenges[0].task_id == task_id
        assert len(device.challenges[0].indices) == 4
        # Derived when the challenge was sent, as SPEC §2 says, from the receipt's block.
        assert device.challenges[0].block_hash == view["block_hash"]
        assert list(device.challenges[0].indices) == spotcheck.challenge_indices(
            bytes.fromhex(view["block_hash"]), task_id, 4, SHA_TASK["chunks"]
        )
        # The chain verifies from genesis.
        blocks = coordinator.request("GET", "/v1/microblocks")[1]["microblocks"]
        decoded = [
            microblock.decode(coordinator.request("GET", f"/v1/microblocks/{b['height']}/raw")[1])
            for b in blocks
        ]
        microblock.verify_chain(decoded)
        status, dev = coordinator.request(
            "GET", f"/v1/devices/{device.device_id}", token=coordinator.token("operator")
        )
        assert dev["record"]["passes"] == 1 and dev["state"] == "active"
        assert dev["reputation"] > 0.5
        # The proof row carries its task's chunk count, which sets its check probability.
        assert coordinator.rows("SELECT chunks FROM proofs WHERE task_id=?", [task_id]) == [
            (SHA_TASK["chunks"],)
        ]
    finally:
        await device.stop()


async def test_cheater_is_caught_and_quarantined(
    coordinator: CoordinatorProcess, enroll_token: str
) -> None:
    cheater = await SimDevice(coordinator.url, cheat_chunks=frozenset(range(1, 8))).start()
    try:
        await cheater.join(enroll_token)
        client = coordinator.token("client")
        task_id = coordinator.request("POST", "/v1/tasks", SHA_TASK, token=client)[1]["task_id"]
        operator = coordinator.token("operator")

        def state() -> dict[str, Any]:
            return coordinator.request("GET", f"/v1/devices/{cheater.device_id}", token=operator)[1]

        dev = await wait(lambda: (d := state())["state"] == "quarantined" and d)
        assert "failed spot-check" in dev["state_reason"]
        assert dev["record"]["failures"] == 1
        task = coordinator.request("GET", f"/v1/tasks/{task_id}", token=client)[1]
        assert task["proofs"][0]["spot_check"] == "failed"
        assert task["proofs"][0]["credit"] == "void"
        # The failed spot-check revoked the cheater's certificate.
        exported = coordinator.request(
            "GET", f"/v1/devices/{cheater.device_id}/export", token=operator
        )[1]
        assert [c["revoked_reason"] for c in exported["certificates"]] == ["quarantined"]
        # A quarantined device gets no further work and its messages are refused.
        status, body = await cheater.heartbeat()
        assert status == 403 and body["error"]["code"] == "quarantined"
        coordinator.request("POST", "/v1/tasks", SHA_TASK, token=client)
        await asyncio.sleep(1.0)
        assert len(cheater.assignments) == 1
        # The cheater's task went back to the queue: an honest device redoes it, and the
        # client gets the honest output, never the cheater's.
        assert task["state"] == "queued" and task["output"] is None
        honest = await SimDevice(coordinator.url).start()
        try:
            await honest.join(enroll_token)

            def redone() -> dict[str, Any]:
                return coordinator.request("GET", f"/v1/tasks/{task_id}", token=client)[1]

            t = await wait(lambda: (t := redone())["state"] == "completed" and t)
            assert t["output"] == honest.traces[task_id].output.hex()
            assert {p["device_id"]: p["credit"] for p in t["proofs"]}[cheater.device_id] == "void"
        finally:
            await honest.stop()
    finally:
        await cheater.stop()


async def test_redundancy_detects_mismatching_output(
    coordinator: CoordinatorProcess, enroll_token: str
) -> None:
    honest = await SimDevice(coordinator.url).start()
    cheater = await SimDevice(coordinator.url, cheat_chunks=frozenset({3})).start()
    try:
        await honest.join(enroll_token)
        await cheater.join(enroll_token)
        client = coordinator.token("client")
        body = {**SHA_TASK, "replicas": 2}
        task_id = coordinator.request("POST", "/v1/tasks", body, token=client)[1]["task_id"]

        def task() -> dict[str, Any]:
            return coordinator.request("GET", f"/v1/tasks/{task_id}", token=client)[1]

        # Two agents must both run the task first: allow for a machine busy with other tests.
        t = await wait(lambda: (t := task())["state"] == "disputed" and t, timeout=90)
        assert {a["device_id"] for a in t["assignments"]} == {honest.device_id, cheater.device_id}
        assert t["output"] is None
        # Both replicas are spot-checked; only the cheater fails.
        t = await wait(
            lambda: (
                (t := task())
                and all(p["spot_check"] in ("passed", "failed") for p in t["proofs"])
                and t
            )
        )
        verdicts = {p["device_id"]: p["spot_check"] for p in t["proofs"]}
        assert verdicts == {honest.device_id: "passed", cheater.device_id: "failed"}
    finally:
        await honest.stop()
        await cheater.stop()


async def test_refusal_reassigns_to_another_device(
    coordinator: CoordinatorProcess, enroll_token: str
) -> None:
    lazy = await SimDevice(coordinator.url, refuse="battery_low").start()
    worker = await SimDevice(coordinator.url).start()
    try:
        await lazy.join(enroll_token)
        await worker.join(enroll_token)
        client = coordinator.token("client")
        ids = [
            coordinator.request("POST", "/v1/tasks", SHA_TASK, token=client)[1]["task_id"]
            for _ in range(3)
        ]

        def states() -> list[str]:
            return [
                coordinator.request("GET", f"/v1/tasks/{i}", token=client)[1]["state"] for i in ids
            ]

        await wait(lambda: states() == ["completed"] * 3)
        operator = coordinator.token("operator")
        dev = coordinator.request("GET", f"/v1/devices/{lazy.device_id}", token=operator)[1]
        assert dev["record"]["refusals"] >= 1
        for i in ids:
            t = coordinator.request("GET", f"/v1/tasks/{i}", token=client)[1]
            assert [p["device_id"] for p in t["proofs"]] == [worker.device_id]
    finally:
        await lazy.stop()
        await worker.stop()


async def test_proof_batch_judges_each_proof_alone_in_one_commit(
    coordinator: CoordinatorProcess, enroll_token: str
) -> None:
    device = await SimDevice(coordinator.url, auto_prove=False).start()
    try:
        await device.join(enroll_token)
        client = coordinator.token("client")
        for _ in range(2):
            status, body = coordinator.request("POST", "/v1/tasks", SHA_TASK, token=client)
            assert status == 202, body
        await wait(lambda: len(device.assignments) == 2)
        a, b = device.assignments
        good_a, good_b = device.proof_for(a), device.proof_for(b)
        forged = device.proof_for(b)
        forged["pot"] = {**forged["pot"], "signature": "00" * 64}
        # Signed, but by another key than the device's, under the device's id.
        other_key = SigningKey.from_seed(b"\x07" * 32)
        impostor = device.proof_for(b)
        impostor["pot"] = sign_message(impostor["pot"], other_key)
        # A malformed submission makes the whole batch malformed: refused, nothing judged.
        malformed = {"proofs": [good_a, {"pot": {}, "output": "zz"}, good_b]}
        status, body = await device.post("/v1/proofs/batch", malformed)
        assert (status, body["error"]["field"]) == (400, "proofs[1].output"), body
        batch = {"proofs": [good_a, good_b, good_a, forged, impostor]}
        status, body = await device.post("/v1/proofs/batch", batch)
        assert status == 200, body
        got = [(r["status"], r.get("error", {}).get("code")) for r in body["results"]]
        assert got == [
            (202, None),
            (202, None),
            (409, "duplicate"),
            (401, "bad_signature"),
            (401, "bad_signature"),
        ]
        assert body["results"][0]["body"]["task_state"] == "completed"
        operator = coordinator.token("operator")
        summary = coordinator.request("GET", "/v1/status", token=operator)[1]
        assert sum(summary["proofs"].values()) == 2
        # Each stored proof counted once on the device's record, in the store as in the view.
        dev = coordinator.request("GET", f"/v1/devices/{device.device_id}", token=operator)[1]
        assert dev["record"]["completed"] == 2
        row = coordinator.rows(
            "SELECT completed FROM devices WHERE device_id=?", [device.device_id]
        )
        assert row == [(2,)]
        # A proof accepted in a batch is a duplicate in the next one.
        status, body = await device.post("/v1/proofs/batch", {"proofs": [good_b]})
        assert [r["error"]["code"] for r in body["results"]] == ["duplicate"]
        for bad in ({"proofs": []}, {"proofs": [good_a] * 257}, {"proof": [good_a]}, []):
            status, body = await device.post("/v1/proofs/batch", bad)
            assert (status, body["error"]["code"]) == (400, "invalid_message"), bad
    finally:
        await device.stop()
