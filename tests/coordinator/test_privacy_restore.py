"""A real coordinator restored from a backup of its database taken before an erasure:
at start, before it serves anything, it carries the erasure out again."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

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
