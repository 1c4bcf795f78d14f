"""``wasm``: a client's own kernel, a WebAssembly module run in the sandbox of
:mod:`aeamc.shared.wasm` (docs/workloads.md, SPEC §3.1).

The task names its module and its input by SHA-256, so the parameters stay small and a
device can tell that the bytes it was given are the ones the client submitted. Where the
bytes come from is the caller's: the coordinator reads its content store, a device the
cache it fills over its mutual-TLS connection before the chunk runs. Given the same bytes,
a chunk's output is the same on the device and in the coordinator's re-execution, like
every other kind's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ProtocolError
from ..schema import hex_bytes, integer, record
from ..wasmabi import MAX_FUEL, MAX_MEMORY_MB
from .base import check_params

if TYPE_CHECKING:
    from ..wasm import ModuleCache

NAME = "wasm"

_PARAMS = record(
    {
        "module": hex_bytes(32),
        "input": hex_bytes(32),
        "fuel": integer(1, MAX_FUEL),
        "memory_mb": integer(1, MAX_MEMORY_MB),
    },
    dict,
)


class MissingBlob(ProtocolError):
    """A module or input named by a task is not where the caller looked for it, or the
    bytes found there are not the ones named (``digest``: which content, when known).

    Nothing about the task is wrong: whoever holds the content can fetch or restore it
    and run the chunk again."""

    code = "missing_blob"

    def __init__(self, message: str, *, digest: str | None = None) -> None:
        super().__init__(message)
        self.digest = digest


class BlobSource(Protocol):
    """Content-addressed bytes: ``get`` returns the bytes held under ``digest`` (the
    kind checks that they are the bytes named, once per read), or raises
    :class:`MissingBlob` if it holds none."""

    def get(self, digest: str) -> bytes: ...


class WasmKernel:
    """The ``wasm`` kind over a source of modules and inputs.

    Every module and input is checked against its digest when read from the source, and
    only then compiled or run: bytes damaged on disk or swapped by a source raise
    :class:`MissingBlob` (with the digest), never give an output."""

    name = NAME

    def __init__(self, blobs: BlobSource, cache_size: int = 16) -> None:
        self._blobs = blobs
        self._cache_size = cache_size
        self._modules: ModuleCache | None = None  # wasmtime loads when a chunk first runs
        self._last_input: tuple[str, bytes] | None = None

    def _checked(self, digest: str, what: str) -> bytes:
        """The bytes named ``digest`` from the source, if they are those bytes."""
        data = self._blobs.get(digest)
        if hashlib.sha256(data).hexdigest() != digest:
            raise MissingBlob(
                f"the {what} bytes held under {digest} have another digest (damaged?)",
                digest=digest,
            )
        return data

    def _input(self, digest: str) -> bytes:
        """The input named ``digest``, checked once: the chunks of a task, run one after
        another, share it (the bytes are immutable, so the check holds for each)."""
        last = self._last_input
        if last is not None and last[0] == digest:
            return last[1]
        data = self._checked(digest, "input")
        self._last_input = (digest, data)
        return data

    def validate_params(self, params: Mapping[str, Any], chunks: int) -> None:
        check_params(_PARAMS, params)

    def run_chunk(self, params: Mapping[str, Any], index: int, chunks: int) -> bytes:
        """The chunk's output; :class:`~aeamc.shared.wasm.KernelFault` if the kernel
        stops without one (the same fault on every machine)."""
        from ..wasm import ModuleCache, run_chunk

        if self._modules is None:
            self._modules = ModuleCache(self._cache_size)
        digest = params["module"]
        module = self._modules.get(digest, lambda: self._checked(digest, "module"))
        data = self._input(params["input"])
        return run_chunk(
            module,
            data,
            index,
            chunks,
            fuel=params["fuel"],
            memory_bytes=params["memory_mb"] << 20,
        ).output
