"""A coordinator in the test's own process: the real services on a real SQLite file with a
real certificate authority, a clock the test moves by hand, and devices reached through an
in-process ``DeviceLink`` instead of sockets.

The devices are ``SimDevice``s (real keys, real signed messages, real proofs and
openings); only their transport is replaced. ``InProcessLink`` keeps the link's contract
(``aeamc.coordinator.peers.DeviceLink``): an outcome for every call, status 0 for a device
that is unreachable, silent or late, or whose answer is larger than ``max_bytes`` (the
bytes counted as they would go over the wire). So a scheduling round or a spot-check
round can be driven one at a time, and its outcome read back from the database.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aeamc.coordinator.ca import CertificateAuthority
from aeamc.coordinator.certs import DeviceCertificates
from aeamc.coordinator.config import CoordinatorConfig
from aeamc.coordinator.peers import DEFAULT_MAX_REPLY_BYTES, Reply
from aeamc.coordinator.scheduler import Scheduler
from aeamc.coordinator.service import Coordinator, now_ms
from aeamc.coordinator.spotchecks import SpotChecker
from aeamc.coordinator.storage import DatabaseConfig, open_database
from aeamc.shared import proofs
from aeamc.shared.envelope import decode_reply
from aeamc.shared.identity import SigningKey
from aeamc.shared.messages import Assignment, Challenge, parse_signed
from aeamc.shared.runtime import tls
from aeamc.shared.tasks.registry import discover
from tests.support import stores
from tests.support.device import GOOD_TELEMETRY, SimDevice

#: How a device answers a challenge.
CORRECT = "correct"  # a valid opening of its (honest) trace
SILENT = "silent"  # never answers in time: the link reports a timeout
GARBAGE = "garbage"  # 200 with a body that is no opening
UNKNOWN_TASK = "unknown_task"  # 404 ``unknown_task``: it claims to hold no trace
OVERSIZED = "oversized"  # a valid opening, padded past any sensible answer size

ANSWERS = (CORRECT, SILENT, GARBAGE, UNKNOWN_TASK, OVERSIZED)


class ManualClock:
    """Milliseconds that move only when the test says so."""

    def __init__(self, start: int | None = None) -> None:
        self.now = now_ms() if start is None else start

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@dataclass(frozen=True)
class Call:
    """One call the coordinator made through the link."""

    device_id: str
    path: str
    message: dict[str, Any]
    timeout_s: float | None
    max_bytes: int


@dataclass
class LinkedDevice:
    """A device enrolled through the service, with its TLS identity and its behaviour."""

    sim: SimDevice
    peer: tls.Peer
    #: How it answers challenges (one of ``ANSWERS``).
    answer: str = CORRECT
    #: When set, it refuses every assignment with this reason.
    refuse: str | None = None
    reachable: bool = True
    assignments: list[Assignment] = field(default_factory=list)
    challenges: list[Challenge] = field(default_factory=list)

    @property
    def device_id(self) -> str:
        return self.sim.device_id

    def respond(self, path: str, message: dict[str, Any]) -> tuple[int, Any, bytes]:
        """(status, body, padding) of this device's answer to ``message`` at ``path``."""
        if path == "/v1/assignments":
            a = parse_signed(message, Assignment)
            if self.refuse:
                error = {"code": "refused", "message": self.refuse, "reason": self.refuse}
                return 409, {"error": error}, b""
            self.assignments.append(a)
            return 202, {"accepted": True}, b""
        if path == "/v1/challenges":
            ch = parse_signed(message, Challenge)
            self.challenges.append(ch)
            if self.answer == GARBAGE:
                return 200, {"type": "opening", "nothing": "here"}, b""
            if self.answer == UNKNOWN_TASK:
                return 404, {"error": {"code": "unknown_task", "message": "no trace"}}, b""
            opening = proofs.build_opening(self.sim.key, ch, self.sim.traces[ch.task_id])
            # JSON allows trailing whitespace: the oversized answer is still a valid opening.
            padding = b" " * (1 << 20) if self.answer == OVERSIZED else b""
            return 200, opening.to_dict(), padding
        return 404, {"error": {"code": "not_found", "message": path}}, b""


