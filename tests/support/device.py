"""A protocol-level device for coordinator tests: it signs real messages with the
protocol core, serves a real HTTPS endpoint for assignments and challenges, and can be
told to refuse work or to cheat. It is a test client, not a stand-in for the coordinator.

Like an agent, it sends a CSR for its own TLS key with every enrollment, keeps the
certificate and CA the coordinator answers with, presents the certificate on every
request and serves its endpoint with it (aeamc.shared.runtime.tls)."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from aeamc.shared import proofs
from aeamc.shared.discovery import AgentAdvert
from aeamc.shared.identity import SigningKey
from aeamc.shared.messages import Assignment, Challenge, Enroll, PoA, parse_signed, sign
from aeamc.shared.runtime import tls
from aeamc.shared.tasks.registry import discover
from aeamc.shared.tasks.wasm_kernel import WasmKernel
from tests.support.kernels import Blobs

KINDS = discover()
GOOD_TELEMETRY = {
    "battery_pct": 90,
    "charging": True,
    "cpu_temp_mc": 40_000,
    "cpu_load_permille": 100,
    "net_latency_us": 2_000,
    "mem_available_kb": 1 << 20,
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def enroll_fields(
    key: SigningKey, endpoint: str | None, kinds: Sequence[str] = ("sha256-chain",)
) -> dict[str, Any]:
    """The unsigned body of ``key``'s enrollment, stamped now: a small device (2 CPUs,
    1 GiB, on battery) offering ``kinds`` and serving them at ``endpoint``."""
    return {
        "type": "enroll",
        "public_key": key.public_key.hex(),
        "device_id": key.device_id,
        "timestamp": now_ms(),
        "capabilities": {
            "kinds": list(kinds),
            "cpus": 2,
            "mem_mb": 1024,
            "battery": True,
            "version": "0.1.0",
            "endpoint": endpoint,
        },
    }


def fresh_pot(
    key: SigningKey,
    device_id: str,
    task_id: str,
    trace: proofs.Trace,
    timestamp: int | None = None,
) -> proofs.PoT:
    """``key``'s signed PoT for ``trace``: a new nonce, stamped now (or at ``timestamp``),
    1 ms of execution and CPU time (what a test's quick work plausibly took)."""
    return proofs.build_pot(
        key,
        task_id=task_id,
        device_id=device_id,
        trace=trace,
        nonce=os.urandom(16),
        timestamp=now_ms() if timestamp is None else timestamp,
        execution_time_ms=1,
        cpu_time_ms=1,
    )


#: Every SimDevice by id, so test requests can go with the right client certificate.
_DEVICES: weakref.WeakValueDictionary[str, SimDevice] = weakref.WeakValueDictionary()


def device_for_body(body: Any) -> SimDevice | None:
    """The SimDevice a request body is from (its ``device_id``, or its PoT's)."""
    if not isinstance(body, dict):
        return None
    device_id = body.get("device_id")
    pot = body.get("pot")
    if not isinstance(device_id, str) and isinstance(pot, dict):
        device_id = pot.get("device_id")
    return _DEVICES.get(device_id) if isinstance(device_id, str) else None


@dataclass
class SimDevice:
    coordinator_url: str
    key: SigningKey = field(default_factory=lambda: SigningKey.from_seed(os.urandom(32)))
    kinds: tuple[str, ...] = ("sha256-chain", "classify-int8")
    #: The WASM modules and inputs it fetched, by digest (for ``wasm`` tasks).
    wasm_blobs: dict[str, bytes] = field(default_factory=dict)
    #: Chunk indices whose output the device makes up instead of computing.
    cheat_chunks: frozenset[int] = frozenset()
    #: When set, every assignment is refused with this reason.
    refuse: str | None = None
    auto_prove: bool = True
    seq: int = 0
    assignments: list[Assignment] = field(default_factory=list)
    challenges: list[Challenge] = field(default_factory=list)
    traces: dict[str, proofs.Trace] = field(default_factory=dict)
    proof_replies: list[tuple[int, Any]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _work: set[asyncio.Task[Any]] = field(default_factory=set)
    port: int = 0
    #: The certificate the coordinator issued (None before the first enrollment answer).
    cert_file: Path | None = None
    ca_pem: str | None = None
    #: Certificates received, oldest first (PEM).
    certificates: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tls_dir = Path(tempfile.mkdtemp(prefix="simdevice-"))
        weakref.finalize(self, shutil.rmtree, self.tls_dir, True)
        self.tls_key = tls.generate_key()
        self.key_file = self.tls_dir / "key.pem"
        tls.write_key(self.key_file, self.tls_key)
        self_signed = self.tls_dir / "self.pem"
        self_signed.write_text(tls.self_signed(self.tls_key, self.device_id))
        self.server_ssl = tls.server_context(self_signed, self.key_file, ca_pem=None)
        self._client_ssl: ssl.SSLContext | None = None
        _DEVICES[self.device_id] = self

    @property
    def device_id(self) -> str:
        return self.key.device_id

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def csr(self) -> str:
        return tls.make_csr(self.tls_key, self.device_id).hex()

    def accept_enrollment(self, answer: Any) -> None:
        """Keep the certificate and CA of an enrollment answer, as an agent does."""
        if not isinstance(answer, dict) or not isinstance(answer.get("certificate"), str):
            return
        self.ca_pem = answer["ca_certificate"]
        self.certificates.append(answer["certificate"])
        self.cert_file = self.tls_dir / f"cert-{len(self.certificates)}.pem"
        self.cert_file.write_text(answer["certificate"])
        self.server_ssl.load_cert_chain(self.cert_file, self.key_file)
        self._client_ssl = None

    def client_context(self) -> ssl.SSLContext:
        """One context per certificate, so kept-alive connections are reused between
        requests (a new context object would mean a new connection and handshake)."""
        if self._client_ssl is None:
            self._client_ssl = tls.client_context(
                ca_pem=self.ca_pem, cert_file=self.cert_file, key_file=self.key_file
            )
        return self._client_ssl

    async def start(self) -> SimDevice:
        app = web.Application()
        app.router.add_post("/v1/assignments", self._on_assignment)
        app.router.add_post("/v1/challenges", self._on_challenge)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.server_ssl)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def stop(self) -> None:
        for t in list(self._work):
            t.cancel()
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        """POST over TLS 1.3; before the first enrollment answer the CA is not known yet
        (trust on first use), afterwards it is verified and the certificate presented."""
        assert self._session is not None
        async with self._session.post(
            self.coordinator_url + path, json=body, ssl=self.client_context()
        ) as resp:
            answer = await resp.json()
        if path == "/v1/enroll" and resp.status == 202:
            self.accept_enrollment(answer)
        return resp.status, answer

    def enroll_message(self, token: str | None = None, **over: Any) -> dict[str, Any]:
        body = enroll_fields(self.key, self.endpoint, self.kinds)
        if token:
            body["token"] = token
        body["csr"] = self.csr()
        body.update(over)
        if body["csr"] is None:
            del body["csr"]
        return sign(Enroll, body, self.key).to_dict()

    async def enroll(self, token: str | None = None) -> tuple[int, Any]:
        return await self.post("/v1/enroll", self.enroll_message(token))

    def poa(self, telemetry: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
        self.seq += 1
        body = {
            "type": "poa",
            "device_id": self.device_id,
            "timestamp": now_ms(),
            "seq": self.seq,
            "telemetry": telemetry or GOOD_TELEMETRY,
        }
        body.update(over)
        return sign(PoA, body, self.key).to_dict()

    async def heartbeat(self, telemetry: dict[str, Any] | None = None) -> tuple[int, Any]:
        return await self.post("/v1/heartbeats", self.poa(telemetry))

    async def join(self, token: str) -> None:
        """Enroll with a token and send the heartbeats that make the device eligible."""
        status, body = await self.enroll(token)
        assert status == 202 and body["state"] == "active", body
        for _ in range(2):
            status, body = await self.heartbeat()
            assert status == 202, body

    def compute(self, a: Assignment) -> proofs.Trace:
        kind = WasmKernel(Blobs(self.wasm_blobs)) if a.kind == "wasm" else KINDS.get(a.kind)
        outputs = []
        for i in range(a.chunks):
            if i in self.cheat_chunks:
                outputs.append(b"\x00" * 32)
            else:
                outputs.append(kind.run_chunk(a.params, i, a.chunks))
        return proofs.Trace(tuple(outputs))

    def proof_for(self, a: Assignment, **over: Any) -> dict[str, Any]:
        trace = self.traces.get(a.task_id) or self.compute(a)
        self.traces[a.task_id] = trace
        pot = fresh_pot(self.key, self.device_id, a.task_id, trace, over.pop("timestamp", None))
        return {"pot": pot.to_dict(), "output": trace.output.hex(), **over}

    async def prove(self, a: Assignment) -> tuple[int, Any]:
        reply = await self.post("/v1/proofs", self.proof_for(a))
        self.proof_replies.append(reply)
        return reply

    async def _on_assignment(self, request: web.Request) -> web.Response:
        a = parse_signed(await request.json(), Assignment)
        if self.refuse:
            return web.json_response(
                {"error": {"code": "refused", "message": self.refuse, "reason": self.refuse}},
                status=409,
            )
        self.assignments.append(a)
        if self.auto_prove:
            task = asyncio.create_task(self.prove(a))
            self._work.add(task)
            task.add_done_callback(self._work.discard)
        return web.json_response({"accepted": True}, status=202)

    async def _on_challenge(self, request: web.Request) -> web.Response:
        ch = parse_signed(await request.json(), Challenge)
        self.challenges.append(ch)
        trace = self.traces.get(ch.task_id)
        if trace is None:
            return web.json_response(
                {"error": {"code": "unknown_task", "message": "no trace"}}, status=404
            )
        return web.json_response(proofs.build_opening(self.key, ch, trace).to_dict())


def agent_advert(key: SigningKey) -> AgentAdvert:
    """What an agent with identity ``key`` announces over mDNS (a small device, no battery)."""
    return AgentAdvert(
        device_id=key.device_id,
        public_key=key.public_key.hex(),
        version="0.1.0",
        kinds=("sha256-chain",),
        cpus=2,
        mem_mb=512,
        battery=False,
    )
