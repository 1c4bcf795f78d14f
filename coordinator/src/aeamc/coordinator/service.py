"""The Microblock Coordinator's state transitions: enrollment, heartbeats, tasks, proofs,
microblocks and verdicts.

Each public coroutine validates its input with the pure protocol core first (bad input
changes nothing), then performs one writer transaction, and only then updates the
in-memory device view and answers. The HTTP layer (``api.py``) and the background loops
(``scheduler.py``, ``spotchecks.py``) are thin callers of this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlite_utils
from cryptography.hazmat.primitives.serialization import Encoding

from aeamc.shared import microblock, proofs, spotcheck, verification
from aeamc.shared.eps import eps, ineligibility
from aeamc.shared.errors import ProtocolError
from aeamc.shared.flags import in_rollout
from aeamc.shared.identity import Signer, device_id_for
from aeamc.shared.messages import (
    TASK_ID_PATTERN,
    Assignment,
    Enroll,
    PoA,
    PoT,
    Privacy,
    check_fresh,
    parse,
    parse_signed,
)
from aeamc.shared.proofs import verify_pot
from aeamc.shared.runtime.tls import Peer
from aeamc.shared.schema import hex_bytes, integer, json_object, optional, record, text
from aeamc.shared.tasks.registry import KindRegistry

from .alerts import AlertTracker
from .alerts import evaluate as evaluate_alerts
from .certs import DeviceCertificates
from .config import CoordinatorConfig, IpNetwork, endpoint_networks
from .db import Database
from .errors import ApiError, not_found
from .membership import LAST_BLOCKED_SEQ, block_of, height_of, not_in_block
from .registry import Device
from .verifier import SignatureVerifier

log = logging.getLogger(__name__)
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Feature flag: devices in its cohort get half the heartbeat freshness window (a PoA
#: must be at most ``heartbeat_window_s / 2`` old), narrowing the window a captured
#: heartbeat could be replayed in — rolled out gradually, as devices with poor clocks fail it.
STRICT_FRESHNESS = "strict-freshness"
FLAG_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")

ROLES = ("operator", "client", "enroll")
#: A token's owner id: this many random bytes, in hex. A task id a client chose is stored
#: as ``<owner>.<chosen>``, so a chosen id may take what is left of the 64 a task id has.
OWNER_BYTES = 4
CLIENT_REF_MAX = 64 - 2 * OWNER_BYTES - 1
ERASED_MESSAGE = (
    "this device identity was erased at its owner's request; to take part again, "
    "create a new identity (aeamc-agent init --force)"
)
MAX_CHALLENGE_INDICES = 256

_TASK_REQUEST = record(
    {
        "kind": text(64),
        "params": json_object(),
        "chunks": integer(1, 65_536),
        "replicas": optional(integer(1, 16)),
        "deadline": optional(integer(0, 2**53 - 1)),
        "task_id": optional(text(CLIENT_REF_MAX, TASK_ID_PATTERN)),
    },
    dict,
)
#: A random spot-check (SPEC §14.2): never replaces a check already scheduled.
#: Its indices stay NULL: they are derived from the block hash when the challenge is sent.
_RANDOM_CHECK_SQL = (
    "INSERT OR IGNORE INTO spot_checks (task_id, device_id, block_height, indices, state, "
    "next_attempt_at, created_at) VALUES (?,?,?, NULL, 'pending', ?, ?)"
)
#: A block's receipts: the oldest proofs past the last block's range. Only the narrow
#: ``proofs_receipts`` index is read, not the rows with their PoT and output (a test
#: checks the plan).
RECEIPTS_SQL = (
    "SELECT p.seq, p.task_id, p.device_id, p.signature, p.chunks FROM proofs p "
    "WHERE p.seq > ? ORDER BY p.seq LIMIT ?"
)
#: The random checks of every receipt of a block from devices checked on every task, in
#: one statement (binding 10,000 rows one by one cost three times as much).
CHECK_ALL_SQL = (
    "INSERT OR IGNORE INTO spot_checks (task_id, device_id, block_height, indices, state, "
    "next_attempt_at, created_at) SELECT p.task_id, p.device_id, ?, NULL, 'pending', ?, ? "
    "FROM proofs p WHERE p.seq BETWEEN ? AND ? "
    "AND p.device_id IN (SELECT value FROM json_each(?))"
)
_PROOF_REQUEST = record({"pot": lambda v, p: v, "output": hex_bytes(max_bytes=64 << 20)}, dict)


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` passes, then clear it.

    ``asyncio.timeout`` rather than ``wait_for``: on Python 3.11 ``wait_for`` can swallow a
    cancellation that arrives as the inner wait completes, leaving a loop that never stops.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    event.clear()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def hash_token(token: str) -> str:
    # surrogatepass: a header's non-UTF-8 bytes or a JSON lone surrogate hash (to nothing
    # known) instead of raising.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    role: str
    label: str
    expires_at: int | None
    uses_left: int | None
    #: The token's owner id: what its tasks belong to (a label is not unique, this is).
    owner: str = ""
    #: The token itself: only in the answer of ``create_token`` (never stored).
    token: str = dataclasses.field(default="", repr=False)


def _spend_token_use(db: sqlite_utils.Database, token_hash: str, now: int) -> int | None:
    """Take one use of a limited, unexpired token in the caller's write transaction;
    the uses left afterwards, or None when it has none left (or expired meanwhile)."""
    cur = db.execute(
        "UPDATE tokens SET uses_left = uses_left - 1 WHERE token_hash = ? AND uses_left > 0 "
        "AND (expires_at IS NULL OR expires_at >= ?)",
        [token_hash, now],
    )
    if cur.rowcount != 1:
        return None
    row = next(iter(db.query("SELECT uses_left FROM tokens WHERE token_hash=?", [token_hash])))
    return int(row["uses_left"])


class Coordinator:
    def __init__(
        self,
        config: CoordinatorConfig,
        signer: Signer,
        db: Database,
        kinds: KindRegistry,
        clock: Callable[[], int] = now_ms,
        *,
        certs: DeviceCertificates | None = None,
    ) -> None:
        self.config = config
        #: The CA's side of mutual TLS; None only for offline uses (``init``'s tokens).
        self.certs = certs
        self.signer = signer
        self.db = db
        self.kinds = kinds
        self.clock = clock
        self.coordinator_id = device_id_for(signer.public_key)
        self.devices: dict[str, Device] = {}
        self.eps_config = config.eps.to_eps_config()
        #: Where device endpoints may be besides the enrolling address (``endpoint_allowed``).
        self.endpoint_networks: tuple[IpNetwork, ...] = endpoint_networks(config.enrollment)
        #: Set whenever something may let the scheduler make progress.
        self.wake_scheduler = asyncio.Event()
        #: The last scheduling round saw tasks that still need devices.
        self.work_waiting = True
        self.wake_blocks = asyncio.Event()
        self.wake_spot_checks = asyncio.Event()
        self.started_at = clock()
        self.counters: dict[str, int] = {}
        #: Receipts accepted but not yet in a block (a hint for forming full blocks early).
        self.unblocked = 0
        self._background: set[asyncio.Future[Any]] = set()
        #: Extra sections of ``summary()`` (e.g. anchoring), each computed by its owner.
        self.status_hooks: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {}
        self.alert_tracker = AlertTracker()
        #: (time ms, status, seconds) of the latest requests, for alert evaluation.
        self.recent_requests: deque[tuple[int, int, float]] = deque(maxlen=10_000)
        #: Feature flags (SPEC §10): name → rollout percent.
        self.flags: dict[str, int] = {}
        #: Fleet updates (updates/rollouts.py), set up by the service that runs us.
        self.rollouts: Any = None
        #: Where heartbeat signatures are checked (a thread, once the service starts it).
        self.verifier = SignatureVerifier()

    # -- life cycle --------------------------------------------------------------------

    async def load(self) -> None:
        rows = await self.db.read(lambda db: list(db.query("SELECT * FROM devices")))
        self.devices = {r["device_id"]: Device.from_row(r) for r in rows}
        recent = await self.db.read(
            lambda db: list(
                db.query(
                    "SELECT device_id, received_at FROM heartbeats WHERE received_at >= ? "
                    "ORDER BY received_at",
                    [self.clock() - self.eps_config.poa_window_ms],
                )
            )
        )
        for r in recent:
            d = self.devices.get(r["device_id"])
            if d is not None:
                d.poa_times.append(r["received_at"])
        flags = await self.db.read(lambda db: list(db.query("SELECT name, percent FROM flags")))
        self.flags = {r["name"]: r["percent"] for r in flags}
        if self.certs is not None:
            await self.certs.load()

    def _tls(self) -> DeviceCertificates:
        if self.certs is None:
            raise ApiError(503, "unavailable", "this coordinator has no certificate authority")
        return self.certs

    def check_peer(self, peer: Peer | None, device_id: str, *, allow_revoked: bool = False) -> None:
        """The device request's TLS client certificate must be this device's (certs.py)."""
        self._tls().check(peer, device_id, allow_revoked=allow_revoked)

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background, keeping a reference so it is not collected."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def alerts(self) -> list[dict[str, Any]]:
        """The runbook's alerts firing now, each with the time it started firing."""
        hook = self.status_hooks.get("anchoring")
        anchoring = await hook() if hook is not None else None
        if anchoring is not None:
            oldest = await self.db.read(_oldest_unanchored_block)
            anchoring["oldest_unanchored_age_s"] = (
                None if oldest is None else max(0, (self.clock() - oldest) // 1000)
            )
        now = self.clock()
        firing = evaluate_alerts(self.recent_requests, anchoring, now, self.config.alerts)
        return self.alert_tracker.update(firing, now)

    def observe_request(self, status: int, seconds: float) -> None:
        """Remember recent requests for the coordinator's own alert evaluation."""
        self.recent_requests.append((self.clock(), status, seconds))

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- tokens ------------------------------------------------------------------------

    async def create_token(
        self, role: str, *, label: str = "", ttl_s: int | None = None, uses: int | None = None
    ) -> TokenInfo:
        """Create a token of ``role``; only its hash is stored, the token is in the answer.

        An enrollment token is always limited and expiring: without ``uses`` or ``ttl_s``
        it gets ``tokens.enroll_default_uses`` and ``tokens.enroll_default_ttl_s``, so a
        token handed out carelessly admits a bounded number of devices for a bounded time.
        """
        if role not in ROLES:
            raise ApiError(400, "invalid_message", f"role must be one of {', '.join(ROLES)}")
        if role == "enroll":
            uses = uses if uses is not None else self.config.tokens.enroll_default_uses
            ttl_s = ttl_s if ttl_s is not None else self.config.tokens.enroll_default_ttl_s
        token = secrets.token_urlsafe(32)
        now = self.clock()
        row: dict[str, Any] = {
            "token_hash": hash_token(token),
            "role": role,
            "label": label,
            "created_at": now,
            "expires_at": now + ttl_s * 1000 if ttl_s else None,
            "uses_left": uses,
        }

        def txn(db: sqlite_utils.Database) -> str:
            # A fresh owner id, unique among all tokens ever made (they are never deleted),
            # so no token can come to own another's tasks.
            while True:
                owner = secrets.token_hex(OWNER_BYTES)
                if next(iter(db.query("SELECT 1 FROM tokens WHERE owner=?", [owner])), None):
                    continue
                db.table("tokens").insert({**row, "owner": owner})
                return owner

        owner = await self.db.write(txn)
        return TokenInfo(role, label, row["expires_at"], uses, owner, token)

    async def check_token(self, token: str | None, roles: tuple[str, ...]) -> TokenInfo:
        """Find a valid token of one of ``roles``, and count this request as one of its uses.

        Only a token's hash is ever stored. A token with a use limit loses one use per
        authenticated request, in one conditional UPDATE in the writer, so concurrent
        requests can never spend more uses than it has; a token without a limit (NULL)
        is only read, and costs no durable commit.
        """
        if not token:
            raise ApiError(401, "unauthorized", "a bearer token is required")
        wanted = hash_token(token)
        row = await self.db.read(
            lambda db: next(
                iter(db.query("SELECT * FROM tokens WHERE token_hash = ?", [wanted])), None
            )
        )
        # compare_digest: the lookup found the row by hash, this guards the equality itself.
        if row is None or not hmac.compare_digest(row["token_hash"], wanted):
            raise ApiError(401, "unauthorized", "unknown token")
        info = TokenInfo(
            row["role"], row["label"], row["expires_at"], row["uses_left"], row["owner"]
        )
        if info.role not in roles:
            raise ApiError(403, "forbidden", f"a {info.role} token cannot do this")
        now = self.clock()
        if info.expires_at is not None and info.expires_at < now:
            raise ApiError(401, "unauthorized", "token expired")
        if info.uses_left is None:
            return info
        left = await self.db.write(lambda db: _spend_token_use(db, wanted, now))
        if left is None:
            raise ApiError(401, "unauthorized", "token used up")
        return dataclasses.replace(info, uses_left=left)

    # -- enrollment ----------------------------------------------------------------------

    async def enroll(self, data: Any, address: str | None) -> dict[str, Any]:
        """Enroll (or re-enroll) the signing device from ``address`` (the TCP peer).

        Guarantees: the endpoint the coordinator will call is at ``address`` or in
        ``enrollment.endpoint_networks`` (``endpoint_allowed``); a client certificate is
        issued only to a device that is active (a valid token, or approved before), so an
        identity waiting for approval holds nothing the CA signed; and new identities
        waiting for approval are bounded in number, overall and per address, and expire
        after ``enrollment.pending_ttl_s``. A refusal changes nothing.
        """
        msg = parse_signed(data, Enroll)
        msg.verify_self()
        now = self.clock()
        check_fresh(msg.timestamp, now, self.config.protocol.heartbeat_window_s * 1000)
        existing = self.devices.get(msg.device_id)
        if existing is not None and existing.state == "quarantined":
            raise ApiError(403, "quarantined", "this device is quarantined")
        caps = msg.capabilities
        self.endpoint_allowed(caps.endpoint, address)
        caps_json = json.dumps(caps.to_dict(), sort_keys=True)
        cert, cert_row = (None, None)
        # Signing costs CPU: only for a device that will be active (it may still turn
        # out pending, e.g. a token refused: the certificate is then dropped unseen).
        may_be_active = msg.token is not None or (
            existing is not None and existing.state in ("active", "stale")
        )
        if msg.csr is not None and may_be_active:
            cert, cert_row = self._tls().issue(bytes.fromhex(msg.csr), msg.device_id)
        elif msg.csr is not None:
            self._tls().check_request(bytes.fromhex(msg.csr))
        pending_since = now - self.config.enrollment.pending_ttl_s * 1000
        device_id = msg.device_id

        def txn(db: sqlite_utils.Database) -> str:
            if next(
                iter(db.query("SELECT 1 FROM erased_devices WHERE device_id=?", [msg.device_id])),
                None,
            ):
                raise ApiError(403, "erased", ERASED_MESSAGE)
            row = next(
                iter(
                    db.query(
                        "SELECT state, enrolled_at, approved_at FROM devices WHERE device_id = ?",
                        [msg.device_id],
                    )
                ),
                None,
            )
            state = row["state"] if row else "pending"
            expired = row is not None and _pending_expired(row, pending_since)
            if msg.token is not None and state == "pending":
                self._consume_enroll_token(db, msg.token, now)
                state = "active"
            elif state == "pending" and (row is None or expired):
                self._admit_pending(db, address, pending_since)
            if row is None:
                db.table("devices").insert(
                    {
                        "device_id": msg.device_id,
                        "public_key": msg.public_key,
                        "state": state,
                        "capabilities": caps_json,
                        "endpoint": caps.endpoint,
                        "address": address,
                        "enrolled_at": now,
                        "approved_at": now if state == "active" else None,
                    }
                )
            else:
                db.execute(
                    "UPDATE devices SET capabilities=?, endpoint=?, address=?, state=?, "
                    "enrolled_at=CASE WHEN ? THEN ? ELSE enrolled_at END, "
                    "approved_at=COALESCE(approved_at, CASE WHEN ?='active' THEN ? END) "
                    "WHERE device_id=?",
                    [caps_json, caps.endpoint, address, state, expired, now, state, now, device_id],
                )
            db.execute("DELETE FROM candidates WHERE device_id = ?", [msg.device_id])
            if cert_row is not None and state in ("active", "stale"):
                db.table("certificates").insert({**cert_row, "issued_at": now})
            return state

        state = await self.db.write(txn)
        if existing is None:
            existing = self.devices[msg.device_id] = Device(
                device_id=msg.device_id,
                public_key=msg.public_key_bytes,
                state=state,
                capabilities=caps,
                endpoint=caps.endpoint,
                address=address,
                enrolled_at=now,
            )
        else:
            existing.capabilities, existing.endpoint, existing.address = (
                caps,
                caps.endpoint,
                address,
            )
            existing.state = state
        if state == "pending" and existing.enrolled_at < pending_since:
            existing.enrolled_at = now  # an expired identity enrolled again: a new wait
        self.count("enrollments")
        log.info("device %s enrolled (%s)", msg.device_id, state)
        self.wake_scheduler.set()
        answer: dict[str, Any] = {
            "device_id": msg.device_id,
            "state": state,
            "coordinator_id": self.coordinator_id,
            "coordinator_public_key": self.signer.public_key.hex(),
            "cluster_id": self.config.protocol.cluster_id,
        }
        if self.certs is not None:
            answer["ca_certificate"] = self.certs.ca.cert_pem
            answer["ca_fingerprint"] = self.certs.ca.fingerprint
        if cert is not None and state in ("active", "stale"):
            answer["certificate"] = cert.public_bytes(Encoding.PEM).decode()
        return answer

    def endpoint_allowed(self, endpoint: str | None, address: str | None) -> None:
        """Refuse an endpoint the coordinator must not call on the device's word.

        The coordinator connects to a device's endpoint (assignments, challenges), so a
        device naming another LAN host would have the coordinator connect there for it.
        The endpoint's host must be an IP literal equal to the address the enrollment
        comes from (IPv4-mapped IPv6 counts as the IPv4 address; a zone is ignored), or
        inside ``enrollment.endpoint_networks``. A host name is refused: what it resolves
        to is not the device's to say.
        """
        if endpoint is None:
            return
        host = _endpoint_host(endpoint)
        if host is not None and host == _plain_address(address):
            return
        if host is not None and any(host in net for net in self.endpoint_networks):
            return
        seen = address or "unknown"
        raise ApiError(
            400,
            "endpoint_not_allowed",
            f"the endpoint {endpoint} is not at the address this enrollment comes from "
            f"({seen}) nor in enrollment.endpoint_networks; advertise an IP address of "
            f"the interface that reaches the coordinator",
            field="capabilities.endpoint",
            address=seen,
        )

    def _admit_pending(
        self, db: sqlite_utils.Database, address: str | None, pending_since: int
    ) -> None:
        """Refuse one more identity waiting for approval past the caps (in the caller's
        write transaction, so concurrent enrollments cannot overshoot them)."""
        e = self.config.enrollment
        waiting = next(
            iter(
                db.query(
                    "SELECT COUNT(*) AS n, COALESCE(SUM(address IS ?), 0) AS here FROM devices "
                    "WHERE state='pending' AND approved_at IS NULL AND enrolled_at >= ?",
                    [address, pending_since],
                )
            )
        )
        if waiting["n"] >= e.max_pending:
            raise ApiError(
                429,
                "too_many_pending",
                f"{waiting['n']} devices already wait for approval (enrollment.max_pending); "
                "enroll with a token, or ask the operator to approve or wait",
            )
        if waiting["here"] >= e.max_pending_per_address:
            raise ApiError(
                429,
                "too_many_pending",
                f"{waiting['here']} devices from {address} already wait for approval "
                "(enrollment.max_pending_per_address); enroll with a token",
            )

    async def expire_pending(self) -> int:
        """Forget identities that waited for approval longer than ``pending_ttl_s``
        (the maintenance loop); how many. Any certificate one holds is revoked."""
        since = self.clock() - self.config.enrollment.pending_ttl_s * 1000
        now = self.clock()

        def txn(db: sqlite_utils.Database) -> tuple[list[str], list[str]]:
            gone = [
                r["device_id"]
                for r in db.query(
                    "SELECT device_id FROM devices WHERE state='pending' "
                    "AND approved_at IS NULL AND enrolled_at < ?",
                    [since],
                )
            ]
            revoked: list[str] = []
            for device_id in gone:
                revoked += DeviceCertificates.revoke_in(db, device_id, now, "pending expired")
                db.execute("DELETE FROM devices WHERE device_id=?", [device_id])
            return gone, revoked

        gone, revoked = await self.db.write(txn)
        if self.certs is not None:
            self.certs.revoked_now(revoked)
        for device_id in gone:
            d = self.devices.get(device_id)
            if d is not None and d.state == "pending":
                del self.devices[device_id]
        if gone:
            log.info("forgot %d device(s) not approved within the pending TTL", len(gone))
        return len(gone)

    @staticmethod
    def _consume_enroll_token(db: sqlite_utils.Database, token: str, now: int) -> None:
        row = next(
            iter(
                db.query(
                    "SELECT * FROM tokens WHERE token_hash = ? AND role = 'enroll'",
                    [hash_token(token)],
                )
            ),
            None,
        )
        if row is None:
            raise ApiError(403, "invalid_token", "unknown enrollment token")
        if row["expires_at"] is not None and row["expires_at"] < now:
            raise ApiError(403, "invalid_token", "enrollment token expired")
        if row["uses_left"] is not None:
            if row["uses_left"] <= 0:
                raise ApiError(403, "invalid_token", "enrollment token used up")
            db.execute(
                "UPDATE tokens SET uses_left = uses_left - 1 WHERE token_hash = ?",
                [row["token_hash"]],
            )

    async def set_device_state(self, device_id: str, state: str, reason: str) -> Device:
        device = self.devices.get(device_id)
        if device is None:
            raise not_found(f"device {device_id}")
        if state == "active" and device.state == "quarantined" and reason == "approved":
            raise ApiError(409, "quarantined", "a quarantined device cannot be approved")
        now = self.clock()
        ttl_ms = self.config.enrollment.pending_ttl_s * 1000
        if state == "active" and device.state == "pending" and device.enrolled_at < now - ttl_ms:
            # Not yet swept, but as good as gone: its owner enrolls again to be approved.
            raise ApiError(409, "pending_expired", "this enrollment expired; enroll again")

        def txn(db: sqlite_utils.Database) -> list[str]:
            db.execute(
                "UPDATE devices SET state=?, state_reason=?, "
                "approved_at=CASE WHEN ?='active' THEN COALESCE(approved_at, ?) "
                "ELSE approved_at END WHERE device_id=?",
                [state, reason, state, now, device_id],
            )
            if state == "quarantined":
                return self._quarantine_in(db, device_id, reason, now)
            return []

        revoked = await self.db.write(txn)
        if self.certs is not None:
            self.certs.revoked_now(revoked)
        device.state, device.state_reason = state, reason
        log.info("device %s is now %s (%s)", device_id, state, reason)
        self.wake_scheduler.set()
        return device

    # -- heartbeats ------------------------------------------------------------------------

    async def heartbeat(self, data: Any, peer: Peer | None = None) -> dict[str, Any]:
        poa = parse_signed(data, PoA)
        device = self.devices.get(poa.device_id)
        if device is None:
            raise ApiError(403, "not_enrolled", "unknown device: enroll first")
        await self.verifier.verify(poa, device.public_key)
        now = self.clock()
        window_ms = self.config.protocol.heartbeat_window_s * 1000
        if self.flag_on(STRICT_FRESHNESS, poa.device_id):
            window_ms //= 2
        check_fresh(poa.timestamp, now, window_ms)
        if device.state == "pending":
            raise ApiError(403, "pending", "enrollment awaits the operator's approval")
        if device.state == "quarantined":
            raise ApiError(403, "quarantined", "this device is quarantined")
        self.check_peer(peer, poa.device_id)
        if poa.seq <= device.last_seq:
            raise ApiError(
                409,
                "replay",
                f"seq {poa.seq} is not above {device.last_seq}",
                last_seq=device.last_seq,
            )
        score = eps(poa.telemetry, self.eps_config)
        telemetry_json = json.dumps(poa.telemetry.to_dict(), sort_keys=True)

        def txn(db: sqlite_utils.Database) -> str:
            cur = db.execute(
                "UPDATE devices SET last_seq=?, last_seen=?, telemetry=?, eps=?, "
                "state=CASE WHEN state='stale' THEN 'active' ELSE state END "
                "WHERE device_id=? AND last_seq < ? AND state IN ('active','stale')",
                [poa.seq, now, telemetry_json, score, poa.device_id, poa.seq],
            )
            if cur.rowcount != 1:
                raise ApiError(409, "replay", f"seq {poa.seq} was already used")
            db.execute(
                "INSERT INTO heartbeats (device_id, seq, timestamp, received_at, telemetry) "
                "VALUES (?,?,?,?,?)",
                [poa.device_id, poa.seq, poa.timestamp, now, telemetry_json],
            )
            return "active"

        state = await self.db.write(txn)
        was = device.state
        device.last_seq = max(device.last_seq, poa.seq)
        device.last_seen = now
        device.telemetry = poa.telemetry
        device.state = state
        device.poa_times.append(now)
        self.count("heartbeats")
        if self.work_waiting and (
            was != state or len(device.poa_times) <= self.eps_config.min_poas
        ):
            # The device may just have become schedulable for waiting work: schedule now.
            # Any other change a heartbeat brings (its EPS) waits for the next tick: a full
            # round for each of thousands of heartbeats a second would starve the loop.
            self.wake_scheduler.set()
        return {
            "state": state,
            "flags": self.flags_for(poa.device_id),
            "server_time_ms": now,
            "eps": round(score, 4),
        }

    # -- feature flags (SPEC §10) -------------------------------------------------------------

    def flag_on(self, name: str, device_id: str) -> bool:
        return in_rollout(name, device_id, self.flags.get(name, 0))

    def flags_for(self, device_id: str) -> dict[str, bool]:
        """Every flag, on or off for this device: what its heartbeat replies carry."""
        return {name: in_rollout(name, device_id, p) for name, p in sorted(self.flags.items())}

    async def list_flags(self) -> list[dict[str, Any]]:
        return await self.db.read(
            lambda db: list(
                db.query("SELECT name, percent, updated_at, updated_by FROM flags ORDER BY name")
            )
        )

    async def set_flag(self, name: str, percent: Any, by: str) -> dict[str, Any]:
        if not isinstance(name, str) or not FLAG_NAME.fullmatch(name):
            raise ApiError(
                400, "invalid_message", "flag name: 1-64 of a-z, 0-9, '-', '_', '.'", field="name"
            )
        if not isinstance(percent, int) or isinstance(percent, bool) or not 0 <= percent <= 100:
            raise ApiError(400, "invalid_message", "percent: an integer 0..100", field="percent")
        now = self.clock()

        def txn(db: sqlite_utils.Database) -> int | None:
            row = db.execute("SELECT percent FROM flags WHERE name=?", [name]).fetchone()
            before = row[0] if row else None
            db.execute(
                "INSERT INTO flags (name, percent, updated_at, updated_by) VALUES (?,?,?,?) "
                "ON CONFLICT (name) DO UPDATE SET percent=excluded.percent, "
                "updated_at=excluded.updated_at, updated_by=excluded.updated_by",
                [name, percent, now, by],
            )
            db.execute(
                "INSERT INTO flag_history (name, from_percent, to_percent, at, by) "
                "VALUES (?,?,?,?,?)",
                [name, before, percent, now, by],
            )
            return before

        before = await self.db.write(txn)
        self.flags[name] = percent
        log.info(
            "flag %s set from %s to %d %% by %s",
            name,
            "unset" if before is None else f"{before} %",
            percent,
            by,
            extra={"flag": name, "from_percent": before, "to_percent": percent, "by": by},
        )
        return {
            "name": name,
            "percent": percent,
            "updated_at": now,
            "updated_by": by,
            "from_percent": before,
        }

    async def flag_history(self, name: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT name, from_percent, to_percent, at, by FROM flag_history"
        args: list[Any] = []
        if name is not None:
            sql += " WHERE name=?"
            args.append(name)
        return await self.db.read(lambda db: list(db.query(sql + " ORDER BY id", args)))

    # -- tasks -------------------------------------------------------------------------------

    async def submit_task(self, data: Any, client: str, owner: str) -> dict[str, Any]:
        """Queue a task owned by ``owner`` (its token's owner id; ``client`` is its label).

        A task id the client chose (``task_id``, its ``client_ref``) is scoped to the
        owner: the task's id is ``<owner>.<client_ref>``, so two clients may choose the same
        one, and whether another client holds an id can never be learnt from a conflict.
        The same owner choosing it again gets 409 ``duplicate`` naming its own task. Without
        a chosen id the task gets a random ``t-…`` one.
        """
        req = _TASK_REQUEST(data, "")
        kind = req["kind"]
        if kind not in self.kinds:
            raise ApiError(400, "unknown_kind", f"unknown task kind {kind!r}", field="kind")
        self.kinds.validate(kind, req["params"], req["chunks"])
        replicas = req.get("replicas", 1)
        if replicas > self.config.scheduler.max_replicas:
            raise ApiError(
                400,
                "invalid_message",
                f"replicas: at most {self.config.scheduler.max_replicas}",
                field="replicas",
            )
        ref = req.get("task_id")
        task_id = f"{owner}.{ref}" if ref else f"t-{secrets.token_hex(8)}"
        now = self.clock()
        row = {
            "task_id": task_id,
            "kind": kind,
            "params": json.dumps(req["params"], sort_keys=True),
            "chunks": req["chunks"],
            "replicas": replicas,
            "deadline": req.get("deadline"),
            "created_at": now,
            "client": client,
            "owner": owner,
            "state": "queued",
        }

        def txn(db: sqlite_utils.Database) -> str:
            while next(
                iter(db.query("SELECT 1 FROM tasks WHERE task_id=?", [row["task_id"]])), None
            ):
                if ref:
                    raise ApiError(
                        409,
                        "duplicate",
                        f"you already have a task {ref}",
                        field="task_id",
                        task_id=row["task_id"],
                    )
                row["task_id"] = f"t-{secrets.token_hex(8)}"  # never another's random id
            db.table("tasks").insert(row)
            return str(row["task_id"])

        task_id = await self.db.write(txn)
        self.count("tasks_submitted")
        self.wake_scheduler.set()
        return {"task_id": task_id, "state": "queued", **({"client_ref": ref} if ref else {})}

    async def task_view(
        self,
        task_id: str,
        *,
        with_output: bool = True,
        verified_only: bool = False,
        owner: str | None = None,
    ) -> dict[str, Any]:
        """A task with its assignments, proofs and result, each with its verification state
        (docs/verification.md). With ``verified_only`` no output bytes are included unless
        the result is verified, so a client can never take an unchecked output by mistake.
        ``owner``: only if it is that owner's (None: any task, the operator's view); another
        owner's task answers exactly as one that does not exist, so its existence does not
        leak."""

        def q(db: sqlite_utils.Database) -> dict[str, Any] | None:
            task = next(iter(db.query("SELECT * FROM tasks WHERE task_id=?", [task_id])), None)
            if task is None or (owner is not None and task["owner"] != owner):
                return None
            task["assignments"] = list(
                db.query(
                    "SELECT device_id, state, issued_at, expires_at, reason FROM assignments "
                    "WHERE task_id=? ORDER BY issued_at",
                    [task_id],
                )
            )
            task["proofs"] = list(
                db.query(
                    f"SELECT p.device_id, p.accepted_at, {height_of('p.seq')} AS block_height, "  # noqa: S608
                    "p.credit, "
                    "p.output_digest, hex(p.output) AS output, s.state AS spot_check, "
                    "s.indices IS NOT NULL AS dispute_check "
                    "FROM proofs p LEFT JOIN spot_checks s "
                    "ON s.task_id = p.task_id AND s.device_id = p.device_id "
                    "WHERE p.task_id=? ORDER BY p.seq",
                    [task_id],
                )
            )
            return task

        task = await self.db.read(q)
        if task is None:
            raise not_found(f"task {task_id}")
        task["params"] = json.loads(task["params"])
        output = None
        facts = []
        for p in task["proofs"]:
            fact = _proof_facts(p)
            del p["dispute_check"]
            facts.append(fact)
            p["verification"] = verification.proof_verification(fact).to_dict()
            p["output"] = p["output"].lower() if with_output else None
            if (
                output is None
                and p["output_digest"] == task["output_digest"]
                and p["credit"] != "void"
            ):
                output = p["output"]
        result = verification.task_verification(task["state"], task["output_digest"], facts)
        task["verification"] = result.to_dict()
        task["output"] = output if task["state"] == "completed" else None
        if verified_only and result.state != verification.VERIFIED:
            task["output"] = None
            for p in task["proofs"]:
                p["output"] = None
        return task

    async def list_tasks(
        self,
        limit: int = 100,
        state: str | None = None,
        owner: str | None = None,
        *,
        verified_only: bool = False,
    ) -> list[dict[str, Any]]:
        """The newest tasks, each with its result's verification state; ``owner``: only
        that owner's (None: all, the operator's view); with ``verified_only`` only those
        whose result is verified (docs/verification.md)."""
        sql = (
            "SELECT task_id, kind, chunks, replicas, state, created_at, completed_at, "
            "output_digest FROM tasks"
        )
        where: list[str] = []
        args: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if state:
            where.append("state = ?")
            args.append(state)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)

        def q(db: sqlite_utils.Database) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            tasks = list(db.query(sql, args))
            ids = json.dumps([t["task_id"] for t in tasks])
            rows = list(
                db.query(
                    f"SELECT p.task_id, p.output_digest, p.credit, {height_of('p.seq')} "  # noqa: S608
                    "AS block_height, s.state AS spot_check, s.indices IS NOT NULL AS "
                    "dispute_check FROM proofs p LEFT JOIN spot_checks s ON "
                    "s.task_id = p.task_id AND s.device_id = p.device_id "
                    "WHERE p.task_id IN (SELECT value FROM json_each(?))",
                    [ids],
                )
            )
            return tasks, rows

        tasks, rows = await self.db.read(q)
        facts: dict[str, list[verification.ProofFacts]] = {}
        for r in rows:
            facts.setdefault(r["task_id"], []).append(_proof_facts(r))
        out = []
        for t in tasks:
            result = verification.task_verification(
                t["state"], t.pop("output_digest"), facts.get(t["task_id"], [])
            )
            if verified_only and result.state != verification.VERIFIED:
                continue
            t["verification"] = result.to_dict()
            out.append(t)
        return out

    # -- proofs --------------------------------------------------------------------------------

    async def accept_proof(self, data: Any, peer: Peer | None = None) -> dict[str, Any]:
        pot, device = self._proof_sender(data, peer)
        row = await self.db.read(lambda db: _assignment_row(db, pot.task_id, pot.device_id))
        checked = self._check_proof(data, pot, device, row)
        task_state = await self.db.write(lambda db: self._store_proof(db, checked))
        return self._proof_accepted(checked, task_state)

    async def accept_proofs(
        self, items: list[Any], peer: Peer | None = None
    ) -> list[dict[str, Any]]:
        """Accept a batch of proofs: one read, one durable commit, one answer per item.

        Each item is judged exactly as ``accept_proof`` would judge it alone and gets its
        own result (``status`` 202 and the body, or the error); one bad item never takes
        its neighbours down. The CPU-bound checks (signatures, output digests, trace
        roots) run in a worker thread, off the event loop.
        """
        results: list[dict[str, Any] | None] = [None] * len(items)
        senders: list[tuple[int, PoT, Device]] = []
        for i, data in enumerate(items):
            try:
                pot, device = self._proof_sender(data, peer)
                senders.append((i, pot, device))
            except (ApiError, ProtocolError) as exc:
                results[i] = _item_error(exc)
        keys = [(pot.task_id, pot.device_id) for _, pot, _ in senders]
        rows = await self.db.read(lambda db: [_assignment_row(db, t, d) for t, d in keys])

        def check_all() -> list[tuple[int, _CheckedProof]]:
            ok = []
            for (i, pot, device), row in zip(senders, rows, strict=True):
                try:
                    ok.append((i, self._check_proof(items[i], pot, device, row)))
                except (ApiError, ProtocolError) as exc:
                    results[i] = _item_error(exc)
            return ok

        checked = await asyncio.to_thread(check_all)

        def txn(db: sqlite_utils.Database) -> list[tuple[bool, Any]]:
            out: list[tuple[bool, Any]] = []
            for _, proof in checked:
                db.conn.execute("SAVEPOINT item")
                try:
                    out.append((True, self._store_proof(db, proof)))
                    db.conn.execute("RELEASE item")
                except ApiError as exc:
                    db.conn.execute("ROLLBACK TO item")
                    db.conn.execute("RELEASE item")
                    out.append((False, exc))
            return out

        stored = await self.db.write(txn) if checked else []
        for (i, proof), (ok, value) in zip(checked, stored, strict=True):
            results[i] = (
                {"status": 202, "body": self._proof_accepted(proof, value)}
                if ok
                else _item_error(value)
            )
        out = [r for r in results if r is not None]
        refused = sum(1 for r in out if r["status"] != 202)
        if refused:
            self.count("proofs_rejected", refused)  # as /v1/proofs refusals are counted
        return out

    def _proof_sender(self, data: Any, peer: Peer | None) -> tuple[PoT, Device]:
        """Parse the submission and check who sent it, before anything else is looked up."""
        req = _PROOF_REQUEST(data, "")
        pot = parse_signed(req["pot"], PoT)
        device = self.devices.get(pot.device_id)
        if device is None:
            raise ApiError(403, "not_enrolled", "unknown device")
        if device.state == "quarantined":
            raise ApiError(403, "quarantined", "this device is quarantined")
        # Identity and signature first: a forged message learns nothing about assignments.
        pot.verify(device.public_key, signer_id=pot.device_id)
        # Then the connection: the proof must come over this device's own certificate.
        self.check_peer(peer, pot.device_id)
        return pot, device

    def _check_proof(
        self, data: Any, pot: PoT, device: Device, row: dict[str, Any] | None
    ) -> _CheckedProof:
        if row is None:
            raise ApiError(410, "unknown_assignment", "no such assignment for this device")
        if row["state"] == "proved":
            raise ApiError(409, "duplicate", "a proof for this task was already accepted")
        if row["state"] not in ("offered", "accepted"):
            raise ApiError(410, "assignment_expired", f"the assignment is {row['state']}")
        assignment = parse(Assignment, json.loads(row["message"]))
        output = bytes.fromhex(data["output"])
        verify_pot(
            pot,
            output,
            public_key=device.public_key,
            assignment=assignment,
            now_ms=self.clock(),
            window_ms=self.config.protocol.pot_window_s * 1000,
            signature_checked=True,
        )
        pot_json = json.dumps(pot.to_dict(), sort_keys=True)
        return _CheckedProof(pot, device, output, pot_json, assignment.chunks)

    def _store_proof(self, db: sqlite_utils.Database, proof: _CheckedProof) -> str:
        pot, now = proof.pot, self.clock()
        cur = db.execute(
            "UPDATE assignments SET state='proved' WHERE task_id=? AND device_id=? "
            "AND state IN ('offered','accepted')",
            [pot.task_id, pot.device_id],
        )
        if cur.rowcount != 1:
            raise ApiError(409, "duplicate", "a proof for this task was already accepted")
        db.execute(
            "INSERT INTO proofs (task_id, device_id, pot, signature, output, output_digest, "
            "accepted_at, chunks) VALUES (?,?,?,?,?,?,?,?)",
            [
                pot.task_id,
                pot.device_id,
                proof.pot_json,
                bytes.fromhex(pot.signature),
                proof.output,
                pot.output_digest,
                now,
                proof.chunks,
            ],
        )
        db.execute("UPDATE devices SET completed=completed+1 WHERE device_id=?", [pot.device_id])
        return self._settle_task(db, pot.task_id, now)

    def _proof_accepted(self, proof: _CheckedProof, task_state: str) -> dict[str, Any]:
        """After the commit: update the in-memory view, wake the loops, and answer."""
        pot, device = proof.pot, proof.device
        device.record = dataclasses.replace(device.record, completed=device.record.completed + 1)
        self.count("proofs_accepted")
        log.info(
            "proof for task %s from %s accepted; task %s",
            pot.task_id,
            pot.device_id,
            task_state,
            extra={"task_id": pot.task_id, "device_id": pot.device_id},
        )
        self.wake_scheduler.set()
        self.unblocked += 1
        if self.unblocked >= self.config.blocks.max_receipts:
            self.wake_blocks.set()
        return {
            "task_id": pot.task_id,
            "device_id": pot.device_id,
            "status": "accepted",
            "task_state": task_state,
        }

    def _settle_task(self, db: sqlite_utils.Database, task_id: str, now: int) -> str:
        task = next(iter(db.query("SELECT replicas, state FROM tasks WHERE task_id=?", [task_id])))
        digests = [
            r["output_digest"]
            for r in db.query(
                "SELECT output_digest FROM proofs WHERE task_id=? AND credit != 'void'", [task_id]
            )
        ]
        if len(digests) < task["replicas"]:
            return str(task["state"])
        if len(set(digests)) == 1:
            db.execute(
                "UPDATE tasks SET state='completed', output_digest=?, completed_at=? "
                "WHERE task_id=?",
                [digests[0], now, task_id],
            )
            return "completed"
        db.execute(
            "UPDATE tasks SET state='disputed', completed_at=?, detail=? WHERE task_id=?",
            [now, f"{len(set(digests))} different outputs from {len(digests)} devices", task_id],
        )
        # Every replica of a disputed task is spot-checked, whatever its device's record.
        for p in db.query(
            f"SELECT p.device_id, b.height AS block_height FROM proofs p "  # noqa: S608
            f"JOIN {block_of()} WHERE p.task_id=?",
            [task_id],
        ):
            self._schedule_dispute_check(
                db, task_id=task_id, device_id=p["device_id"], height=p["block_height"], now=now
            )
        return "disputed"

    # -- devices and views --------------------------------------------------------------------

    def device_view(self, d: Device) -> dict[str, Any]:
        t = d.telemetry
        return {
            "device_id": d.device_id,
            "public_key": d.public_key.hex(),
            "state": d.state,
            "state_reason": d.state_reason,
            "capabilities": d.capabilities.to_dict(),
            "endpoint": d.endpoint,
            "address": d.address,
            "enrolled_at": d.enrolled_at,
            "last_seen": d.last_seen,
            "last_seq": d.last_seq,
            "telemetry": t.to_dict() if t else None,
            "eps": round(eps(t, self.eps_config), 4) if t else None,
            "reputation": round(d.reputation, 4),
            "record": dataclasses.asdict(d.record),
            "eligibility": self._eligibility(d),
        }

    def _eligibility(self, d: Device) -> str:
        """Why the scheduler would (not) give this device work now, in words."""
        if not d.capabilities.kinds:
            return "supports no task kind"
        if not d.endpoint:
            return "no endpoint to push assignments to"
        reason = ineligibility(
            d.candidate(busy=False), d.capabilities.kinds[0], self.clock(), self.eps_config
        )
        return "eligible" if reason is None else reason

    def device(self, device_id: str) -> Device:
        d = self.devices.get(device_id)
        if d is None:
            raise not_found(f"device {device_id}")
        return d

    # -- the device owner's rights (SPEC §11) --------------------------------------------------

    def check_privacy_request(
        self, data: Any, device_id: str, action: str, peer: Peer | None = None
    ) -> None:
        """Accept only a fresh ``privacy`` request for ``action`` signed by ``device_id``'s key."""
        msg = parse_signed(data, Privacy)
        if msg.device_id != device_id:
            raise ApiError(
                400, "invalid_message", "device_id differs from the path", field="device_id"
            )
        if msg.action != action:
            raise ApiError(
                400, "invalid_message", f"action must be {action!r} here", field="action"
            )
        device = self.devices.get(device_id)
        if device is None:
            raise ApiError(403, "not_enrolled", "unknown device (never enrolled, or erased)")
        msg.verify(device.public_key, signer_id=device_id)
        check_fresh(msg.timestamp, self.clock(), self.config.protocol.heartbeat_window_s * 1000)
        # A quarantine revokes the certificates, not the owner's rights over the data.
        self.check_peer(peer, device_id, allow_revoked=True)

    async def export_device(self, device_id: str) -> dict[str, Any]:
        """Everything the coordinator holds about a device, as JSON."""
        if device_id not in self.devices:
            raise not_found(f"device {device_id}")

        def q(db: sqlite_utils.Database) -> dict[str, Any] | None:
            def rows(sql: str) -> list[dict[str, Any]]:
                return list(db.query(sql, [device_id]))

            device = next(iter(rows("SELECT * FROM devices WHERE device_id=?")), None)
            if device is None:
                return None
            return {
                "device": device,
                "heartbeats": rows(
                    "SELECT seq, timestamp, received_at, telemetry FROM heartbeats "
                    "WHERE device_id=? ORDER BY seq"
                ),
                "mdns_candidate": next(
                    iter(rows("SELECT * FROM candidates WHERE device_id=?")), None
                ),
                "assignments": rows(
                    "SELECT task_id, state, issued_at, expires_at, reason, message "
                    "FROM assignments WHERE device_id=? ORDER BY issued_at"
                ),
                "proofs": rows(
                    "SELECT task_id, pot, lower(hex(signature)) AS signature, "  # noqa: S608
                    "lower(hex(output)) AS output, output_digest, accepted_at, "
                    f"{height_of('p.seq')} AS block_height, credit FROM proofs p "
                    "WHERE device_id=? ORDER BY seq"
                ),
                "spot_checks": rows(
                    "SELECT s.task_id, s.block_height, s.indices, s.state, s.attempts, "
                    "s.detail, s.reexecuted_chunks, s.created_at, s.completed_at, "
                    "b.hash AS block_hash, t.chunks FROM spot_checks s "
                    "JOIN blocks b ON b.height = s.block_height "
                    "JOIN tasks t ON t.task_id = s.task_id "
                    "WHERE s.device_id=? ORDER BY s.created_at"
                ),
                "receipts": rows(
                    "SELECT p.task_id, b.height AS height, lower(hex(b.hash)) AS block_hash "  # noqa: S608
                    f"FROM proofs p JOIN {block_of()} "
                    "WHERE p.device_id=? ORDER BY p.seq"
                ),
                "certificates": rows(
                    "SELECT c.serial, c.fingerprint, c.issued_at, c.not_after, "
                    "r.revoked_at, r.reason AS revoked_reason FROM certificates c "
                    "LEFT JOIN revoked_certificates r ON r.serial = c.serial "
                    "WHERE c.device_id=? ORDER BY c.issued_at"
                ),
                "update_reports": rows(
                    "SELECT release, version, outcome, detail, timestamp, received_at "
                    "FROM update_reports WHERE device_id=? ORDER BY release"
                ),
            }

        out = await self.db.read(q)
        if out is None:
            raise not_found(f"device {device_id}")
        d = out["device"]
        for key in ("capabilities", "telemetry"):
            d[key] = json.loads(d[key]) if d[key] else None
        for h in out["heartbeats"]:
            h["telemetry"] = json.loads(h["telemetry"])
        if out["mdns_candidate"]:
            out["mdns_candidate"]["txt"] = json.loads(out["mdns_candidate"]["txt"])
        for a in out["assignments"]:
            a["message"] = json.loads(a["message"])
        for p in out["proofs"]:
            p["pot"] = json.loads(p["pot"])
        for c in out["spot_checks"]:
            c["indices"] = self.challenge_indices(
                c["indices"], bytes(c.pop("block_hash")), c["task_id"], c.pop("chunks")
            )
        out["device_id"] = device_id
        out["exported_at"] = self.clock()
        out["coordinator_id"] = self.coordinator_id
        out["note"] = (
            "Receipts already in microblocks (task id, device id, signature) stay after an "
            "erasure; everything else here is deleted."
        )
        return out

    async def erase_device(self, device_id: str) -> dict[str, Any]:
        """Erase a device (SPEC §11): keep only its receipts in microblocks.

        First, every result of it whose spot-check is still pending is voided and its task
        re-queued (docs/verification.md): erasing itself never lets a device keep a result
        it would not defend. Results verified (a passed check, or not drawn for one) stay.

        Deleted: the device row (public key, capabilities, endpoint, address, telemetry,
        record), its heartbeat history, its mDNS candidate row, its assignments (in-flight
        ones go back to the queue first), its spot-checks, its update reports, and its proofs
        not yet in a block
        (their tasks are re-queued). Proofs already in a block keep only what the receipt and
        the client's task need: task id, device id, signature, output and its digest,
        credit, and the seq that places it in its block's range (so the range still holds
        exactly the block's receipts; an erased unblocked proof only leaves a gap in a
        later range); the signed PoT itself is deleted, and the acceptance time becomes
        the block's. A tombstone with the pseudonymous id refuses the identity for
        good. Then the WAL is checkpointed, so no older page copy stays in its file.
        """
        if device_id not in self.devices:
            raise not_found(f"device {device_id}")
        now = self.clock()
        revoked: list[str] = []

        def txn(db: sqlite_utils.Database) -> dict[str, int]:
            released = self._release_assignments(db, device_id, "lost", "device erased")
            # Erasure is no escape from a check: a result still waiting for one is voided
            # and its task runs again elsewhere, before the check itself is deleted.
            voided = [
                task_id
                for (task_id,) in db.execute(
                    "SELECT p.task_id FROM proofs p JOIN spot_checks s "
                    "ON s.task_id = p.task_id AND s.device_id = p.device_id "
                    "WHERE p.device_id=? AND p.credit='unverified' AND s.state='pending'",
                    [device_id],
                ).fetchall()
                if self._void_proof(db, task_id, device_id, "its device was erased unchecked", now)
            ]
            unblocked = [
                r["task_id"]
                for r in db.query(
                    f"SELECT task_id FROM proofs p WHERE device_id=? AND {not_in_block()}",  # noqa: S608
                    [device_id],
                )
            ]
            counts = {
                "heartbeats": db.execute(
                    "DELETE FROM heartbeats WHERE device_id=?", [device_id]
                ).rowcount,
                "assignments": db.execute(
                    "DELETE FROM assignments WHERE device_id=?", [device_id]
                ).rowcount,
                "spot_checks": db.execute(
                    "DELETE FROM spot_checks WHERE device_id=?", [device_id]
                ).rowcount,
                "unblocked_proofs": db.execute(
                    f"DELETE FROM proofs WHERE device_id=? AND {not_in_block('proofs')}",  # noqa: S608
                    [device_id],
                ).rowcount,
                "receipts_kept": db.execute(
                    "UPDATE proofs SET pot='', accepted_at=(SELECT b.timestamp FROM blocks b "  # noqa: S608
                    f"WHERE b.height = {height_of('proofs.seq')}) WHERE device_id=?",
                    [device_id],
                ).rowcount,
                "candidates": db.execute(
                    "DELETE FROM candidates WHERE device_id=?", [device_id]
                ).rowcount,
                "update_reports": db.execute(
                    "DELETE FROM update_reports WHERE device_id=?", [device_id]
                ).rowcount,
            }
            revoked[:] = DeviceCertificates.revoke_in(db, device_id, now, "erased")
            counts["certificates"] = db.execute(
                "DELETE FROM certificates WHERE device_id=?", [device_id]
            ).rowcount
            for task_id in unblocked:
                db.execute(
                    "UPDATE tasks SET state='queued', output_digest=NULL, completed_at=NULL, "
                    "detail='re-queued: a device that ran it was erased' "
                    "WHERE task_id=? AND state IN ('completed','disputed','running')",
                    [task_id],
                )
            db.execute("DELETE FROM devices WHERE device_id=?", [device_id])
            db.execute(
                "INSERT OR IGNORE INTO erased_devices (device_id, erased_at) VALUES (?,?)",
                [device_id, now],
            )
            counts["tasks_released"] = len(released) + len(unblocked) + len(voided)
            return counts

        counts = await self.db.write(txn)
        if self.certs is not None:
            self.certs.revoked_now(revoked)
        self.devices.pop(device_id, None)
        if self.rollouts is not None:
            await self.rollouts.load()  # its update reports went with it
        await self.db.checkpoint()
        self.count("devices_erased")
        log.info("device %s erased at its owner's or the operator's request", device_id)
        self.wake_scheduler.set()
        return {"device_id": device_id, "state": "erased", "erased_at": now, "deleted": counts}

    # -- microblocks ---------------------------------------------------------------------------

    async def form_block(self) -> int | None:
        """Commit the next block from receipts not yet in one; ``None`` when there are none.

        Selecting the receipts, writing the block with its seq range and scheduling its
        spot-checks happen in one transaction, so a receipt can never land in two blocks or
        none, nor lose its check, even across a crash. The proof rows themselves are only
        read (through a narrow covering index), never rewritten.
        """
        cfg = self.config
        now = self.clock()

        def txn(db: sqlite_utils.Database) -> tuple[int, int] | None:
            # Plain tuples, not sqlite-utils dicts, and set-based statements: this runs
            # once per receipt, for blocks of up to 65,535 of them.
            c = db.conn
            after = c.execute(f"SELECT {LAST_BLOCKED_SEQ}").fetchone()[0]
            rows = c.execute(RECEIPTS_SQL, [after, cfg.blocks.max_receipts]).fetchall()
            if not rows:
                return None
            last = c.execute(
                "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1"
            ).fetchone()
            height = 0 if last is None else last[0] + 1
            previous = microblock.GENESIS_PREVIOUS if last is None else last[1]
            block = microblock.build_block(
                cluster_id=cfg.protocol.cluster_id,
                timestamp=now,
                previous_hash=previous,
                receipts=[microblock.Receipt(r[1], r[2], r[3]) for r in rows],
            )
            # The rows selected are exactly the unblocked ones up to the last seq taken: the
            # writer is the only one adding proofs, and it is running this.
            c.execute(
                "INSERT INTO blocks (height, hash, previous_hash, timestamp, receipt_count, "
                "header, payload, first_seq, last_seq) VALUES (?,?,?,?,?,?,?,?,?)",
                [
                    height,
                    block.block_hash,
                    previous,
                    now,
                    len(rows),
                    block.header.encode(),
                    block.payload,
                    rows[0][0],
                    rows[-1][0],
                ],
            )
            self._schedule_block_checks(db, rows, height, now)
            return height, len(rows)

        formed = await self.db.write(txn)
        if formed is None:
            self.unblocked = 0
            return None
        height, receipts = formed
        self.unblocked = max(0, self.unblocked - receipts)
        self.count("blocks")
        self.wake_spot_checks.set()
        log.info("microblock %d formed with %d receipts", height, receipts)
        return height

    def _schedule_block_checks(
        self,
        db: sqlite_utils.Database,
        rows: list[tuple[Any, ...]],
        height: int,
        now: int,
    ) -> None:
        """Schedule the spot-checks of a block's receipts (``rows``: seq, task, device,
        signature), in the block's transaction.

        A disputed task's replicas are checked on the chunks that differ. Otherwise each
        receipt is checked with its device's probability: the receipts of devices checked
        every time (new ones) are inserted by one set-based statement, the others drawn one
        by one. No indices are stored for these; they are derived when the challenge is sent.
        """
        checks = self.config.spot_checks
        c = db.conn
        first, last = rows[0][0], rows[-1][0]
        # Disputed tasks are few (found through the tasks' state index): asking for them
        # once is cheaper than looking up every receipt's task.
        for task_id, device_id in c.execute(
            "SELECT p.task_id, p.device_id FROM tasks t JOIN proofs p ON p.task_id = t.task_id "
            "WHERE t.state = 'disputed' AND p.seq BETWEEN ? AND ?",
            [first, last],
        ).fetchall():
            self._schedule_dispute_check(
                db, task_id=task_id, device_id=device_id, height=height, now=now
            )
        # A receipt's probability depends on its device's record and its task's chunk count
        # (only below k, where one challenge opens fewer chunks): decided once per device of
        # the block, with one query for them all rather than a lookup per receipt.
        devices = {r[2] for r in rows}
        passes = dict(
            c.execute(
                "SELECT device_id, passes FROM devices "
                "WHERE device_id IN (SELECT value FROM json_each(?))",
                [json.dumps(sorted(devices))],
            ).fetchall()
        )
        k = checks.k
        # At k chunks or more a device's rate is its lowest (smaller tasks are checked at
        # least as often), so a device at 1.0 there is checked on every receipt.
        base = {d: checks.check_probability(passes.get(d, 0), k) for d in devices}
        always = sorted(d for d, p in base.items() if p >= 1.0)
        # The others: one uniform 64-bit draw per receipt, from one read of the system RNG,
        # against the receipt's probability scaled to 2^64 (looked up by device and chunks).
        scale = float(1 << 64)
        sampled = [r for r in rows if base[r[2]] < 1.0]
        threshold = {
            (d, c): int(checks.check_probability(passes.get(d, 0), c) * scale)
            for d, c in {(r[2], r[4] if r[4] < k else k) for r in sampled}
        }
        draws = memoryview(secrets.token_bytes(8 * len(sampled))).cast("Q")
        drawn = [
            (r[1], r[2], height, now, now)
            for r, draw in zip(sampled, draws, strict=True)
            if draw < threshold[r[2], r[4] if r[4] < k else k]
        ]
        # OR IGNORE: a disputed receipt's check, scheduled above, stays as it is.
        if always:
            c.execute(CHECK_ALL_SQL, [height, now, now, first, last, json.dumps(always)])
        c.executemany(_RANDOM_CHECK_SQL, drawn)

    def challenge_indices(
        self, stored: str | None, block_hash: bytes, task_id: str, chunks: int
    ) -> list[int]:
        """A check's chunk indices: those stored (a dispute's differing chunks), else the
        SPEC §2 derivation from the block hash — a pure function, so it need not be stored
        for every receipt checked, and the device could not know it before the block."""
        if stored is not None:
            return list(json.loads(stored))
        return spotcheck.challenge_indices(block_hash, task_id, self.config.spot_checks.k, chunks)

    def _schedule_dispute_check(
        self, db: sqlite_utils.Database, *, task_id: str, device_id: str, height: int, now: int
    ) -> None:
        """Queue the challenge of a disputed task's replica on the chunks that differ: the
        evidence is specific, so these indices are stored, not derived."""
        chunks = next(iter(db.query("SELECT chunks FROM tasks WHERE task_id=?", [task_id])))
        indices = _differing_chunks(db, task_id, chunks["chunks"])
        # A dispute overrides an earlier, random check.
        db.execute(
            "INSERT INTO spot_checks (task_id, device_id, block_height, indices, state, "
            "next_attempt_at, created_at) VALUES (?,?,?,?, 'pending', ?, ?) "
            "ON CONFLICT (task_id, device_id) DO UPDATE SET indices=excluded.indices, "
            "state='pending', attempts=0, next_attempt_at=excluded.next_attempt_at "
            "WHERE spot_checks.state IN ('pending','passed')",
            [task_id, device_id, height, json.dumps(indices), now, now],
        )

    async def blocks_view(self, start: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.db.read(
            lambda db: list(
                db.query(
                    "SELECT height, hex(hash) AS hash, hex(previous_hash) AS previous_hash, "
                    "timestamp, receipt_count FROM blocks WHERE height >= ? "
                    "ORDER BY height LIMIT ?",
                    [start, limit],
                )
            )
        )
        for r in rows:
            r["hash"], r["previous_hash"] = r["hash"].lower(), r["previous_hash"].lower()
        return rows

    async def block_bytes(self, height: int) -> bytes:
        row = await self.db.read(
            lambda db: next(
                iter(db.query("SELECT header, payload FROM blocks WHERE height=?", [height])),
                None,
            )
        )
        if row is None:
            raise not_found(f"microblock {height}")
        return bytes(row["header"]) + bytes(row["payload"])

    async def block_view(self, height: int) -> dict[str, Any]:
        raw = await self.block_bytes(height)
        view = microblock.decode(raw).to_json()
        checks = await self.db.read(
            lambda db: {
                (r["task_id"], r["device_id"]): r
                for r in db.query(
                    "SELECT task_id, device_id, state, detail FROM spot_checks "
                    "WHERE block_height=?",
                    [height],
                )
            }
        )
        for r in view["receipts"]:  # type: ignore[attr-defined]
            c = checks.get((r["task_id"], r["device_id"]))
            r["spot_check"] = c["state"] if c else "not sampled"
        view["height"] = height
        view["anchor"] = await self._block_anchor(height)
        return view

    async def _block_anchor(self, height: int) -> dict[str, Any] | None:
        """The anchor covering block ``height`` (with its confirmations), or ``None``."""
        row = await self.db.read(
            lambda db: next(
                iter(
                    db.query(
                        "SELECT state, root, tx_hash, block_number, chain_id, contract, "
                        "leaf_index, tree_size FROM block_anchors "
                        "WHERE height=? AND anchor_id IS NOT NULL",
                        [height],
                    )
                ),
                None,
            )
        )
        if row is None:
            return None
        if isinstance(row.get("root"), bytes):
            row["root"] = row["root"].hex()
        hook = self.status_hooks.get("anchoring")
        head = (await hook()).get("head") if hook is not None else None
        row["confirmations"] = (
            head - row["block_number"] + 1
            if isinstance(head, int) and isinstance(row["block_number"], int)
            else None
        )
        return row

    # -- background maintenance ---------------------------------------------------------------

    def _release_assignments(
        self, db: sqlite_utils.Database, device_id: str, state: str, reason: str
    ) -> list[str]:
        tasks = [
            r["task_id"]
            for r in db.query(
                "SELECT task_id FROM assignments WHERE device_id=? "
                "AND state IN ('offered','accepted')",
                [device_id],
            )
        ]
        db.execute(
            "UPDATE assignments SET state=?, reason=? WHERE device_id=? "
            "AND state IN ('offered','accepted')",
            [state, reason, device_id],
        )
        return tasks

    def _quarantine_in(
        self,
        db: sqlite_utils.Database,
        device_id: str,
        reason: str,
        now: int,
        *,
        cheated: bool = True,
    ) -> list[str]:
        """The one quarantine cascade, in the caller's transaction: the device gets no more
        work, its in-flight assignments go back to the queue, its results are voided and
        their tasks re-queued, and its certificates are revoked (their serials are
        returned, to be dropped from the live TLS check after commit).

        Voided are its unverified results and, when it ``cheated`` (a failed check, a
        refusal, or the operator's decision), also those verified only by sampling (a
        random spot-check opens a few chunks): a device caught faking one result is not
        trusted for the chunks nobody opened. Results whose chunks the coordinator
        re-executed itself stay verified. A device quarantined for repeated silence keeps
        its sampled results, as silence is no evidence against work already checked.
        """
        db.execute(
            "UPDATE devices SET state='quarantined', state_reason=? WHERE device_id=?",
            [reason, device_id],
        )
        self._release_assignments(db, device_id, "lost", "device quarantined")
        sampled = (
            " OR (credit='verified' AND NOT EXISTS (SELECT 1 FROM spot_checks s WHERE "
            "s.task_id = proofs.task_id AND s.device_id = proofs.device_id "
            "AND s.indices IS NOT NULL))"
            if cheated
            else ""
        )
        tasks = [
            r[0]
            for r in db.execute(
                f"SELECT task_id FROM proofs WHERE device_id=? AND (credit='unverified'{sampled})",  # noqa: S608
                [device_id],
            ).fetchall()
        ]
        for task_id in tasks:
            self._void_proof(
                db, task_id, device_id, "proof voided: quarantined device", now, verified=True
            )
        return DeviceCertificates.revoke_in(db, device_id, now, "quarantined")

    def _void_proof(
        self,
        db: sqlite_utils.Database,
        task_id: str,
        device_id: str,
        why: str,
        now: int,
        *,
        verified: bool = False,
    ) -> bool:
        """Void one proof not yet verified (with ``verified``, also a verified one): its
        credit is void, its assignment lost (so the task is offered to other devices, never
        this one again) and its task's result withdrawn. Returns whether it was voided."""
        credits = "('unverified','verified')" if verified else "('unverified')"
        cur = db.execute(
            "UPDATE proofs SET credit='void' WHERE task_id=? AND device_id=? "  # noqa: S608
            f"AND credit IN {credits}",
            [task_id, device_id],
        )
        if cur.rowcount != 1:
            return False
        db.execute(
            "UPDATE assignments SET state='lost', reason=? "
            "WHERE task_id=? AND device_id=? AND state='proved'",
            [why, task_id, device_id],
        )
        self._reopen_task(db, task_id, f"re-queued: {why}", now)
        return True

    def _reopen_task(self, db: sqlite_utils.Database, task_id: str, detail: str, now: int) -> None:
        """After a proof of ``task_id`` lost its credit: a disputed task is settled by its
        re-executed checks; a completed or running one goes back to the queue, its result
        withdrawn. A failed task (deadline passed) stays failed."""
        row = db.execute("SELECT state FROM tasks WHERE task_id=?", [task_id]).fetchone()
        if row is None:
            return
        if row[0] == "disputed":
            self._settle_dispute(db, task_id, now)
            return
        db.execute(
            "UPDATE tasks SET state='queued', output_digest=NULL, completed_at=NULL, detail=? "
            "WHERE task_id=? AND state IN ('completed','running')",
            [detail, task_id],
        )

    def _settle_dispute(self, db: sqlite_utils.Database, task_id: str, now: int) -> None:
        """End a dispute once every live replica's differing chunks were re-executed by the
        coordinator: the task completes with the output that survived, or, when none did
        (or more chunks differed than one check re-executes), goes back to the queue.

        Needs nothing from the devices, so a replica that declines or goes silent cannot
        keep the task disputed: the wait is bounded by the next block and check round.
        """
        task = db.execute("SELECT state, chunks FROM tasks WHERE task_id=?", [task_id]).fetchone()
        if task is None or task[0] != "disputed":
            return
        rows = db.execute(
            "SELECT p.output_digest, p.credit, s.state, s.indices IS NOT NULL "
            "FROM proofs p LEFT JOIN spot_checks s "
            "ON s.task_id = p.task_id AND s.device_id = p.device_id WHERE p.task_id=?",
            [task_id],
        ).fetchall()
        live = [r for r in rows if r[1] != "void"]
        if any(r[2] != "passed" or not r[3] for r in live):
            return  # a replica's re-execution is still to come
        digests = {r[0] for r in live}
        covered = len(_differing_chunks(db, task_id, task[1], cap=None)) <= MAX_CHALLENGE_INDICES
        if len(digests) == 1 and covered:
            db.execute(
                "UPDATE tasks SET state='completed', output_digest=?, completed_at=?, detail=? "
                "WHERE task_id=?",
                [
                    digests.pop(),
                    now,
                    "dispute resolved: the coordinator re-executed the differing chunks",
                    task_id,
                ],
            )
            return
        db.execute(
            "UPDATE tasks SET state='queued', output_digest=NULL, completed_at=NULL, detail=? "
            "WHERE task_id=?",
            [
                "re-queued: no replica's output survived re-execution of the differing chunks",
                task_id,
            ],
        )

    async def mark_stale(self) -> list[str]:
        """Devices silent for ``stale_after_s`` become stale and lose their assignments."""
        now = self.clock()
        limit = now - self.config.protocol.stale_after_s * 1000
        silent = [
            d.device_id
            for d in self.devices.values()
            if d.state == "active" and (d.last_seen or d.enrolled_at) < limit
        ]
        if not silent:
            return []

        def txn(db: sqlite_utils.Database) -> None:
            for device_id in silent:
                db.execute(
                    "UPDATE devices SET state='stale', state_reason='missed heartbeats' "
                    "WHERE device_id=? AND state='active'",
                    [device_id],
                )
                self._release_assignments(db, device_id, "lost", "device went stale")

        await self.db.write(txn)
        for device_id in silent:
            self.devices[device_id].state = "stale"
            self.devices[device_id].state_reason = "missed heartbeats"
        self.wake_scheduler.set()
        return silent

    async def expire_assignments(self) -> int:
        now = self.clock()
        # A read first: most rounds find nothing overdue, and a write would cost every
        # round a durable commit (and a fresh task its latency).
        due = await self.db.read(
            lambda db: db.execute(
                "SELECT EXISTS (SELECT 1 FROM assignments WHERE state IN ('offered','accepted') "
                "AND expires_at < ?) OR EXISTS (SELECT 1 FROM tasks WHERE state IN "
                "('queued','running') AND deadline IS NOT NULL AND deadline < ?)",
                [now, now],
            ).fetchone()[0]
        )
        if not due:
            return 0

        def txn(db: sqlite_utils.Database) -> list[str]:
            rows = list(
                db.query(
                    "SELECT task_id, device_id FROM assignments "
                    "WHERE state IN ('offered','accepted') AND expires_at < ?",
                    [now],
                )
            )
            for r in rows:
                db.execute(
                    "UPDATE assignments SET state='expired', reason='no proof in time' "
                    "WHERE task_id=? AND device_id=?",
                    [r["task_id"], r["device_id"]],
                )
                db.execute(
                    "UPDATE devices SET timeouts=timeouts+1 WHERE device_id=?", [r["device_id"]]
                )
            db.execute(
                "UPDATE tasks SET state='failed', completed_at=?, detail='deadline passed' "
                "WHERE state IN ('queued','running') AND deadline IS NOT NULL AND deadline < ?",
                [now, now],
            )
            return [r["device_id"] for r in rows]

        timed_out = await self.db.write(txn)
        for device_id in timed_out:
            d = self.devices.get(device_id)
            if d is not None:
                d.record = dataclasses.replace(d.record, timeouts=d.record.timeouts + 1)
        return len(timed_out)

    async def purge_telemetry(self) -> int:
        cutoff = self.clock() - self.config.protocol.telemetry_retention_days * 86_400_000
        return await self.db.write(
            lambda db: db.execute("DELETE FROM heartbeats WHERE received_at < ?", [cutoff]).rowcount
        )

    async def record_verdict(
        self,
        task_id: str,
        device_id: str,
        verdict: str,
        detail: str,
        reexecuted: int = 0,
        *,
        refused: bool = False,
    ) -> None:
        """Record a pending spot-check's verdict and apply what it means (docs/verification.md).

        ``passed``: the proof's credit is verified. ``failed``: the device is quarantined.
        ``unanswered`` (silence, errors or invalid answers after every attempt, or
        ``refused``: "unknown task" for a proof it signed): the proof's credit is void and
        its task runs again elsewhere; the device is quarantined at once for a refusal of
        a recent proof, else when its unanswered checks in the window reach the threshold.
        A disputed task is settled after each verdict on one of its replicas. A check that
        is no longer pending (its device was erased meanwhile) changes nothing.
        """
        now = self.clock()
        column = {"passed": "passes", "failed": "failures", "unanswered": "unanswered"}[verdict]

        def txn(db: sqlite_utils.Database) -> tuple[bool, str | None, list[str]]:
            cur = db.execute(
                "UPDATE spot_checks SET state=?, detail=?, completed_at=?, reexecuted_chunks=? "
                "WHERE task_id=? AND device_id=? AND state='pending'",
                [verdict, detail, now, reexecuted, task_id, device_id],
            )
            if cur.rowcount != 1:
                return False, None, []
            db.execute(f"UPDATE devices SET {column}={column}+1 WHERE device_id=?", [device_id])  # noqa: S608
            quarantine: str | None = None
            if verdict == "passed":
                db.execute(
                    "UPDATE proofs SET credit='verified' WHERE task_id=? AND device_id=? "
                    "AND credit='unverified'",
                    [task_id, device_id],
                )
            elif verdict == "failed":
                quarantine = f"failed spot-check of {task_id}: {detail}"
            else:
                quarantine = self._unanswered_rule(db, task_id, device_id, refused, now)
                self._void_proof(db, task_id, device_id, "spot-check unanswered", now)
            revoked: list[str] = []
            if quarantine is not None:
                revoked = self._quarantine_in(
                    db, device_id, quarantine, now, cheated=verdict == "failed" or refused
                )
            self._settle_dispute(db, task_id, now)
            return True, quarantine, revoked

        recorded, quarantine, revoked = await self.db.write(txn)
        if not recorded:
            return
        if self.certs is not None:
            self.certs.revoked_now(revoked)
        self.count(f"spot_checks_{verdict}")
        d = self.devices.get(device_id)
        if d is not None:
            d.record = dataclasses.replace(d.record, **{column: getattr(d.record, column) + 1})
            if quarantine is not None:
                d.state = "quarantined"
                d.state_reason = quarantine
                log.warning("device %s quarantined: %s", device_id, quarantine)
        self.wake_scheduler.set()

    def _unanswered_rule(
        self, db: sqlite_utils.Database, task_id: str, device_id: str, refused: bool, now: int
    ) -> str | None:
        """Why an unanswered check quarantines its device, or ``None`` when it does not.

        A refusal ("unknown task") of a proof accepted within the agents' trace retention
        is a cheater's answer: an honest agent still holds that trace. Plain silence is
        what an honest phone that leaves the network also shows, so only repeated silence
        (``quarantine_after_unanswered`` checks within ``unanswered_window_s``) counts.
        """
        cfg = self.config.spot_checks
        if refused and cfg.quarantine_on_unknown_task:
            row = db.execute(
                "SELECT accepted_at FROM proofs WHERE task_id=? AND device_id=?",
                [task_id, device_id],
            ).fetchone()
            if row is not None and row[0] >= now - cfg.trace_retention_s * 1000:
                return f"answered 'unknown task' to the spot-check of {task_id}, a proof it signed"
        silent = db.execute(
            "SELECT count(*) FROM spot_checks WHERE device_id=? AND state='unanswered' "
            "AND completed_at >= ?",
            [device_id, now - cfg.unanswered_window_s * 1000],
        ).fetchone()[0]
        if silent >= cfg.quarantine_after_unanswered:
            return (
                f"{silent} spot-checks unanswered within {cfg.unanswered_window_s} s "
                f"(the last: {task_id})"
            )
        return None

    async def summary(self) -> dict[str, Any]:
        def q(db: sqlite_utils.Database) -> dict[str, Any]:
            def counts(sql: str) -> dict[str, int]:
                return {r["k"]: r["n"] for r in db.query(sql)}

            return {
                "tasks": counts("SELECT state AS k, count(*) AS n FROM tasks GROUP BY state"),
                "spot_checks": counts(
                    "SELECT state AS k, count(*) AS n FROM spot_checks GROUP BY state"
                ),
                "proofs": counts("SELECT credit AS k, count(*) AS n FROM proofs GROUP BY credit"),
                "blocks": next(iter(db.query("SELECT count(*) AS n FROM blocks")))["n"],
                "unblocked_receipts": next(
                    iter(db.query(f"SELECT count(*) AS n FROM proofs p WHERE {not_in_block()}"))  # noqa: S608
                )["n"],
            }

        out = await self.db.read(q)
        states: dict[str, int] = {}
        for d in self.devices.values():
            states[d.state] = states.get(d.state, 0) + 1
        out["devices"] = states
        out["coordinator_id"] = self.coordinator_id
        out["cluster_id"] = self.config.protocol.cluster_id
        out["uptime_s"] = (self.clock() - self.started_at) // 1000
        for name, hook in self.status_hooks.items():
            out[name] = await hook()
        return out


def _differing_chunks(
    db: sqlite_utils.Database, task_id: str, chunks: int, *, cap: int | None = MAX_CHALLENGE_INDICES
) -> list[int]:
    """Chunk indices on which the replicas of a task disagree (at most ``cap`` of them;
    with a cap, never empty: replicas whose digests differ are checked on chunk 0 at least)."""
    outputs = [
        proofs.split_output(bytes(r["output"]), chunks)
        for r in db.query("SELECT output FROM proofs WHERE task_id=?", [task_id])
    ]
    differing = [i for i in range(chunks) if len({o[i] for o in outputs}) > 1]
    if cap is None:
        return differing
    return differing[:cap] or [0]


def _proof_facts(p: dict[str, Any]) -> verification.ProofFacts:
    """The facts of one proof row of ``task_view`` that its verification depends on."""
    return verification.ProofFacts(
        output_digest=p["output_digest"],
        credit=p["credit"],
        check=p["spot_check"],
        in_block=p["block_height"] is not None,
        dispute=bool(p["dispute_check"]),
    )


def _oldest_unanchored_block(db: sqlite_utils.Database) -> int | None:
    row = next(
        iter(
            db.query(
                "SELECT min(b.timestamp) AS t FROM blocks b LEFT JOIN anchors a "
                "ON a.id = b.anchor_id WHERE a.state IS NULL OR a.state != 'final'"
            )
        ),
        None,
    )
    return None if row is None else row["t"]


@dataclass(frozen=True)
class _CheckedProof:
    """A proof that passed every check and waits for its commit."""

    pot: PoT
    device: Device
    output: bytes
    pot_json: str
    chunks: int


def _assignment_row(db: sqlite_utils.Database, task_id: str, device_id: str) -> Any:
    return next(
        iter(
            db.query(
                "SELECT a.state, a.message FROM assignments a WHERE a.task_id=? AND a.device_id=?",
                [task_id, device_id],
            )
        ),
        None,
    )


def _pending_expired(row: Any, since: int) -> bool:
    """Whether a device row is an identity that waited for approval since before ``since``."""
    return bool(
        row["state"] == "pending" and row["approved_at"] is None and row["enrolled_at"] < since
    )


def _plain_address(address: str | None) -> IpAddress | None:
    """An IP address without its zone, an IPv4-mapped IPv6 address as the IPv4 one."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _endpoint_host(endpoint: str) -> IpAddress | None:
    """The IP literal an endpoint URL names (None: a host name, or no valid URL)."""
    try:
        parts = urllib.parse.urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return None
    return _plain_address(parts.hostname)


def _item_error(exc: Exception) -> dict[str, Any]:
    """One batch item's refusal, in the shape and with the status a single request gets."""
    err = exc if isinstance(exc, ApiError) else ApiError.from_protocol(exc)  # type: ignore[arg-type]
    return {"status": err.status, **err.body()}
