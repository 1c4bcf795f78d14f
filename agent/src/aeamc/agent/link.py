"""Enrollment and heartbeats: the agent's side of ``/v1/enroll`` and ``/v1/heartbeats``.

Enrollment is re-sent at every start (it is idempotent and refreshes the endpoint and
capabilities the coordinator holds), every ``enroll_retry_s`` while the device is pending,
and whenever the coordinator says ``not_enrolled``. The first answer pins the
coordinator's key (trust on first use, checked against ``coordinator_id`` and against the
mDNS advert); a later answer with another key is refused and nothing is sent to it.

Every enrollment carries a CSR for the device's TLS key; the answer's certificate is
what every later request presents (mutual TLS), and the first answer's CA is pinned
with the key (``tls.py``). A pending answer has no certificate (the coordinator issues
one only to an approved device): the agent sends its enrollment, CSR included, again
every ``enroll_retry_s`` until an answer is active and carries it. Enrollment is also
how the certificate is renewed: once two thirds of its lifetime have passed, the next
exchange is an enrollment, sent over the mutually authenticated connection. A refusal
of the certificate (missing, revoked) leads to an enrollment too, and a quarantined
device gets no new one.

Heartbeats carry a ``seq`` persisted before sending; a ``replay`` refusal moves the
counter past what the coordinator saw. Without an answer, the link backs off
exponentially (with jitter, capped) and tries again.

A heartbeat reports the work in hand (``work``: each held task's chunks done, SPEC §2.4)
only while the coordinator's latest answer said it reads it (``reads_work``): an older
coordinator would refuse the unknown member, and with it the heartbeat. Should one refuse
it anyway (a coordinator downgraded meanwhile), the link stops sending it and sends the
next heartbeat at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aeamc.shared.errors import ProtocolError
from aeamc.shared.flags import ADAPTIVE_HEARTBEAT
from aeamc.shared.identity import SigningKey, check_key_matches_id, parse_public_key
from aeamc.shared.messages import READS_WORK, Capabilities, Enroll, PoA, WorkReport, sign

from .backoff import Backoff, jittered
from .client import CertificateRefused, CoordinatorClient, Reply, Unreachable
from .config import AgentConfig
from .locator import CoordinatorLocator
from .monitor import EnergyMonitor
from .state import CoordinatorPin, SeqCounter
from .tls import AgentTls, TrustError

if TYPE_CHECKING:
    from aeamc.shared.runtime.pkcs11 import Ed25519HsmSigner

log = logging.getLogger(__name__)

ACTIVE, PENDING, QUARANTINED = "active", "pending", "quarantined"
UNKNOWN, NOT_ENROLLED, UNTRUSTED = "unknown", "not_enrolled", "untrusted_coordinator"
#: The device's data was erased at its owner's request: this identity takes no more part.
ERASED = "erased"
CLOCK_SKEW_WARNING_MS = 30_000
#: Feature flag (SPEC §10, set on the coordinator): while on, an idle device on battery
#: heartbeats half as often, and at the configured interval again once it has work.
#: Refusals of the client certificate: enroll (again) to get one.
CERTIFICATE_CODES = ("certificate_required", "certificate_revoked", "certificate_mismatch")
#: The slowed interval never exceeds this: with 10 % jitter, the default PoA window
#: (``eps.poa_window_s`` 120 s, ``eps.min_poas`` 2) still sees two heartbeats, so an idle
#: device stays eligible for the work that would bring it back to its normal pace.
ADAPTIVE_MAX_INTERVAL_S = 50.0


def longest_heartbeat_gap_s(interval_s: float, jitter: float) -> float:
    """The longest wait between two heartbeats: slowed by ``adaptive-heartbeat``, plus jitter.

    The client keeps its connection to the coordinator open at least this long (net.py),
    so that a heartbeat reuses the last one's TLS connection instead of a new handshake."""
    slowest = max(interval_s, min(interval_s * 2, ADAPTIVE_MAX_INTERVAL_S))
    return slowest * (1.0 + jitter)


def _about_work(field: object) -> bool:
    """Whether a refusal names the ``work`` member of a heartbeat, or a part of it."""
    return isinstance(field, str) and (field == "work" or field.startswith(("work.", "work[")))


class UntrustedCoordinator(Exception):
    """The coordinator's key differs from the pinned (or advertised) one."""


