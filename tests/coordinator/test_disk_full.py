"""A full disk under the coordinator's state: writes fail with 500 (nothing pretends to be
stored), HighErrorRate fires in /v1/health, and it clears once space is back."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.coordinator import CoordinatorProcess
from tests.support.device import SimDevice


async def test_disk_full_fires_high_error_rate_and_clears(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], check=True)
    coord = CoordinatorProcess(
        disk / "coord",
        settings={
            "chain": {"enabled": False},
            "alerts": {"window_s": 2.0, "min_requests": 5, "latency_p99_s": 30.0},
        },
    )
    filler = disk / "filler"
    device = SimDevice("", port=1)
    try:
        coord.init()
        coord.start()
        device.coordinator_url = coord.url
        token = coord.request(
            "POST", "/v1/tokens", {"role": "enroll"}, token=coord.token("operator")
        )[1]["token"]
        assert coord.request("POST", "/v1/enroll", device.enroll_message(token))[0] == 202
        assert coord.request("POST", "/v1/heartbeats", device.poa())[0] == 202
        # Fill the disk: dd stops at "No space left on device".
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True, check=False
        )
        statuses = [coord.request("POST", "/v1/heartbeats", device.poa())[0] for _ in range(8)]
        assert set(statuses) == {500}, statuses
        health = coord.request("GET", "/v1/health")[1]
        assert "HighErrorRate" in {a["name"] for a in health["alerts"]}, health
        filler.unlink()
        await asyncio.sleep(2.5)  # the failures leave the window
        for _ in range(6):
            assert coord.request("POST", "/v1/heartbeats", device.poa())[0] == 202
        health = coord.request("GET", "/v1/health")[1]
        assert health["status"] == "ok" and health["alerts"] == [], health
        shown = coord.request(
            "GET", f"/v1/devices/{device.device_id}", token=coord.token("operator")
        )[1]
        assert shown["last_seq"] == device.seq  # the refused heartbeats stored nothing
    finally:
        coord.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)
