"""A real coordinator keeps its retention and erasure promises by itself: restored from a
backup of its database taken before an erasure, it carries the erasure out again at start,
before it serves anything; and its maintenance loop deletes candidates past retention."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from pathlib import Path

from aeamc.shared.identity import SigningKey
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import GOOD_TELEMETRY, SimDevice


def test_a_restored_backup_is_erased_again_at_start(tmp_path: Path) -> None:
    coord = CoordinatorProcess(tmp_path / "c")
    coord.init()
    coord.start()
    try:
        token = coord.issue_token("enroll", uses=1)

        async def joined() -> SimDevice:
            device = await SimDevice(coord.url).start()
            try:
                await device.join(token)
                status, body = await device.heartbeat(GOOD_TELEMETRY)
                assert status == 202, body
            finally:
                await device.stop()
            return device

        device = asyncio.run(joined())
        device_id = device.device_id
        db_path = coord.state_dir / "coordinator.db"
        backup = tmp_path / "backup.db"
        with sqlite3.connect(db_path) as live, sqlite3.connect(backup) as copy:
            live.backup(copy)  # the operator's online backup, before the erasure
        status, body = coord.request(
            "DELETE", f"/v1/devices/{device_id}", token=coord.token("operator")
        )
        assert status == 200 and body["state"] == "erased", body
    finally:
        coord.stop()

    # The operator restores the database alone, as the runbook says.
    for name in ("coordinator.db-wal", "coordinator.db-shm"):
        (coord.state_dir / name).unlink(missing_ok=True)
    backup.replace(db_path)
    with sqlite3.connect(db_path) as restored:
        assert restored.execute("SELECT 1 FROM devices WHERE device_id=?", [device_id]).fetchone()

    coord.start()
    try:
        assert coord.get(f"/v1/devices/{device_id}")[0] == 404
        operator = coord.token("operator")
        assert coord.request("GET", f"/v1/devices/{device_id}/export", token=operator)[0] == 404
    finally:
        coord.stop()
    with sqlite3.connect(db_path) as db:
        assert not db.execute("SELECT 1 FROM devices WHERE device_id=?", [device_id]).fetchone()
        assert not db.execute("SELECT 1 FROM heartbeats WHERE device_id=?", [device_id]).fetchone()
        assert db.execute("SELECT 1 FROM erased_devices WHERE device_id=?", [device_id]).fetchone()


def test_the_running_coordinator_deletes_candidates_past_retention(tmp_path: Path) -> None:
    coord = CoordinatorProcess(tmp_path / "c", {"privacy": {"candidate_retention_days": 2}})
    coord.init()
    now = time.time_ns() // 1_000_000
    day = 86_400_000
    old, recent = (SigningKey.from_seed(os.urandom(32)).device_id for _ in range(2))
    coord.start()
    coord.stop()  # the database now exists; two agents were seen over mDNS
    with sqlite3.connect(coord.state_dir / "coordinator.db") as db:
        for device_id, age in ((old, 2 * day + 60_000), (recent, day)):
            db.execute(
                "INSERT INTO candidates (device_id, address, port, txt, last_seen) "
                "VALUES (?,?,?,?,?)",
                [device_id, "192.0.2.9", 9999, json.dumps({"id": device_id}), now - age],
            )

    def left() -> set[str]:
        with sqlite3.connect(coord.state_dir / "coordinator.db") as db:
            return {r[0] for r in db.execute("SELECT device_id FROM candidates")}

    coord.start()
    try:
        coord.wait_for(lambda: left() == {recent})
    finally:
        coord.stop()
    assert left() == {recent}
