"""HTTP routes of clients' content (content.py), and their OpenAPI description.

Clients upload a module (``POST /v1/modules``, ``application/wasm``) or an input
(``POST /v1/inputs``, ``application/octet-stream``) as the raw body and get its digest;
anyone entitled reads it back at ``GET /v1/content/{digest}``: its client (bearer token),
the operator, or a device over its own client certificate while it holds a WASM task
naming it.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from aeamc.shared.runtime.tls import peer_of
from aeamc.shared.wasmabi import MAX_INPUT_BYTES, MAX_MODULE_BYTES

from .auth import COORDINATOR_KEY, bearer, caller, scope
from .bodies import json_body, reply
from .errors import ApiError

#: Content types each upload accepts.
_TYPES = {
    "module": ("application/wasm", "application/octet-stream"),
    "input": ("application/octet-stream",),
}
#: Upload limits by route, for the API's body-limit middleware.
BODY_LIMITS: dict[tuple[str, str], int] = {
    ("POST", "/v1/modules"): MAX_MODULE_BYTES,
    ("POST", "/v1/inputs"): MAX_INPUT_BYTES,
}


async def _upload(request: web.Request, kind: str) -> web.Response:
    info = await caller(request, "client", "operator")
    if request.content_type not in _TYPES[kind]:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send the {kind} as the body, Content-Type {' or '.join(_TYPES[kind])}",
        )
    data = await request.read()
    stored = await request.app[COORDINATOR_KEY].content.add(kind, data, info.owner)
    created = stored.pop("created")
    return reply(
        stored,
        201 if created else 200,
        headers={"Location": f"/v1/content/{stored['digest']}"},
    )


async def upload_module(request: web.Request) -> web.Response:
    return await _upload(request, "module")


async def upload_input(request: web.Request) -> web.Response:
    return await _upload(request, "input")


async def get_content(request: web.Request) -> web.Response:
    content = request.app[COORDINATOR_KEY].content
    digest = request.match_info["digest"]
    peer = peer_of(request.transport)
    if bearer(request) is None and peer is not None and peer.role == "device":
        request.app[COORDINATOR_KEY].check_peer(peer, peer.name)
        data = await content.read_for_device(digest, peer.name)
    else:
        info = await caller(request, "client", "operator")
        data = await content.read_for_client(digest, scope(info))
    return web.Response(
        body=data,
        content_type="application/octet-stream",
        headers={"Cache-Control": "private, max-age=31536000, immutable", "ETag": f'"{digest}"'},
    )


async def post_chunk_fault(request: web.Request) -> web.Response:
    """A device's signed word that a chunk of its task has no output (faults.py)."""
    c = request.app[COORDINATOR_KEY]
    body = await json_body(request)
    return reply(await c.faults.report(body, peer_of(request.transport)), 202)


def add_content_routes(app: web.Application) -> None:
    app.router.add_post("/v1/modules", upload_module)
    app.router.add_post("/v1/inputs", upload_input)
    app.router.add_get("/v1/content/{digest}", get_content)
    app.router.add_post("/v1/faults", post_chunk_fault)


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_STORED = {
    "description": "stored: its digest names it from now on",
    "headers": {"Location": {"schema": {"type": "string"}}},
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "required": ["digest", "kind", "size"],
                "properties": {
                    "digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "kind": {"enum": ["module", "input"]},
                    "size": {"type": "integer", "minimum": 0},
                },
            }
        }
    },
}


def _upload_op(kind: str, limit: int, summary: str) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "201": _STORED,
        "200": {**_STORED, "description": "already held: this client is now an owner too"},
        "401": _error("no valid client or operator token"),
        "409": _error("the same bytes are held as the other kind"),
        "413": _error(f"over {limit} bytes"),
        "415": _error("wrong Content-Type"),
        "429": _error("rate limited"),
    }
    if kind == "module":
        responses["400"] = _error("not a module the sandbox runs (the message says why)")
    return {
        "summary": summary,
        "security": [{"client": []}, {"operator": []}],
        "requestBody": {
            "required": True,
            "content": {
                t: {"schema": {"type": "string", "format": "binary", "maxLength": limit}}
                for t in _TYPES[kind]
            },
        },
        "responses": responses,
    }


def openapi_paths() -> dict[str, Any]:
    return {
        "/v1/faults": {
            "post": {
                "summary": "A device's signed chunk_fault: a chunk of its WASM task has no "
                "output; the coordinator re-executes it and fails the task if so (SPEC §3.1)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": [
                                    "type",
                                    "task_id",
                                    "device_id",
                                    "chunk",
                                    "code",
                                    "timestamp",
                                    "signature",
                                ],
                                "properties": {
                                    "type": {"const": "chunk_fault"},
                                    "task_id": {"type": "string"},
                                    "device_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                                    "chunk": {"type": "integer", "minimum": 0},
                                    "code": {"type": "string"},
                                    "timestamp": {"type": "integer"},
                                    "signature": {"type": "string", "pattern": "^[0-9a-f]{128}$"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "202": {"description": "the fault is real: the task failed"},
                    "400": _error("malformed, stale or badly signed"),
                    "403": _error("not the device's certificate, or not enrolled"),
                    "404": _error("no assignment of the task to this device"),
                    "409": _error("no live assignment, or the chunk has an output (not_a_fault)"),
                    "429": _error("rate limited"),
                    "503": _error("the task's content is unavailable here"),
                },
            }
        },
        "/v1/modules": {
            "post": _upload_op(
                "module",
                MAX_MODULE_BYTES,
                "Upload a WebAssembly kernel (docs/workloads.md); it must compile in the "
                "sandbox, import nothing and export the ABI",
            )
        },
        "/v1/inputs": {
            "post": _upload_op("input", MAX_INPUT_BYTES, "Upload a task input (raw bytes)"),
        },
        "/v1/content/{digest}": {
            "get": {
                "summary": "A module or input by digest: for its client, the operator, or a "
                "device over its client certificate while it holds a WASM task naming it",
                "parameters": [
                    {
                        "name": "digest",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    }
                ],
                "security": [{"client": []}, {"operator": []}, {}],
                "responses": {
                    "200": {
                        "description": "the bytes",
                        "content": {"application/octet-stream": {}},
                    },
                    "401": _error("no valid token nor device certificate"),
                    "403": _error("the device certificate is revoked or not the device's"),
                    "404": _error("not held, or not the caller's to read"),
                    "429": _error("rate limited"),
                },
            }
        },
    }
