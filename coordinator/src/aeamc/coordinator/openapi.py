"""The OpenAPI 3.1 description of the coordinator's API, served at ``/v1/openapi.json``.

A test compares its paths and methods with the routes the server really has, so the
document cannot silently drift from the code.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aeamc.shared.canonical import MAX_SAFE_INT
from aeamc.shared.messages import KIND_PATTERN, MAX_CHUNKS, TASK_ID_PATTERN
from aeamc.shared.tasks.classify_int8 import FEATURES, MAX_BATCH_SIZE, MAX_SAMPLES, PIXEL_MAX
from aeamc.shared.tasks.sha256_chain import MAX_ITERATIONS as SHA_MAX_ITERATIONS

from . import __version__
from .apidoc import decimal, errors, json_object_body, path_param, query_param
from .dashboard import openapi_paths as dashboard_paths
from .flags import FLAG_NAME
from .heartbeats import STRICT_FRESHNESS
from .ingestion import MAX_PROOF_BATCH, MAX_PROOF_OUTPUT
from .tasks import CLIENT_REF_MAX
from .tokens import MAX_TOKEN_TTL_S
from .tokens import ROLES as TOKEN_ROLES
from .updates.api import openapi_paths as update_paths


def _hex(nbytes: int) -> dict[str, Any]:
    """Lowercase hex of exactly ``nbytes`` bytes."""
    return {"type": "string", "pattern": f"^[0-9a-f]{{{2 * nbytes}}}$"}


def _text(max_len: int, pattern: str | None = None, min_len: int = 1) -> dict[str, Any]:
    """A string as ``aeamc.shared.schema.text`` takes it: its length in characters and,
    when given, a pattern the whole string matches."""
    out: dict[str, Any] = {"type": "string", "minLength": min_len, "maxLength": max_len}
    if pattern is not None:
        out["pattern"] = f"^(?:{pattern})$"
    return out


def _int(lo: int = 0, hi: int = MAX_SAFE_INT) -> dict[str, Any]:
    """An integer written without fraction or exponent (SPEC §1: no floats), lo..hi."""
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


_HEX32 = _hex(32)
_DEVICE_ID = _hex(16)
_SIG = _hex(64)
_TIMESTAMP = {**_int(), "description": "ms since the epoch"}
_TASK_ID = _text(64, TASK_ID_PATTERN)
_ANY_HEX = {"type": "string", "pattern": "^(?:[0-9a-f]{2})*$"}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
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
        _int(-MAX_SAFE_INT),
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
    "sha256-chain": _obj({"seed": _HEX32, "iterations": _int(1, SHA_MAX_ITERATIONS)}),
    "classify-int8": {
        **_obj(
            {
                "samples": {
                    "type": "string",
                    "description": f"{FEATURES} pixels (0..{PIXEL_MAX}) per sample, hex",
                    "minLength": 2 * FEATURES,
                    "maxLength": 2 * FEATURES * MAX_SAMPLES,
                    "pattern": f"^(?:(?:0[0-9a-f]|10){{{FEATURES}}})+$",
                },
                "batch_size": _int(1, MAX_BATCH_SIZE),
            }
        ),
        "description": "chunks MUST equal ceil(samples / batch_size) (SPEC §4)",
    },
}


def _task_request(plugin_kinds: tuple[str, ...], max_replicas: int) -> dict[str, Any]:
    common = {
        "chunks": _int(1, MAX_CHUNKS),
        "replicas": {
            **_int(1, min(16, max_replicas)),
            "description": "at most this coordinator's scheduler.max_replicas",
        },
        "deadline": _TIMESTAMP,
        "task_id": {
            **_text(CLIENT_REF_MAX, TASK_ID_PATTERN),
            "description": "the client's own reference (client_ref): the task's id is "
            "<owner>.<task_id>, scoped to the submitting token",
        },
    }
    required = ["kind", "params", "chunks"]
    variants = [
        _obj({"kind": {"const": kind}, "params": params, **common}, required)
        for kind, params in _KIND_PARAMS.items()
    ]
    if plugin_kinds:
        variants.append(
            _obj(
                {
                    "kind": {"enum": list(plugin_kinds)},
                    "params": {"type": "object", "additionalProperties": _params_value(1)},
                    **common,
                },
                required,
            )
        )
    return {"oneOf": variants}


_SCHEMAS: dict[str, Any] = {
    "Error": _obj(
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
    "Telemetry": _obj(
        {
            "battery_pct": _nullable(_int(0, 100)),
            "charging": {"type": ["boolean", "null"]},
            "cpu_temp_mc": _nullable(_int(-60_000, 200_000)),
            "cpu_load_permille": _nullable(_int(0, 1000)),
            "net_latency_us": _nullable(_int(0, 3_600_000_000)),
            "mem_available_kb": _nullable(_int(0, 1 << 50)),
        }
    ),
    "Capabilities": _obj(
        {
            "kinds": {"type": "array", "items": _text(64, KIND_PATTERN), "maxItems": 32},
            "cpus": _int(1, 4096),
            "mem_mb": _int(0, 1 << 30),
            "battery": {"type": "boolean"},
            "version": _text(64, r"[A-Za-z0-9.+~_-]+"),
            "endpoint": _nullable(
                _text(256, r"https?://[A-Za-z0-9.:\[\]_-]+(/[A-Za-z0-9._~/-]*)?")
            ),
        }
    ),
    "Enroll": _obj(
        {
            "type": {"const": "enroll"},
            "public_key": _HEX32,
            "device_id": _DEVICE_ID,
            "timestamp": _TIMESTAMP,
            "capabilities": {"$ref": "#/components/schemas/Capabilities"},
            "token": _text(128, r"[A-Za-z0-9._~-]+"),
            "csr": {
                **_ANY_HEX,
                "maxLength": 2 * 2048,
                "description": "hex DER of a P-256 certificate request for the device's TLS key",
            },
            "signature": _SIG,
        },
        ["type", "public_key", "device_id", "timestamp", "capabilities", "signature"],
    ),
    "PrivacyErase": _obj(
        {
            "type": {"const": "privacy"},
            "device_id": _DEVICE_ID,
            "action": {"const": "erase"},
            "timestamp": _TIMESTAMP,
            "signature": _SIG,
        }
    ),
    "PrivacyExport": _obj(
        {
            "type": {"const": "privacy"},
            "device_id": _DEVICE_ID,
            "action": {"const": "export"},
            "timestamp": _TIMESTAMP,
            "signature": _SIG,
        }
    ),
    "PoA": _obj(
        {
            "type": {"const": "poa"},
            "device_id": _DEVICE_ID,
            "timestamp": _TIMESTAMP,
            "seq": _int(),
            "telemetry": {"$ref": "#/components/schemas/Telemetry"},
            "signature": _SIG,
        }
    ),
    "PoT": _obj(
        {
            "type": {"const": "pot"},
            "task_id": _TASK_ID,
            "device_id": _DEVICE_ID,
            "timestamp": _TIMESTAMP,
            "output_digest": _HEX32,
            "trace_root": _HEX32,
            "device_nonce": _hex(16),
            "checkpoint": _HEX32,
            "execution_metadata": _obj(
                {
                    "execution_time_ms": _int(),
                    "cpu_time_ms": _int(),
                    "chunks": _int(1, MAX_CHUNKS),
                }
            ),
            "signature": _SIG,
        }
    ),
    "ProofSubmission": _obj(
        {
            "pot": {"$ref": "#/components/schemas/PoT"},
            "output": {**_ANY_HEX, "maxLength": 2 * MAX_PROOF_OUTPUT},
        }
    ),
    "ProofBatch": _obj(
        {
            "proofs": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_PROOF_BATCH,
                "items": {"$ref": "#/components/schemas/ProofSubmission"},
            }
        }
    ),
    "ProofBundle": _obj(
        {
            "pot": {"$ref": "#/components/schemas/PoT"},
            "device_public_key": _HEX32,
            "microblock": {"type": "string", "description": "hex(header || payload)"},
            "anchor": _obj(
                {
                    "root": _HEX32,
                    "leaf_index": _int(),
                    "tree_size": _int(1),
                    "path": {"type": "array", "items": _HEX32, "maxItems": 64},
                    "chain_id": _int(1),
                    "contract": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
                    "tx_hash": {"type": "string", "pattern": "^0x[0-9a-f]{64}$"},
                    "block_number": _int(),
                }
            ),
        }
    ),
}

#: Kept for importers: the schemas of the default document.
SCHEMAS = _SCHEMAS


def _body(schema: str, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    if example is not None:
        media["example"] = example
    return {"required": True, "content": {"application/json": media}}


#: The signed heartbeat of SPEC §2's test vector (tests/vectors/v1.json, ``poa``).
_POA_EXAMPLE = {
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
_TASK_EXAMPLES = {
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


#: The operator token, or no token and the device's signed request as the body.
_OPERATOR_OR_DEVICE: list[dict[str, list[str]]] = [{"operator": []}, {}]


def _op(
    summary: str,
    security: Any = None,
    *,
    ok: dict[str, Any] | None = None,
    refusals: tuple[int, ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    """An operation answering ``ok`` (default 200 JSON) or one of ``refusals``."""
    responses = {
        **(ok or {"200": {"description": "OK", "content": {"application/json": {}}}}),
        **errors(*refusals),
    }
    op: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if isinstance(security, list):
        op["security"] = security
    elif security:
        op["security"] = [{security: []}]
    return op


_ACCEPTED = {
    "202": {"description": "accepted and durably stored", "content": {"application/json": {}}}
}
_VERIFIED_PARAM = query_param(
    "verified",
    {"type": "boolean"},
    "true: output bytes only for verified results (list: only verified tasks)",
)
_DEVICE_PARAM = path_param("device_id", _DEVICE_ID, "32 lowercase hex")
_HEIGHT_PARAM = path_param("height", decimal(0, 2**53))
#: Who may call: a token of this role (401 without a valid one, 403 for another role).
_AUTH = (401, 403)
#: Reads a JSON body: malformed (400) or not JSON (415).
_BODY = (400, 415)


@cache
def openapi_document(
    plugin_kinds: tuple[str, ...] = (), max_replicas: int = 5, max_wait_s: int = 60
) -> dict[str, Any]:
    """The document; the arguments are the serving coordinator's: its installed task-kind
    plug-ins, its ``scheduler.max_replicas`` and ``server.max_wait_s``."""
    reason_body = json_object_body({"reason": _text(200, min_len=0)}, [], body_required=False)
    paths: dict[str, dict[str, Any]] = {
        "/v1/enroll": {
            "post": _op(
                "Enroll a device (signed)",
                requestBody=_body("Enroll"),
                ok=_ACCEPTED,
                refusals=(*_BODY, 401, 403, 409, 503),
            )
        },
        "/v1/heartbeats": {
            "post": _op(
                "Proof-of-Availability heartbeat",
                requestBody=_body("PoA", _POA_EXAMPLE),
                ok=_ACCEPTED,
                refusals=(*_BODY, 401, 403, 409),
            )
        },
        "/v1/proofs": {
            "post": _op(
                "Submit a Proof-of-Task with its output",
                requestBody=_body("ProofSubmission"),
                ok=_ACCEPTED,
                refusals=(*_BODY, 401, 403, 409, 410, 422),
            )
        },
        "/v1/proofs/batch": {
            "post": _op(
                f"Submit up to {MAX_PROOF_BATCH} proofs in one request and one commit; one "
                "result per proof, in order (status 202 with the single-request answer, or "
                "the refusal). A batch holding a submission outside the schema is refused "
                "whole (400, naming it) and changes nothing",
                requestBody=_body("ProofBatch"),
                ok={
                    "200": {
                        "description": "every proof judged; see each result",
                        "content": {"application/json": {}},
                    }
                },
                refusals=_BODY,
            )
        },
        "/v1/tasks": {
            "post": _op(
                "Submit a task",
                "client",
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _task_request(plugin_kinds, max_replicas),
                            "examples": _TASK_EXAMPLES,
                        }
                    },
                },
                ok=_ACCEPTED,
                refusals=(*_BODY, *_AUTH, 409),
            ),
            "get": _op(
                "List tasks (a client token's own, the operator token's all), each with its "
                "result's verification state",
                "client",
                parameters=[
                    _VERIFIED_PARAM,
                    query_param("limit", decimal(1, 1000), "at most this many, newest first"),
                    query_param("state", {"type": "string"}, "only tasks in this state"),
                ],
                refusals=(400, *_AUTH),
            ),
        },
        "/v1/tasks/{task_id}": {
            "parameters": [path_param("task_id", {"type": "string", "minLength": 1})],
            "get": _op(
                "Task status, devices, verdicts, output and verification state "
                "(docs/verification.md); another client's task: 404",
                "client",
                parameters=[
                    _VERIFIED_PARAM,
                    query_param(
                        "wait_s",
                        decimal(0, max_wait_s),
                        "hold the answer up to this many seconds until the result is "
                        "verified or the task failed",
                    ),
                ],
                refusals=(400, *_AUTH, 404),
            ),
        },
        "/v1/devices": {
            "get": _op("Device registry with EPS, reputation and state", "operator", refusals=_AUTH)
        },
        "/v1/devices/{device_id}": {
            "parameters": [_DEVICE_PARAM],
            "get": _op("One device", "operator", refusals=(400, *_AUTH, 404)),
            "delete": _op(
                "Erase a device (SPEC §11): operator token, or the device's signed privacy "
                "request (action erase) as body; its receipts in microblocks stay. The "
                "operator can erase an id only seen over mDNS too. A body sent with the "
                "operator token must be a well-formed request as well",
                requestBody={**_body("PrivacyErase"), "required": False},
                security=_OPERATOR_OR_DEVICE,
                refusals=(*_BODY, *_AUTH, 404, 409),
            ),
        },
        "/v1/devices/{device_id}/export": {
            "parameters": [_DEVICE_PARAM],
            "get": _op(
                "Everything held about a device, or about an id only seen over mDNS, as JSON",
                "operator",
                refusals=(400, *_AUTH, 404),
            ),
            "post": _op(
                "The same export, for the device itself: body is its signed privacy request "
                "(action export); the operator token works too",
                requestBody={**_body("PrivacyExport"), "required": False},
                security=_OPERATOR_OR_DEVICE,
                refusals=(*_BODY, *_AUTH, 404, 409),
            ),
        },
        "/v1/devices/{device_id}/approve": {
            "parameters": [_DEVICE_PARAM],
            "post": _op(
                "Approve a pending device",
                "operator",
                requestBody=reason_body,
                refusals=(*_BODY, *_AUTH, 404, 409),
            ),
        },
        "/v1/devices/{device_id}/quarantine": {
            "parameters": [_DEVICE_PARAM],
            "post": _op(
                "Quarantine a device",
                "operator",
                requestBody=reason_body,
                refusals=(*_BODY, *_AUTH, 404, 409),
            ),
        },
        "/v1/tokens": {
            "post": _op(
                "Create a token (enroll, client or operator)",
                "operator",
                requestBody=json_object_body(
                    {
                        "role": {"enum": list(TOKEN_ROLES), "default": "enroll"},
                        "label": _text(100, min_len=0),
                        "ttl_s": {
                            **_nullable(_int(1, MAX_TOKEN_TTL_S)),
                            "description": "lifetime in seconds; null or absent: the "
                            "role's default (enroll: tokens.enroll_default_ttl_s, else none)",
                        },
                        "uses": {
                            **_nullable(_int(1, MAX_SAFE_INT)),
                            "description": "null or absent: the role's default (enroll: "
                            "tokens.enroll_default_uses, else unlimited)",
                        },
                    },
                    [],
                    example={"role": "client", "label": "ci", "ttl_s": 3600},
                ),
                ok={
                    "201": {
                        "description": "the token, shown once, with its uses and expires_at "
                        "(an enrollment token always has both)",
                        "content": {"application/json": {}},
                    }
                },
                refusals=(*_BODY, *_AUTH),
            )
        },
        "/v1/status": {
            "get": _op(
                "Counts of devices, tasks, proofs, blocks; anchoring", "operator", refusals=_AUTH
            )
        },
        "/v1/flags": {
            "get": _op(
                "Feature flags (SPEC §10): name, percent, updated_at, updated_by",
                "operator",
                refusals=_AUTH,
            )
        },
        "/v1/flags/history": {
            "get": _op(
                "Every change of a flag: name, from, to, at, by",
                "operator",
                parameters=[query_param("name", {"type": "string"}, "only this flag's")],
                refusals=_AUTH,
            )
        },
        "/v1/flags/{name}": {
            "parameters": [
                path_param(
                    "name",
                    {
                        **_text(64, FLAG_NAME.pattern),
                        "not": {"const": "history"},
                        "examples": [STRICT_FRESHNESS],
                    },
                    "not history: that is the history's route",
                )
            ],
            "put": _op(
                "Set a flag's rollout percent; audited (by defaults to the token's label)",
                "operator",
                requestBody=json_object_body(
                    {"percent": _int(0, 100), "by": _text(100)},
                    ["percent"],
                    example={"percent": 50, "by": "ops"},
                ),
                # /v1/flags/history is the history (GET only): a PUT there is 405.
                refusals=(*_BODY, *_AUTH, 405),
            ),
        },
        "/v1/microblocks": {
            "get": _op(
                "Chain listing",
                parameters=[
                    query_param("from", decimal(0, 2**53), "first height"),
                    query_param("limit", decimal(1, 1000), "at most this many blocks"),
                ],
                refusals=(400,),
            )
        },
        "/v1/microblocks/{height}": {
            "parameters": [_HEIGHT_PARAM],
            "get": _op("A block decoded, with spot-check verdicts", refusals=(400, 404)),
        },
        "/v1/microblocks/{height}/raw": {
            "parameters": [_HEIGHT_PARAM],
            "get": _op(
                "Exact block bytes",
                ok={
                    "200": {
                        "description": "header || payload",
                        "content": {"application/octet-stream": {}},
                    }
                },
                refusals=(400, 404),
            ),
        },
        "/v1/receipts/{task_id}/{device_id}/proof": {
            "parameters": [
                path_param("task_id", {"type": "string", "minLength": 1}),
                _DEVICE_PARAM,
            ],
            "get": _op(
                "Proof bundle of one receipt (SPEC §8); 409 not_anchored until its anchor is final",
                ok={
                    "200": {
                        "description": "the bundle; check it with `aeamc verify`",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ProofBundle"}
                            }
                        },
                    }
                },
                refusals=(400, 404, 409, 410),
            ),
        },
        "/v1/health": {"get": _op("Liveness, what is degraded, the CA fingerprint")},
        "/v1/ca": {
            "get": _op(
                "The CA certificate (PEM) and its SHA-256 fingerprint, for pinning",
                refusals=(503,),
            )
        },
        "/v1/openapi.json": {"get": _op("This document")},
        "/.well-known/security.txt": {
            "get": _op(
                "Whom to tell about a vulnerability (RFC 9116); 404 until [security] has one",
                ok={"200": {"description": "RFC 9116 text", "content": {"text/plain": {}}}},
                refusals=(404,),
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                ok={
                    "200": {"description": "text exposition format", "content": {"text/plain": {}}}
                },
            )
        },
    }
    paths.update(dashboard_paths())
    paths.update(update_paths())
    for item in paths.values():  # each operation lists its own path parameters
        shared = item.pop("parameters", [])
        for op in item.values():
            op["parameters"] = [*shared, *op.get("parameters", [])]
            if not op["parameters"]:
                del op["parameters"]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AEAMC Microblock Coordinator API",
            "version": __version__,
            "description": (
                "Signed device messages, task submission and the microblock chain. TLS 1.3 "
                "only; device routes (heartbeats, proofs, a device's privacy requests) need "
                "the device's client certificate, issued in the enrollment answer."
            ),
        },
        "servers": [
            {"url": "https://{host}:8443", "variables": {"host": {"default": "localhost"}}}
        ],
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {
                "operator": {"type": "http", "scheme": "bearer"},
                "client": {"type": "http", "scheme": "bearer"},
            },
        },
    }
