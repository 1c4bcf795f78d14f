"""Feature flags (SPEC §10) on the real coordinator: cohorts in heartbeat replies, the
operator CLI and API, the audit history, and the coordinator's own flagged behaviour."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from aeamc.shared.flags import bucket, in_rollout
from aeamc.shared.identity import SigningKey
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import SimDevice, now_ms

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "v1.json").read_text())


def flags_cli(coordinator: CoordinatorProcess, *args: str) -> Any:
    out = coordinator.cli("flags", *args, "--json" if args[0] != "set" else "--by=alice")
    return json.loads(out.stdout)


async def _heartbeat_flags(devices: list[SimDevice]) -> dict[str, dict[str, bool]]:
    seen = {}
    for d in devices:
        status, body = await d.heartbeat()
        assert status == 202, body
        seen[d.device_id] = body["flags"]
    return seen


async def test_rollout_cohorts_follow_spec_10(coordinator: CoordinatorProcess) -> None:
    status, body = coordinator.request(
        "POST", "/v1/tokens", {"role": "enroll", "uses": 250}, token=coordinator.token("operator")
    )
    assert status == 201, body
    token = body["token"]
    vector = VECTORS["feature_flag"]
    # 200 simulated devices; seed 1 is the SPEC vector's device.
    devices = [
        SimDevice(coordinator.url, key=SigningKey.from_seed(bytes([i]) * 32)) for i in range(1, 201)
    ]
    assert devices[0].device_id == vector["device_id"]
    assert bucket(vector["flag"], vector["device_id"]) == vector["bucket"]
    async with aiohttp.ClientSession() as session:
        for d in devices:
            d._session = session
            status, body = await d.enroll(token)
            assert status == 202 and body["state"] == "active", body
        # No flags yet: the reply's member is there, and empty.
        assert (await devices[0].heartbeat())[1]["flags"] == {}

        name = vector["flag"]
        assert flags_cli(coordinator, "set", name, "--percent", "10")["percent"] == 10
        at10 = await _heartbeat_flags(devices)
        cohort10 = {i for i, f in at10.items() if f[name]}
        assert cohort10 == {d.device_id for d in devices if bucket(name, d.device_id) < 10}
        assert 5 <= len(cohort10) <= 40  # about 10 % of 200
        assert all(set(f) == {name} for f in at10.values())

        flags_cli(coordinator, "set", name, "--percent", "100")
        at100 = await _heartbeat_flags(devices)
        cohort100 = {i for i, f in at100.items() if f[name]}
        assert cohort100 == {d.device_id for d in devices}
        assert cohort10 <= cohort100  # raising a rollout only ever adds devices

        # The vector: bucket 43 is out at 43 % and in at 44 %.
        flags_cli(coordinator, "set", name, "--percent", "43")
        assert (await devices[0].heartbeat())[1]["flags"] == {name: False}
        flags_cli(coordinator, "set", name, "--percent", "44")
        assert (await devices[0].heartbeat())[1]["flags"] == {name: True}

        # A second flag is judged independently, per SPEC §10, for every device.
        status, body = coordinator.request(
            "PUT", "/v1/flags/other", {"percent": 50}, token=coordinator.token("operator")
        )
        assert status == 200 and body["updated_by"] and body["from_percent"] is None, body
        both = await _heartbeat_flags(devices[:20])
        for device_id, f in both.items():
            assert f == {
                name: in_rollout(name, device_id, 44),
                "other": in_rollout("other", device_id, 50),
            }

    listed = flags_cli(coordinator, "list")
    assert [(f["name"], f["percent"], f["updated_by"]) for f in listed] == [
        (name, 44, "alice"),
        ("other", 50, body["updated_by"]),
    ]
    history = flags_cli(coordinator, "history", name)
    assert [(h["from_percent"], h["to_percent"], h["by"]) for h in history] == [
        (None, 10, "alice"),
        (10, 100, "alice"),
        (100, 43, "alice"),
        (43, 44, "alice"),
    ]
    stamps = [h["at"] for h in history]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time() * 1000) < 60_000
    assert len(flags_cli(coordinator, "history")) == 5
    table = coordinator.cli("flags", "history").stdout
    assert "alice" in table and "43%" in table and "44%" in table


def test_flag_changes_need_the_operator_and_a_valid_percent(
    coordinator: CoordinatorProcess,
) -> None:
    op = coordinator.token("operator")
    for body in ({"percent": 101}, {"percent": -1}, {"percent": "5"}, {"percent": True}, {}):
        status, reply = coordinator.request("PUT", "/v1/flags/x", body, token=op)
        assert status == 400, (body, reply)
    status, _ = coordinator.request("PUT", "/v1/flags/Bad%20Name", {"percent": 5}, token=op)
    assert status == 400
    status, _ = coordinator.request(
        "PUT", "/v1/flags/x", {"percent": 5}, token=coordinator.token("client")
    )
    assert status in (401, 403)
    status, _ = coordinator.request("GET", "/v1/flags")
    assert status == 401
    assert coordinator.request("GET", "/v1/flags/history", token=op)[1] == {"history": []}
    bad = coordinator.cli("flags", "set", "x", check=False)
    assert bad.returncode != 0 and "--percent" in bad.stderr


async def test_strict_freshness_halves_the_heartbeat_window(
    coordinator: CoordinatorProcess, enroll_token: str
) -> None:
    async with aiohttp.ClientSession() as session:
        device = SimDevice(coordinator.url)
        device._session = session
        await device.join(enroll_token)
        window_ms = 60_000  # protocol.heartbeat_window_s
        old = now_ms() - int(window_ms * 0.75)

        async def late_heartbeat() -> tuple[int, Any]:
            return await device.post("/v1/heartbeats", device.poa(timestamp=old))

        # Off (the default): a heartbeat 45 s old is within the 60 s window.
        status, body = await late_heartbeat()
        assert status == 202 and body["flags"] == {}, body
        coordinator.cli("flags", "set", "strict-freshness", "--percent", "100")
        status, body = await late_heartbeat()
        assert status == 400 and body["error"]["code"] == "stale_message", body
        status, body = await device.heartbeat()  # a fresh one still passes
        assert status == 202 and body["flags"] == {"strict-freshness": True}, body
        # Devices outside the cohort keep the full window.
        coordinator.cli("flags", "set", "strict-freshness", "--percent", "0")
        status, body = await late_heartbeat()
        assert status == 202 and body["flags"] == {"strict-freshness": False}, body


def test_request_ids_are_assigned_honoured_and_logged(coordinator: CoordinatorProcess) -> None:
    import urllib.request

    def rid_of(headers: dict[str, str]) -> str:
        req = urllib.request.Request(coordinator.url + "/v1/health", headers=headers)
        with urllib.request.urlopen(req, timeout=10, context=coordinator.ssl_context()) as resp:
            return str(resp.headers["X-Request-ID"])

    generated = rid_of({})
    assert len(generated) >= 16
    assert rid_of({"X-Request-ID": "abc-123.x"}) == "abc-123.x"
    assert rid_of({"X-Request-ID": "bad id with spaces"}) != "bad id with spaces"
    assert rid_of({"X-Request-ID": "x" * 65}) != "x" * 65
    # Errors carry it too.
    status, _ = coordinator.request("GET", "/v1/nowhere")
    assert status == 404
    coordinator.request(
        "PUT", "/v1/flags/y", {"percent": 5, "by": "bob"}, token=coordinator.token("operator")
    )
    assert coordinator.log is not None
    lines = [json.loads(x) for x in coordinator.log.read_text().splitlines() if x.startswith("{")]
    changed = [x for x in lines if x.get("flag") == "y"]
    assert changed and changed[0]["level"] == "info" and changed[0]["by"] == "bob"
    assert changed[0]["request_id"] and changed[0]["logger"] == "aeamc.coordinator.flags"
    assert ("ts" in changed[0]) == ("JOURNAL_STREAM" not in os.environ)
