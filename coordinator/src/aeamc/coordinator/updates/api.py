"""HTTP routes of fleet updates, and their OpenAPI description.

Devices fetch TUF metadata and release files without a token (TUF signatures, not the
transport, make them trustworthy) and post signed update reports; the operator manages
rollouts with the operator token.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from aeamc.shared.refusals import not_found
from aeamc.shared.runtime.tls import peer_of

from ..auth import COORDINATOR_KEY, require
from ..bodies import json_body, reply
from ..errors import ApiError
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
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 200):
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
    return reply(await rollouts.report(body, peer_of(request.transport)), 202)


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


def _op(summary: str, security: str | None = None, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"default": {"description": "JSON answer or error"}},
    }
    if security:
        op["security"] = [{security: []}]
    op.update(extra)
    return op


def _json_body(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "required": bool(required),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": required,
                    "properties": props,
                }
            }
        },
    }


_PERCENT = {"type": "integer", "minimum": 0, "maximum": 100}
_TEXT = {"type": "string", "maxLength": 200}


def openapi_paths() -> dict[str, Any]:
    return {
        "/v1/updates/metadata/{name}": {
            "get": _op("TUF metadata of the agent releases (N.root.json, timestamp.json, …)")
        },
        "/v1/updates/targets/{path}": {
            "get": _op(
                "A release file, by its TUF target path with the hash prefix",
                responses={
                    "200": {"description": "the file", "content": {"application/octet-stream": {}}}
                },
            )
        },
        "/v1/updates/reports": {
            "post": _op(
                "A device's signed update_report: updated, rolled_back or refused; only "
                "from an approved device of the release's cohort, over its own client "
                "certificate",
                requestBody=_json_body(
                    {
                        "type": {"const": "update_report"},
                        "device_id": {"type": "string"},
                        "release": {"type": "string"},
                        "version": {"type": "string"},
                        "outcome": {"enum": ["updated", "rolled_back", "refused"]},
                        "detail": {"type": "string", "maxLength": 500},
                        "timestamp": {"type": "integer"},
                        "signature": {"type": "string"},
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
            )
        },
        "/v1/releases": {
            "get": _op("Fleet versions, every rollout's progress, repository expiry", "operator"),
            "post": _op(
                "Start the rollout of a published release",
                "operator",
                requestBody=_json_body(
                    {"version": {"type": "string"}, "percent": _PERCENT, "by": _TEXT},
                    ["version", "percent"],
                ),
            ),
        },
        "/v1/releases/{version}": {
            "get": _op("One rollout with every device's report", "operator")
        },
        "/v1/releases/{version}/rollout": {
            "put": _op(
                "Set a rollout's percent (resumes a halted one)",
                "operator",
                requestBody=_json_body({"percent": _PERCENT, "by": _TEXT}, ["percent"]),
            )
        },
        "/v1/releases/{version}/halt": {
            "post": _op(
                "Halt a rollout: no further device starts the update",
                "operator",
                requestBody=_json_body({"reason": _TEXT, "by": _TEXT}, []),
            )
        },
    }
