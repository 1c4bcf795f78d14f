"""HTTP routes of fleet updates, and their OpenAPI description.

Devices fetch TUF metadata and release files without a token (TUF signatures, not the
transport, make them trustworthy) and post signed update reports; the operator manages
rollouts with the operator token.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from aeamc.shared.canonical import MAX_SAFE_INT
from aeamc.shared.refusals import not_found
from aeamc.shared.releases import OUTCOMES
from aeamc.shared.versions import VERSION_PATTERN

from ..apidoc import errors, json_object_body, path_param
from ..auth import COORDINATOR_KEY, require
from ..bodies import json_body, reply
from ..errors import ApiError
from ..forwarding import request_peer
from .repository import METADATA_NAME
from .rollouts import Rollouts


def _rollouts(request: web.Request) -> Rollouts:
    rollouts = request.app[COORDINATOR_KEY].rollouts
    if not isinstance(rollouts, Rollouts):
        raise ApiError(404, "not_found", "fleet updates are not set up")
    return rollouts


async def _operator(request: web.Request) -> str:
    return await require(request, "operator")


async def _body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) - allowed:
        raise ApiError(400, "invalid_message", f"fields: {', '.join(sorted(allowed))}")
    for name in ("by", "reason"):
        value = body.get(name)
        if name in body and (not isinstance(value, str) or not 0 < len(value) <= 200):
            raise ApiError(400, "invalid_message", f"{name}: a string of at most 200", field=name)
    return body


# -- devices ------------------------------------------------------------------------------


async def get_metadata(request: web.Request) -> web.StreamResponse:
    path = _rollouts(request).repo.metadata_file(request.match_info["name"])
    if path is None:
        raise not_found("metadata file")
    # Timestamps change every re-signing: never serve a cached one.
    return web.Response(
        body=path.read_bytes(),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def get_target(request: web.Request) -> web.StreamResponse:
    path = _rollouts(request).repo.target_file(request.match_info["path"])
    if path is None:
        raise not_found("target file")
    return web.Response(body=path.read_bytes(), content_type="application/octet-stream")


async def post_report(request: web.Request) -> web.Response:
    rollouts = _rollouts(request)
    body = await json_body(request)
    return reply(await rollouts.report(body, request_peer(request)), 202)


# -- operator -----------------------------------------------------------------------------


async def list_releases(request: web.Request) -> web.Response:
    await _operator(request)
    return reply(await _rollouts(request).status())


async def create_release(request: web.Request) -> web.Response:
    who = await _operator(request)
    body = await _body(request, {"version", "percent", "by"})
    if "version" not in body or "percent" not in body:
        raise ApiError(400, "invalid_message", "fields: version, percent, and optionally by")
    view = await _rollouts(request).register(
        body["version"], body["percent"], body.get("by") or who
    )
    return reply(view, 201)


async def get_release(request: web.Request) -> web.Response:
    await _operator(request)
    return reply(await _rollouts(request).detail(request.match_info["version"]))


async def set_rollout(request: web.Request) -> web.Response:
    who = await _operator(request)
    body = await _body(request, {"percent", "by"})
    if "percent" not in body:
        raise ApiError(400, "invalid_message", "fields: percent, and optionally by")
    rollouts = _rollouts(request)
    version = request.match_info["version"]
    return reply(await rollouts.set_percent(version, body["percent"], body.get("by") or who))


async def halt_release(request: web.Request) -> web.Response:
    who = await _operator(request)
    body = await _body(request, {"reason", "by"})
    rollouts = _rollouts(request)
    version = request.match_info["version"]
    reason = body.get("reason") or "halted by the operator"
    return reply(await rollouts.halt(version, reason, body.get("by") or who))


def add_update_routes(app: web.Application) -> None:
    app.router.add_get("/v1/updates/metadata/{name}", get_metadata)
    app.router.add_get("/v1/updates/targets/{path:.+}", get_target)
    app.router.add_post("/v1/updates/reports", post_report)
    app.router.add_get("/v1/releases", list_releases)
    app.router.add_post("/v1/releases", create_release)
    app.router.add_get("/v1/releases/{version}", get_release)
    app.router.add_put("/v1/releases/{version}/rollout", set_rollout)
    app.router.add_post("/v1/releases/{version}/halt", halt_release)


def _op(
    summary: str,
    security: str | None = None,
    *,
    ok: dict[str, Any] | None = None,
    refusals: tuple[int, ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            **(ok or {"200": {"description": "OK", "content": {"application/json": {}}}}),
            **errors(*refusals),
        },
    }
    if security:
        op["security"] = [{security: []}]
    op.update(extra)
    return op


def _text(max_len: int, pattern: str | None = None, min_len: int = 1) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", "minLength": min_len, "maxLength": max_len}
    if pattern is not None:
        out["pattern"] = f"^(?:{pattern})$"
    return out


_PERCENT = {"type": "integer", "minimum": 0, "maximum": 100}
_TEXT = _text(200)
_VERSION = _text(64, VERSION_PATTERN)
_VERSION_PARAM = path_param("version", {"type": "string", "minLength": 1})
#: The operator token (401 without a valid one, 403 for another role); 404 when this
#: coordinator has no update repository.
_OPERATOR = (401, 403, 404)
_BODY = (400, 415)


def openapi_paths() -> dict[str, Any]:
    return {
        "/v1/updates/metadata/{name}": {
            "parameters": [
                path_param(
                    "name",
                    {"type": "string", "pattern": f"^(?:{METADATA_NAME.pattern})$"},
                    "N.root.json, root.json, targets.json, snapshot.json, timestamp.json",
                )
            ],
            "get": _op("TUF metadata of the agent releases", refusals=(404,)),
        },
        "/v1/updates/targets/{path}": {
            "parameters": [
                path_param(
                    "path",
                    {"type": "string", "minLength": 1},
                    "the TUF target path: agent/<version>/<sha256>.<file name>",
                )
            ],
            "get": _op(
                "A release file, by its TUF target path with the hash prefix",
                ok={
                    "200": {"description": "the file", "content": {"application/octet-stream": {}}}
                },
                refusals=(404,),
            ),
        },
        "/v1/updates/reports": {
            "post": _op(
                "A device's signed update_report: updated, rolled_back or refused; only "
                "from an approved device of the release's cohort, over its own client "
                "certificate",
                requestBody=json_object_body(
                    {
                        "type": {"const": "update_report"},
                        "device_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                        "release": _VERSION,
                        "version": _VERSION,
                        "outcome": {"enum": list(OUTCOMES)},
                        "detail": _text(500, min_len=0),
                        "timestamp": {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INT},
                        "signature": {"type": "string", "pattern": "^[0-9a-f]{128}$"},
                    },
                    [
                        "type",
                        "device_id",
                        "release",
                        "version",
                        "outcome",
                        "detail",
                        "timestamp",
                        "signature",
                    ],
                ),
                ok={"202": {"description": "recorded", "content": {"application/json": {}}}},
                refusals=(*_BODY, 401, 403, 404, 409),
            )
        },
        "/v1/releases": {
            "get": _op(
                "Fleet versions, every rollout's progress, repository expiry",
                "operator",
                refusals=_OPERATOR,
            ),
            "post": _op(
                "Start the rollout of a published release",
                "operator",
                requestBody=json_object_body(
                    {"version": _VERSION, "percent": _PERCENT, "by": _TEXT},
                    ["version", "percent"],
                ),
                ok={"201": {"description": "rolling out", "content": {"application/json": {}}}},
                refusals=(*_BODY, *_OPERATOR, 409),
            ),
        },
        "/v1/releases/{version}": {
            "parameters": [_VERSION_PARAM],
            "get": _op("One rollout with every device's report", "operator", refusals=_OPERATOR),
        },
        "/v1/releases/{version}/rollout": {
            "parameters": [_VERSION_PARAM],
            "put": _op(
                "Set a rollout's percent (resumes a halted one)",
                "operator",
                requestBody=json_object_body({"percent": _PERCENT, "by": _TEXT}, ["percent"]),
                refusals=(*_BODY, *_OPERATOR, 409),
            ),
        },
        "/v1/releases/{version}/halt": {
            "parameters": [_VERSION_PARAM],
            "post": _op(
                "Halt a rollout: no further device starts the update",
                "operator",
                requestBody=json_object_body(
                    {"reason": _TEXT, "by": _TEXT}, [], body_required=False
                ),
                refusals=(*_BODY, *_OPERATOR, 409),
            ),
        },
    }
