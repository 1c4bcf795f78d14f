"""The WebAssembly modules and inputs of this device's ``wasm`` tasks, by digest.

Before a ``wasm`` task runs, its module and input are fetched from the coordinator over
the device's own client certificate (the coordinator serves a device only the content of
a task it was given) and kept in ``<state_dir>/content/<digest>``. Bytes are kept only if
their SHA-256 is the digest the signed assignment names, so neither a tampered answer
nor a damaged file can make the device run something the client did not submit; every
read checks the digest again. Files are written whole (synced, then renamed), and the
oldest unused go once the cache holds more than its limit.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from aeamc.shared.runtime.files import atomic_write
from aeamc.shared.tasks.wasm_kernel import MissingBlob
from aeamc.shared.wasmabi import MAX_INPUT_BYTES, MAX_MODULE_BYTES

log = logging.getLogger(__name__)

CONTENT_DIR = "content"
#: The largest content of any kind a device accepts from the coordinator.
MAX_CONTENT_BYTES = max(MAX_MODULE_BYTES, MAX_INPUT_BYTES)

#: GET the content named by a digest: (HTTP status, body of at most the given size).
Fetch = Callable[[str, int], Awaitable[tuple[int, bytes]]]


class ContentUnavailable(Exception):
    """The content cannot be had now; ``lasting`` if asking again will not help (the
    coordinator does not give it to this device, or gives other bytes)."""

    def __init__(self, message: str, *, lasting: bool) -> None:
        super().__init__(message)
        self.lasting = lasting


class ContentCache:
    """Content by digest on disk: a ``BlobSource`` for the worker that runs kernels."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def _path(self, digest: str) -> Path:
        if len(digest) != 64 or not set(digest) <= set("0123456789abcdef"):
            raise MissingBlob(f"{digest!r} is not a content digest")
        return self.directory / digest

    def get(self, digest: str) -> bytes:
        """The bytes named ``digest``; ``MissingBlob`` if absent or not those bytes."""
        try:
            data = self._path(digest).read_bytes()
        except FileNotFoundError:
            raise MissingBlob(f"content {digest} is not here") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise MissingBlob(f"content {digest} is damaged on disk")
        return data

    def has(self, digest: str) -> bool:
        try:
            self.get(digest)
        except MissingBlob:
            return False
        return True

    async def ensure(self, digests: Iterable[str], fetch: Fetch) -> None:
        """Have every one of ``digests`` on disk, fetching what is missing with ``fetch``.

        Raises ContentUnavailable: ``lasting`` for a refusal (4xx) or bytes of another
        digest, passing for an unreachable coordinator or a 5xx."""
        for digest in digests:
            if self.has(digest):
                os.utime(self._path(digest))  # used now: the last to go
                continue
            status, data = await fetch(digest, MAX_CONTENT_BYTES)
            if status != 200:
                raise ContentUnavailable(
                    f"the coordinator answered {status} for content {digest}",
                    lasting=400 <= status < 500,
                )
            if hashlib.sha256(data).hexdigest() != digest:
                raise ContentUnavailable(
                    f"the coordinator sent other bytes for content {digest}", lasting=True
                )
            self._store(digest, data)
            log.info("content %s fetched (%d bytes)", digest, len(data))
        self.prune(keep=set(digests))

    def _store(self, digest: str, data: bytes) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self._path(digest), data, mode=0o600)

    def prune(self, keep: set[str]) -> int:
        """Drop the least recently used files (not ``keep``) until within the limit."""
        if not self.directory.exists():
            return 0
        files = sorted(
            (p for p in self.directory.iterdir() if p.is_file() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
        )
        total = sum(p.stat().st_size for p in files)
        dropped = 0
        for path in files:
            if total <= self.max_bytes:
                break
            if path.name in keep:
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            dropped += 1
        return dropped
