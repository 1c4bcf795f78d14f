"""A real aiohttp server on loopback playing the coordinator's side of the agent API.

It implements exactly the contract the agent expects (docs/agent.md, "HTTP contract"):
``/v1/enroll``, ``/v1/heartbeats`` and ``/v1/proofs`` with SPEC §9 error bodies, verifies
what it receives with the protocol core, and lets a test script the next answers
(``script``) to play outages, refusals and replays. It also signs assignments and
challenges the way a coordinator does.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from aeamc.shared.errors import ProtocolError
from aeamc.shared.identity import SigningKey
from aeamc.shared.messages import (
    Assignment,
    Challenge,
    Enroll,
    PoA,
    PoT,
    parse,
    parse_signed,
    sign,
)
from aeamc.shared.proofs import verify_pot


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def error(status: int, code: str, message: str = "", **extra: Any) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message or code, **extra}}, status=status
    )


@dataclass
class Scripted:
    """A canned answer: HTTP status and JSON body (``None`` = drop the connection)."""

    status: int
    body: Any = None


@dataclass
class FakeCoordinator:
    key: SigningKey = field(default_factory=lambda: SigningKey.generate(os.urandom(32)))
    cluster_id: int = 7
    enroll_state: str = "active"
    flags: dict[str, bool] = field(default_factory=lambda: {"fast_heartbeats": True})
    enrollments: list[Enroll] = field(default_factory=list)
    heartbeats: list[PoA] = field(default_factory=list)
    proofs: list[tuple[PoT, bytes]] = field(default_factory=list)
    requests: list[tuple[str, Any]] = field(default_factory=list)
    assignments: dict[str, Assignment] = field(default_factory=dict)
    device_keys: dict[str, bytes] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)
    stored: set[tuple[str, str]] = field(default_factory=set)
    script: dict[str, deque[Scripted]] = field(default_factory=dict)
    #: Serve ``/v1/proofs/batch`` too (the real coordinator does; older ones did not).
    batch: bool = False
    batches: list[int] = field(default_factory=list)
    url: str = ""
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def coordinator_id(self) -> str:
        return self.key.device_id

    @property
    def public_key(self) -> str:
        return self.key.public_key.hex()

    def queue(self, path: str, *answers: Scripted) -> None:
        self.script.setdefault(path, deque()).extend(answers)

    async def start(self, port: int = 0) -> FakeCoordinator:
        app = web.Application()
        app.router.add_post("/v1/enroll", self._enroll)
        app.router.add_post("/v1/heartbeats", self._heartbeat)
        app.router.add_post("/v1/proofs", self._proof)
        if self.batch:
            app.router.add_post("/v1/proofs/batch", self._proof_batch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- what a coordinator signs -----------------------------------------------------------

    def assignment(
        self,
        device_id: str,
        *,
        task_id: str = "task-1",
        kind: str = "sha256-chain",
        params: dict[str, Any] | None = None,
        chunks: int = 4,
        ttl_ms: int = 60_000,
        issued_at: int | None = None,
        key: SigningKey | None = None,
    ) -> Assignment:
        issued = now_ms() if issued_at is None else issued_at
        body = {
            "type": "assignment",
            "task_id": task_id,
            "device_id": device_id,
            "coordinator_id": self.coordinator_id,
            "kind": kind,
            "params": params if params is not None else {"seed": "ab" * 32, "iterations": 100},
            "chunks": chunks,
            "issued_at": issued,
            "expires_at": issued + ttl_ms,
        }
        a = sign(Assignment, body, key or self.key)
        self.assignments[task_id] = a
        return a

    def challenge(self, device_id: str, task_id: str, indices: list[int]) -> Challenge:
        body = {
            "type": "challenge",
            "task_id": task_id,
            "device_id": device_id,
            "block_hash": "cd" * 32,
            "indices": indices,
            "issued_at": now_ms(),
        }
        return sign(Challenge, body, self.key)

    # --- handlers -------------------------------------------------------------------------

    async def _scripted(self, request: web.Request) -> web.StreamResponse | None:
        answers = self.script.get(request.path)
        if not answers:
            return None
        answer = answers.popleft()
        if answer.body is None and answer.status == 0:
            # Drop the connection without an HTTP answer.
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        return web.json_response(answer.body, status=answer.status)

    async def _enroll(self, request: web.Request) -> web.StreamResponse:
        data = await request.json()
        self.requests.append((request.path, data))
        scripted = await self._scripted(request)
        if scripted is not None:
            return scripted
        try:
            message = parse_signed(data, Enroll)
            message.verify_self()
        except ProtocolError as exc:
            return error(400, exc.code, str(exc))
        self.enrollments.append(message)
        self.device_keys[message.device_id] = message.public_key_bytes
        return web.json_response(
            {
                "device_id": message.device_id,
                "state": self.enroll_state,
                "coordinator_id": self.coordinator_id,
                "coordinator_public_key": self.public_key,
                "cluster_id": self.cluster_id,
            },
            status=202,
        )

    async def _heartbeat(self, request: web.Request) -> web.StreamResponse:
        data = await request.json()
        self.requests.append((request.path, data))
        scripted = await self._scripted(request)
        if scripted is not None:
            return scripted
        try:
            poa = parse_signed(data, PoA)
        except ProtocolError as exc:
            return error(400, exc.code, str(exc))
        key = self.device_keys.get(poa.device_id)
        if key is None:
            return error(403, "not_enrolled", "unknown device")
        try:
            poa.verify(key, signer_id=poa.device_id)
        except ProtocolError as exc:
            return error(403, exc.code, str(exc))
        if self.enroll_state == "pending":
            return error(403, "pending", "waiting for approval")
        last = self.last_seq.get(poa.device_id, -1)
        if poa.seq <= last:
            return error(409, "replay", f"seq {poa.seq} not above {last}", last_seq=last)
        self.last_seq[poa.device_id] = poa.seq
        self.heartbeats.append(poa)
        return web.json_response(
            {"state": self.enroll_state, "flags": self.flags, "server_time_ms": now_ms()},
            status=202,
        )

    async def _proof(self, request: web.Request) -> web.StreamResponse:
        data = await request.json()
        self.requests.append((request.path, data))
        scripted = await self._scripted(request)
        if scripted is not None:
            return scripted
        status, body = self._judge_proof(data)
        return web.json_response(body, status=status)

    async def _proof_batch(self, request: web.Request) -> web.StreamResponse:
        data = await request.json()
        self.requests.append((request.path, data))
        scripted = await self._scripted(request)
        if scripted is not None:
            return scripted
        self.batches.append(len(data["proofs"]))
        results = []
        for item in data["proofs"]:
            status, body = self._judge_proof(item)
            results.append(
                {"status": status, "body": body} if status == 202 else {"status": status, **body}
            )
        return web.json_response({"results": results})

    def _judge_proof(self, data: Any) -> tuple[int, Any]:
        def err(status: int, code: str, message: str) -> tuple[int, Any]:
            return status, {"error": {"code": code, "message": message}}

        try:
            pot = parse(PoT, data["pot"])
            output = bytes.fromhex(data["output"])
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            return err(400, "invalid_message", str(exc))
        if (pot.task_id, pot.device_id) in self.stored:
            return err(409, "duplicate", "already stored")
        assignment = self.assignments.get(pot.task_id)
        if assignment is None:
            return err(410, "unknown_assignment", "no such assignment")
        try:
            verify_pot(
                pot,
                output,
                public_key=self.device_keys[pot.device_id],
                assignment=assignment,
                now_ms=now_ms(),
            )
        except ProtocolError as exc:
            return err(400, exc.code, str(exc))
        self.stored.add((pot.task_id, pot.device_id))
        self.proofs.append((pot, output))
        return 202, {"accepted": True}


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
