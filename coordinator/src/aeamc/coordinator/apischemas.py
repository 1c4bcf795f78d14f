"""The schemas of the coordinator's OpenAPI document (``openapi.py``): each states what
the validators the protocol and the services use (``aeamc.shared.schema``) really take —
lengths, patterns, ranges and required members — so a request the document calls valid
is not refused for its form.
"""

from __future__ import annotations

from typing import Any

from aeamc.shared.canonical import MAX_SAFE_INT
from aeamc.shared.labels import CLIENT_PATTERN, MAX_CLIENTS, MAX_TAGS, TAG_PATTERN
from aeamc.shared.messages import KIND_PATTERN, MAX_CHUNKS, MAX_WORK_REPORTS, TASK_ID_PATTERN
from aeamc.shared.tasks.classify_int8 import FEATURES, MAX_BATCH_SIZE, MAX_SAMPLES, PIXEL_MAX
from aeamc.shared.tasks.sha256_chain import MAX_ITERATIONS as SHA_MAX_ITERATIONS
from aeamc.shared.wasmabi import MAX_FUEL, MAX_MEMORY_MB

from .ingestion import MAX_PROOF_BATCH, MAX_PROOF_OUTPUT
from .tasks import CLIENT_REF_MAX


def hex_of(nbytes: int) -> dict[str, Any]:
    """Lowercase hex of exactly ``nbytes`` bytes."""
    return {"type": "string", "pattern": f"^[0-9a-f]{{{2 * nbytes}}}$"}


def text(max_len: int, pattern: str | None = None, min_len: int = 1) -> dict[str, Any]:
    """A string as ``aeamc.shared.schema.text`` takes it: its length in characters and,
    when given, a pattern the whole string matches."""
    out: dict[str, Any] = {"type": "string", "minLength": min_len, "maxLength": max_len}
    if pattern is not None:
        out["pattern"] = f"^(?:{pattern})$"
    return out


def integer(lo: int = 0, hi: int = MAX_SAFE_INT) -> dict[str, Any]:
    """An integer written without fraction or exponent (SPEC §1: no floats), lo..hi."""
    return {"type": "integer", "minimum": lo, "maximum": hi}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


HEX32 = hex_of(32)
DEVICE_ID = hex_of(16)
SIG = hex_of(64)
TIMESTAMP = {**integer(), "description": "ms since the epoch"}
TASK_ID = text(64, TASK_ID_PATTERN)
TAGS = {"type": "array", "items": text(24, TAG_PATTERN), "maxItems": MAX_TAGS}
ANY_HEX = {"type": "string", "pattern": "^(?:[0-9a-f]{2})*$"}


def obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": props,
        "required": list(props) if required is None else required,
    }


#: A free JSON value as task params hold it (``json_value``): no floats, bounded.
def _params_value(depth: int) -> dict[str, Any]:
    scalar: list[dict[str, Any]] = [
        {"type": ["null", "boolean"]},
        integer(-MAX_SAFE_INT),
        {"type": "string", "maxLength": 1 << 20},
    ]
    if depth >= _PARAMS_DEPTH:
        return {"anyOf": scalar}
    inner = _params_value(depth + 1)
    return {
        "anyOf": [
            *scalar,
            {"type": "array", "maxItems": 1024, "items": inner},
            {"type": "object", "maxProperties": 1024, "additionalProperties": inner},
        ]
    }


_PARAMS_DEPTH = 8

#: Params of the built-in task kinds (aeamc.shared.tasks); a plug-in kind's are its own.
_KIND_PARAMS: dict[str, dict[str, Any]] = {
    "sha256-chain": obj({"seed": HEX32, "iterations": integer(1, SHA_MAX_ITERATIONS)}),
    "classify-int8": {
        **obj(
            {
                "samples": {
                    "type": "string",
                    "description": f"{FEATURES} pixels (0..{PIXEL_MAX}) per sample, hex",
                    "minLength": 2 * FEATURES,
                    "maxLength": 2 * FEATURES * MAX_SAMPLES,
                    "pattern": f"^(?:(?:0[0-9a-f]|10){{{FEATURES}}})+$",
                },
                "batch_size": integer(1, MAX_BATCH_SIZE),
            }
        ),
        "description": "chunks MUST equal ceil(samples / batch_size) (SPEC §4)",
    },
    "wasm": {
        **obj(
            {
                "module": HEX32,
                "input": HEX32,
                "fuel": integer(1, MAX_FUEL),
                "memory_mb": integer(1, MAX_MEMORY_MB),
            }
        ),
        "description": "a module and an input this client uploaded, by digest (SPEC §3.1); "
        "404 unknown_content otherwise",
    },
}
#: The kinds the document describes one by one; others are plug-ins (generic params).
DOCUMENTED_KINDS = frozenset(_KIND_PARAMS)


