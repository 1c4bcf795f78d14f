"""The device owner's rights (SPEC §11) against a real coordinator process: export and
erasure, by the device's signed request and by the operator; what stays and what goes,
down to the bytes of the database file."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from aeamc.shared import microblock
from aeamc.shared.identity import SigningKey
from aeamc.shared.messages import Privacy, sign
from aeamc.shared.runtime import tls
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import GOOD_TELEMETRY, SimDevice, now_ms

#: Values that cannot turn up in the database by chance.
TELEMETRY = {
    "battery_pct": 73,
    "charging": True,
    "cpu_temp_mc": 61_234,
    "cpu_load_permille": 123,
    "net_latency_us": 2_345,
    "mem_available_kb": 987_654_321,
}
SHA_PARAMS = {"seed": "ab" * 32, "iterations": 10}


def privacy(key: SigningKey, device_id: str, action: str, **over: Any) -> dict[str, Any]:
    body = {"type": "privacy", "device_id": device_id, "action": action, "timestamp": now_ms()}
    body.update(over)
    return sign(Privacy, body, key).to_dict()


def secrets_of(device: SimDevice) -> dict[str, bytes]:
    return {
        "public key (hex)": device.key.public_key.hex().encode(),
        "public key (raw)": device.key.public_key,
        "endpoint": device.endpoint.encode(),
        "mem_available_kb": b"987654321",
        "cpu_temp_mc": b'"cpu_temp_mc": 61234',
        "battery_pct": b'"battery_pct": 73',
    }


def found_in_files(coordinator: CoordinatorProcess, needles: dict[str, bytes]) -> list[str]:
    found = []
    for path in sorted(coordinator.state_dir.glob("coordinator.db*")):
        data = path.read_bytes()
        found += [f"{name} in {path.name}" for name, n in needles.items() if n in data]
    return found


def submit(coordinator: CoordinatorProcess, seed: str) -> str:
    task = {"kind": "sha256-chain", "params": {**SHA_PARAMS, "seed": seed}, "chunks": 2}
    return coordinator.submit_task(task)


def chain(coordinator: CoordinatorProcess) -> list[microblock.Microblock]:
    status, body = coordinator.request("GET", "/v1/microblocks?limit=1000")
    assert status == 200, body
    blocks = []
    for b in body["microblocks"]:
        status, raw = coordinator.request("GET", f"/v1/microblocks/{b['height']}/raw")
        assert status == 200
        blocks.append(microblock.decode(raw))
    return blocks


async def _joined(coordinator: CoordinatorProcess, token: str) -> SimDevice:
    device = await SimDevice(coordinator.url).start()
    status, body = await device.enroll(token)
    assert status == 202 and body["state"] == "active", body
    for _ in range(3):
        status, body = await device.heartbeat(TELEMETRY)
        assert status == 202, body
    return device


def _joined_then_gone(coordinator: CoordinatorProcess, token: str) -> SimDevice:
    """A device that joined and sent its heartbeats, then went away (its server stopped)."""

    async def scenario() -> SimDevice:
        device = await _joined(coordinator, token)
        await device.stop()
        return device

    return asyncio.run(scenario())


def test_device_exports_then_erases_itself(
    coordinator: CoordinatorProcess, enroll_token: str
) -> None:
    async def scenario() -> SimDevice:
        device = await _joined(coordinator, enroll_token)
        other: SimDevice | None = None
        try:
            done = await asyncio.to_thread(submit, coordinator, "01" * 32)
            await asyncio.to_thread(
                coordinator.wait_for,
                lambda: (
                    (t := coordinator.read(f"/v1/tasks/{done}"))["state"] == "completed"
                    and all(p["block_height"] is not None for p in t["proofs"])
                ),
            )
            output = coordinator.read(f"/v1/tasks/{done}")["output"]
            # A second task stays in flight on the device: erasure must release it.
            device.auto_prove = False
            pending = await asyncio.to_thread(submit, coordinator, "02" * 32)
            await asyncio.to_thread(coordinator.wait_for, lambda: device.assignments[1:])
            device_id = device.device_id

            # Export, signed by the device.
            path = f"/v1/devices/{device_id}/export"
            status, export = coordinator.request(
                "POST", path, privacy(device.key, device_id, "export")
            )
            assert status == 200, export
            assert export["device"]["public_key"] == device.key.public_key.hex()
            assert export["device"]["endpoint"] == device.endpoint
            assert export["device"]["telemetry"] == TELEMETRY
            assert [h["telemetry"] for h in export["heartbeats"]] == [TELEMETRY] * 3
            assert {a["task_id"] for a in export["assignments"]} == {done, pending}
            (proof,) = export["proofs"]
            assert proof["task_id"] == done and proof["output"] == output
            assert proof["pot"]["device_id"] == device_id
            assert export["receipts"][0]["task_id"] == done
            assert export["receipts"][0]["height"] == proof["block_height"]
            # The operator gets the same with GET.
            status, by_operator = coordinator.request(
                "GET", path, token=coordinator.token("operator")
            )
            assert status == 200 and by_operator["heartbeats"] == export["heartbeats"]
            # No token and no body, or a token of the wrong role: refused.
            assert coordinator.request("GET", path)[0] == 401
            assert coordinator.request("POST", path)[0] == 401
            assert coordinator.request("GET", path, token=coordinator.token("client"))[0] == 403

            # Refused, changing nothing: another key, a stale request, the wrong action,
            # another device's id, a client token.
            intruder = SigningKey.from_seed(os.urandom(32))
            erase = f"/v1/devices/{device_id}"
            refused = [
                coordinator.request("DELETE", erase, privacy(intruder, device_id, "erase")),
                coordinator.request(
                    "DELETE",
                    erase,
                    privacy(device.key, device_id, "erase", timestamp=now_ms() - 600_000),
                ),
                coordinator.request("DELETE", erase, privacy(device.key, device_id, "export")),
                coordinator.request(
                    "DELETE", erase, privacy(intruder, intruder.device_id, "erase")
                ),
                coordinator.request("DELETE", erase, token=coordinator.token("client")),
                coordinator.request("DELETE", erase),
                coordinator.request("POST", path, privacy(intruder, device_id, "export")),
            ]
            assert [s for s, _ in refused] == [401, 400, 400, 400, 403, 401, 401], refused
            assert refused[0][1]["error"]["code"] == "bad_signature"
            assert refused[1][1]["error"]["code"] == "stale_message"
            status, row = coordinator.get(f"/v1/devices/{device_id}")
            assert status == 200 and row["telemetry"] == TELEMETRY
            assert (
                coordinator.request("POST", path, privacy(device.key, device_id, "export"))[1][
                    "heartbeats"
                ]
                == export["heartbeats"]
            )

            # Before erasure, the search below finds what it looks for.
            before = {f.split(" in ")[0] for f in found_in_files(coordinator, secrets_of(device))}
            assert before == set(secrets_of(device)) - {"public key (raw)"}, before

            # Erasure, signed by the device.
            status, body = coordinator.request(
                "DELETE", erase, privacy(device.key, device_id, "erase")
            )
            assert status == 200, body
            assert body["state"] == "erased" and body["deleted"]["heartbeats"] == 3
            assert body["deleted"]["receipts_kept"] == 1
            # Its certificate record is gone; only the revoked serial stays, naming nobody.
            assert body["deleted"]["certificates"] == 1
            db = sqlite3.connect(coordinator.state_dir / "coordinator.db")
            revoked = db.execute("SELECT serial, reason FROM revoked_certificates").fetchall()
            db.close()
            serial = tls.serial_hex(tls.load_pem(device.certificates[0]))
            assert revoked == [(serial, "erased")]

            # The device is gone: no heartbeat, no enrollment, no record, no export.
            status, reply = await device.heartbeat(TELEMETRY)
            assert (status, reply["error"]["code"]) == (403, "not_enrolled")
            status, reply = await device.enroll(enroll_token)
            assert (status, reply["error"]["code"]) == (403, "erased")
            assert coordinator.get(f"/v1/devices/{device_id}")[0] == 404
            assert coordinator.request("GET", path, token=coordinator.token("operator"))[0] == 404
            status, again = coordinator.request(
                "DELETE", erase, privacy(device.key, device_id, "erase")
            )
            assert status == 403, again  # the key is gone: nothing left to check it against

            # Its receipt stays in the chain, which still verifies from genesis; the
            # client keeps the task's output; no proof bundle can be built any more.
            blocks = chain(coordinator)
            microblock.verify_chain(blocks)
            receipts = {(r.task_id, r.device_id) for b in blocks for r in b.receipts}
            assert (done, device_id) in receipts
            finished = coordinator.read(f"/v1/tasks/{done}")
            assert finished["state"] == "completed" and finished["output"] == output
            status, bundle = coordinator.request("GET", f"/v1/receipts/{done}/{device_id}/proof")
            assert (status, bundle["error"]["code"]) == (410, "erased"), bundle

            # The in-flight task went back to the queue, and another device gets it.
            assert coordinator.read(f"/v1/tasks/{pending}")["assignments"] == []
            other = await SimDevice(coordinator.url).start()
            await other.join(enroll_token)
            for _ in range(2):
                await other.heartbeat(GOOD_TELEMETRY)
            await asyncio.to_thread(
                coordinator.wait_for,
                lambda: coordinator.read(f"/v1/tasks/{pending}")["state"] == "completed",
            )
            assert [p["device_id"] for p in coordinator.read(f"/v1/tasks/{pending}")["proofs"]] == [
                other.device_id
            ]

            # Nothing of the device is left in the database files, running or stopped.
            found = found_in_files(coordinator, secrets_of(device))
            assert not found, found
            return device
        finally:
            await device.stop()
            if other is not None:
                await other.stop()

    device = asyncio.run(scenario())
    coordinator.stop()
    found = found_in_files(coordinator, secrets_of(device))
    assert not found, found
    assert (
        not (coordinator.state_dir / "coordinator.db-wal").exists()
        or not (coordinator.state_dir / "coordinator.db-wal").stat().st_size
    )
    assert coordinator.state_dir.joinpath("coordinator.db").stat().st_size > 0


def test_operator_exports_and_forgets_with_the_cli(
    coordinator: CoordinatorProcess, enroll_token: str, tmp_path: Path
) -> None:
    device = _joined_then_gone(coordinator, enroll_token)
    device_id = device.device_id
    out = tmp_path / "export.json"
    coordinator.cli("devices", "export", device_id, "-o", str(out))
    assert out.stat().st_mode & 0o777 == 0o600
    export = json.loads(out.read_text())
    assert export["device"]["public_key"] == device.key.public_key.hex()
    assert [h["telemetry"]["mem_available_kb"] for h in export["heartbeats"]] == [987_654_321] * 3
    assert json.loads(coordinator.cli("devices", "export", device_id).stdout) | {
        "exported_at": 0
    } == export | {"exported_at": 0}

    # Without --yes and without a terminal to ask on: refused, nothing erased.
    proc = coordinator.cli("devices", "forget", device_id, check=False)
    assert proc.returncode == 64, proc.stderr
    assert coordinator.get(f"/v1/devices/{device_id}")[0] == 200

    result = json.loads(coordinator.cli("devices", "forget", device_id, "--yes").stdout)
    assert result["state"] == "erased"
    assert coordinator.get(f"/v1/devices/{device_id}")[0] == 404
    proc = coordinator.cli("devices", "forget", device_id, "--yes", check=False)
    assert proc.returncode == 1 and "not_found" in proc.stderr

    async def refused() -> tuple[int, Any]:
        again = SimDevice(coordinator.url, key=device.key)
        again.port = device.port
        await again.start()
        try:
            return await again.heartbeat(TELEMETRY)
        finally:
            await again.stop()

    assert asyncio.run(refused())[0] == 403
    found = found_in_files(coordinator, secrets_of(device))
    assert not found, found


def test_telemetry_history_older_than_retention_is_purged(
    coordinator: CoordinatorProcess, enroll_token: str
) -> None:
    """Rows older than ``protocol.telemetry_retention_days`` go; younger rows stay."""
    from aeamc.coordinator.config import CoordinatorConfig
    from aeamc.coordinator.db import Database
    from aeamc.coordinator.service import Coordinator
    from aeamc.shared.tasks.registry import discover

    device = _joined_then_gone(coordinator, enroll_token)
    coordinator.stop()
    day = 86_400_000
    now = time.time_ns() // 1_000_000
    db = Database(coordinator.state_dir / "coordinator.db")
    db.open()
    try:
        ages = {1: 31 * day, 2: 30 * day + 60_000, 3: 29 * day}  # seq -> age

        def age(d: Any) -> None:
            for seq, ms in ages.items():
                d.execute(
                    "UPDATE heartbeats SET received_at=? WHERE device_id=? AND seq=?",
                    [now - ms, device.device_id, seq],
                )

        db.write_sync(age)
        config = CoordinatorConfig(state_dir=coordinator.state_dir)
        assert config.protocol.telemetry_retention_days == 30
        service = Coordinator(config, SigningKey.from_seed(os.urandom(32)), db, discover())
        service.clock = lambda: now
        assert asyncio.run(service.maintenance.purge_telemetry()) == 2
        left = db.read_sync(
            lambda d: [
                r["seq"]
                for r in d.query(
                    "SELECT seq FROM heartbeats WHERE device_id=? ORDER BY seq", [device.device_id]
                )
            ]
        )
        assert left == [3]
    finally:
        db.close()
