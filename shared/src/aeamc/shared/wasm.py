"""The sandbox for clients' WebAssembly kernels (docs/workloads.md, SPEC §3.1).

A kernel is a WebAssembly module that computes one chunk of a task from the task's input
bytes and the chunk's index. The device runs it to do the work and the coordinator runs the
very same bytes to re-execute an opened chunk, so everything here is chosen so that the
output is a function of (module, input, index, count) alone, on any machine:

- **No imports at all.** A kernel cannot read a clock, a random source, a file, the network
  or anything of the host; it sees only the input the host copies into its memory.
- **Deterministic engine.** NaN results are canonicalised (the one place IEEE 754 lets
  hardware differ), and the non-deterministic proposals are off: threads and shared memory,
  relaxed SIMD, and everything beyond the core, SIMD, bulk-memory, multi-value and
  reference-types features that compilers emit.
- **Fuel, not time.** Every instruction costs fuel; a chunk gets a fixed budget, so an
  endless loop ends at the same instruction on every machine and the cost of a chunk is
  a number both sides agree on. Wall clock never decides anything.
- **A fresh instance per chunk**, with a memory cap: nothing a chunk leaves behind can
  reach the next one, and a memory bomb ends at the cap, not in the device's swap.

The ABI (all integers i32): the module exports ``memory``; ``aeamc_input(len)`` returns
where the host writes ``len`` input bytes (0: too large); ``aeamc_run(index, count, len)``
computes the chunk and returns its output length (negative: the kernel refuses the input);
``aeamc_output()`` returns where the output starts.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from threading import Lock

import wasmtime

from .errors import ChunkFault, ProtocolError
from .wasmabi import MAX_MODULE_BYTES, MAX_OUTPUT_BYTES

#: WebAssembly's page size: memory limits are whole pages.
PAGE = 65536

_I32 = wasmtime.ValType.i32()
#: The exports a kernel must have (and the only ones it may have), with their types.
EXPORTS: dict[str, tuple[tuple[wasmtime.ValType, ...], tuple[wasmtime.ValType, ...]] | None] = {
    "memory": None,
    "aeamc_input": ((_I32,), (_I32,)),
    "aeamc_run": ((_I32, _I32, _I32), (_I32,)),
    "aeamc_output": ((), (_I32,)),
}


class ModuleRefused(ProtocolError):
    """Bytes that are not a kernel this sandbox runs; the message says what to change."""

    code = "bad_module"


class KernelFault(ChunkFault):
    """A kernel stopped without an output, the same way on every machine.

    ``code`` says how: ``out_of_fuel``, ``memory_limit``, ``trap`` (an illegal operation,
    e.g. an out-of-bounds access or ``unreachable``), ``refused`` (``aeamc_run`` returned
    a negative number), ``bad_output`` (beyond the memory or the size limit) or
    ``input_too_large`` (``aeamc_input`` had no room for the input).
    """

    code = "kernel_fault"


@dataclass(frozen=True)
class ChunkRun:
    """What one chunk produced, and the fuel it burned (its deterministic cost)."""

    output: bytes
    fuel_used: int


def _config() -> wasmtime.Config:
    c = wasmtime.Config()
    c.consume_fuel = True
    c.cranelift_nan_canonicalization = True
    c.wasm_threads = False
    c.shared_memory = False
    c.wasm_relaxed_simd = False
    c.wasm_simd = True
    c.wasm_bulk_memory = True
    c.wasm_multi_value = True
    c.wasm_reference_types = True
    for proposal in (
        "wasm_multi_memory",
        "wasm_memory64",
        "wasm_gc",
        "wasm_function_references",
        "wasm_exceptions",
        "wasm_tail_call",
        "wasm_stack_switching",
        "wasm_wide_arithmetic",
        "wasm_custom_page_sizes",
        "wasm_component_model",
    ):
        setattr(c, proposal, False)
    # The native stack a kernel may use: deep recursion traps (a `trap` fault).
    c.max_wasm_stack = 1 << 20
    c.parallel_compilation = False
    return c


#: Names the engine and its settings: compiled modules are only valid for the same one.
ENGINE_PROFILE = f"wasmtime-{version('wasmtime')}/aeamc-det-1"


@functools.cache
def engine() -> wasmtime.Engine:
    """The one engine of this process, configured for determinism (module docstring)."""
    return wasmtime.Engine(_config())


def module_digest(data: bytes) -> str:
    """A module's (and an input's) name: the hex SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def _functype(t: object) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    if not isinstance(t, wasmtime.FuncType):
        return None
    return tuple(map(str, t.params)), tuple(map(str, t.results))


