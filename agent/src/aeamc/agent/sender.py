"""Delivers the outbox to ``POST /v1/proofs``, oldest first, until it is empty.

What each answer means for the queued proof:

==========================================  =================================================
202 (or 200/201)                            stored by the coordinator: delete
409 ``duplicate``                           it already had it: delete
400 ``stale_message``                       re-sign the same commitment with a fresh
                                            timestamp (same nonce, trace root, checkpoint),
                                            store it in place, send again
410 (``assignment_expired``,                refused for good: move to ``rejected/`` with the
``unknown_assignment``), other 4xx          reason
403 ``not_enrolled`` / ``pending``,         keep; wait for enrollment (which also renews
401/403 ``certificate_*``                   the certificate), retry with backoff
5xx, 408, 429, no answer                    keep; retry with backoff (a 429 or 503 with
                                            ``Retry-After``: not sooner than it says)
==========================================  =================================================

Delivery is in order: a proof that cannot be delivered now blocks the ones behind it, so
the coordinator sees proofs in the order the tasks finished.

When several proofs wait (after an outage, or on a busy device) they go together to
``POST /v1/proofs/batch`` — one request, one commit on the coordinator — in queue order,
and each gets its own answer, handled exactly as the table says. A coordinator without
that endpoint (404/405) gets them one by one from then on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from aeamc.shared.errors import ProtocolError
from aeamc.shared.identity import Signer
from aeamc.shared.messages import PoT, sign
from aeamc.shared.runtime.logs import REQUEST_ID
from aeamc.shared.runtime.waiting import wait_set

from . import logs
from .backoff import Backoff
from .client import CoordinatorClient, Reply, Unreachable
from .locator import CoordinatorLocator
from .outbox import Entry, Outbox, QueuedProof

log = logging.getLogger(__name__)

DELIVERED, RETRY, REJECTED, RESIGNED = "delivered", "retry", "rejected", "resigned"
UNBATCHED = "unbatched"
_RETRY_STATUSES = (408, 429)
#: Not refusals of the proof: the link re-enrolls (for a new certificate, too), then it goes.
_WAIT_CODES = (
    "not_enrolled",
    "pending",
    "quarantined",
    "certificate_required",
    "certificate_revoked",
    "certificate_mismatch",
)
#: Most proofs, and bytes of them on disk, sent in one batch (the coordinator takes 256
#: and, by default, a 16 MiB body; hex doubles the output bytes on the wire).
MAX_BATCH = 64
MAX_BATCH_BYTES = 4 * 1024 * 1024


class OutboxSender:
    def __init__(
        self,
        *,
        outbox: Outbox,
        client: CoordinatorClient,
        locator: CoordinatorLocator,
        signer: Signer,
        clock_ms: Callable[[], int],
        backoff: Backoff,
        on_change: Callable[[], None] = lambda: None,
        on_latency: Callable[[int], None] = lambda rtt: None,
        on_result: Callable[[str], None] = lambda result: None,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.locator = locator
        self.signer = signer
        self.clock_ms = clock_ms
        self.backoff = backoff
        self.on_change = on_change
        self.on_latency = on_latency
        self.on_result = on_result
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._just_resigned: Path | None = None
        #: ``False`` once the coordinator has shown it has no batch endpoint.
        self.batch_supported = True
        #: The longest ``Retry-After`` of the answers since the last delivery attempt.
        self._retry_after: int | None = None

    def wake(self) -> None:
        """Something was queued, or the coordinator is back: try now."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            delay: float | None = None
            try:
                if self.outbox.entries():
                    url = await self.locator.wait_url()
                    delay = await self.deliver_all(url)
            except Exception as exc:  # a bug must not stop deliveries for good
                delay = self.backoff.next_delay()
                log.exception("outbox delivery error; retrying in %.1f s", delay)
                self.last_error = f"internal error: {exc}"
            await self._sleep(delay)

    async def deliver_all(self, url: str) -> float | None:
        """Send queued proofs in order; ``None`` when empty, else the backoff delay."""
        while True:
            entries = self.outbox.entries()
            if not entries:
                return None
            if len(entries) > 1 and self.batch_supported:
                result = await self.deliver_batch(url, _batch(entries))
            else:
                result = await self.deliver(url, entries[0])
            if result == RETRY:
                wait, self._retry_after = self._retry_after, None
                return self.backoff.next_delay() if wait is None else self.backoff.after(wait)
            self._retry_after = None
            self.backoff.reset()

    async def deliver_batch(self, url: str, entries: list[Entry]) -> str:
        """Send ``entries`` in one request; ``RETRY`` if any of them must wait."""
        loaded: list[tuple[Entry, QueuedProof]] = []
        for entry in entries:
            proof = self._load(entry)
            if proof is not None:
                loaded.append((entry, proof))
        if not loaded:
            return REJECTED
        body = {"proofs": [proof.body() for _, proof in loaded]}
        try:
            reply = await self.client.post(url, "/v1/proofs/batch", body)
        except Unreachable as exc:
            self.locator.unreachable(url)  # the next node, if several are configured
            self._error(f"{len(loaded)} proofs: coordinator unreachable ({exc})")
            for _ in loaded:
                self.on_result(RETRY)
            return RETRY
        self.on_latency(reply.rtt_us)
        results = reply.body.get("results") if isinstance(reply.body, dict) else None
        if reply.status in (404, 405):
            log.info("the coordinator takes no proof batches; sending one by one")
            self.batch_supported = False
            return UNBATCHED  # nothing happened to the proofs: go round again
        if reply.status != 200 or not isinstance(results, list) or len(results) != len(loaded):
            if reply.status >= 500 or reply.status in _RETRY_STATUSES:
                self._error(f"{len(loaded)} proofs: HTTP {reply.status}")
                self._note_retry_after(reply)
                return RETRY
            # Not a batch answer (a proxy, a limit): let single requests say what is wrong.
            return await self.deliver(url, loaded[0][0])
        outcome = DELIVERED
        for (entry, proof), item in zip(loaded, results, strict=True):
            status = item.get("status") if isinstance(item, dict) else None
            answer = item.get("body", item) if isinstance(item, dict) else None
            if not isinstance(status, int):
                status, answer = 502, None  # a malformed answer: keep it, try again later
            rid = logs.task_request_id(entry.task_id)
            token = REQUEST_ID.set(rid)
            try:
                done = self._judge(entry, proof, Reply(status, answer, reply.rtt_us))
            finally:
                REQUEST_ID.reset(token)
            if done == RETRY:
                outcome = RETRY
        return outcome

    async def deliver(self, url: str, entry: Entry) -> str:
        rid = logs.task_request_id(entry.task_id)
        token = REQUEST_ID.set(rid)
        try:
            return await self._deliver(url, entry, rid)
        finally:
            REQUEST_ID.reset(token)

    def _load(self, entry: Entry) -> QueuedProof | None:
        try:
            return self.outbox.load(entry)
        except (OSError, ValueError, KeyError, TypeError, ProtocolError) as exc:
            # Damaged on disk (the write itself is atomic): keep it for the owner.
            target = self.outbox.reject(entry, status=0, code="unreadable", message=str(exc))
            log.error("outbox entry %s is unreadable (%s); moved to %s", entry.path, exc, target)
            self.on_result(REJECTED)
            return None

    async def _deliver(self, url: str, entry: Entry, rid: str) -> str:
        proof = self._load(entry)
        if proof is None:
            return REJECTED
        try:
            reply = await self.client.post(url, "/v1/proofs", proof.body(), request_id=rid)
        except Unreachable as exc:
            self.locator.unreachable(url)  # the next node, if several are configured
            self._error(f"proof {entry.task_id}: coordinator unreachable ({exc})")
            self.on_result(RETRY)
            return RETRY
        self.on_latency(reply.rtt_us)
        return self._judge(entry, proof, reply)

    def _judge(self, entry: Entry, proof: QueuedProof, reply: Reply) -> str:
        """What the coordinator's answer about one proof means for it (the table above)."""
        result = self._judged(entry, proof, reply)
        self.on_result(result)
        return result

    def _judged(self, entry: Entry, proof: QueuedProof, reply: Reply) -> str:
        code = reply.error_code
        if reply.status in (200, 201, 202) or (reply.status == 409 and code == "duplicate"):
            self.outbox.remove(entry)
            log.info("proof %s delivered%s", entry.task_id, " (duplicate)" if code else "")
            self.last_error = None
            self.on_change()
            return DELIVERED
        if reply.status == 400 and code == "stale_message":
            if self._just_resigned == entry.path:
                # Fresh from our clock and still stale: the clocks disagree; back off.
                self._just_resigned = None
                self._error(f"proof {entry.task_id}: stale even when freshly signed")
                return RETRY
            self._just_resigned = entry.path
            return self._resign(entry, proof)
        self._just_resigned = None
        if reply.status >= 500 or reply.status in _RETRY_STATUSES or code in _WAIT_CODES:
            self._error(f"proof {entry.task_id}: HTTP {reply.status} {code or ''}".rstrip())
            self._note_retry_after(reply)
            return RETRY
        return self._reject(entry, reply)

    def _note_retry_after(self, reply: Reply) -> None:
        """Keep a 429's or 503's ``Retry-After``: the next attempt waits at least that."""
        wait = reply.retry_after_s
        if wait is not None and reply.status in (429, 503):
            self._retry_after = max(wait, self._retry_after or 0)

    async def _sleep(self, delay: float | None) -> None:
        await wait_set(self._wake, delay)

    def _resign(self, entry: Entry, proof: QueuedProof) -> str:
        body = proof.pot.to_dict()
        old = body["timestamp"]
        body["timestamp"] = self.clock_ms()
        if body["timestamp"] <= old:
            # Re-signing would not make it any fresher: our clock or theirs is off.
            self._error(f"proof {entry.task_id}: stale, and the device clock has not moved")
            return RETRY
        pot = sign(PoT, body, self.signer)
        self.outbox.replace(entry, QueuedProof(pot, proof.output, proof.queued_at_ms))
        log.info("proof %s was stale; re-signed with a fresh timestamp", entry.task_id)
        return RESIGNED

    def _reject(self, entry: Entry, reply: Reply) -> str:
        code = reply.error_code or f"http_{reply.status}"
        message = reply.error_message or "no message"
        target = self.outbox.reject(entry, status=reply.status, code=code, message=message)
        log.error(
            "proof %s refused by the coordinator (HTTP %d %s: %s); kept in %s",
            entry.task_id,
            reply.status,
            code,
            message,
            target,
        )
        self.on_change()
        return REJECTED

    def _error(self, message: str) -> None:
        self.last_error = message
        log.warning("%s", message)
        self.on_change()


def _batch(entries: list[Entry]) -> list[Entry]:
    """The oldest entries, within the batch limits (always at least one)."""
    out: list[Entry] = []
    size = 0
    for entry in entries[:MAX_BATCH]:
        if out and size + entry.size > MAX_BATCH_BYTES:
            break
        out.append(entry)
        size += entry.size
    return out
