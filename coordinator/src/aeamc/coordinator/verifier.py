"""Ed25519 signature checks off the event loop, in batches.

libsodium releases the GIL while it verifies, so on a thread of its own the check runs
on another core while the event loop parses the next request. Only the C call moves:
the canonical bytes are built on the loop (pure Python gains nothing from a thread), and
a whole batch of results returns to the loop in one wake-up, so a busy coordinator pays
one thread hand-off per batch rather than per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from typing import Any

from aeamc.shared.canonical import signing_input
from aeamc.shared.errors import ProtocolError
from aeamc.shared.identity import check_key_matches_id, signature_bytes, verify_raw

_Job = tuple[bytes, bytes, bytes, "asyncio.Future[None]", asyncio.AbstractEventLoop]
_MAX_BATCH = 256


class SignatureVerifier:
    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ed25519", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    async def verify(
        self, message: Any, public_key: bytes, *, signer_id: str | None = None
    ) -> None:
        """``message.verify(public_key, signer_id=...)``, with the Ed25519 check off-loop."""
        if self._thread is None:  # not started (tools, tests): verify in place
            message.verify(public_key, signer_id=signer_id)
            return
        if signer_id is not None:
            check_key_matches_id(public_key, signer_id)
        body = message.to_dict()
        signature = signature_bytes(body)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._jobs.put((public_key, signing_input(body), signature, future, loop))
        await future

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < _MAX_BATCH:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._jobs.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            outcomes: dict[asyncio.AbstractEventLoop, list[tuple[Any, Exception | None]]] = {}
            for key, data, signature, future, loop in batch:
                try:
                    verify_raw(key, data, signature)
                    err: Exception | None = None
                except ProtocolError as exc:
                    err = exc
                outcomes.setdefault(loop, []).append((future, err))
            for loop, results in outcomes.items():
                with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                    loop.call_soon_threadsafe(_settle, results)


def _settle(results: list[tuple[asyncio.Future[None], Exception | None]]) -> None:
    for future, err in results:
        if future.done():
            continue
        if err is None:
            future.set_result(None)
        else:
            future.set_exception(err)
