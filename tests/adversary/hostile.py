"""Hostile devices for the adversary tests: each speaks the real protocol with its own
keys, certificate and endpoint, but does not cooperate when challenged.

They build on ``SimDevice`` (tests/support/device.py), which computes honestly except
for ``cheat_chunks``; here only the answer to a spot-check changes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from aeamc.shared import proofs
from aeamc.shared.messages import Challenge, Opening, Privacy, parse_signed, sign
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import KINDS, SimDevice, now_ms

UNKNOWN_TASK = {"error": {"code": "unknown_task", "message": "no trace for this task"}}


@dataclass
class HostileDevice(SimDevice):
    """A device whose answer to each challenge is chosen by ``on_challenge``:

    - ``decline``: "unknown task" whenever a faked chunk is asked, honest otherwise;
    - ``silent``: never answers (the request hangs until the coordinator gives up);
    - ``late``: answers honestly, but ``late_s`` seconds after the challenge;
    - ``erase``: erases itself (a signed privacy request) instead of answering;
    - ``wrong-opening``: opens the chunks of the honest computation, not of its trace;
    - ``replay``: answers with a valid opening it signed earlier, for another task;
    - ``honest``: answers as an agent does.
    """

    on_challenge: str = "honest"
    late_s: float = 0.0
    #: When set, every answer waits for it (the check stays pending until the test says).
    hold: asyncio.Event | None = None
    erasure_replies: list[tuple[int, Any]] = field(default_factory=list)
    openings: list[Opening] = field(default_factory=list)

    async def _on_challenge(self, request: web.Request) -> web.Response:
        ch = parse_signed(await request.json(), Challenge)
        self.challenges.append(ch)
        trace = self.traces.get(ch.task_id)
        mode = self.on_challenge
        if trace is None:
            return web.json_response(UNKNOWN_TASK, status=404)
        if mode == "decline" and set(ch.indices) & self.cheat_chunks:
            return web.json_response(UNKNOWN_TASK, status=404)
        if self.hold is not None:
            await self.hold.wait()
        if mode == "silent":
            await asyncio.sleep(3600)
        if mode == "late":
            await asyncio.sleep(self.late_s)
        if mode == "erase":
            self.erasure_replies.append(await self.erase())
            return web.json_response(UNKNOWN_TASK, status=404)
        if mode == "wrong-opening":
            honest = honest_trace(self._assignment(ch))
            return web.json_response(proofs.build_opening(self.key, ch, honest).to_dict())
        if mode == "replay" and self.openings:
            return web.json_response(self.openings[0].to_dict())
        opening = proofs.build_opening(self.key, ch, trace)
        self.openings.append(opening)
        return web.json_response(opening.to_dict())

    def _assignment(self, ch: Challenge) -> Any:
        return next(a for a in self.assignments if a.task_id == ch.task_id)

    async def erase(self) -> tuple[int, Any]:
        """Erase this identity with its own signed privacy request (SPEC §11)."""
        body = sign(
            Privacy,
            {
                "type": "privacy",
                "device_id": self.device_id,
                "action": "erase",
                "timestamp": now_ms(),
            },
            self.key,
        ).to_dict()
        assert self._session is not None
        async with self._session.delete(
            f"{self.coordinator_url}/v1/devices/{self.device_id}",
            json=body,
            ssl=self.client_context(),
        ) as resp:
            return resp.status, await resp.json()


def honest_trace(a: Any) -> proofs.Trace:
    """What an honest device computes for assignment ``a``."""
    kind = KINDS.get(a.kind)
    return proofs.Trace(tuple(kind.run_chunk(a.params, i, a.chunks) for i in range(a.chunks)))


class Watcher:
    """Polls a task as its client would and keeps every view seen, so a test can assert
    what was ever shown (e.g. never ``verified`` with a faked output)."""

    def __init__(self, coordinator: CoordinatorProcess, task_id: str, token: str) -> None:
        self.coordinator, self.task_id, self.token = coordinator, task_id, token
        self.seen: list[dict[str, Any]] = []

    def view(self) -> dict[str, Any]:
        status, body = self.coordinator.request(
            "GET", f"/v1/tasks/{self.task_id}", token=self.token
        )
        assert status == 200, body
        self.seen.append(body)
        return body

    async def until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 45) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            view = self.view()
            if predicate(view):
                return view
            await asyncio.sleep(0.1)
        raise AssertionError(f"task {self.task_id} never reached the state: {self.seen[-1]}")

    def ever_verified_with(self, output_hex: str) -> bool:
        return any(
            v["verification"]["state"] == "verified" and v["output"] == output_hex
            for v in self.seen
        )
