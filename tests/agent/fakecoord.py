"""A real aiohttp server on loopback playing the coordinator's side of the agent API.

It implements exactly the contract the agent expects (docs/agent.md, "HTTP contract"):
``/v1/enroll``, ``/v1/heartbeats`` and ``/v1/proofs`` with SPEC §9 error bodies, verifies
what it receives with the protocol core, and lets a test script the next answers
(``script``) to play outages, refusals and replays. It also signs assignments and
challenges the way a coordinator does.

It speaks TLS 1.3 with a real CA of its own (``aeamc.coordinator.ca``): enrollment answers
carry the CA and a certificate for the agent's CSR, heartbeats and proofs need that client
certificate (``require_client_cert``), and ``agent_session`` calls an agent the way the
coordinator does, with the coordinator's certificate.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import tempfile
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding

from aeamc.coordinator.ca import CertificateAuthority, issue_server_files
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
from aeamc.shared.runtime import tls

#: A route's answer to a request whose JSON body (None for a GET) was already read.
Handler = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def error(status: int, code: str, message: str = "", **extra: Any) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message or code, **extra}}, status=status
    )


@dataclass
class Scripted:
    """A canned answer: HTTP status and JSON body (``None`` = drop the connection), or
    ``raw`` bytes sent as the body as they are."""

    status: int
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] | None = None


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
    #: Say in heartbeat answers that ``work`` is read (the real coordinator does; older
    #: ones did not, and refused it).
    reads_work: bool = True
    batches: list[int] = field(default_factory=list)
    url: str = ""
    port: int = 0
    require_client_cert: bool = True
    #: Serials of the client certificates seen on heartbeats and proofs.
    client_serials: list[str] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    cert_lifetime_s: int = 3600
    #: Clients' content it serves at ``GET /v1/content/{digest}``, by digest.
    content: dict[str, bytes] = field(default_factory=dict)
    #: Share another fake's CA (the same coordinator moved), instead of a new one.
    ca_dir: Path | None = None
    #: Clients' content by digest, served at ``/v1/content/<digest>`` (WASM tasks).
    content: dict[str, bytes] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    #: Running fakes by coordinator id, so a test can call an agent as its coordinator.
    running: ClassVar[dict[str, FakeCoordinator]] = {}

    def __post_init__(self) -> None:
        if self.ca_dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="fakecoord-"))
            weakref.finalize(self, shutil.rmtree, self.dir, True)
        else:
            self.dir = self.ca_dir
        self.ca, _ = CertificateAuthority.ensure(self.dir, "", self.coordinator_id)
        files = issue_server_files(
            self.ca,
            self.dir,
            self.coordinator_id,
            names=["127.0.0.1", "localhost"],
            lifetime_s=3600,
        )
        self.server_ssl = tls.server_context(
            files.cert_file, files.key_file, ca_pem=self.ca.cert_pem
        )
        self.client_ssl = tls.client_context(
            ca_pem=self.ca.cert_pem, cert_file=files.cert_file, key_file=files.key_file
        )
        # Calls to agents by address: the agent's name is checked by the real coordinator.
        self.client_ssl.check_hostname = False

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
        app.router.add_post("/v1/enroll", self._served(self._enroll))
        app.router.add_post("/v1/heartbeats", self._served(self._heartbeat))
        app.router.add_post("/v1/proofs", self._served(self._proof))
        app.router.add_get("/v1/ca", self._served(self._ca, json_body=False))
        app.router.add_get("/v1/content/{digest}", self._served(self._content, json_body=False))
        if self.batch:
            app.router.add_post("/v1/proofs/batch", self._served(self._proof_batch))
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=self.server_ssl)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.url = f"https://127.0.0.1:{self.port}"
        FakeCoordinator.running[self.coordinator_id] = self
        return self

    async def stop(self) -> None:
        FakeCoordinator.running.pop(self.coordinator_id, None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def certify(self, agent_tls: Any) -> None:
        """Issue ``agent_tls`` (an ``AgentTls``) its certificate as an enrollment would."""
        cert = self.ca.issue_device(
            bytes.fromhex(agent_tls.csr_hex()), agent_tls.device_id, self.cert_lifetime_s
        )
        answer = {
            "ca_certificate": self.ca.cert_pem,
            "certificate": cert.public_bytes(Encoding.PEM).decode(),
        }
        agent_tls.accept(answer, self.coordinator_id, None)

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
        client: str | None = None,
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
            **({"client": client} if client is not None else {}),
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

    def _served(
        self, handler: Handler, *, json_body: bool = True
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``handler`` as a route: every request is recorded (with its JSON body), then
        answered as the test scripted for its path, if it did, else by ``handler``."""

        async def serve(request: web.Request) -> web.StreamResponse:
            data = await request.json() if json_body else None
            self.requests.append((request.path, data))
            scripted = await self._scripted(request)
            if scripted is not None:
                return scripted
            return await handler(request, data)

        return serve

    async def _scripted(self, request: web.Request) -> web.StreamResponse | None:
        answers = self.script.get(request.path)
        if not answers:
            return None
        answer = answers.popleft()
        if answer.raw is not None:
            return web.Response(
                body=answer.raw, status=answer.status, content_type="application/json"
            )
        if answer.body is None and answer.status == 0:
            # Drop the connection without an HTTP answer.
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)

    async def _content(self, request: web.Request, data: Any) -> web.StreamResponse:
        blob = self.content.get(request.match_info["digest"])
        if blob is None:
            return error(404, "not_found")
        return web.Response(body=blob, content_type="application/octet-stream")

    async def _ca(self, request: web.Request, data: Any) -> web.StreamResponse:
        return web.json_response(
            {"ca_certificate": self.ca.cert_pem, "ca_fingerprint": self.ca.fingerprint}
        )

    async def _content(self, request: web.Request, data: Any) -> web.StreamResponse:
        found = self.content.get(request.match_info["digest"])
        if found is None:
            return error(404, "not_found")
        return web.Response(body=found, content_type="application/octet-stream")

    async def _enroll(self, request: web.Request, data: Any) -> web.StreamResponse:
        try:
            message = parse_signed(data, Enroll)
            message.verify_self()
        except ProtocolError as exc:
            return error(400, exc.code, str(exc))
        self.enrollments.append(message)
        self.device_keys[message.device_id] = message.public_key_bytes
        answer = {
            "device_id": message.device_id,
            "state": self.enroll_state,
            "coordinator_id": self.coordinator_id,
            "coordinator_public_key": self.public_key,
            "cluster_id": self.cluster_id,
            "ca_certificate": self.ca.cert_pem,
            "ca_fingerprint": self.ca.fingerprint,
        }
        # As the coordinator does: a certificate only for a device that is not pending.
        if message.csr is not None and self.enroll_state != "pending":
            cert = self.ca.issue_device(
                bytes.fromhex(message.csr), message.device_id, self.cert_lifetime_s
            )
            self.issued.append(tls.serial_hex(cert))
            answer["certificate"] = cert.public_bytes(Encoding.PEM).decode()
        return web.json_response(answer, status=202)

    def _client_cert_refusal(self, request: web.Request, device_id: str) -> web.Response | None:
        problem = self._client_cert_problem(request, device_id)
        return None if problem is None else error(*problem)

    def _client_cert_problem(
        self, request: web.Request, device_id: str
    ) -> tuple[int, str, str] | None:
        peer = tls.peer_of(request.transport)
        if peer is not None:
            self.client_serials.append(peer.serial)
        if not self.require_client_cert:
            return None
        if peer is None:
            return 401, "certificate_required", "no client certificate"
        if peer.name != device_id or peer.role != tls.ROLE_DEVICE:
            return 403, "certificate_mismatch", "another identity's certificate"
        return None

    async def _heartbeat(self, request: web.Request, data: Any) -> web.StreamResponse:
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
        refusal = self._client_cert_refusal(request, poa.device_id)
        if refusal is not None:
            return refusal
        if self.enroll_state == "pending":
            return error(403, "pending", "waiting for approval")
        last = self.last_seq.get(poa.device_id, -1)
        if poa.seq <= last:
            return error(409, "replay", f"seq {poa.seq} not above {last}", last_seq=last)
        self.last_seq[poa.device_id] = poa.seq
        self.heartbeats.append(poa)
        answer = {"state": self.enroll_state, "flags": self.flags, "server_time_ms": now_ms()}
        if self.reads_work:
            answer["reads_work"] = True
        return web.json_response(answer, status=202)

    async def _proof(self, request: web.Request, data: Any) -> web.StreamResponse:
        status, body = self._judge_proof(request, data)
        return web.json_response(body, status=status)

    async def _proof_batch(self, request: web.Request, data: Any) -> web.StreamResponse:
        self.batches.append(len(data["proofs"]))
        results = []
        for item in data["proofs"]:
            status, body = self._judge_proof(request, item)
            results.append(
                {"status": status, "body": body} if status == 202 else {"status": status, **body}
            )
        return web.json_response({"results": results})

    def _judge_proof(self, request: web.Request, data: Any) -> tuple[int, Any]:
        def err(status: int, code: str, message: str) -> tuple[int, Any]:
            return status, {"error": {"code": code, "message": message}}

        try:
            pot = parse(PoT, data["pot"])
            output = bytes.fromhex(data["output"])
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            return err(400, "invalid_message", str(exc))
        problem = self._client_cert_problem(request, pot.device_id)
        if problem is not None:
            return err(*problem)
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


def coordinator_session(coordinator_id: str | None) -> aiohttp.ClientSession:
    """A session that calls agents as the running fake ``coordinator_id`` does: TLS 1.3
    with that coordinator's client certificate (none for an unknown id)."""
    fake = FakeCoordinator.running.get(coordinator_id) if coordinator_id else None
    ctx: ssl.SSLContext = fake.client_ssl if fake is not None else tls.client_context(ca_pem=None)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx), timeout=aiohttp.ClientTimeout(total=30)
    )


def agent_session(agent: Any) -> aiohttp.ClientSession:
    """``coordinator_session`` of the coordinator ``agent`` (in-process) has pinned."""
    pin = agent.link.pin if agent.link is not None else None
    return coordinator_session(pin.coordinator_id if pin is not None else None)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
