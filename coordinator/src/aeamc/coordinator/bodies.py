"""JSON bodies in and out of the coordinator's HTTP routes (SPEC §9).

Every route module (the API, fleet updates, the dashboard) reads request bodies with
``json_body`` and answers with ``reply``, so one parser decides what JSON is accepted and
one encoder what the answers look like.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from aeamc.shared.strictjson import MAX_DEPTH, JsonError, loads_strict, too_deep

from .errors import ApiError

#: Bodies larger than this are parsed in a worker thread, so the event loop keeps
#: answering other requests meanwhile.
OFF_LOOP_BYTES = 256 * 1024


@dataclass(frozen=True)
class BodyShape:
    """The outline a route's body must have, checked before it is turned into Python
    objects: at most ``max_objects`` JSON objects and ``max_members`` members in all
    (counted as ``{`` and ``:`` bytes, which the protocol's hex and id strings never
    contain), then decoded as ``type`` by msgspec, which stops at the first element
    that does not fit. A body of millions of tiny objects is thus refused without
    building them."""

    type: Any
    max_objects: int
    max_members: int


def _outline_error(raw: bytes, shape: BodyShape) -> str | None:
    if raw.count(b"{") > shape.max_objects:
        return f"at most {shape.max_objects} JSON objects"
    if raw.count(b":") > shape.max_members:
        return f"at most {shape.max_members} object members"
    try:
        msgspec.json.decode(raw, type=shape.type)
    except msgspec.ValidationError as exc:
        return str(exc)
    except msgspec.DecodeError:
        return None  # not JSON at all: the parse below names the fault
    return None


def parse_json(raw: bytes, shape: BodyShape | None = None) -> Any:
    """Parse a request body: RFC 8259 JSON in UTF-8, no NaN or Infinity, no object with a
    member twice. msgspec (in C) refuses malformed bytes first; the duplicate-member check
    then runs on a body already known to be well formed and bounded by its route's limit.
    Raises ``ApiError`` 400 ``invalid_json`` (or ``invalid_message`` for a body outside
    ``shape``)."""
    if shape is not None:
        problem = _outline_error(raw, shape)
        if problem is not None:
            raise ApiError(400, "invalid_message", f"body: {problem}")
    if too_deep(raw):
        raise ApiError(400, "invalid_json", f"body: nested deeper than {MAX_DEPTH} levels")
    try:
        msgspec.json.decode(raw)
        return loads_strict(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    except JsonError as exc:
        raise ApiError(400, "invalid_json", f"body: {exc}") from None
    except RecursionError:  # a nesting depth the checks above let through: never a 500
        raise ApiError(400, "invalid_json", "body: nested too deeply") from None


async def json_body(request: web.Request, shape: BodyShape | None = None) -> Any:
    """The request's JSON body, read within the route's limit (``body_limit_middleware``)
    and parsed by ``parse_json``; large bodies are parsed off the event loop."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    raw = await request.read()
    if len(raw) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(parse_json, raw, shape)
    return parse_json(raw, shape)


def reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """``body`` as JSON with sorted keys, so the same answer is always the same bytes."""
    return web.json_response(
        body, status=status, dumps=lambda o: json.dumps(o, sort_keys=True), headers=headers
    )
