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

from collections.abc import Callable, Mapping
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
    """A module or input named by a task is not where the caller looked for it."""

    code = "missing_blob"


class BlobSource(Protocol):
    """Content-addressed bytes: ``get`` returns the bytes whose SHA-256 is ``digest``
    (checked by the caller), or raises :class:`MissingBlob`."""

    def get(self, digest: str) -> bytes: ...


class WasmKernel:
    """The ``wasm`` kind over a source of modules and inputs."""

    name = NAME

    def __init__(self, blobs: BlobSource, cache_size: int = 16) -> None:
        self._blobs = blobs
        self._cache_size = cache_size
        self._modules: ModuleCache | None = None  # wasmtime loads when a chunk first runs
        self._last_input: tuple[str, bytes] | None = None

    def _input(self, digest: str, digest_of: Callable[[bytes], str]) -> bytes:
        """The input named ``digest``, checked once: the chunks of a task, run one after
        another, share it (the bytes are immutable, so the check holds for each)."""
        last = self._last_input
        if last is not None and last[0] == digest:
            return last[1]
        data = self._blobs.get(digest)
        if digest_of(data) != digest:
            raise MissingBlob(f"the input bytes do not have the digest {digest}")
        self._last_input = (digest, data)
        return data

    def validate_params(self, params: Mapping[str, Any], chunks: int) -> None:
        check_params(_PARAMS, params)

    def run_chunk(self, params: Mapping[str, Any], index: int, chunks: int) -> bytes:
        """The chunk's output; :class:`~aeamc.shared.wasm.KernelFault` if the kernel
        stops without one (the same fault on every machine)."""
        from ..wasm import ModuleCache, module_digest, run_chunk

        if self._modules is None:
            self._modules = ModuleCache(self._cache_size)
        module = self._modules.get(params["module"], lambda: self._blobs.get(params["module"]))
        data = self._input(params["input"], module_digest)
        return run_chunk(
            module,
            data,
            index,
            chunks,
            fuel=params["fuel"],
            memory_bytes=params["memory_mb"] << 20,
        ).output