class CoordinatorLink:
    def __init__(
        self,
        *,
        config: AgentConfig,
        key: SigningKey | Ed25519HsmSigner,
        client: CoordinatorClient,
        locator: CoordinatorLocator,
        monitor: EnergyMonitor,
        seq: SeqCounter,
        capabilities: Callable[[], Capabilities],
        clock_ms: Callable[[], int],
        on_change: Callable[[], None] = lambda: None,
        uniform: Callable[[float, float], float] = random.uniform,
        has_work: Callable[[], bool] = lambda: False,
        on_heartbeat: Callable[[str], None] = lambda result: None,
        tls: AgentTls | None = None,
        work: Callable[[], Sequence[WorkReport]] = lambda: (),
    ) -> None:
        self.config = config
        self.key = key
        self.device_id = key.device_id
        self.client = client
        self.locator = locator
        self.monitor = monitor
        self.seq = seq
        self.capabilities = capabilities
        self.clock_ms = clock_ms
        self.on_change = on_change
        self._uniform = uniform
        self.has_work = has_work
        self.on_heartbeat = on_heartbeat
        self.work = work
        #: The coordinator's latest heartbeat answer said it reads ``work``.
        self.coordinator_reads_work = False
        self.pin = CoordinatorPin.load(config.state_dir)
        self.tls = tls or AgentTls(
            config.state_dir,
            key.device_id,
            coordinator_id=self.pin.coordinator_id if self.pin else None,
            expected_ca=config.coordinator_ca_fingerprint,
        )
        self.state = self.pin.state if self.pin else UNKNOWN
        self.flags: dict[str, bool] = {}
        self.server_time_ms: int | None = None
        self.last_heartbeat_ms: int | None = None
        self.last_error: str | None = None
        self.need_enroll = True
        #: The coordinator refused our certificate: the next enrollment asks for a new one.
        self.need_certificate = False
        self._warned_skew = False
        self.backoff = Backoff(config.retry_initial_s, config.retry_max_s, uniform=uniform)

    @property
    def accepting_work(self) -> bool:
        return self.state not in (QUARANTINED, UNTRUSTED, ERASED)

    async def run(self) -> None:
        while True:
            url = await self.locator.wait_url()
            try:
                delay = await self.exchange(url)
            except CertificateRefused as exc:
                delay = self.config.retry_max_s
                self._set_state(
                    UNTRUSTED,
                    f"the coordinator's TLS certificate does not verify against the pinned CA "
                    f"{self.tls.ca_fingerprint}: {exc}; refusing it",
                )
                log.error("%s", self.last_error)
            except Unreachable as exc:
                self.locator.unreachable(url)  # the next node, if several are configured
                delay = self.backoff.next_delay()
                self._set_error(f"coordinator unreachable: {exc}")
                log.warning("coordinator unreachable (%s); retrying in %.1f s", exc, delay)
            except UntrustedCoordinator as exc:
                delay = self.config.retry_max_s
                self._set_state(UNTRUSTED, str(exc))
                log.error("%s", exc)
            except Exception as exc:  # a bug must not end heartbeats for good
                delay = self.backoff.next_delay()
                self._set_error(f"internal error: {exc}")
                log.exception("heartbeat loop error; retrying in %.1f s", delay)
            if delay > 0:
                await self.locator.wait_changed(delay)

    async def exchange(self, url: str) -> float:
        """One enrollment or heartbeat; return how long to wait before the next."""
        if self.state == ERASED:
            log.warning(
                "this device was erased from its coordinator (aeamc-agent privacy forget); "
                "sending nothing. To take part again: aeamc-agent init --force"
            )
            return self.config.retry_max_s * 60
        if self.need_enroll or self.tls.renewal_due(self.clock_ms()):
            return await self.enroll(url)
        return await self.heartbeat(url)

    async def enroll(self, url: str) -> float:
        if self.tls.ca_pem is None:
            advert = self.locator.advert
            discovered = advert is not None and self.locator.fixed_url is None
            expected = self.tls.expected_ca_for(
                advert.ca_fingerprint if advert is not None and discovered else None
            )
            if expected is not None:
                await self._fetch_ca(url, expected)
        body: dict[str, Any] = {
            "type": "enroll",
            "public_key": self.key.public_key.hex(),
            "device_id": self.device_id,
            "timestamp": self.clock_ms(),
            "capabilities": self.capabilities().to_dict(),
        }
        if self.config.enrollment_token:
            body["token"] = self.config.enrollment_token
        # A certificate that is still good is kept: a restart does not make a new one (nor
        # load cryptography to make its request, tls.py).
        asks_certificate = self.need_certificate or self.tls.renewal_due(self.clock_ms())
        if asks_certificate:  # made by a helper process (tls.py): not on the event loop
            body["csr"] = await asyncio.to_thread(self.tls.csr_hex)
        message = sign(Enroll, body, self.key)
        reply = await self.client.post(url, "/v1/enroll", message.to_dict())
        self._measured(reply)
        if reply.status not in (200, 201, 202):
            return self._refused("enrollment", reply)
        checked = await asyncio.to_thread(self.tls.check_answer, reply.body)
        state = self._accept_enrollment(url, reply.body, asks_certificate, checked)
        self.need_certificate = False
        self.backoff.reset()
        self.last_error = None
        if state == PENDING:
            log.info("enrollment pending approval by the coordinator's operator")
            return self.config.enroll_retry_s
        self.need_enroll = False
        log.info("enrolled: %s", state)
        return 0.0

    async def _fetch_ca(self, url: str, expected: str) -> None:
        """Pin the CA by its known fingerprint before anything (a token) is sent."""
        reply = await self.client.send("GET", url, "/v1/ca", None)
        if reply.status != 200:
            raise Unreachable(f"{url}/v1/ca: HTTP {reply.status} {reply.error_code or ''}")
        try:
            self.tls.pin_ca(reply.body, expected)
        except TrustError as exc:
            raise UntrustedCoordinator(f"coordinator at {url}: {exc}; refusing it") from None

    async def heartbeat(self, url: str) -> float:
        body = {
            "type": "poa",
            "device_id": self.device_id,
            "timestamp": self.clock_ms(),
            "seq": self.seq.next(),  # durable before it leaves the device
            "telemetry": self.monitor.telemetry().to_dict(),
        }
        work = self.work() if self.coordinator_reads_work else ()
        if work:  # absent, never empty: a device without work sends what it always did
            body["work"] = [w.to_dict() for w in work]
        poa = sign(PoA, body, self.key)
        try:
            reply = await self.client.post(url, "/v1/heartbeats", poa.to_dict())
        except Unreachable:
            self.on_heartbeat("unreachable")
            raise
        self._measured(reply)
        if reply.status in (200, 202):
            self.on_heartbeat("accepted")
            self.backoff.reset()
            self.last_error = None
            self.last_heartbeat_ms = self.clock_ms()
            self._accept_heartbeat(reply.body)
            return self._interval()
        self.on_heartbeat("refused")
        if reply.status >= 500:
            # This node cannot serve now (its database out of its reach, overloaded): with
            # several nodes configured, the next one may.
            self.locator.unreachable(url)
        return self._refused("heartbeat", reply, sent_work=bool(work))

    def heartbeat_interval_s(self) -> float:
        """The configured interval, doubled by ``adaptive-heartbeat`` while idle on battery."""
        interval = self.config.heartbeat_interval_s
        idle = not self.has_work()
        if (
            self.flags.get(ADAPTIVE_HEARTBEAT)
            and idle
            and self.monitor.telemetry().charging is False
        ):
            return max(interval, min(interval * 2, ADAPTIVE_MAX_INTERVAL_S))
        return interval

    def _interval(self) -> float:
        return jittered(self.heartbeat_interval_s(), self.config.heartbeat_jitter, self._uniform)

    def _refused(self, what: str, reply: Reply, *, sent_work: bool = False) -> float:
        code = reply.error_code
        message = f"{what} refused: HTTP {reply.status} {code or ''} {reply.error_message}".strip()
        if reply.status >= 500 or reply.status in (408, 429):
            # A rate limit (429) or a coordinator at capacity (503) says how long: never
            # sooner, and with jitter, so a fleet shed at once does not return at once.
            wait = reply.retry_after_s
            delay = self.backoff.next_delay() if wait is None else self.backoff.after(wait)
            self._set_error(message)
            log.warning("%s; retrying in %.1f s", message, delay)
            return delay
        if code in CERTIFICATE_CODES:
            delay = self.backoff.next_delay()
            log.warning("%s; enrolling for a new certificate in %.1f s", message, delay)
            self.need_enroll = self.need_certificate = True
            self._set_error(message)
            return delay
        if sent_work and reply.status == 400 and _about_work(reply.error.get("field")):
            self.coordinator_reads_work = False
            log.info("the coordinator refuses the work in hand (%s); no longer sending it", code)
            return 0.0
        if code == NOT_ENROLLED:
            log.warning("the coordinator does not know this device; enrolling again")
            self.need_enroll = True
            self._set_state(NOT_ENROLLED)
            return 0.0
        if code == PENDING:
            self.need_enroll = True
            self._set_state(PENDING)
            return self.config.enroll_retry_s
        if code == ERASED:
            self._set_state(ERASED, "erased from the coordinator: this identity takes no part")
            log.warning("the coordinator erased this device: sending nothing more")
            return self._interval()
        if code == QUARANTINED:
            self._set_state(QUARANTINED, "quarantined by the coordinator: taking no work")
            log.warning("quarantined by the coordinator: taking no work")
            return self._interval()
        if code == "replay":
            last = reply.error.get("last_seq")
            seen = last if isinstance(last, int) and not isinstance(last, bool) else None
            # Without last_seq, jump to the clock in ms: above any counter used so far.
            self.seq.skip_past(seen if seen is not None else max(self.seq.last, self.clock_ms()))
            log.warning("heartbeat seq was replayed; continuing from %d", self.seq.last + 1)
            return 0.0
        delay = self.backoff.next_delay()
        self._set_error(message)
        log.error("%s; retrying in %.1f s", message, delay)
        return delay

    def _accept_enrollment(
        self,
        url: str,
        body: Any,
        asked_certificate: bool = True,
        checked: dict[str, Any] | None = None,
    ) -> str:
        if not isinstance(body, dict):
            raise UntrustedCoordinator("enrollment answer is not a JSON object")
        try:
            coordinator_id = body["coordinator_id"]
            public_key = parse_public_key(body["coordinator_public_key"], "coordinator_public_key")
            check_key_matches_id(public_key, coordinator_id)
        except (KeyError, TypeError, ProtocolError) as exc:
            raise UntrustedCoordinator(
                f"enrollment answer without a valid coordinator key: {exc}"
            ) from None
        if body.get("device_id") != self.device_id:
            raise UntrustedCoordinator("enrollment answer is for another device")
        state = body.get("state")
        if state not in (PENDING, ACTIVE, QUARANTINED):
            raise UntrustedCoordinator(f"enrollment answer with unknown state {state!r}")
        if self.pin is not None and (
            self.pin.coordinator_id != coordinator_id or self.pin.public_key != public_key.hex()
        ):
            raise UntrustedCoordinator(
                f"coordinator at {url} presents key {coordinator_id}, but this device is "
                f"pinned to {self.pin.coordinator_id}; refusing it. To move the device to "
                f"another coordinator, delete {self.config.state_dir / 'coordinator.json'}"
            )
        advert = self.locator.advert
        if (
            self.locator.fixed_url is None
            and advert is not None
            and (advert.coordinator_id != coordinator_id or advert.public_key != public_key.hex())
        ):
            raise UntrustedCoordinator("enrollment answer does not match the mDNS advert")
        discovered = advert is not None and self.locator.fixed_url is None
        try:
            self.tls.accept(
                body,
                coordinator_id,
                advert.ca_fingerprint if advert is not None and discovered else None,
                asked_certificate=asked_certificate,
                checked=checked,
                pending=state == PENDING,
            )
        except TrustError as exc:
            raise UntrustedCoordinator(
                f"coordinator at {url}: {exc}. To move the device to another coordinator, "
                f"delete {self.config.state_dir / 'coordinator.json'} and "
                f"{self.tls.ca_file}"
            ) from None
        cluster = body.get("cluster_id")
        self.pin = CoordinatorPin(
            coordinator_id=coordinator_id,
            public_key=public_key.hex(),
            cluster_id=cluster if isinstance(cluster, int) else None,
            state=state,
            url=url,
            ca_fingerprint=self.tls.ca_fingerprint,
        )
        self.pin.save(self.config.state_dir)
        self.locator.pin(coordinator_id)
        self._set_state(state)
        return str(state)  # one of the three states checked above

    def _accept_heartbeat(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        self.coordinator_reads_work = body.get(READS_WORK) is True
        flags = body.get("flags")
        if isinstance(flags, dict):
            self.flags = {k: v for k, v in flags.items() if isinstance(v, bool)}
        server_time = body.get("server_time_ms")
        if isinstance(server_time, int) and not isinstance(server_time, bool):
            self.server_time_ms = server_time
            skew_ms = abs(self.clock_ms() - server_time)
            if skew_ms > CLOCK_SKEW_WARNING_MS and not self._warned_skew:
                # Proofs older than the coordinator's window are refused as stale.
                log.warning("device clock is %.1f s off the coordinator's; fix NTP", skew_ms / 1000)
                self._warned_skew = True
        state = body.get("state")
        if isinstance(state, str):
            if state == PENDING:
                self.need_enroll = True
            self._set_state(state)
        self.on_change()

    def _measured(self, reply: Reply) -> None:
        self.monitor.latency_us = reply.rtt_us

    def _set_state(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            log.info("coordinator state: %s", state)
            self.state = state
            if self.pin is not None and state in (PENDING, ACTIVE, QUARANTINED, ERASED):
                self.pin = dataclasses.replace(self.pin, state=state)
                self.pin.save(self.config.state_dir)
        self.last_error = error
        self.on_change()

    def _set_error(self, error: str) -> None:
        self.last_error = error
        self.on_change()
