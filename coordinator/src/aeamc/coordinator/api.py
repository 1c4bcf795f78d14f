"""The coordinator's HTTP JSON API under ``/v1/`` (SPEC §9).

Handlers only translate: HTTP in, a ``Coordinator`` call, HTTP out. One layer (``Front``) turns
every failure into ``{"error": {"code", "message"}}`` with a 4xx for anything a client
sent; a 5xx only ever means a fault of ours, and never carries internals.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web

from aeamc.shared.canonical import MAX_SAFE_INT
from aeamc.shared.errors import ValidationError
from aeamc.shared.labels import MAX_TAGS, TAG_PATTERN
from aeamc.shared.schema import array, optional, record, text

from . import securitytxt, wire
from .anchoring.bundles import receipt_bundle
from .apischemas import DOCUMENTED_KINDS
from .auth import COORDINATOR_KEY, caller, require, scope
from .bodies import OFF_LOOP_BYTES, BodyShape, json_body, parse_json, reply
from .content_api import add_content_routes
from .dashboard import add_dashboard_routes
from .devices import DeviceService
from .errors import ApiError
from .forwarding import Forwarding, request_peer
from .front import Front
from .ingestion import MAX_PROOF_BATCH
from .metrics import Metrics
from .openapi import openapi_document
from .overload import Admission, LoopLag, StandingDelay
from .ratelimit import RateLimiter
from .registry import Device
from .service import Coordinator
from .tokens import MAX_TOKEN_TTL_S
from .updates.api import add_update_routes

log = logging.getLogger(__name__)

_DEVICE_ID = re.compile(r"[0-9a-f]{32}")
#: A decimal in a query or a path: at most 16 digits (2^53 has 16).
_DECIMAL = re.compile(r"[0-9]{1,16}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
    # ASCII digits only: int() would also take "+1", " 1", "1_0" and other scripts' digits.
    if not _DECIMAL.fullmatch(raw):
        raise ApiError(400, "invalid_message", f"{name} must be an integer", field=name)
    value = int(raw)
    if not lo <= value <= hi:
        raise ApiError(400, "invalid_message", f"{name} must be {lo}..{hi}", field=name)
    return value


def _bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name)
    if raw is None:
        return False
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ApiError(400, "invalid_message", f"{name} must be true or false", field=name)


# -- device-facing ------------------------------------------------------------------------


async def enroll(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    return reply(await c.enrollment.enroll(await json_body(request), request.remote), 202)


async def _device_body(
    request: web.Request, fast: Callable[[bytes], Any], shape: BodyShape | None = None
) -> Any:
    """A device's body, as ``json_body`` reads it, decoded by ``fast`` (wire.py) when that
    vouches for it, else parsed by ``parse_json``, which says what is wrong."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    raw = await request.read()

    def parse() -> Any:
        decoded = fast(raw)
        return decoded if decoded is not None else parse_json(raw, shape)

    return await asyncio.to_thread(parse) if len(raw) > OFF_LOOP_BYTES else parse()


