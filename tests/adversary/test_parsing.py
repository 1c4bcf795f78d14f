"""Junk bodies cannot stall or bloat the coordinator: a body over its route's limit is
refused with 413 before it is read, a body within the proof limit that is not the outline
of proofs is refused with 400 before millions of objects are built, and meanwhile
``/v1/health`` keeps answering."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.support.coordinator import CoordinatorProcess
from tests.support.device import SimDevice

MIB = 1024 * 1024
JUNK_ARRAY = b"[" + b",".join([b"{}"] * (14 * MIB // 3)) + b"]"
JUNK_BATCH = b'{"proofs":[' + b",".join([b"{}"] * (14 * MIB // 3)) + b"]}"
JUNK_POT = b'{"pot":{' + b",".join(b'"k%d":0' % i for i in range(1_200_000)) + b'},"output":""}'
#: The coordinator's peak RSS may grow by at most this while it refuses the junk (the
#: bodies themselves are 4 × 14 MiB, read in full only on the proof routes).
RSS_GROWTH_BOUND_KIB = 200 * 1024


def _peak_rss_kib(proc: CoordinatorProcess) -> int:
    assert proc.process is not None
    for line in Path(f"/proc/{proc.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def _post(session: Any, url: str, body: bytes) -> tuple[int, Any]:
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        return r.status, await r.json()


def test_a_real_enrollment_and_heartbeat_fit_their_limits() -> None:
    from aeamc.coordinator.front import BODY_LIMITS

    device = SimDevice("https://127.0.0.1:1")
    enroll = json.dumps(device.enroll_message("t" * 64)).encode()
    heartbeat = json.dumps(device.poa()).encode()
    assert len(enroll) * 8 < BODY_LIMITS[("POST", "/v1/enroll")]
    assert len(heartbeat) * 8 < BODY_LIMITS[("POST", "/v1/heartbeats")]


async def test_junk_bodies_are_refused_while_health_answers(
    coordinator: CoordinatorProcess,
) -> None:
    operator = coordinator.token("operator")
    before_status = coordinator.request("GET", "/v1/status", token=operator)[1]
    before_rss = _peak_rss_kib(coordinator)
    url = coordinator.url
    async with coordinator.session() as junk, coordinator.session() as probe:
        sends = [
            asyncio.create_task(_post(junk, url + "/v1/proofs/batch", JUNK_ARRAY)),
            asyncio.create_task(_post(junk, url + "/v1/proofs/batch", JUNK_BATCH)),
            asyncio.create_task(_post(junk, url + "/v1/proofs", JUNK_POT)),
            asyncio.create_task(_post(junk, url + "/v1/enroll", JUNK_ARRAY)),
            asyncio.create_task(_post(junk, url + "/v1/heartbeats", JUNK_ARRAY)),
        ]
        health: list[int] = []
        while not all(t.done() for t in sends) or len(health) < 20:
            async with probe.get(url + "/v1/health") as r:
                health.append(r.status)
        results = [t.result() for t in sends]
    codes = [(status, body["error"]["code"]) for status, body in results]
    assert codes == [
        (400, "invalid_message"),
        (400, "invalid_message"),
        (400, "invalid_message"),
        (413, "body_too_large"),
        (413, "body_too_large"),
    ]
    assert "65536 bytes" in results[3][1]["error"]["message"]
    assert len(health) >= 20 and set(health) == {200}
    growth = _peak_rss_kib(coordinator) - before_rss
    assert growth < RSS_GROWTH_BOUND_KIB, growth
    after_status = coordinator.request("GET", "/v1/status", token=operator)[1]
    for key in ("devices", "tasks", "proofs"):
        assert after_status.get(key) == before_status.get(key), key