def task_request(plugin_kinds: tuple[str, ...], max_replicas: int) -> dict[str, Any]:
    common = {
        "chunks": integer(1, MAX_CHUNKS),
        "replicas": {
            **integer(1, min(16, max_replicas)),
            "description": "at most this coordinator's scheduler.max_replicas",
        },
        "deadline": TIMESTAMP,
        "task_id": {
            **text(CLIENT_REF_MAX, TASK_ID_PATTERN),
            "description": "the client's own reference (client_ref): the task's id is "
            "<owner>.<task_id>, scoped to the submitting token",
        },
        "requires": {
            **obj(
                {"tags": TAGS, "min_cpus": integer(1, 4096), "min_mem_mb": integer(0, 1 << 30)},
                [],
            ),
            "description": "what a device must have beyond what the task implies (SPEC §4.1): "
            "every one of these tags (its own or the operator's), at least these CPUs and MiB",
        },
    }
    required = ["kind", "params", "chunks"]
    variants = [
        obj({"kind": {"const": kind}, "params": params, **common}, required)
        for kind, params in _KIND_PARAMS.items()
    ]
    if plugin_kinds:
        variants.append(
            obj(
                {
                    "kind": {"enum": list(plugin_kinds)},
                    "params": {"type": "object", "additionalProperties": _params_value(1)},
                    **common,
                },
                required,
            )
        )
    return {"oneOf": variants}


