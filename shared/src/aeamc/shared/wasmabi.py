"""The numbers of the WebAssembly kernel ABI (docs/workloads.md, SPEC §3.1), apart from
the sandbox itself so that code which only checks a task's parameters, or keeps its
content, never loads the engine."""

from __future__ import annotations

#: Largest module a client may upload; a kernel is code, not data.
MAX_MODULE_BYTES = 4 << 20
#: Largest task input: every chunk gets all of it.
MAX_INPUT_BYTES = 16 << 20
#: Largest output of one chunk (the protocol's limit for any kind).
MAX_OUTPUT_BYTES = 1 << 20
#: Bounds of a task's per-chunk fuel and memory; a device's own limits lie within them.
MAX_FUEL = 10**12
MAX_MEMORY_MB = 4096
#: A task's per-chunk fuel and memory when its client names none (about a second of work).
DEFAULT_FUEL = 1_000_000_000
DEFAULT_MEMORY_MB = 64
