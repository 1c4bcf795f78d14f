"""Enrollment (SPEC §2.3, §15.2, §15.3): who may join, with which endpoint, and when it
gets a certificate."""

from __future__ import annotations

import ipaddress
import json
import logging
import urllib.parse
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from aeamc.shared.messages import (
    Enroll,
    check_fresh,
    parse_signed,
)
from aeamc.shared.refusals import Fault, Refusal

from .context import Context
from .dbtx import Tx
from .store import certificates
from .store import devices as device_rows
from .tokens import TokenService

log = logging.getLogger(__name__)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


ERASED_MESSAGE = (
    "this device identity was erased at its owner's request; to take part again, "
    "create a new identity (aeamc-agent init --force)"
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


class EnrollmentService:
    """Admits devices: signed enrollments, the endpoint rule, pending identities."""

    def __init__(self, ctx: Context, tokens: TokenService) -> None:
        self.ctx = ctx
        self.tokens = tokens

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
        now = self.ctx.clock()
        check_fresh(msg.timestamp, now, self.ctx.config.protocol.heartbeat_window_s * 1000)
        existing = self.ctx.devices.get(msg.device_id)
        if existing is not None and existing.quarantined:
            raise Refusal(Fault.FORBIDDEN, "quarantined", "this device is quarantined")
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
            cert, cert_row = self.ctx.tls().issue(bytes.fromhex(msg.csr), msg.device_id)
        elif msg.csr is not None:
            self.ctx.tls().check_request(bytes.fromhex(msg.csr))
        pending_since = now - self.ctx.config.enrollment.pending_ttl_s * 1000
        device_id = msg.device_id

        def txn(db: Tx) -> str:
            if device_rows.is_erased(db, msg.device_id):
                raise Refusal(Fault.FORBIDDEN, "erased", ERASED_MESSAGE)
            row = device_rows.enrollment_row(db, msg.device_id)
            state = row["state"] if row else "pending"
            expired = row is not None and _pending_expired(row, pending_since)
            if msg.token is not None and state == "pending":
                self.tokens.consume_enroll_token(db, msg.token, now)
                state = "active"
            elif state == "pending" and (row is None or expired):
                self._admit_pending(db, address, pending_since)
            if row is None:
                device_rows.insert_device(
                    db,
                    device_id=msg.device_id,
                    public_key=msg.public_key,
                    state=state,
                    capabilities=caps_json,
                    endpoint=caps.endpoint,
                    address=address,
                    now=now,
                )
            else:
                device_rows.reenroll_device(
                    db,
                    device_id=device_id,
                    old_state=row["state"],
                    state=state,
                    capabilities=caps_json,
                    endpoint=caps.endpoint,
                    address=address,
                    new_wait=expired,
                    now=now,
                )
            device_rows.forget_candidate(db, msg.device_id)
            if cert_row is not None and state in ("active", "stale"):
                certificates.insert_certificate(db, cert_row, now)
            return state

        state = await self.ctx.db.write(txn)
        self.ctx.devices.enrolled(
            msg.device_id,
            public_key=msg.public_key_bytes,
            state=state,
            capabilities=caps,
            endpoint=caps.endpoint,
            address=address,
            now=now,
            pending_since=pending_since,
        )
        self.ctx.count("enrollments")
        log.info("device %s enrolled (%s)", msg.device_id, state)
        self.ctx.wake_scheduler.set()
        answer: dict[str, Any] = {
            "device_id": msg.device_id,
            "state": state,
            "coordinator_id": self.ctx.coordinator_id,
            "coordinator_public_key": self.ctx.signer.public_key.hex(),
            "cluster_id": self.ctx.config.protocol.cluster_id,
        }
        if self.ctx.certs is not None:
            answer["ca_certificate"] = self.ctx.certs.ca.cert_pem
            answer["ca_fingerprint"] = self.ctx.certs.ca.fingerprint
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
        if host is not None and any(host in net for net in self.ctx.endpoint_networks):
            return
        seen = address or "unknown"
        raise Refusal(
            Fault.INVALID,
            "endpoint_not_allowed",
            f"the endpoint {endpoint} is not at the address this enrollment comes from "
            f"({seen}) nor in enrollment.endpoint_networks; advertise an IP address of "
            f"the interface that reaches the coordinator",
            field="capabilities.endpoint",
            address=seen,
        )

    def _admit_pending(self, db: Tx, address: str | None, pending_since: int) -> None:
        """Refuse one more identity waiting for approval past the caps (in the caller's
        write transaction, so concurrent enrollments cannot overshoot them)."""
        e = self.ctx.config.enrollment
        waiting, here = device_rows.waiting_for_approval(db, address, pending_since)
        if waiting >= e.max_pending:
            raise Refusal(
                Fault.TOO_MANY,
                "too_many_pending",
                f"{waiting} devices already wait for approval (enrollment.max_pending); "
                "enroll with a token, or ask the operator to approve or wait",
            )
        if here >= e.max_pending_per_address:
            raise Refusal(
                Fault.TOO_MANY,
                "too_many_pending",
                f"{here} devices from {address} already wait for approval "
                "(enrollment.max_pending_per_address); enroll with a token",
            )

    async def expire_pending(self) -> int:
        """Forget identities that waited for approval longer than ``pending_ttl_s``
        (the maintenance loop); how many. Any certificate one holds is revoked."""
        since = self.ctx.clock() - self.ctx.config.enrollment.pending_ttl_s * 1000
        now = self.ctx.clock()

        def txn(db: Tx) -> tuple[list[str], list[str]]:
            gone = device_rows.expired_pending(db, since)
            revoked: list[str] = []
            for device_id in gone:
                revoked += certificates.revoke_device(db, device_id, now, "pending expired")
                device_rows.delete_device(db, device_id)
            return gone, revoked

        gone, revoked = await self.ctx.db.write(txn)
        if self.ctx.certs is not None:
            self.ctx.certs.revoked_now(revoked)
        for device_id in gone:
            self.ctx.devices.remove(device_id, only_state="pending")
        if gone:
            log.info("forgot %d device(s) not approved within the pending TTL", len(gone))
        return len(gone)