SCHEMAS: dict[str, Any] = {
    "Error": obj(
        {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                },
                "required": ["code", "message"],
            }
        }
    ),
    "Telemetry": obj(
        {
            "battery_pct": nullable(integer(0, 100)),
            "charging": {"type": ["boolean", "null"]},
            "cpu_temp_mc": nullable(integer(-60_000, 200_000)),
            "cpu_load_permille": nullable(integer(0, 1000)),
            "net_latency_us": nullable(integer(0, 3_600_000_000)),
            "mem_available_kb": nullable(integer(0, 1 << 50)),
        }
    ),
    "Capabilities": obj(
        {
            "kinds": {"type": "array", "items": text(64, KIND_PATTERN), "maxItems": 32},
            "cpus": integer(1, 4096),
            "mem_mb": integer(0, 1 << 30),
            "battery": {"type": "boolean"},
            "version": text(64, r"[A-Za-z0-9.+~_-]+"),
            "endpoint": nullable(text(256, r"https?://[A-Za-z0-9.:\[\]_-]+(/[A-Za-z0-9._~/-]*)?")),
            "tags": TAGS,
            "wasm": obj(
                {
                    "max_memory_mb": integer(1, 1 << 20),
                    "max_fuel": integer(1),
                    "max_module_bytes": integer(1, 1 << 40),
                }
            ),
            "clients": {
                "type": "array",
                "items": text(8, CLIENT_PATTERN),
                "minItems": 1,
                "maxItems": MAX_CLIENTS,
                "description": "owner ids of the only clients whose work the device takes",
            },
        },
        ["kinds", "cpus", "mem_mb", "battery", "version", "endpoint"],
    ),
    "Enroll": obj(
        {
            "type": {"const": "enroll"},
            "public_key": HEX32,
            "device_id": DEVICE_ID,
            "timestamp": TIMESTAMP,
            "capabilities": {"$ref": "#/components/schemas/Capabilities"},
            "token": text(128, r"[A-Za-z0-9._~-]+"),
            "csr": {
                **ANY_HEX,
                "maxLength": 2 * 2048,
                "description": "hex DER of a P-256 certificate request for the device's TLS key",
            },
            "signature": SIG,
        },
        ["type", "public_key", "device_id", "timestamp", "capabilities", "signature"],
    ),
    "PrivacyErase": obj(
        {
            "type": {"const": "privacy"},
            "device_id": DEVICE_ID,
            "action": {"const": "erase"},
            "timestamp": TIMESTAMP,
            "signature": SIG,
        }
    ),
    "PrivacyExport": obj(
        {
            "type": {"const": "privacy"},
            "device_id": DEVICE_ID,
            "action": {"const": "export"},
            "timestamp": TIMESTAMP,
            "signature": SIG,
        }
    ),
    "PoA": obj(
        {
            "type": {"const": "poa"},
            "device_id": DEVICE_ID,
            "timestamp": TIMESTAMP,
            "seq": integer(),
            "telemetry": {"$ref": "#/components/schemas/Telemetry"},
            "work": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_WORK_REPORTS,
                "items": obj({"task_id": TASK_ID, "chunks_done": integer(0, MAX_CHUNKS)}),
                "description": "the tasks the device holds and the chunks it has done of "
                "each (display data); absent when it holds none. Sent only to a coordinator "
                "whose heartbeat answers carry reads_work: true",
            },
            "signature": SIG,
        },
        ["type", "device_id", "timestamp", "seq", "telemetry", "signature"],
    ),
    "PoT": obj(
        {
            "type": {"const": "pot"},
            "task_id": TASK_ID,
            "device_id": DEVICE_ID,
            "timestamp": TIMESTAMP,
            "output_digest": HEX32,
            "trace_root": HEX32,
            "device_nonce": hex_of(16),
            "checkpoint": HEX32,
            "execution_metadata": obj(
                {
                    "execution_time_ms": integer(),
                    "cpu_time_ms": integer(),
                    "chunks": integer(1, MAX_CHUNKS),
                }
            ),
            "signature": SIG,
        }
    ),
    "ProofSubmission": obj(
        {
            "pot": {"$ref": "#/components/schemas/PoT"},
            "output": {**ANY_HEX, "maxLength": 2 * MAX_PROOF_OUTPUT},
        }
    ),
    "ProofBatch": obj(
        {
            "proofs": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_PROOF_BATCH,
                "items": {"$ref": "#/components/schemas/ProofSubmission"},
            }
        }
    ),
    "ProofBundle": obj(
        {
            "pot": {"$ref": "#/components/schemas/PoT"},
            "device_public_key": HEX32,
            "microblock": {"type": "string", "description": "hex(header || payload)"},
            "anchor": obj(
                {
                    "root": HEX32,
                    "leaf_index": integer(),
                    "tree_size": integer(1),
                    "path": {"type": "array", "items": HEX32, "maxItems": 64},
                    "chain_id": integer(1),
                    "contract": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
                    "tx_hash": {"type": "string", "pattern": "^0x[0-9a-f]{64}$"},
                    "block_number": integer(),
                }
            ),
        }
    ),
}


#: The signed heartbeat of SPEC §2's test vector (tests/vectors/v1.json, ``poa``).
POA_EXAMPLE = {
    "type": "poa",
    "device_id": "34750f98bd59fcfc946da45aaabe933b",
    "timestamp": 1764300000000,
    "seq": 1,
    "telemetry": {
        "battery_pct": 80,
        "charging": False,
        "cpu_temp_mc": 45000,
        "cpu_load_permille": 120,
        "net_latency_us": 50000,
        "mem_available_kb": 1048576,
    },
    "signature": "de5b12eafd01919645651849df59a1af308881d388bfc4026d96500f5d193945"
    "d953de70214141faad151fd111ecf52d086b14bab64fa56d0038a54b168b9501",
}
TASK_EXAMPLES = {
    "sha256-chain": {
        "value": {
            "kind": "sha256-chain",
            "params": {"seed": "00" * 32, "iterations": 1000},
            "chunks": 4,
            "task_id": "nightly-1",
        }
    },
    "classify-int8": {
        "value": {
            "kind": "classify-int8",
            "params": {"samples": "10" * FEATURES * 3, "batch_size": 2},
            "chunks": 2,
        }
    },
}
