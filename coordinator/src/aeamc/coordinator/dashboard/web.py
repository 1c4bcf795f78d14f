"""The operator dashboard's HTTP surface: the page, its assets, login sessions, the fleet
samples behind the charts, the privacy policy and the runbook.

Everything lives outside ``/v1/``: the page only *reads and acts through* the existing JSON
API. To let it do so without ever handing the operator token to JavaScript, a login
exchanges the token for an HttpOnly, SameSite=Strict session cookie, and
:func:`session_auth_middleware` turns a valid cookie into the ``Authorization`` header the
API already understands — so the API keeps one way of checking who is calling.

Because a cookie is sent by the browser on its own, every state-changing request
authenticated by it must also carry the session's CSRF token in ``X-AEAMC-CSRF`` (which a
page from another origin can neither read nor set) and, when the browser says where the
request comes from, an ``Origin`` naming this host.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import html
import json
import re
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

from aeamc.shared.refusals import Refusal

from ..apidoc import decimal, errors, path_param, query_param
from ..auth import bearer
from ..bodies import reply
from ..errors import ApiError
from ..privacypolicy import PrivacyConfig, fill
from .markdown import headings, render
from .samples import Sampler
from .sessions import SESSION_LIFETIME_MS, SessionStore

if TYPE_CHECKING:
    from ..service import Coordinator

COOKIE_NAME = "aeamc_session"
CSRF_HEADER = "X-AEAMC-CSRF"
LOGIN_PATH = "/dashboard/login"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_TOKEN_CHARS = 512
_PASTED_SPACE = " \t\r\n"
#: Milliseconds in a query: ASCII digits, at most 16 (2^53 has 16).
_DECIMAL = re.compile(r"[0-9]{1,16}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Served assets by name, with their media type: a fixed list, so no path reaches the disk.
STATIC_ASSETS = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
    "icon.svg": "image/svg+xml",
}
#: Everything the page uses comes from this origin; nothing may frame it.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@dataclass
class Dashboard:
    """What the dashboard keeps per application: sessions and the fleet samples."""

    coordinator: Coordinator
    sessions: SessionStore
    sampler: Sampler
    _sampling: asyncio.Task[None] | None = field(default=None, repr=False)


DASHBOARD_KEY: web.AppKey[Dashboard] = web.AppKey("dashboard", Dashboard)


# -- assets -------------------------------------------------------------------------------


def _package_file(*parts: str) -> bytes:
    return resources.files(__package__).joinpath(*parts).read_bytes()


@functools.cache
def _asset(name: str) -> tuple[bytes, str]:
    body = _package_file("static", name)
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def policy_source() -> str:
    """The privacy policy as shipped (a copy of ``docs/privacy-policy.md``)."""
    return _package_file("privacy-policy.md").decode("utf-8")


def runbook_source() -> str:
    """The operator runbook as shipped (a copy of ``docs/runbook.md``)."""
    return _package_file("runbook.md").decode("utf-8")


def _document_page(title: str, what: str, source: str, body: str) -> bytes:
    """A shipped Markdown document as a page of its own, with its contents listed."""
    contents = "".join(
        f'<li><a href="#{h.anchor}">{html.escape(h.text)}</a></li>'
        for h in headings(source)
        if h.level == 2
    )
    page = string.Template(_package_file("pages", "document.html").decode("utf-8"))
    return page.substitute(title=title, what=what, contents=contents, body=body).encode("utf-8")


@functools.cache
def privacy_page(operator: PrivacyConfig) -> bytes:
    """``/privacy`` with the operator's ``[privacy]`` details filled in (HTML-escaped),
    rendered once per configuration: the policy only changes with the installed package."""
    source = policy_source()
    return _document_page("Privacy policy", "policy", source, fill(render(source), operator))


@functools.cache
def runbook_page() -> bytes:
    """``/runbook``: where the alerts' ``runbook_url`` links lead (its headings carry the
    anchors the alerts name), served by the coordinator so the links work on any LAN."""
    source = runbook_source()
    return _document_page("Runbook", "runbook", source, render(source))


def _html(body: bytes) -> web.Response:
    return web.Response(
        body=body,
        content_type="text/html",
        charset="utf-8",
        headers={**_SECURITY_HEADERS, "Cache-Control": "no-cache"},
    )


def _json(body: Any, status: int = 200) -> web.Response:
    return reply(body, status, headers={"Cache-Control": "no-store"})


# -- authentication ---------------------------------------------------------------------------


def _check_origin(request: web.Request) -> None:
    """Refuse a browser request that says it comes from another origin."""
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser, or a same-origin request the browser did not label
    try:
        netloc: str | None = urlsplit(origin).netloc
    except ValueError:  # e.g. "http://[": not an origin at all
        netloc = None
    if netloc != request.host:
        raise ApiError(403, "forbidden", "requests from another origin are refused")


@web.middleware
async def session_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate a request by its dashboard session cookie, if it has no other credential.

    It must run inside the API's error middleware (its refusals are API errors). A request
    with an ``Authorization`` header, without a cookie, or with an unknown or expired one
    passes through untouched, and the API then decides as it always does (401).
    """
    dashboard = request.app.get(DASHBOARD_KEY)
    headers = request.headers
    # Devices and clients send no cookie: leave them before the cookie jar is parsed.
    if dashboard is None or "Authorization" in headers or "Cookie" not in headers:
        return await handler(request)
    session = dashboard.sessions.get(request.cookies.get(COOKIE_NAME))
    if session is None:
        return await handler(request)
    # Login authenticates by the token in its body, never by the cookie: no CSRF token yet.
    if request.method not in _SAFE_METHODS and request.path != LOGIN_PATH:
        _check_origin(request)
        if not session.csrf_matches(request.headers.get(CSRF_HEADER)):
            raise ApiError(
                403,
                "forbidden",
                f"a change made with the dashboard's session cookie needs its {CSRF_HEADER} header",
            )
    authorized = CIMultiDict(request.headers)
    authorized["Authorization"] = f"Bearer {session.token}"
    return await handler(request.clone(headers=authorized))


