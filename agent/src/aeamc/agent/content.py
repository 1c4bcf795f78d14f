"""The WebAssembly modules and inputs of this device's ``wasm`` tasks, by digest.

Before a ``wasm`` task runs, its module and input are fetched from the coordinator over
the device's own client certificate (the coordinator serves a device only the content of
a task it was given) and kept in ``<state_dir>/content/<digest>``. Bytes are kept only if
their SHA-256 is the digest the signed assignment names, so a tampered answer is never
stored. Files are written whole (synced, then renamed), and the oldest unused go once
the cache holds more than its limit.

A file already here is not read before a task (up to 16 MiB, every task): the worker's
``wasm`` kind checks the digest of every module and input it reads, once, and runs
nothing else. A file damaged on disk therefore surfaces there as ``MissingBlob``; the
runner then has it ``discard``-ed and the task prepared again, which fetches it anew.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
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
        """The bytes held under ``digest``, as they are on disk (``BlobSource``: the
        ``wasm`` kind checks them against the digest); ``MissingBlob`` if absent."""
        try:
            return self._path(digest).read_bytes()
        except FileNotFoundError:
            raise MissingBlob(f"content {digest} is not here", digest=digest) from None

    def has(self, digest: str) -> bool:
        """Whether a file that may be the content ``digest`` is here: a regular file no
        larger than any content. Not read, so not proven intact (see the module)."""
        try:
            found = self._path(digest).stat(follow_symlinks=False)
        except (FileNotFoundError, MissingBlob):
            return False
        return stat.S_ISREG(found.st_mode) and found.st_size <= MAX_CONTENT_BYTES

    def discard(self, digest: str) -> bool:
        """Delete the file held under ``digest`` (found damaged); whether there was one.
        The next ``ensure`` naming it fetches it again."""
        try:
            self._path(digest).unlink()
        except (FileNotFoundError, MissingBlob):
            return False
        log.warning("content %s is damaged on disk: deleted, to be fetched again", digest)
        return True

    async def ensure(self, digests: Iterable[str], fetch: Fetch) -> None:
        """Have every one of ``digests`` on disk, fetching what is missing with ``fetch``.

        What is fetched is kept only if it has the digest; what is here already is
        taken as it is (``has``), its digest checked where it is read.

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
