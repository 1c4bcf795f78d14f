"""Pieces of the OpenAPI document that every route module uses: the error answers by
status, and path and query parameters.

Each operation lists exactly the statuses its handler (and the middlewares in front of
it) can answer with, so a client — and the contract test — can rely on the list.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}

#: What each refusal status means here (the body is always the SPEC §9 error envelope).
_WHY = {
    400: "the request is malformed or breaks a rule the schema states; nothing changed",
    401: "no valid credential (token or signature); nothing changed",
    403: "the credential may not do this, or the device may not; nothing changed",
    404: "no such resource",
    405: "this method is not served at this path (the Allow header lists those that are)",
    409: "conflicts with the current state (a replay, a duplicate); nothing changed",
    410: "the resource is gone (an expired assignment); nothing changed",
    413: "the body exceeds this route's limit; nothing was read",
    415: "the body is not of a media type this operation takes; nothing changed",
    422: "well formed, but its commitments do not check out; nothing changed",
    503: "a service this operation needs is not available here, or (code overloaded) the "
    "coordinator is at capacity: retry after the Retry-After header's seconds",
}


def errors(*statuses: int) -> dict[str, Any]:
    """The answers of refusals with ``statuses``, plus 413 (every route limits its body)
    and 429 (every route is rate limited, loopback excepted)."""
    out: dict[str, Any] = {}
    for status in sorted({*statuses, 413}):
        out[str(status)] = {"description": _WHY[status], "content": _ERROR}
    out["429"] = {
        "description": "rate limited: retry after the Retry-After header's seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
        "content": _ERROR,
    }
    return out


def path_param(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": schema}
    if description:
        param["description"] = description
    return param


def query_param(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
    if description:
        param["description"] = description
    return param


#: A decimal integer in a query string or a path: ASCII digits only (no sign, no spaces).
def decimal(lo: int, hi: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi}


#: A JSON body that must be an object of these members (none other).
def json_object_body(
    props: dict[str, Any],
    required: list[str],
    *,
    body_required: bool = True,
    example: dict[str, Any] | None = None,
) -> dict[str, Any]:
    media: dict[str, Any] = {
        "schema": {
            "type": "object",
            "additionalProperties": False,
            "required": required,
            "properties": props,
        }
    }
    if example is not None:
        media["example"] = example
    return {"required": body_required, "content": {"application/json": media}}
