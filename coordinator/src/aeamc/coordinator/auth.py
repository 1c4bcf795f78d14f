"""Who is calling: the bearer token of a request, checked by the coordinator (SPEC §9).

The API and the fleet-update routes both authenticate through ``require``; the dashboard
reads the same ``Authorization`` header through ``bearer``.
"""

from __future__ import annotations

from aiohttp import web

from .service import Coordinator, TokenInfo

COORDINATOR_KEY: web.AppKey[Coordinator] = web.AppKey("coordinator", Coordinator)


def bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def require(request: web.Request, *roles: str) -> str:
    """Who the caller is (the token's label, else its role); refuses any other role."""
    info = await caller(request, *roles)
    return info.label or info.role


async def caller(request: web.Request, *roles: str) -> TokenInfo:
    """The request's valid token of one of ``roles``, with its owner id."""
    return await request.app[COORDINATOR_KEY].tokens.check_token(bearer(request), roles)


def scope(info: TokenInfo) -> str | None:
    """Whose tasks the caller may see: a client its own (its owner id), the operator all."""
    return None if info.role == "operator" else info.owner
