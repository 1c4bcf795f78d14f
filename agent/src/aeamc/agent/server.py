"""The agent's HTTP API, called by the coordinator (and by anyone for health).

=====================  ===================================================================
``POST /v1/assignments``  a signed ``assignment`` → 202 ``{"accepted": true, "state"}``
                          once it is durably queued, or 409
                          ``{"error": {"code": "refused", "message", "reason"}}``
``POST /v1/challenges``   a signed ``challenge`` → 200 the signed ``opening``, or 404
                          ``unknown_task`` when the trace is not kept (any more)
``GET /v1/health``        liveness and whether the device takes work now
``GET /v1/capabilities``  identity and capabilities (as sent at enrollment)
``GET /metrics``          Prometheus metrics (metrics.py): tasks, refusals, outbox
=====================  ===================================================================

Every error is JSON ``{"error": {"code", "message"}}`` with a 4xx status; bad input never
causes a 5xx. The server speaks TLS 1.3 only. Assignments and challenges must come over
a connection on which the pinned coordinator presented its certificate from the pinned
CA (403 ``certificate_required`` otherwise; a certificate from another CA fails the
handshake); health and capabilities are public. Checks run cheapest and least revealing
first: the client certificate, parse, then the pinned coordinator's signature (an
unsigned request learns nothing else), then the rest. Bodies are parsed strictly
(``aeamc.shared.strictjson``): a member given twice, or NaN or Infinity, is 400
``invalid_json``, since such a body can mean one thing to the signature check and another
to whoever reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from aeamc.shared.envelope import INTERNAL, ApiError
from aeamc.shared.errors import ProtocolError, SignatureError, UnknownTaskKind
from aeamc.shared.messages import Assignment, Challenge, SignedMessage, parse_signed
from aeamc.shared.proofs import build_opening
from aeamc.shared.runtime.logs import REQUEST_ID, REQUEST_ID_HEADER, well_formed
from aeamc.shared.strictjson import JsonError, loads_strict

from . import __version__, logs
from .net import MAX_REQUEST_BYTES

if TYPE_CHECKING:
    from .view import AgentView

log = logging.getLogger(__name__)
M = TypeVar("M", bound=SignedMessage)

AGENT_KEY: web.AppKey[AgentView] = web.AppKey("agent")


class Refused(ApiError):
    """409 ``refused``: a valid assignment this device will not take now, and why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(409, "refused", message, reason=reason)


def make_app(agent: AgentView) -> web.Application:
    app = web.Application(middlewares=[_request_id, _errors], client_max_size=MAX_REQUEST_BYTES)
    app[AGENT_KEY] = agent
    app.router.add_post("/v1/assignments", post_assignment)
    app.router.add_post("/v1/challenges", post_challenge)
    app.router.add_get("/v1/health", get_health)
    app.router.add_get("/v1/capabilities", get_capabilities)
    app.router.add_get("/metrics", get_metrics)
    return app


def _from_coordinator(agent: AgentView, request: web.Request) -> None:
    if agent.link is None or agent.link.pin is None:
        raise ApiError(403, "not_enrolled", "this device is not enrolled with a coordinator yet")
    if not agent.link.tls.coordinator_peer_ok(request.transport):
        raise ApiError(
            403,
            "certificate_required",
            "only the pinned coordinator, with its client certificate, may send this",
        )


async def post_assignment(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    _from_coordinator(agent, request)
    assignment = _verified(agent, await _json(request), Assignment)
    if assignment.coordinator_id != agent.pinned_coordinator_id:
        raise ApiError(403, "unknown_coordinator", "not the coordinator this device enrolled with")
    logs.remember_task(assignment.task_id, REQUEST_ID.get())
    state = agent.accept(assignment)
    return web.json_response({"accepted": True, "state": state}, status=202)


async def post_challenge(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    _from_coordinator(agent, request)
    challenge = _verified(agent, await _json(request), Challenge)
    logs.remember_task(challenge.task_id, REQUEST_ID.get())
    stored = agent.traces.load(challenge.task_id, agent.clock_ms())
    if stored is None:
        raise ApiError(404, "unknown_task", f"no trace kept for task {challenge.task_id}")
    chunks = len(stored.trace.outputs)
    if any(i >= chunks for i in challenge.indices):
        raise ApiError(400, "invalid_message", f"indices: the task has {chunks} chunks")
    opening = build_opening(agent.key, challenge, stored.trace)
    log.info(
        "challenge for %s answered (%d chunks opened)", challenge.task_id, len(challenge.indices)
    )
    return web.json_response(opening.to_dict())


async def get_health(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    reason = agent.refusal_reason()
    return web.json_response(
        {
            "status": "shutting_down" if agent.shutting_down else "ok",
            "device_id": agent.device_id,
            "version": __version__,
            "accepting_work": reason is None,
            "reason": reason,
            "coordinator_state": agent.link.state if agent.link else None,
        }
    )


async def get_capabilities(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    return web.json_response(
        {
            "device_id": agent.device_id,
            "public_key": agent.key.public_key.hex(),
            "capabilities": agent.capabilities().to_dict(),
        }
    )


async def get_metrics(request: web.Request) -> web.Response:
    agent = request.app[AGENT_KEY]
    body, content_type = agent.metrics.render(__version__, agent.metrics_gauges())
    return web.Response(body=body, headers={"Content-Type": content_type})


# --- helpers ------------------------------------------------------------------------------


async def _json(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError.from_status(413, f"request body over {MAX_REQUEST_BYTES} bytes") from None
    try:
        return loads_strict(raw)
    except JsonError as exc:
        raise ApiError(400, exc.code, f"the request body: {exc.message}") from None


def _verified(agent: AgentView, data: Any, model: type[M]) -> M:
    try:
        message = parse_signed(data, model)
    except ProtocolError as exc:
        raise ApiError(400, exc.code, exc.message) from None
    pin = agent.link.pin if agent.link else None
    if pin is None:
        raise ApiError(403, "not_enrolled", "this device is not enrolled with a coordinator yet")
    try:
        message.verify(pin.public_key_bytes)
    except SignatureError as exc:
        raise ApiError(
            403, "bad_signature", f"not signed by the pinned coordinator: {exc}"
        ) from None
    if message.device_id != agent.device_id:  # type: ignore[attr-defined]
        raise ApiError(400, "wrong_device", f"addressed to another device, not {agent.device_id}")
    return message


@web.middleware
async def _request_id(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Log under the coordinator's ``X-Request-ID`` (the task's id) when it sends one."""
    rid = request.headers.get(REQUEST_ID_HEADER)
    token = REQUEST_ID.set(rid if well_formed(rid) else None)
    try:
        resp = await handler(request)
        if rid and well_formed(rid) and not resp.prepared:
            resp.headers[REQUEST_ID_HEADER] = rid
        return resp
    finally:
        REQUEST_ID.reset(token)


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        if exc.status >= 400:
            log.info("%s %s → %d %s: %s", request.method, request.path, exc.status, exc.code, exc)
        return _response(exc)
    except UnknownTaskKind as exc:
        return _response(Refused("unknown_kind", exc.message))
    except ProtocolError as exc:
        return _response(ApiError(400, exc.code, exc.message))
    except web.HTTPException as exc:
        return _response(ApiError.from_status(exc.status, exc.reason))
    except Exception:
        # A bug, not bad input: say so without leaking internals.
        log.exception("%s %s failed", request.method, request.path)
        return _response(ApiError(500, INTERNAL, "the agent failed to handle this request"))


def _response(exc: ApiError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status)
