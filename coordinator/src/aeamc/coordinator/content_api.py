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

from aeamc.shared.messages import CHUNK_FAULT_CODES, MAX_CHUNKS
from aeamc.shared.wasmabi import MAX_INPUT_BYTES, MAX_MODULE_BYTES

from .apidoc import errors, json_object_body, path_param
from .apischemas import DEVICE_ID, HEX32, SIG, TASK_ID, TIMESTAMP, integer
from .auth import COORDINATOR_KEY, bearer, caller, scope
from .bodies import json_body, reply
from .errors import ApiError
from .forwarding import request_peer

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
    if "Content-Type" not in request.headers or request.content_type not in _TYPES[kind]:
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
    peer = request_peer(request)
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
    return reply(await c.faults.report(body, request_peer(request)), 202)


def add_content_routes(app: web.Application) -> None:
    app.router.add_post("/v1/modules", upload_module)
    app.router.add_post("/v1/inputs", upload_input)
    app.router.add_get("/v1/content/{digest}", get_content)
    app.router.add_post("/v1/faults", post_chunk_fault)


_STORED_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["digest", "kind", "size"],
    "properties": {
        "digest": HEX32,
        "kind": {"enum": ["module", "input"]},
        "size": {"type": "integer", "minimum": 0},
    },
}


def _stored(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"Location": {"schema": {"type": "string"}}},
        "content": {"application/json": {"schema": _STORED_SCHEMA}},
    }


def _upload_op(kind: str, limit: int, summary: str) -> dict[str, Any]:
    refusals = (400, 401, 403, 409, 415) if kind == "module" else (401, 403, 409, 415)
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
        "responses": {
            "201": _stored("stored: its digest names it from now on"),
            "200": _stored("already held: this client is now one of its owners"),
            **errors(*refusals),
        },
    }


_FAULT_REPORT: dict[str, Any] = {
    "type": {"const": "chunk_fault"},
    "task_id": TASK_ID,
    "device_id": DEVICE_ID,
    "chunk": integer(0, MAX_CHUNKS - 1),
    "code": {"enum": list(CHUNK_FAULT_CODES)},
    "timestamp": TIMESTAMP,
    "signature": SIG,
}


def openapi_paths() -> dict[str, Any]:
    return {
        "/v1/modules": {
            "post": _upload_op(
                "module",
                MAX_MODULE_BYTES,
                "Upload a WebAssembly kernel (docs/workloads.md); it must compile in the "
                "sandbox, import nothing and export the ABI (400 bad_module says why not)",
            )
        },
        "/v1/inputs": {
            "post": _upload_op("input", MAX_INPUT_BYTES, "Upload a task input (raw bytes)"),
        },
        "/v1/content/{digest}": {
            "get": {
                "summary": "A module or input by digest: for its client, the operator, or a "
                "device over its client certificate while it holds a WASM task naming it",
                "parameters": [path_param("digest", {"type": "string"}, "lowercase hex SHA-256")],
                "security": [{"client": []}, {"operator": []}, {}],
                "responses": {
                    "200": {
                        "description": "the bytes",
                        "content": {"application/octet-stream": {}},
                    },
                    **errors(401, 403, 404),
                },
            }
        },
        "/v1/faults": {
            "post": {
                "summary": "A device's signed chunk_fault: a chunk of its WASM task has no "
                "output; the coordinator runs it too and fails the task if so (SPEC §3.1)",
                "requestBody": json_object_body(_FAULT_REPORT, list(_FAULT_REPORT)),
                "responses": {
                    "202": {
                        "description": "the fault is real: the task failed",
                        "content": {"application/json": {}},
                    },
                    **errors(400, 403, 404, 409, 415, 503),
                },
            }
        },
    }
