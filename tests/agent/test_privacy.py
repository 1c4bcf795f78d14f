"""``aeamc-agent privacy export|forget``: a real agent process and a real coordinator."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.agent import AgentProcess
from tests.support.coordinator import CoordinatorProcess

PROFILE = [
    {
        "at_s": 0,
        "battery_pct": 73,
        "charging": True,
        "cpu_temp_mc": 61_234,
        "cpu_load_permille": 123,
        "mem_available_kb": 987_654_321,
    }
]


def test_agent_exports_and_forgets_its_data(
    coordinator: CoordinatorProcess, tmp_path: Path
) -> None:
    agent = AgentProcess(
        tmp_path / "agent",
        coordinator_url=coordinator.url,
        token=coordinator.issue_token("enroll"),
        profile=PROFILE,
        mdns=False,
    )
    try:
        agent.start()
        device_id = agent.device_id
        row = f"/v1/devices/{device_id}"
        coordinator.wait_for(
            lambda: (r := coordinator.get(row))[0] == 200 and r[1]["last_seq"] >= 2
        )

        out = tmp_path / "export.json"
        agent.cli("privacy", "export", "-o", str(out))
        export = json.loads(out.read_text())
        assert export["device_id"] == device_id
        assert export["device"]["public_key"] == agent.status()["public_key"]
        assert export["device"]["endpoint"] == agent.endpoint
        assert len(export["heartbeats"]) >= 2
        for h in export["heartbeats"]:
            assert h["telemetry"]["mem_available_kb"] == 987_654_321
            assert h["telemetry"]["cpu_temp_mc"] == 61_234
            assert h["telemetry"]["battery_pct"] == 73
        assert json.loads(agent.cli("privacy", "export").stdout)["device_id"] == device_id

        # Without --yes and without a terminal to ask on: nothing happens.
        proc = agent.cli("privacy", "forget", check=False)
        assert proc.returncode == 64, proc.stderr
        assert coordinator.get(f"/v1/devices/{device_id}")[0] == 200

        proc = agent.cli("privacy", "forget", "--yes")
        assert "erased" in proc.stdout
        assert coordinator.get(f"/v1/devices/{device_id}")[0] == 404
        pin = json.loads((agent.state_dir / "coordinator.json").read_text())
        assert pin["state"] == "erased"
        # The running daemon learns it too and stops sending; it never enrolls again.
        agent.wait_status(lambda s: s["coordinator"]["state"] == "erased")
        assert coordinator.get(f"/v1/devices/{device_id}")[0] == 404

        proc = agent.cli("privacy", "forget", "--yes", check=False)
        assert proc.returncode == 1 and "already erased" in proc.stderr
    finally:
        agent.close()
    assert agent.status()["coordinator"]["state"] == "erased"
