"""The OpenAPI 3.1 description of the coordinator's API, served at ``/v1/openapi.json``.

A test compares its paths and methods with the routes the server really has, so the
document cannot silently drift from the code.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aeamc.shared.canonical import MAX_SAFE_INT

from . import __version__
from .apidoc import decimal, errors, json_object_body, path_param, query_param
from .apischemas import (
    DEVICE_ID,
    POA_EXAMPLE,
    SCHEMAS,
    TAGS,
    TASK_EXAMPLES,
    integer,
    nullable,
    task_request,
    text,
)
from .content_api import openapi_paths as content_paths
from .dashboard import openapi_paths as dashboard_paths
from .flags import FLAG_NAME
from .heartbeats import STRICT_FRESHNESS
from .ingestion import MAX_PROOF_BATCH
from .tokens import MAX_TOKEN_TTL_S
from .tokens import ROLES as TOKEN_ROLES
from .updates.api import openapi_paths as update_paths


def _body(schema: str, example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    if example is not None:
        media["example"] = example
    return {"required": True, "content": {"application/json": media}}


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
_DEVICE_PARAM = path_param("device_id", DEVICE_ID, "32 lowercase hex")
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
    reason_body = json_object_body({"reason": text(200, min_len=0)}, [], body_required=False)
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
                requestBody=_body("PoA", POA_EXAMPLE),
                ok=_ACCEPTED,
                refusals=(*_BODY, 401, 403, 409, 503),
            )
        },
        "/v1/proofs": {
            "post": _op(
                "Submit a Proof-of-Task with its output",
                requestBody=_body("ProofSubmission"),
                ok=_ACCEPTED,
                refusals=(*_BODY, 401, 403, 409, 410, 422, 503),
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
                refusals=(*_BODY, 503),
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
                            "schema": task_request(plugin_kinds, max_replicas),
                            "examples": TASK_EXAMPLES,
                        }
                    },
                },
                ok=_ACCEPTED,
                # 404: a wasm task's module or input is not this client's (unknown_content).
                refusals=(*_BODY, *_AUTH, 404, 409),
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
        "/v1/devices/{device_id}/tags": {
            "parameters": [_DEVICE_PARAM],
            "post": _op(
                "Give a device placement tags, or take them away (SPEC §4.1); answers the "
                "device as GET /v1/devices/{device_id} does",
                "operator",
                requestBody=json_object_body(
                    {
                        "add": TAGS,
                        "remove": {**TAGS, "description": "removed (wins over add)"},
                    },
                    [],
                ),
                refusals=(*_BODY, *_AUTH, 404),
            ),
        },
        "/v1/tokens": {
            "post": _op(
                "Create a token (enroll, client or operator)",
                "operator",
                requestBody=json_object_body(
                    {
                        "role": {"enum": list(TOKEN_ROLES), "default": "enroll"},
                        "label": text(100, min_len=0),
                        "ttl_s": {
                            **nullable(integer(1, MAX_TOKEN_TTL_S)),
                            "description": "lifetime in seconds; null or absent: the "
                            "role's default (enroll: tokens.enroll_default_ttl_s, else none)",
                        },
                        "uses": {
                            **nullable(integer(1, MAX_SAFE_INT)),
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
                        **text(64, FLAG_NAME.pattern),
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
                    {"percent": integer(0, 100), "by": text(100)},
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
        "/v1/node": {
            "get": _op("This node, answered by itself: its name, whether it leads, its term")
        },
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
    paths.update(content_paths())
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
                "the device's client certificate, issued in the enrollment answer. Bodies "
                "are strict JSON: an integer is written without a fraction or an exponent "
                "(2.0 is refused, SPEC §1), no member twice, no NaN."
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
