"""What the API does for every request around its handler, in one layer (``Front``):
request ids, rate limits, admission of device requests, body limits, the error body of
every failure, and request metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from aeamc.shared.envelope import INTERNAL
from aeamc.shared.errors import ProtocolError
from aeamc.shared.refusals import Refusal

from .bodies import reply
from .content_api import BODY_LIMITS as CONTENT_BODY_LIMITS
from .errors import ApiError, retry_later
from .groupcommit import StoreUnavailable
from .logs import REQUEST_ID, REQUEST_ID_HEADER, incoming_request_id
from .metrics import Metrics, route_of
from .overload import DEVICE_ROUTES, Admission
from .ratelimit import RateLimiter

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: The largest body each route reads, in bytes, by (method, route); ``None`` means
#: ``server.max_body_bytes``. Checked against Content-Length before anything else is done
#: for the request (authentication and signatures included), and enforced while reading a
#: body sent without one. A real enrollment (capabilities and a CSR) is about 1.1 KiB and
#: a heartbeat about 0.4 KiB: their limit leaves a wide margin and nothing more.
SMALL_BODY = 128 * 1024
BODY_LIMITS: dict[tuple[str, str], int | None] = {
    ("POST", "/v1/enroll"): 64 * 1024,
    ("POST", "/v1/heartbeats"): 64 * 1024,
    ("POST", "/v1/proofs"): None,
    ("POST", "/v1/proofs/batch"): None,
    ("POST", "/v1/tasks"): 1024 * 1024,
    **CONTENT_BODY_LIMITS,
}
#: Every other route (tokens, flags, device actions, updates, the dashboard's login).
DEFAULT_BODY_LIMIT = SMALL_BODY


class Front:
    """Everything done for every request around its handler, in one layer. In order:

    1. a request id (a well-formed ``X-Request-ID`` is kept), logged under and echoed;
    2. rate limits (429), before any work — even reading the body — is spent on it;
    3. admission of device requests (503 ``overloaded``, overload.py), also before the body;
    4. the route's body limit (``BODY_LIMITS``): 413 by the declared length before the
       body is read, or as soon as a body sent without one grows past it;
    5. the handler, whose failures become the API's error body (``_error_reply``);
    6. metrics, with the status finally answered (429, 503 and errors included).
    """

    def __init__(
        self, metrics: Metrics, limiter: RateLimiter, admission: Admission, max_body: int
    ) -> None:
        self.metrics = metrics
        self.limiter = limiter
        self.admission = admission
        self.max_body = max_body

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = incoming_request_id(request.headers.get(REQUEST_ID_HEADER))
        token = REQUEST_ID.set(rid)
        started = time.perf_counter()
        try:
            try:
                resp = await self._answer(request, handler)
            except web.HTTPException as exc:  # below 400 only: the rest became answers
                exc.headers[REQUEST_ID_HEADER] = rid
                raise
            if not resp.prepared:
                resp.headers[REQUEST_ID_HEADER] = rid
            self.metrics.record(
                route_of(request), request.method, resp.status, time.perf_counter() - started
            )
            return resp
        finally:
            REQUEST_ID.reset(token)

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        limited = self.limiter.refusal(request)
        if limited is not None:
            return limited
        resource = request.match_info.route.resource
        key = (request.method, resource.canonical if resource is not None else "")
        if key not in DEVICE_ROUTES:
            return await self._handle(request, handler, key)
        if not self.admission.admit(key[1]):
            return self.admission.refusal()
        started = time.perf_counter()
        try:
            return await self._handle(request, handler, key)
        finally:
            self.admission.release(key[1], time.perf_counter() - started)

    async def _handle(
        self, request: web.Request, handler: Handler, key: tuple[str, str]
    ) -> web.StreamResponse:
        limit = BODY_LIMITS.get(key, DEFAULT_BODY_LIMIT)
        if limit is None:
            limit = self.max_body
        try:
            if request.content_length is not None and request.content_length > limit:
                raise ApiError(413, "body_too_large", _too_large(limit))
            # What ``request.clone(client_max_size=limit)`` would give the handler, without
            # a second request object: ``read()`` refuses a body past this many bytes.
            request._client_max_size = limit
            try:
                return await handler(request)
            except web.HTTPRequestEntityTooLarge:
                raise ApiError(413, "body_too_large", _too_large(limit)) from None
        except Exception as exc:
            return _error_reply(request, exc)


def _too_large(limit: int) -> str:
    return f"the body exceeds this route's limit of {limit} bytes"


def _error_reply(request: web.Request, exc: Exception) -> web.Response:
    """The answer to a failure of the handler: 4xx for what a client sent, 503 with
    ``Retry-After`` while the database is out of reach, a bare 500 for a fault of ours.
    An ``HTTPException`` below 400 (a redirect) is raised again."""
    if isinstance(exc, ApiError):
        return reply(exc.body(), exc.status)
    if isinstance(exc, Refusal):
        err = ApiError.from_refusal(exc)
        return reply(err.body(), err.status)
    if isinstance(exc, ProtocolError):
        err = ApiError.from_protocol(exc)
        return reply(err.body(), err.status)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        err = ApiError.from_status(exc.status, exc.reason)
        resp = reply(err.body(), exc.status)
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    if isinstance(exc, StoreUnavailable):
        log.warning("%s %s: %s", request.method, request.path, exc)
        return retry_later(
            "unavailable", "the coordinator cannot reach its database; retry shortly"
        )
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return reply({"error": {"code": INTERNAL, "message": "internal error"}}, 500)
