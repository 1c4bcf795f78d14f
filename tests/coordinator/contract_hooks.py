"""Schemathesis hooks of ``test_api_contract.py`` (loaded through ``SCHEMATHESIS_HOOKS``).

Three rules of the API are ones JSON Schema cannot state, so a request the schema calls
valid may still break them. These hooks make each generated request keep them — and
nothing else: they never touch a value the rules do not concern, and schemathesis
re-checks the request against the schema after them, so what is sent is still judged
by every check as usual.

- Integers are spelled as integers (docs/spec.md §1: "floats MUST NOT appear"; every
  body is parsed by the same strict reader). In JSON Schema's data model ``2.0`` *is*
  the integer 2, and schemathesis deliberately sends whole floats for integer members;
  the coordinator refuses them (400), as the protocol requires. They are sent as ``2``.
- A ``classify-int8`` task's ``chunks`` equals ceil(samples / batch_size) (docs/spec.md
  §4): arithmetic across members, which the schema can only describe in words.
- An uploaded module is WebAssembly that compiles in the sandbox (§3.1).
"""

from __future__ import annotations

from typing import Any

import schemathesis
import wasmtime

from aeamc.shared.wasmabi import MAX_MODULE_BYTES

SAMPLE_HEX = 2 * 64  # 64 pixels per sample, hex


def _integers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integers(v) for v in value]
    if isinstance(value, dict):
        return {k: _integers(v) for k, v in value.items()}
    return value


def _classify_chunks(body: dict[str, Any]) -> None:
    params = body.get("params")
    if body.get("kind") != "classify-int8" or not isinstance(params, dict):
        return
    samples, batch = params.get("samples"), params.get("batch_size")
    if isinstance(samples, str) and isinstance(batch, int) and batch > 0:
        n = len(samples) // SAMPLE_HEX
        if n and len(samples) % SAMPLE_HEX == 0 and isinstance(body.get("chunks"), int):
            body["chunks"] = -(-n // batch)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    op = case.operation
    if (op.method.upper(), op.path) == ("POST", "/v1/modules"):
        _module_bytes(case)
        return
    body = case.body
    if isinstance(body, (dict, list)):
        body = _integers(body)
        op = case.operation
        if isinstance(body, dict) and (op.method.upper(), op.path) == ("POST", "/v1/tasks"):
            _classify_chunks(body)
        case.body = body


#: A WebAssembly kernel the sandbox accepts (its ABI and nothing else).
_VALID_MODULE = bytes(
    wasmtime.wat2wasm(
        """(module (memory (export "memory") 1)
    (func (export "aeamc_input") (param i32) (result i32) i32.const 16)
    (func (export "aeamc_output") (result i32) i32.const 0)
    (func (export "aeamc_run") (param i32 i32 i32) (result i32) i32.const 0))"""
    )
)


def _module_bytes(case: Any) -> None:
    """An uploaded module must be WebAssembly that compiles in the sandbox (docs/spec.md
    §3.1); the schema can only say "binary, at most 4 MiB". A body within that limit is
    sent as a valid kernel; one over it is left as it is (still refused)."""
    body = case.body
    if isinstance(body, (bytes, str)) and len(body) <= MAX_MODULE_BYTES:
        case.body = _VALID_MODULE