async def heartbeats(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    body = await _device_body(request, wire.decode_poa)
    return reply(await c.heartbeats.heartbeat(body, request_peer(request)), 202)


async def post_proof(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    body = await _device_body(request, wire.decode_submission, PROOF_SHAPE)
    return reply(await c.ingestion.accept_proof(body, request_peer(request)), 202)


_Scalar = str | int | float | bool | None


class _ProofItem(msgspec.Struct, forbid_unknown_fields=True):
    """The outline of one submission: ``{"pot": {...}, "output": "<hex>"}``; what the
    members hold is judged per item by the service, so one bad item is its own refusal."""

    pot: dict[str, _Scalar | dict[str, _Scalar]]
    output: _Scalar


class _ProofBatch(msgspec.Struct, forbid_unknown_fields=True):
    proofs: Annotated[list[_ProofItem], msgspec.Meta(min_length=1, max_length=MAX_PROOF_BATCH)]


#: A proof is three objects (submission, PoT, execution metadata) of at most 16 members;
#: the outline counts members by their ``:``, and a task id may hold up to 63 of its own.
_PROOF_OBJECTS, _PROOF_MEMBERS = 3, 16 + 63
PROOF_SHAPE = BodyShape(_ProofItem, _PROOF_OBJECTS, _PROOF_MEMBERS)
PROOF_BATCH_SHAPE = BodyShape(
    _ProofBatch, 1 + MAX_PROOF_BATCH * _PROOF_OBJECTS, 1 + MAX_PROOF_BATCH * _PROOF_MEMBERS
)


async def post_proof_batch(request: web.Request) -> web.Response:
    """Several proofs in one request and one durable commit; a result for each, in order."""
    c = request.app[COORDINATOR_KEY]
    body = await _device_body(request, wire.decode_batch, PROOF_BATCH_SHAPE)
    if isinstance(body, list):  # decoded, every item well formed (wire.py)
        body = {"proofs": body}
    items = body.get("proofs") if isinstance(body, dict) and set(body) == {"proofs"} else None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_PROOF_BATCH:
        raise ApiError(
            400,
            "invalid_message",
            f'body: {{"proofs": [1..{MAX_PROOF_BATCH} proof submissions]}}',
            field="proofs",
        )
    # Each submission must fit the schema (ProofSubmission); one that does not makes the
    # whole request malformed: refused, nothing judged or stored. What a well-formed one
    # holds (signature, sender, assignment, commitments) is judged per item below.
    for i, item in enumerate(items):
        try:
            c.ingestion.parse_submission(item)
        except ValidationError as exc:
            where = f"proofs[{i}]" + (f".{exc.field}" if exc.field else "")
            raise ApiError(400, exc.code, f"{where}: {exc.reason}", field=where) from None
    outcomes = await c.ingestion.accept_proofs(items, request_peer(request))
    results = [
        {"status": 202, "body": o}
        if isinstance(o, dict)
        else {"status": (err := ApiError.from_exception(o)).status, **err.body()}
        for o in outcomes
    ]
    return reply({"results": results}, 200)


# -- clients --------------------------------------------------------------------------------


async def submit_task(request: web.Request) -> web.Response:
    info = await caller(request, "client", "operator")
    c = request.app[COORDINATOR_KEY]
    body = await json_body(request)
    return reply(await c.tasks.submit_task(body, info.label or info.role, info.owner), 202)


async def list_tasks(request: web.Request) -> web.Response:
    info = await caller(request, "client", "operator")
    limit = _int_param(request, "limit", 100, 1, 1000)
    state = request.query.get("state")
    verified = _bool_param(request, "verified")
    c = request.app[COORDINATOR_KEY]
    tasks = await c.tasks.list_tasks(limit, state, owner=scope(info), verified_only=verified)
    return reply({"tasks": tasks})


_WAIT_POLL_S = 0.25


async def get_task(request: web.Request) -> web.Response:
    """A task and its result. ``?verified=true`` leaves out output bytes unless verified;
    ``?wait_s=N`` (≤ 60) holds the answer until the result is verified or the task failed."""
    info = await caller(request, "client", "operator")
    c = request.app[COORDINATOR_KEY]
    task_id = request.match_info["task_id"]
    verified = _bool_param(request, "verified")
    wait_s = _int_param(request, "wait_s", 0, 0, c.config.server.max_wait_s)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        view = await c.tasks.task_view(task_id, verified_only=verified, owner=scope(info))
        final = view["verification"]["state"] == "verified" or view["state"] == "failed"
        left = deadline - loop.time()
        if final or left <= 0:
            return reply(view)
        await asyncio.sleep(min(_WAIT_POLL_S, left))


# -- operator ---------------------------------------------------------------------------------


async def list_devices(request: web.Request) -> web.Response:
    await require(request, "operator")
    c = request.app[COORDINATOR_KEY]
    devices = sorted(c.devices.values(), key=lambda d: d.device_id)
    return reply({"devices": [c.fleet.device_view(d) for d in devices]})


async def get_device(request: web.Request) -> web.Response:
    await require(request, "operator")
    c = request.app[COORDINATOR_KEY]
    return reply(c.fleet.device_view(c.fleet.device(_device_id(request))))


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


async def _operator_changes_state(
    request: web.Request,
    default_reason: str,
    change: Callable[[DeviceService], Callable[[str, str], Awaitable[Device]]],
) -> web.Response:
    await require(request, "operator")
    c = request.app[COORDINATOR_KEY]
    device_id = _device_id(request)
    reason = await _reason(request, default_reason)
    return reply(c.fleet.device_view(await change(c.fleet)(device_id, reason)))


async def approve_device(request: web.Request) -> web.Response:
    return await _operator_changes_state(request, "approved", lambda fleet: fleet.approve)


async def quarantine_device(request: web.Request) -> web.Response:
    return await _operator_changes_state(
        request, "quarantined by the operator", lambda fleet: fleet.quarantine
    )


_TAGS_CHANGE = record(
    {
        "add": optional(array(text(24, TAG_PATTERN), MAX_TAGS)),
        "remove": optional(array(text(24, TAG_PATTERN), MAX_TAGS)),
    },
    dict,
)


async def tag_device(request: web.Request) -> web.Response:
    """The operator gives a device placement tags, or takes them away (SPEC §4.1)."""
    await require(request, "operator")
    c = request.app[COORDINATOR_KEY]
    device_id = _device_id(request)
    change = _TAGS_CHANGE(await json_body(request), "")
    device = await c.fleet.set_tags(
        device_id, list(change.get("add", ())), list(change.get("remove", ()))
    )
    return reply(c.fleet.device_view(device))


async def _operator_or_device(request: web.Request, device_id: str, action: str) -> str:
    """Authorize with the operator token, or else with the device's signed privacy request."""
    c = request.app[COORDINATOR_KEY]
    if request.headers.get("Authorization"):
        await require(request, "operator")
        if request.can_read_body:
            # The token decides; a body sent along must still be a well-formed request.
            c.privacy.check_privacy_shape(await json_body(request), action)
        return "operator"
    if not request.can_read_body:
        raise ApiError(
            401, "unauthorized", "send the operator token or the device's signed privacy request"
        )
    c.privacy.check_privacy_request(
        await json_body(request), device_id, action, request_peer(request)
    )
    return "device"


async def export_device_operator(request: web.Request) -> web.Response:
    await require(request, "operator")
    c = request.app[COORDINATOR_KEY]
    return reply(await c.privacy.export_device(_device_id(request)))


async def export_device(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    device_id = _device_id(request)
    await _operator_or_device(request, device_id, "export")
    return reply(await c.privacy.export_device(device_id))


async def erase_device(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    device_id = _device_id(request)
    await _operator_or_device(request, device_id, "erase")
    return reply(await c.privacy.erase_device(device_id))


async def create_token(request: web.Request) -> web.Response:
    await require(request, "operator")
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) - {"role", "label", "ttl_s", "uses"}:
        raise ApiError(400, "invalid_message", "fields: role, label, ttl_s, uses")
    role = body.get("role", "enroll")
    label = body.get("label", "")
    ttl = body.get("ttl_s")
    uses = body.get("uses")
    for name, value, most in (("ttl_s", ttl, MAX_TOKEN_TTL_S), ("uses", uses, MAX_SAFE_INT)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most
        ):
            raise ApiError(400, "invalid_message", f"{name}: an integer 1..{most}", field=name)
    if not isinstance(label, str) or len(label) > 100:
        raise ApiError(400, "invalid_message", "label: a string of at most 100", field="label")
    if not isinstance(role, str):
        raise ApiError(400, "invalid_message", "role: a string", field="role")
    c = request.app[COORDINATOR_KEY]
    made = await c.tokens.create_token(role, label=label, ttl_s=ttl, uses=uses)
    # Seconds left, rounded up: the default lifetime when none was asked for.
    ttl_s = None if made.expires_at is None else -((c.clock() - made.expires_at) // 1000)
    return reply(
        {
            "token": made.token,
            "role": role,
            "label": label,
            # What the token's tasks belong to; a device owner names it to take only
            # this client's work (the agent's [work] clients).
            "owner": made.owner,
            "uses": made.uses_left,
            "expires_at": made.expires_at,
            "ttl_s": ttl if ttl is not None else ttl_s,
        },
        201,
    )


async def list_flags(request: web.Request) -> web.Response:
    await require(request, "operator")
    return reply({"flags": await request.app[COORDINATOR_KEY].flags.list_flags()})


async def set_flag(request: web.Request) -> web.Response:
    who = await require(request, "operator")
    body = await json_body(request)
    if not isinstance(body, dict) or "percent" not in body or set(body) - {"percent", "by"}:
        raise ApiError(400, "invalid_message", "fields: percent, and optionally by")
    by = body.get("by")
    if "by" in body and (not isinstance(by, str) or not 0 < len(by) <= 100):
        raise ApiError(400, "invalid_message", "by: a string of at most 100", field="by")
    c = request.app[COORDINATOR_KEY]
    return reply(await c.flags.set_flag(request.match_info["name"], body["percent"], by or who))


async def flag_history(request: web.Request) -> web.Response:
    await require(request, "operator")
    name = request.query.get("name")
    return reply({"history": await request.app[COORDINATOR_KEY].flags.flag_history(name)})


async def status(request: web.Request) -> web.Response:
    await require(request, "operator")
    return reply(await request.app[COORDINATOR_KEY].status.summary())


# -- public on the LAN ------------------------------------------------------------------------


async def list_blocks(request: web.Request) -> web.Response:
    start = _int_param(request, "from", 0, 0, 2**53)
    limit = _int_param(request, "limit", 100, 1, 1000)
    return reply(
        {"microblocks": await request.app[COORDINATOR_KEY].blocks.blocks_view(start, limit)}
    )


async def get_block(request: web.Request) -> web.Response:
    height = _int_param(request, "height", 0, 0, 2**53)
    return reply(await request.app[COORDINATOR_KEY].blocks.block_view(height))


async def get_block_raw(request: web.Request) -> web.Response:
    height = _int_param(request, "height", 0, 0, 2**53)
    raw = await request.app[COORDINATOR_KEY].blocks.block_bytes(height)
    return web.Response(body=raw, content_type="application/octet-stream")


async def receipt_proof(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    device_id = _device_id(request)
    return reply(await receipt_bundle(c.db, request.match_info["task_id"], device_id))


async def health(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    alerts = await c.status.alerts()
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


async def node(request: web.Request) -> web.Response:
    """This node, answered by the process the request reached (never relayed): its name,
    whether it leads, and the term it leads in (docs/high-availability.md)."""
    c = request.app[COORDINATOR_KEY]
    section = c.status_sections.get("leadership")
    if section is None:  # a coordinator built without the service shell (tests)
        return reply({"node": None, "leading": True, "term": None})
    return reply(section.node_view())  # type: ignore[attr-defined]


async def ca_certificate(request: web.Request) -> web.Response:
    """The CA certificate, public: an agent that was given its fingerprint checks it before
    it sends anything (its enrollment token included) to this coordinator."""
    c = request.app[COORDINATOR_KEY]
    if c.certs is None:
        raise ApiError(503, "unavailable", "this coordinator has no certificate authority")
    return reply({"ca_certificate": c.certs.ca.cert_pem, "ca_fingerprint": c.certs.ca.fingerprint})


async def openapi(request: web.Request) -> web.Response:
    c = request.app[COORDINATOR_KEY]
    plugins = tuple(k for k in c.kinds.names() if k not in DOCUMENTED_KINDS)
    config = c.config
    return reply(openapi_document(plugins, config.scheduler.max_replicas, config.server.max_wait_s))


async def security_txt(request: web.Request) -> web.Response:
    """RFC 9116's contact file, public; 404 until the operator configures a contact."""
    c = request.app[COORDINATOR_KEY]
    text = securitytxt.render(c.config.security, datetime.fromtimestamp(c.clock() / 1000, UTC))
    if text is None:
        raise ApiError(404, "not_found", "no security contact is configured ([security] contact)")
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


#: The app's metrics (the service shares a worker's counters through them).
METRICS_KEY: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


def build_app(coordinator: Coordinator, forwarding: Forwarding | None = None) -> web.Application:
    """The API of one coordinator process; ``forwarding``: one of several worker
    processes, relaying to the leader what it does not serve itself (forwarding.py)."""
    server = coordinator.config.server
    shared_dir = None if forwarding is None else coordinator.config.state_dir
    metrics = Metrics(coordinator, shared_dir)
    admission = Admission(
        server.max_inflight,
        server.overload_retry_after_s,
        max_delay_s=server.max_queue_delay_ms / 1000,
        lag=LoopLag(),
        standing=StandingDelay(),
    )
    metrics.admission = admission
    front = Front(metrics, RateLimiter(coordinator.config.limits), admission, server.max_body_bytes)
    # Relaying first: a relayed request is counted, limited and logged where it is
    # answered, with the address and identity the relaying worker saw.
    relay = [] if forwarding is None else [forwarding.middleware]
    app = web.Application(
        middlewares=[*relay, front.middleware], client_max_size=server.max_body_bytes
    )
    app[COORDINATOR_KEY] = coordinator
    app[METRICS_KEY] = metrics
    app.cleanup_ctx.append(admission.watching)
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
    app.router.add_post("/v1/devices/{device_id}/tags", tag_device)
    app.router.add_post("/v1/tokens", create_token)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/flags", list_flags)
    app.router.add_get("/v1/flags/history", flag_history)
    # Not "history": that name is the history's route (GET), and no flag may take it.
    app.router.add_put("/v1/flags/{name:(?!history$)[^/]+}", set_flag)
    app.router.add_get("/v1/microblocks", list_blocks)
    app.router.add_get("/v1/microblocks/{height}", get_block)
    app.router.add_get("/v1/microblocks/{height}/raw", get_block_raw)
    app.router.add_get("/v1/receipts/{task_id}/{device_id}/proof", receipt_proof)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/node", node)
    app.router.add_get("/v1/ca", ca_certificate)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/.well-known/security.txt", security_txt)
    add_update_routes(app)  # TUF repository, update reports, rollouts
    add_content_routes(app)  # clients' modules and inputs
    # The page, /privacy, login; also appends the session middleware, innermost.
    add_dashboard_routes(app, coordinator)
    return app
