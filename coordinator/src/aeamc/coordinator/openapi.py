"""The OpenAPI 3.1 description of the coordinator's API, served at ``/v1/openapi.json``.

A test compares its paths and methods with the routes the server really has, so the
document cannot silently drift from the code.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from . import __version__
from .content_api import openapi_paths as content_paths
from .dashboard import openapi_paths as dashboard_paths
from .tasks import CLIENT_REF_MAX
from .updates.api import openapi_paths as update_paths

_HEX32 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_DEVICE_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_SIG = {"type": "string", "pattern": "^[0-9a-f]{128}$"}
_INT = {"type": "integer", "minimum": 0}
_NULLABLE_INT = {"type": ["integer", "null"]}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": props,
        "required": list(props) if required is None else required,
    }


SCHEMAS: dict[str, Any] = {
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
            "battery_pct": {"type": ["integer", "null"], "minimum": 0, "maximum": 100},
            "charging": {"type": ["boolean", "null"]},
            "cpu_temp_mc": _NULLABLE_INT,
            "cpu_load_permille": {"type": ["integer", "null"], "minimum": 0, "maximum": 1000},
            "net_latency_us": _NULLABLE_INT,
            "mem_available_kb": _NULLABLE_INT,
        }
    ),
    "Capabilities": _obj(
        {
            "kinds": {"type": "array", "items": {"type": "string"}, "maxItems": 32},
            "cpus": {"type": "integer", "minimum": 1},
            "mem_mb": _INT,
            "battery": {"type": "boolean"},
            "version": {"type": "string"},
            "endpoint": {"type": ["string", "null"]},
        }
    ),
    "Enroll": _obj(
        {
            "type": {"const": "enroll"},
            "public_key": _HEX32,
            "device_id": _DEVICE_ID,
            "timestamp": _INT,
            "capabilities": {"$ref": "#/components/schemas/Capabilities"},
            "token": {"type": "string"},
            "csr": {
                "type": "string",
                "pattern": "^([0-9a-f]{2})+$",
                "description": "hex DER of a P-256 certificate request for the device's TLS key",
            },
            "signature": _SIG,
        },
        ["type", "public_key", "device_id", "timestamp", "capabilities", "signature"],
    ),
    "Privacy": _obj(
        {
            "type": {"const": "privacy"},
            "device_id": _DEVICE_ID,
            "action": {"enum": ["export", "erase"]},
            "timestamp": _INT,
            "signature": _SIG,
        }
    ),
    "PoA": _obj(
        {
            "type": {"const": "poa"},
            "device_id": _DEVICE_ID,
            "timestamp": _INT,
            "seq": _INT,
            "telemetry": {"$ref": "#/components/schemas/Telemetry"},
            "signature": _SIG,
        }
    ),
    "PoT": _obj(
        {
            "type": {"const": "pot"},
            "task_id": {"type": "string"},
            "device_id": _DEVICE_ID,
            "timestamp": _INT,
            "output_digest": _HEX32,
            "trace_root": _HEX32,
            "device_nonce": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "checkpoint": _HEX32,
            "execution_metadata": _obj(
                {"execution_time_ms": _INT, "cpu_time_ms": _INT, "chunks": _INT}
            ),
            "signature": _SIG,
        }
    ),
    "ProofSubmission": _obj(
        {
            "pot": {"$ref": "#/components/schemas/PoT"},
            "output": {"type": "string", "pattern": "^([0-9a-f]{2})*$"},
        }
    ),
    "ProofBatch": _obj(
        {
            "proofs": {
                "type": "array",
                "minItems": 1,
                "maxItems": 256,
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
                    "leaf_index": _INT,
                    "tree_size": {"type": "integer", "minimum": 1},
                    "path": {"type": "array", "items": _HEX32, "maxItems": 64},
                    "chain_id": {"type": "integer", "minimum": 1},
                    "contract": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
                    "tx_hash": {"type": "string", "pattern": "^0x[0-9a-f]{64}$"},
                    "block_number": _INT,
                }
            ),
        }
    ),
    "TaskRequest": _obj(
        {
            "kind": {"type": "string"},
            "params": {"type": "object"},
            "chunks": {"type": "integer", "minimum": 1, "maximum": 65536},
            "replicas": {"type": "integer", "minimum": 1},
            "deadline": {"type": "integer", "description": "ms since the epoch"},
            "task_id": {
                "type": "string",
                "maxLength": CLIENT_REF_MAX,
                "description": "the client's own reference (client_ref): the task's id is "
                "<owner>.<task_id>, scoped to the submitting token",
            },
        },
        ["kind", "params", "chunks"],
    ),
}


def _body(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


#: The operator token, or no token and the device's signed request as the body.
_OPERATOR_OR_DEVICE: list[dict[str, list[str]]] = [{"operator": []}, {}]


def _op(summary: str, security: Any = None, **extra: Any) -> dict[str, Any]:
    responses = {
        "4XX": {
            "description": "the request was refused; nothing changed",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    }
    responses["429"] = {
        "description": "rate limited: retry after the Retry-After header's seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    responses.update(extra.pop("responses", {"200": {"description": "OK"}}))
    op: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if isinstance(security, list):
        op["security"] = security
    elif security:
        op["security"] = [{security: []}]
    return op


_ACCEPTED = {"202": {"description": "accepted and durably stored"}}
_VERIFIED_PARAM = {
    "name": "verified",
    "in": "query",
    "description": "true: output bytes only for verified results (list: only verified tasks)",
    "schema": {"type": "boolean"},
}


@cache
def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {
        "/v1/enroll": {
            "post": _op(
                "Enroll a device (signed)", requestBody=_body("Enroll"), responses=_ACCEPTED
            )
        },
        "/v1/heartbeats": {
            "post": _op(
                "Proof-of-Availability heartbeat", requestBody=_body("PoA"), responses=_ACCEPTED
            )
        },
        "/v1/proofs": {
            "post": _op(
                "Submit a Proof-of-Task with its output",
                requestBody=_body("ProofSubmission"),
                responses=_ACCEPTED,
            )
        },
        "/v1/proofs/batch": {
            "post": _op(
                "Submit up to 256 proofs in one request and one commit; one result per "
                "proof, in order (status 202 with the single-request answer, or the error)",
                requestBody=_body("ProofBatch"),
                responses={"200": {"description": "every proof judged; see each result"}},
            )
        },
        "/v1/tasks": {
            "post": _op(
                "Submit a task", "client", requestBody=_body("TaskRequest"), responses=_ACCEPTED
            ),
            "get": _op(
                "List tasks (a client token's own, the operator token's all), each with its "
                "result's verification state",
                "client",
                parameters=[_VERIFIED_PARAM],
            ),
        },
        "/v1/tasks/{task_id}": {
            "get": _op(
                "Task status, devices, verdicts, output and verification state "
                "(docs/verification.md); another client's task: 404",
                "client",
                parameters=[
                    _VERIFIED_PARAM,
                    {
                        "name": "wait_s",
                        "in": "query",
                        "description": "hold the answer up to this many seconds until the "
                        "result is verified or the task failed",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 60},
                    },
                ],
            )
        },
        "/v1/devices": {"get": _op("Device registry with EPS, reputation and state", "operator")},
        "/v1/devices/{device_id}": {
            "get": _op("One device", "operator"),
            "delete": _op(
                "Erase a device (SPEC §11): operator token, or the device's signed privacy "
                "request (action erase) as body; its receipts in microblocks stay. The "
                "operator can erase an id only seen over mDNS too",
                requestBody={**_body("Privacy"), "required": False},
                security=_OPERATOR_OR_DEVICE,
            ),
        },
        "/v1/devices/{device_id}/export": {
            "get": _op(
                "Everything held about a device, or about an id only seen over mDNS, as JSON",
                "operator",
            ),
            "post": _op(
                "The same export, for the device itself: body is its signed privacy request "
                "(action export); the operator token works too",
                requestBody={**_body("Privacy"), "required": False},
                security=_OPERATOR_OR_DEVICE,
            ),
        },
        "/v1/devices/{device_id}/approve": {"post": _op("Approve a pending device", "operator")},
        "/v1/devices/{device_id}/quarantine": {"post": _op("Quarantine a device", "operator")},
        "/v1/tokens": {
            "post": _op(
                "Create a token (enroll, client or operator)",
                "operator",
                responses={
                    "201": {
                        "description": "the token, shown once, with its uses and expires_at "
                        "(an enrollment token always has both)"
                    }
                },
            )
        },
        "/v1/status": {
            "get": _op("Counts of devices, tasks, proofs, blocks; anchoring", "operator")
        },
        "/v1/flags": {
            "get": _op(
                "Feature flags (SPEC §10): name, percent, updated_at, updated_by", "operator"
            )
        },
        "/v1/flags/history": {
            "get": _op("Every change of a flag: name, from, to, at, by (?name=)", "operator")
        },
        "/v1/flags/{name}": {
            "put": _op(
                "Set a flag's rollout percent; audited (by defaults to the token's label)",
                "operator",
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["percent"],
                                "additionalProperties": False,
                                "properties": {
                                    "percent": {"type": "integer", "minimum": 0, "maximum": 100},
                                    "by": {"type": "string", "maxLength": 100},
                                },
                            }
                        }
                    },
                },
            )
        },
        "/v1/microblocks": {"get": _op("Chain listing (?from=&limit=)")},
        "/v1/microblocks/{height}": {"get": _op("A block decoded, with spot-check verdicts")},
        "/v1/microblocks/{height}/raw": {
            "get": _op(
                "Exact block bytes",
                responses={
                    "200": {
                        "description": "header || payload",
                        "content": {"application/octet-stream": {}},
                    }
                },
            )
        },
        "/v1/receipts/{task_id}/{device_id}/proof": {
            "get": _op(
                "Proof bundle of one receipt (SPEC §8); 409 not_anchored until its anchor is final",
                responses={
                    "200": {
                        "description": "the bundle; check it with `aeamc verify`",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ProofBundle"}
                            }
                        },
                    }
                },
            )
        },
        "/v1/health": {"get": _op("Liveness, what is degraded, the CA fingerprint")},
        "/v1/ca": {"get": _op("The CA certificate (PEM) and its SHA-256 fingerprint, for pinning")},
        "/v1/openapi.json": {"get": _op("This document")},
        "/.well-known/security.txt": {
            "get": _op(
                "Whom to tell about a vulnerability (RFC 9116); 404 until [security] has one",
                responses={"200": {"description": "RFC 9116 text", "content": {"text/plain": {}}}},
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                responses={
                    "200": {"description": "text exposition format", "content": {"text/plain": {}}}
                },
            )
        },
    }
    paths.update(dashboard_paths())
    paths.update(update_paths())
    paths.update(content_paths())
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
            "schemas": SCHEMAS,
            "securitySchemes": {
                "operator": {"type": "http", "scheme": "bearer"},
                "client": {"type": "http", "scheme": "bearer"},
            },
        },
    }