def check_module(data: bytes) -> wasmtime.Module:
    """Compile ``data`` as a kernel, or refuse it with the reason (ModuleRefused).

    Refused: anything over :data:`MAX_MODULE_BYTES`; bytes that are not valid WebAssembly
    under the deterministic engine (a threads or relaxed-SIMD instruction is invalid
    here); any import; an export other than the ABI's, or one of the wrong type.
    """
    if len(data) > MAX_MODULE_BYTES:
        raise ModuleRefused(f"the module is {len(data)} bytes; at most {MAX_MODULE_BYTES}")
    try:
        module = wasmtime.Module(engine(), data)
    except wasmtime.WasmtimeError as exc:
        # The innermost cause says what is wrong ("threads support is not enabled").
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        cause = re.sub(r"^\d+: ", "", lines[-1]) if lines else "invalid"
        raise ModuleRefused(f"not a valid module for this sandbox: {cause}") from None
    imports = [f"{i.module}.{i.name}" for i in module.imports]
    if imports:
        shown = ", ".join(imports[:5]) + (" …" if len(imports) > 5 else "")
        raise ModuleRefused(
            f"a kernel may import nothing; this one imports {shown} "
            "(build with -nostdlib, without WASI)"
        )
    exports = {e.name: e.type for e in module.exports}
    extra = sorted(set(exports) - set(EXPORTS))
    if extra:
        raise ModuleRefused(
            f"unexpected exports {', '.join(extra)}; a kernel exports only " + ", ".join(EXPORTS)
        )
    for name, signature in EXPORTS.items():
        if name not in exports:
            raise ModuleRefused(f"the module does not export {name}")
        if signature is None:
            if not isinstance(exports[name], wasmtime.MemoryType):
                raise ModuleRefused("the export memory must be a memory")
        elif _functype(exports[name]) != (
            tuple(map(str, signature[0])),
            tuple(map(str, signature[1])),
        ):
            raise ModuleRefused(f"{name} must be a function of type {_describe(signature)}")
    return module


def _describe(signature: tuple[tuple[wasmtime.ValType, ...], tuple[wasmtime.ValType, ...]]) -> str:
    params, results = (", ".join(map(str, s)) or "" for s in signature)
    return f"({params}) -> ({results})"


def _memory_used(store: wasmtime.Store, instance: wasmtime.Instance | None) -> int:
    if instance is None:
        return 0
    memory = instance.exports(store)["memory"]
    return memory.data_len(store) if isinstance(memory, wasmtime.Memory) else 0


class ModuleCache:
    """Compiled modules by digest, most recently used kept (compiling is the slow part)."""

    def __init__(self, capacity: int = 16) -> None:
        self._capacity = capacity
        self._modules: OrderedDict[str, wasmtime.Module] = OrderedDict()
        self._lock = Lock()

    def get(self, digest: str, load: Callable[[], bytes]) -> wasmtime.Module:
        """The compiled module named ``digest``; ``load`` gives its bytes when not cached,
        already checked against the digest (the ``wasm`` kind checks each read once), and
        they are checked by :func:`check_module` before being compiled and kept."""
        with self._lock:
            module = self._modules.get(digest)
            if module is not None:
                self._modules.move_to_end(digest)
                return module
        module = check_module(load())
        with self._lock:
            self._modules[digest] = module
            while len(self._modules) > self._capacity:
                self._modules.popitem(last=False)
        return module


def run_chunk(
    module: wasmtime.Module,
    data: bytes,
    index: int,
    count: int,
    *,
    fuel: int,
    memory_bytes: int,
) -> ChunkRun:
    """Run one chunk in a fresh instance, with ``fuel`` and at most ``memory_bytes``.

    Deterministic: the same arguments give the same output and fuel on every machine, or
    the same :class:`KernelFault`.
    """
    store = wasmtime.Store(engine())
    instance: wasmtime.Instance | None = None
    store.set_limits(memory_size=memory_bytes, instances=1, tables=1, memories=1)
    store.set_fuel(fuel)
    try:
        try:
            instance = wasmtime.Instance(store, module, [])
        except wasmtime.Trap:
            raise  # its start function trapped: below
        except wasmtime.WasmtimeError:
            # Its initial memory is already beyond the cap.
            raise KernelFault(
                f"the module needs more memory than the {memory_bytes} bytes allowed",
                code="memory_limit",
            ) from None
        exports = instance.exports(store)
        memory, take, run, give = (exports[name] for name in EXPORTS)
        # check_module made sure of these; a module that was not checked never gets here.
        assert isinstance(memory, wasmtime.Memory)
        assert all(isinstance(f, wasmtime.Func) for f in (take, run, give))
        where = take(store, len(data))  # type: ignore[operator]
        if data and (not where or where < 0 or where + len(data) > memory.data_len(store)):
            raise KernelFault(
                f"the kernel has no room for {len(data)} input bytes", code="input_too_large"
            )
        memory.write(store, data, where)
        length = run(store, index, count, len(data))  # type: ignore[operator]
        if length < 0:
            raise KernelFault(f"the kernel refused the input (code {length})", code="refused")
        start = give(store)  # type: ignore[operator]
        if length > MAX_OUTPUT_BYTES or start < 0 or start + length > memory.data_len(store):
            raise KernelFault(
                f"the kernel's output ({length} bytes at {start}) is out of bounds or over "
                f"{MAX_OUTPUT_BYTES} bytes",
                code="bad_output",
            )
        output = memory.read(store, start, start + length)
        return ChunkRun(bytes(output), fuel - store.get_fuel())
    except wasmtime.Trap as trap:
        if trap.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
            raise KernelFault(f"the kernel ran out of fuel ({fuel})", code="out_of_fuel") from None
        what = trap.trap_code.name.lower().replace("_", " ") if trap.trap_code else "trap"
        held = _memory_used(store, instance)
        if held + PAGE > memory_bytes:
            raise KernelFault(
                f"the kernel used all the memory allowed ({memory_bytes} bytes), then: {what}",
                code="memory_limit",
            ) from None
        raise KernelFault(
            f"the kernel trapped: {what} (holding {held} of {memory_bytes} bytes of memory)",
            code="trap",
        ) from None
    except wasmtime.WasmtimeError as exc:
        raise KernelFault(f"the kernel failed: {str(exc).splitlines()[0]}", code="trap") from None
