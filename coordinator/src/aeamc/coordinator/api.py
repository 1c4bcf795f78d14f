"""The coordinator's HTTP JSON API under ``/v1/`` (SPEC §9).

Handlers only translate: HTTP in, a ``Coordinator`` call, HTTP out. One middleware turns
every failure into ``{"error": {"code", "message"}}`` with a 4xx for anything a client
sent; a 5xx only ever means a fault of ours, and never carries internals.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from aeamc.shared.errors import ProtocolError
from aeamc.shared.runtime.tls import peer_of

from .anchoring.bundles import receipt_bundle
from .dashboard import add_dashboard_routes
from .errors import ApiError
from .logs import REQUEST_ID, REQUEST_ID_HEADER, incoming_request_id
from .metrics import Metrics
from .openapi import openapi_document
from .ratelimit import RateLimiter
from .service import Coordinator, TokenInfo
from .updates.api import add_update_routes

log = logging.getLogger(__name__)

COORDINATOR_KEY: web.AppKey[Coordinator] = web.AppKey("coordinator", Coordinator)
_DEVICE_ID = re.compile(r"[0-9a-f]{32}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate member {k!r}")
        out[k] = v
    return out


async def json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    raw = await request.read()
    try:
        return json.loads(
            raw, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys
        )
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None


def reply(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, sort_keys=True))


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return reply(exc.body(), exc.status)
    except ProtocolError as exc:
        err = ApiError.from_protocol(exc)
        return reply(err.body(), err.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        resp = reply({"error": {"code": code, "message": exc.reason}}, exc.status)
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return reply({"error": {"code": "internal", "message": "internal error"}}, 500)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id (a well-formed ``X-Request-ID`` is kept), log under it, echo it."""
    rid = incoming_request_id(request.headers.get(REQUEST_ID_HEADER))
    token = REQUEST_ID.set(rid)
    try:
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            exc.headers[REQUEST_ID_HEADER] = rid
            raise
        if not resp.prepared:
            resp.headers[REQUEST_ID_HEADER] = rid
        return resp
    finally:
        REQUEST_ID.reset(token)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _auth(request: web.Request, *roles: str) -> str:
    info = await _caller(request, *roles)
    return info.label or info.role


async def _caller(request: web.Request, *roles: str) -> TokenInfo:
    """The request's valid token of one of ``roles``, with its owner id."""
    return await request.app[COORDINATOR_KEY].check_token(_bearer(request), roles)


def _scope(info: TokenInfo) -> str | None:
    """Whose tasks the caller may see: a client its own (its owner id), the operator all."""
    return None if info.role == "operator" else info.owner


def _device_id(request: web.Request) -> str:
    device_id = request.match_info["device_id"]
    if not _DEVICE_ID.fullmatch(device_id):
        raise ApiError(
            400, "invalid_message", "device_id must be 32 lowercase hex", field="device_id"
        )
    return device_id


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name) if name in request.query else request.match_info.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_message", f"{name} must be an integer", field=name) from None
    if not lo <= value <= hi:
        raise ApiError(400, "invalid_message", f"{name} must be {lo}..{hi}", field=name)
    return value


# -- device-facing ------------------------------------------------------------------------


