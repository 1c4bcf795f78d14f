"""Spot-checks (SPEC §2.7, §14.3): challenge a device on chunks it could not predict, re-execute
them, and record the verdict.

The indices come from the hash of the block holding the receipt, derived when the
challenge is sent. A disputed replica is not challenged: the coordinator re-executes the
chunks on which the replicas differ (stored with the check) itself, so no replica can
hold its task up by keeping silent. Silence is failure: a challenge not answered with a
valid opening within ``timeout_s``, after ``max_attempts``, is ``unanswered`` and voids
the proof (docs/verification.md). Re-execution runs in a worker thread so a heavy chunk
never stalls the event loop.

A check the coordinator cannot re-execute because its own copy of the task's content (a
WASM module or input) is missing or damaged is nobody's fault but the coordinator's: it
uses up no attempt and blames no device. It waits for the operator to restore the
content, tried again later and later (``content_retry_delay_s``: ``retry_s`` doubled
each time, at most ``CONTENT_RETRY_MAX_S``), with one log line per try. How many tries a
check had is kept in memory: a restart starts it over at ``retry_s``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aeamc.shared import proofs
from aeamc.shared.errors import ProtocolError
from aeamc.shared.messages import Challenge, Opening, PoT, parse, parse_signed, sign
from aeamc.shared.tasks.wasm_kernel import MissingBlob

from .context import repeat
from .dbtx import Tx
from .logs import REQUEST_ID, task_request_id
from .peers import DeviceLink
from .service import Coordinator
from .store import proofs as proof_rows

log = logging.getLogger(__name__)

#: The longest a check waits between two tries while the coordinator lacks its content.
CONTENT_RETRY_MAX_S = 3600.0


def content_retry_delay_s(tries: int, base_s: float, cap_s: float = CONTENT_RETRY_MAX_S) -> float:
    """Seconds until the next try of a check whose content was missing at its ``tries``-th
    try in a row (1, 2, …): ``base_s``, doubled at each try, never more than ``cap_s``.

    Exponential, so a content store that stays broken costs a few tries and log lines an
    hour instead of one every round; capped, so a mended store is noticed within the cap.
    """
    if tries < 1:
        raise ValueError("tries counts from 1")
    return min(cap_s, base_s * 2.0 ** min(tries - 1, 64))


class SpotChecker:
    """The spot-check loop (see the module docstring): challenges devices through a
    ``DeviceLink`` and hands each outcome to the verdict service."""

    def __init__(self, coordinator: Coordinator, client: DeviceLink) -> None:
        self.c = coordinator
        self.client = client
        #: (task, device) → tries in a row that found the coordinator's content missing.
        self._content_tries: dict[tuple[str, str], int] = {}

    async def run(self) -> None:
        """Check until cancelled: a round at every wake-up or ``retry_s``. A failing round
        is logged and the next one runs; its checks are still due, so none is lost."""
        interval = self.c.config.spot_checks.retry_s
        await repeat(self.round, self.c.wake_spot_checks, interval, "spot-check round", log)

    async def round(self) -> int:
        """Challenge every check that is due now, concurrently; returns how many were due.
        Each ends with a verdict or a later retry time (``check``)."""
        now = self.c.clock()
        due = await self.c.db.read(lambda db: _due(db, now))
        if due:
            await asyncio.gather(*(self.check(row) for row in due))
        return len(due)

    async def check(self, row: dict[str, Any]) -> str | None:
        """Challenge one receipt; returns the verdict, or ``None`` if it will be retried."""
        token = REQUEST_ID.set(task_request_id(row["task_id"]))
        try:
            verdict = await self._check(row)
        finally:
            REQUEST_ID.reset(token)
        if verdict is not None:
            self._content_tries.pop((row["task_id"], row["device_id"]), None)
        return verdict

    async def _check(self, row: dict[str, Any]) -> str | None:
        if row["indices"] is not None:
            try:
                return await self._reexecute(row)
            except MissingBlob as exc:
                await self._wait_for_content(row, exc)
                return None
        device = self.c.devices.get(row["device_id"])
        if device is None or not device.endpoint:
            return await self._retry_or_give_up(row, "device has no endpoint")
        challenge = sign(
            Challenge,
            {
                "type": "challenge",
                "task_id": row["task_id"],
                "device_id": row["device_id"],
                "block_hash": bytes(row["block_hash"]).hex(),
                "indices": self.c.blocks.challenge_indices(
                    row["indices"], bytes(row["block_hash"]), row["task_id"], row["chunks"]
                ),
                "issued_at": self.c.clock(),
            },
            self.c.signer,
        )
        cfg = self.c.config.spot_checks
        reply = await self.client.post(
            device.endpoint,
            "/v1/challenges",
            challenge.to_dict(),
            request_id=task_request_id(row["task_id"]),
            timeout_s=cfg.timeout_s,
            max_bytes=cfg.max_answer_bytes,
        )
        if reply.status == 404 and reply.code == "unknown_task":
            # Over the device's own certificate: a refusal to open a proof it signed.
            await self.c.verdicts.record_verdict(
                row["task_id"],
                row["device_id"],
                proofs.UNANSWERED,
                "the device answered 'unknown task' for a proof it signed",
                refused=True,
            )
            return proofs.UNANSWERED
        if reply.status != 200:
            return await self._retry_or_give_up(row, reply.reason)
        try:
            opening = parse_signed(reply.body, Opening)
            pot = parse(PoT, json.loads(row["pot"]))
            kind = self.c.kinds.get(row["kind"])
            outputs = proofs.split_output(bytes(row["output"]), row["chunks"])
            result = await asyncio.to_thread(
                proofs.verify_opening,
                opening,
                challenge=challenge,
                pot=pot,
                outputs=outputs,
                kind=kind,
                params=json.loads(row["params"]),
                public_key=device.public_key,
            )
        except MissingBlob as exc:
            await self._wait_for_content(row, exc)
            return None
        except ProtocolError as exc:
            # A malformed or forged answer says nothing about the work: ask again later.
            return await self._retry_or_give_up(row, f"bad opening: {exc}")
        return await self._conclude(row, result, "spot-check")

    async def _reexecute(self, row: dict[str, Any]) -> str:
        """A disputed replica's check: the coordinator runs the chunks on which the
        replicas differ itself and compares; no answer from the device is needed."""
        kind = self.c.kinds.get(row["kind"])
        result = await asyncio.to_thread(
            proofs.reexecute_chunks,
            proofs.split_output(bytes(row["output"]), row["chunks"]),
            indices=json.loads(row["indices"]),
            kind=kind,
            params=json.loads(row["params"]),
            chunks=row["chunks"],
        )
        return await self._conclude(row, result, "dispute check")

    async def _conclude(
        self, row: dict[str, Any], result: proofs.SpotCheckResult, what: str
    ) -> str:
        """Record the verdict of ``what`` (a check of ``row``) and count its re-executed
        chunks; the verdict."""
        self.c.count("spot_check_chunks_reexecuted", result.reexecuted_chunks)
        await self.c.verdicts.record_verdict(
            row["task_id"],
            row["device_id"],
            result.verdict,
            result.detail,
            result.reexecuted_chunks,
        )
        task, device = row["task_id"], row["device_id"]
        log.info("%s %s/%s: %s (%s)", what, task, device, result.verdict, result.detail)
        return result.verdict

    async def _wait_for_content(self, row: dict[str, Any], exc: MissingBlob) -> None:
        """The coordinator's own content is missing or damaged: nothing the device did.
        The check stays pending without using up an attempt, and is tried again after
        ``content_retry_delay_s`` (module docstring), until the operator mends it."""
        task_id, device_id = row["task_id"], row["device_id"]
        tries = self._content_tries.get((task_id, device_id), 0) + 1
        self._content_tries[(task_id, device_id)] = tries
        delay_s = content_retry_delay_s(tries, self.c.config.spot_checks.retry_s)
        next_at = self.c.clock() + int(delay_s * 1000)
        why = f"waiting for the coordinator's content: {exc}"

        def txn(db: Tx) -> None:
            proof_rows.defer_check(
                db, task_id=task_id, device_id=device_id, next_at=next_at, why=why
            )

        await self.c.db.write(txn)
        log.error(
            "cannot re-execute %s (device %s not at fault): %s; try %d, next in %.0f s",
            task_id,
            device_id,
            exc,
            tries,
            delay_s,
        )

    async def _retry_or_give_up(self, row: dict[str, Any], why: str) -> str | None:
        cfg = self.c.config.spot_checks
        attempts = row["attempts"] + 1
        if attempts >= cfg.max_attempts:
            await self.c.verdicts.record_verdict(
                row["task_id"], row["device_id"], proofs.UNANSWERED, f"{attempts} attempts: {why}"
            )
            return proofs.UNANSWERED
        next_at = self.c.clock() + int(cfg.retry_s * 1000 * 2 ** (attempts - 1))

        def txn(db: Tx) -> None:
            proof_rows.retry_check(
                db,
                task_id=row["task_id"],
                device_id=row["device_id"],
                attempts=attempts,
                next_at=next_at,
                why=why,
            )

        await self.c.db.write(txn)
        return None


def _due(db: Tx, now: int) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT s.task_id, s.device_id, s.indices, s.attempts, b.hash AS block_hash, "
            "p.pot, p.output, t.kind, t.params, t.chunks FROM spot_checks s "
            "JOIN blocks b ON b.height = s.block_height "
            "JOIN proofs p ON p.task_id = s.task_id AND p.device_id = s.device_id "
            "JOIN tasks t ON t.task_id = s.task_id "
            "WHERE s.state = 'pending' AND s.next_attempt_at <= ? "
            "ORDER BY s.next_attempt_at LIMIT 32",
            [now],
        )
    )