class InProcessLink:
    """The coordinator's ``DeviceLink`` to ``LinkedDevice``s, without sockets."""

    def __init__(self) -> None:
        self.devices: dict[str, LinkedDevice] = {}
        self.calls: list[Call] = []

    async def post(
        self,
        endpoint: str,
        path: str,
        message: dict[str, Any],
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
        max_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> Reply:
        device_id = str(message.get("device_id"))
        self.calls.append(Call(device_id, path, message, timeout_s, max_bytes))
        device = self.devices.get(device_id)
        if device is None or not device.reachable:
            return Reply(0, None, "ClientConnectorError: connection refused")
        if path == "/v1/challenges" and device.answer == SILENT:
            return Reply(0, None, "TimeoutError")
        status, body, padding = device.respond(path, message)
        raw = json.dumps(body).encode() + padding
        if len(raw) > max_bytes:
            return Reply(0, None, f"answer larger than {max_bytes} bytes")
        return Reply(status, decode_reply(raw))

    def challenges_to(self, device: LinkedDevice) -> list[Call]:
        return [
            c for c in self.calls if c.path == "/v1/challenges" and c.device_id == device.device_id
        ]


class Fleet:
    """A ``Coordinator`` built in-process, its loops, and the devices it knows."""

    def __init__(
        self, state_dir: Path, config: CoordinatorConfig | None = None, **sections: Any
    ) -> None:
        """``config``, or the defaults with ``sections`` (``scheduler=SchedulerConfig(...)``)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        config = config or CoordinatorConfig(state_dir=state_dir, **sections)
        if not config.database.url and (url := stores.database_url()):
            config = dataclasses.replace(config, database=DatabaseConfig(url))
        self.config = config
        self.clock = ManualClock()
        self.db = open_database(config.database, state_dir / "coordinator.db")
        self.db.open()
        signer = SigningKey.from_seed(bytes(range(32)))
        ca, _ = CertificateAuthority.ensure(state_dir, config.ca_key, signer.device_id)
        certs = DeviceCertificates(ca, self.db, config.tls.device_cert_lifetime_s)
        self.c = Coordinator(config, signer, self.db, discover(), self.clock, certs=certs)
        self.link = InProcessLink()
        self.scheduler = Scheduler(self.c, self.link)
        self.spot_checker = SpotChecker(self.c, self.link)
        self.owner = ""

    async def start(self) -> Fleet:
        await self.c.load()
        info = await self.c.tokens.create_token("client", label="tests")
        self.owner = info.owner
        return self

    async def close(self) -> None:
        await self.scheduler.drain()
        self.db.close()

    async def __aenter__(self) -> Fleet:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- devices -----------------------------------------------------------------------

    async def enroll(
        self,
        *,
        battery_pct: int = 90,
        heartbeats: int = 2,
        token: bool = True,
        kinds: tuple[str, ...] = ("sha256-chain",),
        caps: dict[str, Any] | None = None,
    ) -> LinkedDevice:
        """Enroll a device through the enrollment service (with an enrollment token unless
        ``token`` is false: then it waits for approval) and send ``heartbeats`` heartbeats
        reporting ``battery_pct``. ``caps``: capability members to add or replace."""
        sim = SimDevice("in-process", kinds=kinds)
        enroll_token = None
        if token:
            enroll_token = (await self.c.tokens.create_token("enroll", uses=1)).token
        over: dict[str, Any] = {"timestamp": self.clock()}
        if caps:
            base = sim.enroll_message(None)["capabilities"]
            over["capabilities"] = {**base, **caps}
        message = sim.enroll_message(enroll_token, **over)
        answer = await self.c.enrollment.enroll(message, "127.0.0.1")
        serial = ""
        if "certificate" in answer:
            sim.accept_enrollment(answer)
            serial = tls.serial_hex(tls.load_pem(answer["certificate"]))
        peer = tls.Peer(name=sim.device_id, role=tls.ROLE_DEVICE, serial=serial)
        device = LinkedDevice(sim, peer)
        self.link.devices[device.device_id] = device
        for _ in range(heartbeats):
            await self.heartbeat(device, battery_pct=battery_pct)
        return device

    async def heartbeat(
        self,
        device: LinkedDevice,
        *,
        battery_pct: int = 90,
        work: list[tuple[str, int]] | None = None,
    ) -> dict[str, Any]:
        """A signed heartbeat of ``device``, reporting ``work`` ((task, chunks done) …)
        when given."""
        telemetry = {**GOOD_TELEMETRY, "battery_pct": battery_pct, "charging": False}
        extra = {"work": [{"task_id": t, "chunks_done": n} for t, n in work]} if work else {}
        poa = device.sim.poa(telemetry, timestamp=self.clock(), **extra)
        return await self.c.heartbeats.heartbeat(poa, device.peer)

    async def prove(self, device: LinkedDevice, task_id: str) -> dict[str, Any]:
        """The device's proof of the task it was assigned, accepted by the ingestion service."""
        a = next(a for a in device.assignments if a.task_id == task_id)
        body = device.sim.proof_for(a, timestamp=self.clock())
        return await self.c.ingestion.accept_proof(body, device.peer)

    # -- tasks -------------------------------------------------------------------------

    async def submit(
        self,
        *,
        replicas: int = 1,
        chunks: int = 8,
        seed: int = 0,
        requires: dict[str, Any] | None = None,
    ) -> str:
        data: dict[str, Any] = {
            "kind": "sha256-chain",
            "params": {"seed": f"{seed:064x}", "iterations": 10},
            "chunks": chunks,
            "replicas": replicas,
        }
        if requires is not None:
            data["requires"] = requires
        answer = await self.c.tasks.submit_task(data, "tests", self.owner)
        return str(answer["task_id"])

    async def schedule(self) -> int:
        """One scheduling round, with every push it started answered."""
        offered = await self.scheduler.round()
        await self.scheduler.drain()
        return offered

    # -- reading back --------------------------------------------------------------------

    async def rows(self, sql: str, args: list[Any] | None = None) -> list[dict[str, Any]]:
        return await self.db.read(lambda db: list(db.query(sql, args or [])))

    async def row(self, sql: str, args: list[Any] | None = None) -> dict[str, Any]:
        rows = await self.rows(sql, args)
        assert len(rows) == 1, rows
        return rows[0]

    async def assignments(self, task_id: str) -> dict[str, str]:
        """Each device's assignment state for ``task_id``."""
        rows = await self.rows(
            "SELECT device_id, state FROM assignments WHERE task_id=?", [task_id]
        )
        return {r["device_id"]: r["state"] for r in rows}