# -- handlers ---------------------------------------------------------------------------------


async def to_dashboard(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/dashboard/")


async def index(request: web.Request) -> web.Response:
    return _html(_package_file("pages", "index.html"))


async def static_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_ASSETS:
        raise ApiError(404, "not_found", f"{name} not found")
    body, etag = _asset(name)
    headers = {**_SECURITY_HEADERS, "ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=body,
        headers={**headers, "Content-Type": f"{STATIC_ASSETS[name]}; charset=utf-8"},
    )


async def privacy(request: web.Request) -> web.Response:
    return _html(privacy_page(request.app[DASHBOARD_KEY].coordinator.config.privacy))


async def runbook(request: web.Request) -> web.Response:
    return _html(runbook_page())


async def _login_token(request: web.Request) -> str:
    if request.content_type == "application/json":
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ApiError(400, "invalid_json", "body is not valid JSON") from None
        members = set(body) if isinstance(body, dict) else set()
        token = body.get("token") if isinstance(body, dict) else None
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.post()
        # A missing or wrong multipart boundary, a broken part header, bytes not UTF-8.
        except (ValueError, HttpProcessingError):
            raise ApiError(400, "invalid_message", "the form cannot be parsed") from None
        members = set(form)
        token = form.get("token")
    else:
        raise ApiError(415, "unsupported_media_type", "send JSON or a form with the token")
    if members - {"token"}:
        raise ApiError(400, "unknown_field", "send the token and nothing else", field="token")
    # Pasted tokens may come with spaces or a line break around them (and only those).
    token = (
        token.strip(_PASTED_SPACE)
        if isinstance(token, str) and len(token) <= _MAX_TOKEN_CHARS
        else None
    )
    if not token:
        raise ApiError(400, "missing_field", "the operator token is required", field="token")
    return token


async def login(request: web.Request) -> web.Response:
    """Exchange the operator token for a session cookie and the session's CSRF token."""
    dashboard = request.app[DASHBOARD_KEY]
    _check_origin(request)
    token = await _login_token(request)
    await dashboard.coordinator.tokens.check_token(token, ("operator",))
    dashboard.sessions.drop(request.cookies.get(COOKIE_NAME))
    session_id, session = dashboard.sessions.create(token)
    response = _json({"csrf_token": session.csrf_token, "expires_at": session.expires_ms})
    response.set_cookie(
        COOKIE_NAME,
        session_id,
        path="/",
        max_age=SESSION_LIFETIME_MS // 1000,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


def _forget_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(
        COOKIE_NAME, path="/", httponly=True, samesite="Strict", secure=request.secure
    )


async def logout(request: web.Request) -> web.Response:
    request.app[DASHBOARD_KEY].sessions.drop(request.cookies.get(COOKIE_NAME))
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    _forget_cookie(request, response)
    return response


async def session_info(request: web.Request) -> web.Response:
    """Whether this browser is logged in, and the CSRF token the page needs after a reload.

    Only a page of this origin can read the answer, and only with the HttpOnly cookie.
    The token behind the session is checked again, so a revoked token logs the page out.
    """
    dashboard = request.app[DASHBOARD_KEY]
    session_id = request.cookies.get(COOKIE_NAME)
    session = dashboard.sessions.get(session_id)
    if session is not None:
        try:
            await dashboard.coordinator.tokens.check_token(session.token, ("operator",))
        except Refusal:
            dashboard.sessions.drop(session_id)
            session = None
    if session is None:
        response = _json({"authenticated": False})
        if session_id is not None:
            _forget_cookie(request, response)
        return response
    return _json(
        {"authenticated": True, "csrf_token": session.csrf_token, "expires_at": session.expires_ms}
    )


async def samples(request: web.Request) -> web.Response:
    """Fleet samples newer than ``?since=`` (ms), for the throughput and EPS charts."""
    dashboard = request.app[DASHBOARD_KEY]
    await dashboard.coordinator.tokens.check_token(bearer(request), ("operator",))
    raw = request.query.get("since", "0")
    if not _DECIMAL.fullmatch(raw) or int(raw) > 2**53:
        raise ApiError(400, "invalid_message", "since must be an integer 0..2^53", field="since")
    since = int(raw)
    sampler = dashboard.sampler
    return _json(
        {
            "interval_s": sampler.interval_s,
            "now": dashboard.coordinator.clock(),
            "samples": sampler.since(since),
        }
    )


# -- wiring -----------------------------------------------------------------------------------

_ROUTES: list[tuple[str, str, Handler, str]] = [
    ("GET", "/", to_dashboard, "Redirects to the dashboard"),
    ("GET", "/dashboard", to_dashboard, "Redirects to the dashboard"),
    ("GET", "/dashboard/", index, "The operator dashboard (a single HTML page)"),
    ("GET", "/dashboard/static/{name}", static_asset, "The dashboard's CSS, JavaScript, icon"),
    ("GET", "/dashboard/session", session_info, "Whether this browser is logged in"),
    ("POST", LOGIN_PATH, login, "Operator login: the token for a session cookie"),
    ("POST", "/dashboard/logout", logout, "End the dashboard session"),
    ("GET", "/dashboard/samples", samples, "Fleet samples of the last hour, for the charts"),
    ("GET", "/privacy", privacy, "The privacy policy (no login)"),
    ("GET", "/runbook", runbook, "The operator runbook the alerts link to (no login)"),
]


def add_dashboard_routes(app: web.Application, coordinator: Coordinator) -> None:
    """Serve the dashboard, the privacy policy and the runbook from ``app``.

    Also appends :func:`session_auth_middleware` to the app's middlewares — innermost, so
    the API's error middleware (listed before it) shapes its refusals — and samples the
    fleet in the background while the app runs. Nothing reads ``coordinator`` until the
    first request or start-up, so building an app for inspection stays cheap.
    """

    def clock() -> int:  # looked up per call: ``coordinator`` may not be ready yet
        return coordinator.clock()

    dashboard = Dashboard(
        coordinator=coordinator,
        sessions=SessionStore(clock),
        sampler=Sampler(coordinator),
    )
    app[DASHBOARD_KEY] = dashboard
    app.middlewares.append(session_auth_middleware)
    for method, path, handler, _ in _ROUTES:
        app.router.add_route(method, path, handler)

    async def start_sampling(app: web.Application) -> None:
        dashboard._sampling = asyncio.create_task(dashboard.sampler.run(), name="dashboard-samples")

    async def stop_sampling(app: web.Application) -> None:
        if dashboard._sampling is not None:
            dashboard._sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dashboard._sampling
            dashboard._sampling = None

    app.on_startup.append(start_sampling)
    app.on_cleanup.append(stop_sampling)


def openapi_paths() -> dict[str, dict[str, Any]]:
    """The dashboard's routes as OpenAPI path items, so the API document lists every route.

    The login also makes every operator endpoint of ``/v1/`` usable with the session
    cookie (plus ``X-AEAMC-CSRF`` for changes) instead of the bearer token.
    """
    html_page = {"200": {"description": "HTML", "content": {"text/html": {}}}}
    json_ok = {"200": {"description": "OK", "content": {"application/json": {}}}}
    redirect = {
        "302": {
            "description": "to /dashboard/",
            "headers": {"Location": {"schema": {"const": "/dashboard/"}}},
        }
    }
    token_schema = {
        "type": "object",
        "properties": {
            "token": {
                "type": "string",
                "maxLength": _MAX_TOKEN_CHARS,
                "pattern": "[^ \\t\\r\\n]",
                "description": "the operator token; spaces and line breaks around it are ignored",
            }
        },
        "required": ["token"],
        "additionalProperties": False,
    }
    # (responses, refusals) per route; every route also answers 413 and 429.
    answers: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
        "/": (redirect, ()),
        "/dashboard": (redirect, ()),
        "/dashboard/": (html_page, ()),
        "/privacy": (html_page, ()),
        "/runbook": (html_page, ()),
        "/dashboard/static/{name}": (
            {
                "200": {
                    "description": "the asset",
                    "content": {t: {} for t in sorted(set(STATIC_ASSETS.values()))},
                },
                "304": {"description": "not modified (If-None-Match holds its ETag)"},
            },
            (404,),
        ),
        "/dashboard/session": (json_ok, ()),
        "/dashboard/logout": ({"204": {"description": "logged out; the cookie is cleared"}}, ()),
        LOGIN_PATH: (
            {
                "200": {
                    "description": (
                        f"sets the HttpOnly `{COOKIE_NAME}` cookie; "
                        "the body holds `csrf_token` and `expires_at` (ms)"
                    ),
                    "content": {"application/json": {}},
                }
            },
            (400, 401, 403, 415),
        ),
        "/dashboard/samples": (json_ok, (400, 401, 403)),
    }
    paths: dict[str, dict[str, Any]] = {}
    for method, path, _, summary in _ROUTES:
        ok, refusals = answers[path]
        op: dict[str, Any] = {
            "summary": summary,
            "tags": ["dashboard"],
            "responses": {**ok, **errors(*refusals)},
        }
        if path == LOGIN_PATH:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/json": {"schema": token_schema},
                    "application/x-www-form-urlencoded": {"schema": token_schema},
                    "multipart/form-data": {"schema": token_schema},
                },
            }
        if path == "/dashboard/static/{name}":
            op["parameters"] = [path_param("name", {"enum": sorted(STATIC_ASSETS)})]
        if path == "/dashboard/samples":
            op["security"] = [{"operator": []}]
            op["parameters"] = [
                query_param("since", decimal(0, 2**53), "only samples newer than this (ms)")
            ]
        paths.setdefault(path, {})[method.lower()] = op
    return paths