async def enroll(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    return reply(await c.enroll(await json_body(request), request.remote), 202)


async def heartbeats(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    return reply(await c.heartbeat(await json_body(request), peer_of(request.transport)), 202)


async def post_proof(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    return reply(await c.accept_proof(await json_body(request), peer_of(request.transport)), 202)


#: Most proofs one batch may carry (a device's outbox sends what it holds, in order).
MAX_PROOF_BATCH = 256


async def post_proof_batch(request: web.Request) -> web.Response:
    """Several proofs in one request and one durable commit; a result for each, in order."""
    c = request.app[COORDINATOR_KEY]
    body = await json_body(request)
    items = body.get("proofs") if isinstance(body, dict) and set(body) == {"proofs"} else None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_PROOF_BATCH:
        raise ApiError(
            400,
            "invalid_message",
            f'body: {{"proofs": [1..{MAX_PROOF_BATCH} proof submissions]}}',
            field="proofs",
        )
    results = await c.accept_proofs(items, peer_of(request.transport))
    return reply({"results": results}, 200)


# -- clients --------------------------------------------------------------------------------


async def submit_task(request: web.Request) -> web.Response:
    info = await _caller(request, "client", "operator")
    c = request.app[COORDINATOR_KEY]
    body = await json_body(request)
    return reply(await c.submit_task(body, info.label or info.role, info.owner), 202)


async def list_tasks(request: web.Request) -> web.Response:
    info = await _caller(request, "client", "operator")
    limit = _int_param(request, "limit", 100, 1, 1000)
    state = request.query.get("state")
    c = request.app[COORDINATOR_KEY]
    return reply({"tasks": await c.list_tasks(limit, state, owner=_scope(info))})


async def get_task(request: web.Request) -> web.Response:
    info = await _caller(request, "client", "operator")
    c = request.app[COORDINATOR_KEY]
    return reply(await c.task_view(request.match_info["task_id"], owner=_scope(info)))


# -- operator ---------------------------------------------------------------------------------


async def list_devices(request: web.Request) -> web.Response:
    await _auth(request, "operator")
    c = request.app[COORDINATOR_KEY]
    devices = sorted(c.devices.values(), key=lambda d: d.device_id)
    return reply({"devices": [c.device_view(d) for d in devices]})


async def get_device(request: web.Request) -> web.Response:
    await _auth(request, "operator")
    c = request.app[COORDINATOR_KEY]
    return reply(c.device_view(c.device(_device_id(request))))


async def _reason(request: web.Request, default: str) -> str:
    if not request.can_read_body:
        return default
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) - {"reason"}:
        raise ApiError(400, "invalid_message", "body may only hold a reason")
    reason = body.get("reason", default)
    if not isinstance(reason, str) or len(reason) > 200:
        raise ApiError(400, "invalid_message", "reason: a string of at most 200", field="reason")
    return reason


async def approve_device(request: web.Request) -> web.Response:
    await _auth(request, "operator")
    c = request.app[COORDINATOR_KEY]
    device_id = _device_id(request)
    reason = await _reason(request, "approved")
    device = c.device(device_id)
    if device.state == "quarantined":
        raise ApiError(409, "quarantined", "a quarantined device cannot be approved")
    if device.state != "pending":
        return reply(c.device_view(device))
    return reply(c.device_view(await c.set_device_state(device_id, "active", reason)))


async def quarantine_device(request: web.Request) -> web.Response:
    await _auth(request, "operator")
    c = request.app[COORDINATOR_KEY]
    device_id = _device_id(request)
    reason = await _reason(request, "quarantined by the operator")
    return reply(c.device_view(await c.set_device_state(device_id, "quarantined", reason)))


async def _operator_or_device(request: web.Request, device_id: str, action: str) -> str:
    """Authorize with the operator token, or else with the device's signed privacy request."""
    c = request.app[COORDINATOR_KEY]
    if request.headers.get("Authorization"):
        await _auth(request, "operator")
        return "operator"
    if not request.can_read_body:
        raise ApiError(
            401, "unauthorized", "send the operator token or the device's signed privacy request"
        )
    c.check_privacy_request(await json_body(request), device_id, action, peer_of(request.transport))
    return "device"


async def export_device_operator(request: web.Request) -> web.Response:
    await _auth(request, "operator")
    c = request.app[COORDINATOR_KEY]
    return reply(await c.export_device(_device_id(request)))


async def export_device(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    device_id = _device_id(request)
    await _operator_or_device(request, device_id, "export")
    return reply(await c.export_device(device_id))


async def erase_device(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    device_id = _device_id(request)
    await _operator_or_device(request, device_id, "erase")
    return reply(await c.erase_device(device_id))


async def create_token(request: web.Request) -> web.Response:
    await _auth(request, "operator")
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) - {"role", "label", "ttl_s", "uses"}:
        raise ApiError(400, "invalid_message", "fields: role, label, ttl_s, uses")
    role = body.get("role", "enroll")
    label = body.get("label", "")
    ttl = body.get("ttl_s")
    uses = body.get("uses")
    for name, value in (("ttl_s", ttl), ("uses", uses)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ApiError(400, "invalid_message", f"{name}: a positive integer", field=name)
    if not isinstance(label, str) or len(label) > 100:
        raise ApiError(400, "invalid_message", "label: a string of at most 100", field="label")
    if not isinstance(role, str):
        raise ApiError(400, "invalid_message", "role: a string", field="role")
    token = await request.app[COORDINATOR_KEY].create_token(role, label=label, ttl_s=ttl, uses=uses)
    return reply({"token": token, "role": role, "ttl_s": ttl, "uses": uses}, 201)


async def list_flags(request: web.Request) -> web.Response:
    await _auth(request, "operator")
    return reply({"flags": await request.app[COORDINATOR_KEY].list_flags()})


async def set_flag(request: web.Request) -> web.Response:
    who = await _auth(request, "operator")
    body = await json_body(request)
    if not isinstance(body, dict) or "percent" not in body or set(body) - {"percent", "by"}:
        raise ApiError(400, "invalid_message", "fields: percent, and optionally by")
    by = body.get("by")
    if by is not None and (not isinstance(by, str) or not 0 < len(by) <= 100):
        raise ApiError(400, "invalid_message", "by: a string of at most 100", field="by")
    c = request.app[COORDINATOR_KEY]
    return reply(await c.set_flag(request.match_info["name"], body["percent"], by or who))


async def flag_history(request: web.Request) -> web.Response:
    await _auth(request, "operator")
    name = request.query.get("name")
    return reply({"history": await request.app[COORDINATOR_KEY].flag_history(name)})


async def status(request: web.Request) -> web.Response:
    await _auth(request, "operator")
    return reply(await request.app[COORDINATOR_KEY].summary())


# -- public on the LAN ------------------------------------------------------------------------


async def list_blocks(request: web.Request) -> web.Response:
    start = _int_param(request, "from", 0, 0, 2**53)
    limit = _int_param(request, "limit", 100, 1, 1000)
    return reply({"microblocks": await request.app[COORDINATOR_KEY].blocks_view(start, limit)})


async def get_block(request: web.Request) -> web.Response:
    height = _int_param(request, "height", 0, 0, 2**53)
    return reply(await request.app[COORDINATOR_KEY].block_view(height))


async def get_block_raw(request: web.Request) -> web.Response:
    height = _int_param(request, "height", 0, 0, 2**53)
    raw = await request.app[COORDINATOR_KEY].block_bytes(height)
    return web.Response(body=raw, content_type="application/octet-stream")


async def receipt_proof(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    device_id = _device_id(request)
    return reply(await receipt_bundle(c.db, request.match_info["task_id"], device_id))


async def health(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    alerts = await c.alerts()
    return reply(
        {
            "status": "degraded" if alerts else "ok",
            "coordinator_id": c.coordinator_id,
            "cluster_id": c.config.protocol.cluster_id,
            "degraded": [a["name"] for a in alerts],
            "alerts": alerts,
            "ca_fingerprint": c.certs.ca.fingerprint if c.certs is not None else None,
        }
    )


async def ca_certificate(request: web.Request) -> web.Response:
    """The CA certificate, public: an agent that was given its fingerprint checks it before
    it sends anything (its enrollment token included) to this coordinator."""
    c = request.app[COORDINATOR_KEY]
    if c.certs is None:
        raise ApiError(503, "unavailable", "this coordinator has no certificate authority")
    return reply({"ca_certificate": c.certs.ca.cert_pem, "ca_fingerprint": c.certs.ca.fingerprint})


async def openapi(request: web.Request) -> web.Response:
    return reply(openapi_document())


def build_app(coordinator: Coordinator) -> web.Application:
    metrics = Metrics(coordinator)
    limiter = RateLimiter(coordinator.config.limits)
    app = web.Application(
        # Metrics outermost, so they see the status the error middleware chose.
        # Request ids outermost, so every line logged for a request carries its id.
        # Rate limits before any work (even reading the body) is spent on a request.
        middlewares=[
            request_id_middleware,
            metrics.middleware,
            limiter.middleware,
            error_middleware,
        ],
        client_max_size=coordinator.config.server.max_body_bytes,
    )
    app[COORDINATOR_KEY] = coordinator
    app.router.add_get("/metrics", metrics.handler)
    app.router.add_post("/v1/enroll", enroll)
    app.router.add_post("/v1/heartbeats", heartbeats)
    app.router.add_post("/v1/proofs", post_proof)
    app.router.add_post("/v1/proofs/batch", post_proof_batch)
    app.router.add_post("/v1/tasks", submit_task)
    app.router.add_get("/v1/tasks", list_tasks)
    app.router.add_get("/v1/tasks/{task_id}", get_task)
    app.router.add_get("/v1/devices", list_devices)
    app.router.add_get("/v1/devices/{device_id}", get_device)
    app.router.add_delete("/v1/devices/{device_id}", erase_device)
    app.router.add_get("/v1/devices/{device_id}/export", export_device_operator)
    app.router.add_post("/v1/devices/{device_id}/export", export_device)
    app.router.add_post("/v1/devices/{device_id}/approve", approve_device)
    app.router.add_post("/v1/devices/{device_id}/quarantine", quarantine_device)
    app.router.add_post("/v1/tokens", create_token)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/flags", list_flags)
    app.router.add_get("/v1/flags/history", flag_history)
    app.router.add_put("/v1/flags/{name}", set_flag)
    app.router.add_get("/v1/microblocks", list_blocks)
    app.router.add_get("/v1/microblocks/{height}", get_block)
    app.router.add_get("/v1/microblocks/{height}/raw", get_block_raw)
    app.router.add_get("/v1/receipts/{task_id}/{device_id}/proof", receipt_proof)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/ca", ca_certificate)
    app.router.add_get("/v1/openapi.json", openapi)
    add_update_routes(app)  # TUF repository, update reports, rollouts
    # The page, /privacy, login; also appends the session middleware, innermost.
    add_dashboard_routes(app, coordinator)
    return app
