"""Clients' content: WebAssembly modules and task inputs, named by their SHA-256
(docs/workloads.md).

A client uploads a module or an input and gets its digest; a ``wasm`` task names both by
digest. The bytes are written to ``<state_dir>/content/<digest>`` (owner-only, synced,
renamed into place) *before* the row that records them is committed, so a recorded blob
always has its file and an acknowledged upload survives a crash; a file left by a crash
before its commit is just uploaded again. A module is checked when it is uploaded — it
must compile under the sandbox's deterministic engine, import nothing and export the ABI
(``aeamc.shared.wasm.check_module``) — so a task never names a module no device can run.

Who may read what: a client the content it uploaded (and may name only that in its
tasks), the operator everything, and a device only the module and input of a WASM task it
was given. The digest is not a secret and never grants access by itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aeamc.shared.refusals import Fault, Refusal, not_found
from aeamc.shared.runtime.files import atomic_write
from aeamc.shared.tasks.wasm_kernel import MissingBlob, WasmKernel
from aeamc.shared.wasm import ModuleRefused, check_module
from aeamc.shared.wasmabi import MAX_INPUT_BYTES, MAX_MODULE_BYTES

from .store import blobs as blob_rows

if TYPE_CHECKING:
    from .context import Context

log = logging.getLogger(__name__)

#: The largest upload of each kind.
LIMITS = {"module": MAX_MODULE_BYTES, "input": MAX_INPUT_BYTES}
_HEX64 = frozenset("0123456789abcdef")


def is_digest(value: object) -> bool:
    """Whether ``value`` is a lowercase hex SHA-256 (the only names content has)."""
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX64


class ContentService:
    """Uploads, reads and access checks of clients' content; the source of the
    coordinator's ``wasm`` kind, so spot-checks re-execute from the same bytes."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        if "wasm" not in ctx.kinds:
            ctx.kinds.register(WasmKernel(self))

    @property
    def directory(self) -> Path:
        shared = self.ctx.config.cluster.content_dir
        return Path(shared) if shared else self.ctx.config.state_dir / "content"

    def _path(self, digest: str) -> Path:
        return self.directory / digest

    # -- uploads ----------------------------------------------------------------------------

    async def add(self, kind: str, data: bytes, owner: str) -> dict[str, Any]:
        """Store ``data`` as a ``kind`` ("module" or "input") of ``owner``; its digest.

        Refused, with nothing stored: a module the sandbox would not run (the reason
        says why), anything over its kind's limit, the same bytes already held as the
        other kind. Uploading what is already held only records ``owner`` as its owner.
        """
        if len(data) > LIMITS[kind]:
            raise Refusal(
                Fault.TOO_LARGE, "body_too_large", f"a {kind} may be at most {LIMITS[kind]} bytes"
            )
        digest = hashlib.sha256(data).hexdigest()
        if kind == "module":
            try:
                await asyncio.to_thread(check_module, data)
            except ModuleRefused as exc:
                raise Refusal(Fault.INVALID, "bad_module", exc.message) from None
        existing = await self.ctx.db.read(lambda db: blob_rows.blob_row(db, digest))
        if existing is not None and existing["kind"] != kind:
            raise Refusal(
                Fault.CONFLICT,
                "conflict",
                f"these bytes are already held as an {existing['kind']}",
            )
        if existing is None:
            await asyncio.to_thread(self._write_file, digest, data)
        now = self.ctx.clock()
        new = await self.ctx.db.write(
            lambda db: blob_rows.add_blob(db, digest, kind, len(data), owner=owner, now=now)
        )
        if new:
            self.ctx.count(f"{kind}s_uploaded")
            log.info("%s %s stored (%d bytes)", kind, digest, len(data))
        return {"digest": digest, "kind": kind, "size": len(data), "created": new}

    def _write_file(self, digest: str, data: bytes) -> None:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        atomic_write(self._path(digest), data, mode=0o600)

    # -- reads ------------------------------------------------------------------------------

    def get(self, digest: str) -> bytes:
        """The bytes named ``digest``, checked against it (``BlobSource`` of the ``wasm``
        kind: the coordinator re-executes from these). MissingBlob if absent or damaged."""
        try:
            data = self._path(digest).read_bytes() if is_digest(digest) else None
        except FileNotFoundError:
            data = None
        if data is None or hashlib.sha256(data).hexdigest() != digest:
            raise MissingBlob(f"content {digest} is not held (or its file is damaged)")
        return data

    async def read_for_client(self, digest: str, owner: str | None) -> bytes:
        """The content for a client that uploaded it (``owner``), or the operator (None)."""
        await self._visible(digest, owner)
        return await asyncio.to_thread(self.get, digest)

    async def read_for_device(self, digest: str, device_id: str) -> bytes:
        """The content for a device that was given a WASM task naming it."""
        if not is_digest(digest) or not await self.ctx.db.read(
            lambda db: blob_rows.assigned_digest(db, device_id, digest)
        ):
            raise not_found(f"content {digest}")
        return await asyncio.to_thread(self.get, digest)

    async def _visible(self, digest: str, owner: str | None) -> dict[str, Any]:
        def look(db: Any) -> dict[str, Any] | None:
            row = blob_rows.blob_row(db, digest)
            if row is None or (owner is not None and not blob_rows.owns(db, digest, owner)):
                return None
            return row

        row = await self.ctx.db.read(look) if is_digest(digest) else None
        if row is None:
            raise not_found(f"content {digest}")  # never says whether another client has it
        return row

    # -- tasks ------------------------------------------------------------------------------

    async def check_task(self, params: dict[str, Any], owner: str | None) -> int:
        """A ``wasm`` task may only name a module and an input its owner uploaded, each of
        the right kind: 404 ``unknown_content`` otherwise (what is not yours is not found).
        Returns the module's size, which only devices that allow it may be given."""
        sizes: dict[str, int] = {}
        for field, kind in (("module", "module"), ("input", "input")):
            try:
                row = await self._visible(params[field], owner)
            except Refusal:
                raise Refusal(
                    Fault.NOT_FOUND,
                    "unknown_content",
                    f"params.{field}: no {kind} {params[field]} was uploaded by this client",
                    field=f"params.{field}",
                ) from None
            if row["kind"] != kind:
                raise Refusal(
                    Fault.NOT_FOUND,
                    "unknown_content",
                    f"params.{field}: {params[field]} is an {row['kind']}, not an {kind}",
                    field=f"params.{field}",
                )
            sizes[field] = int(row["size"])
        return sizes["module"]
